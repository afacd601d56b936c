#!/usr/bin/env bash
# The built-in demo: build stasis, start a counting workload, dump it (which stops it), restore
# it from the images, and show that it went on counting from where it was.
# Needs root (ptrace, clone3 with set_tid), cargo and gcc.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d /tmp/stasis-demo.XXXXXX)
echo "== building stasis (release)"
cargo build --release --quiet
stasis=target/release/stasis
gcc -O2 -static -o "$work/counter" demo/counter.c
mkdir -p "$work/images"

echo "== starting the workload"
setsid "$work/counter" "$work/counter.log" </dev/null >/dev/null 2>&1 &
pid=$!
sleep 1.2
echo "   pid $pid, last lines of its log:"
tail -n 2 "$work/counter.log" | sed 's/^/     /'

echo "== stasis dump -t $pid -D $work/images"
"$stasis" dump -t "$pid" -D "$work/images" -o dump.log -v4
sleep 0.5
if kill -0 "$pid" 2>/dev/null && ! grep -q zombie "/proc/$pid/status" 2>/dev/null; then
  echo "   the workload still runs after dump?" >&2
  exit 1
fi
echo "   workload stopped; images:"
ls "$work/images" | tr '\n' ' ' | fold -w 90 | sed 's/^/     /'; echo
before=$(tail -n 1 "$work/counter.log")

echo "== stasis restore -D $work/images -d"
"$stasis" restore -D "$work/images" -d --pidfile "$work/restored.pid" -o restore.log -v4
sleep 1.2
rpid=$(cat "$work/restored.pid")
echo "   restored pid $rpid (same as before: $([ "$rpid" = "$pid" ] && echo yes || echo no))"
echo "   log around the checkpoint:"
grep -n -A3 -F "$before" "$work/counter.log" | sed 's/^/     /'
kill -9 "$rpid" 2>/dev/null || true
echo "== done: the counter went on from where it was dumped (work dir: $work)"
