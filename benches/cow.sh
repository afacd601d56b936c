#!/usr/bin/env bash
# Copy-on-write benchmark (as root): the forked-server workload of tests/restore_cow.rs (a
# parent with 64 MiB of private anonymous memory and three workers sharing it,
# tests/restore_cow/fx-cow.c) dumped and restored; prints the memory the tree uses (sum of
# Pss, and of Rss, over its 4 processes, from /proc/PID/smaps_rollup) before the dump and
# after the restore, and the restore's wall time. After each restore the workload checks
# every byte of each process's view and must say PASS.
#
# Usage: benches/cow.sh [STASIS_BIN] [ROUNDS]
set -euo pipefail
STASIS=$(realpath "${1:-target/debug/stasis}")
ROUNDS=${2:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /dev/shm/stasis-cow-bench.XXXXXX)
PIDS=
cleanup() {
    for p in $PIDS; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
cc -O1 -static -o "$WORK/fx-cow" "$HERE/../tests/restore_cow/fx-cow.c"

now() { date +%s.%N; }
kb() { # sum of a smaps_rollup field over PIDS
    local s=0 v
    for p in $PIDS; do
        v=$(awk -v k="$1:" '$1 == k { print $2 }' "/proc/$p/smaps_rollup")
        s=$((s + v))
    done
    echo $s
}

for r in $(seq "$ROUNDS"); do
    rm -rf "$WORK/img" "$WORK/result"*
    mkdir "$WORK/img"
    setsid "$WORK/fx-cow" "$WORK/result" </dev/null >/dev/null 2>&1 &
    disown
    for _ in $(seq 600); do grep -q READY "$WORK/result" 2>/dev/null && break; sleep 0.05; done
    ROOT=$(pgrep -f -o "^$WORK/fx-cow")
    PIDS=$ROOT
    read -r _ _ W1 W2 W3 < "$WORK/result" || true
    PIDS="$ROOT $W1 $W2 $W3"
    pss0=$(kb Pss); rss0=$(kb Rss)
    "$STASIS" dump -t "$ROOT" -D "$WORK/img" -o dump.log
    for _ in $(seq 200); do kill -0 "$ROOT" 2>/dev/null || break; sleep 0.05; done
    t0=$(now)
    "$STASIS" restore -d -D "$WORK/img" -o restore.log
    t1=$(now)
    pss1=$(kb Pss); rss1=$(kb Rss)
    kill -USR2 "$ROOT"
    for _ in $(seq 200); do grep -qv READY "$WORK/result" 2>/dev/null && break; sleep 0.05; done
    verdict=$(cat "$WORK/result")
    printf 'round %d: before dump Pss %d KiB Rss %d KiB | after restore Pss %d KiB Rss %d KiB | restore %.3f s | %s\n' \
        "$r" "$pss0" "$rss0" "$pss1" "$rss1" "$(echo "$t1 - $t0" | bc)" "$verdict"
    for p in $PIDS; do kill -9 "$p" 2>/dev/null || true; done
    for p in $PIDS; do
        for _ in $(seq 200); do [ -e "/proc/$p" ] || break; sleep 0.05; done
    done
    PIDS=
done
