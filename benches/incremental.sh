#!/usr/bin/env bash
# Frozen time of the final dump after two pre-dumps against a full dump, side by side on one
# running workload (as root): tests/common/workload_dirty.c with MIB MiB of anonymous memory
# in bench mode (about 1 % of its pages rewritten every 100 ms).
# Usage: benches/incremental.sh [STASIS_BIN] [MIB] [ROUNDS]   (WORK: where images go)
set -euo pipefail
S=${1:-target/release/stasis}
MIB=${2:-1024}
ROUNDS=${3:-3}
WORK=${WORK:-/dev/shm/stasis-bench-inc}
rm -rf "$WORK"; mkdir -p "$WORK"
cc -O1 -o "$WORK/wd" tests/common/workload_dirty.c -I tests/common
setsid "$WORK/wd" "$WORK/r" "$MIB" bench </dev/null >/dev/null 2>&1 &
P=$!
trap 'kill -9 $P 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 200); do [ -e "$WORK/r.ready" ] && break; sleep 0.1; done
field() { sed -n "s/.*$1 \([0-9]*\) us.*/\1/p" | head -1; }
pages() { sed -n 's/.*written \([0-9]*\).*/\1/p' | head -1; }
echo "workload $P: $MIB MiB, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    d="$WORK/$r"; mkdir -p "$d/full" "$d/c1" "$d/c2" "$d/c3"
    out=$("$S" dump -R -t $P -D "$d/full" --stats -o dump.log)
    full=$(echo "$out" | field frozen); fullp=$(echo "$out" | pages)
    rm -rf "$d/full"
    o1=$("$S" pre-dump -t $P -D "$d/c1" --stats -o pre-dump.log); sleep 1
    o2=$("$S" pre-dump -t $P -D "$d/c2" --prev-images-dir ../c1 --stats -o pre-dump.log); sleep 1
    o3=$("$S" dump -R -t $P -D "$d/c3" --prev-images-dir ../c2 --stats --profile "$d/final.json" -o dump.log)
    fin=$(echo "$o3" | field frozen)
    echo "round $r: full frozen ${full} us ($fullp pages) | pre-dump 1 frozen $(echo "$o1" | field frozen) us, copy after $(echo "$o1" | field memwrite) us, $(echo "$o1" | pages) pages | pre-dump 2 frozen $(echo "$o2" | field frozen) us, $(echo "$o2" | pages) pages | final frozen ${fin} us, $(echo "$o3" | pages) pages | ratio $(echo "scale=1; 100 * $fin / $full" | bc) %"
    cp "$d/final.json" "$WORK/../stasis-final-$r.json" 2>/dev/null || true
    rm -rf "$d"
done
