#!/usr/bin/env bash
# Process-tree benchmark (as root): a tree of NPROC processes (the root and NPROC-1 children)
# each holding MIB MiB of written private anonymous memory (benches/tree_workload.c), dumped
# to a tmpfs this script mounts (and unmounts) and restored from it, by stasis and, when
# STASIS_CRIU=path/to/criu is set, by CRIU the same way, alternating, in one run.
#
# Usage: benches/tree.sh [STASIS_BIN] [NPROC] [MIB] [ROUNDS]
# Times are the wall time of each command (dump kills the tree as CRIU's default does;
# restore -d returns once the tree runs). After each restore every process re-checks its
# memory (SIGUSR1) and must report it intact.
set -euo pipefail
STASIS=$(realpath "${1:-target/release/stasis}")
NPROC=${2:-100}
MIB=${3:-16}
ROUNDS=${4:-3}
CRIU=${STASIS_CRIU:-}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/stasis-tree-bench.XXXXXX)
MNT=$WORK/tmpfs
mkdir -p "$MNT"
SIZE_MB=$(( NPROC * MIB * 2 + 512 ))
mount -t tmpfs -o size=${SIZE_MB}m stasis-bench "$MNT"
ROOTPID=
cleanup() {
    [ -n "$ROOTPID" ] && kill -9 -- "-$ROOTPID" 2>/dev/null || true
    umount "$MNT" 2>/dev/null || umount -l "$MNT" || true
    rm -rf "$WORK"
}
trap cleanup EXIT
cc -O2 -o "$WORK/tree_workload" "$HERE/tree_workload.c"

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

start_tree() {
    rm -f "$WORK"/ready*
    setsid "$WORK/tree_workload" "$NPROC" "$MIB" "$WORK/ready" </dev/null >/dev/null 2>&1 &
    for _ in $(seq 600); do [ -s "$WORK/ready" ] && break; sleep 0.05; done
    ROOTPID=$(cat "$WORK/ready")
}

# Every process of the restored tree re-checks its memory.
verify_tree() {
    local pids n
    pids=$(ps -o pid= -s "$ROOTPID")
    n=$(echo "$pids" | wc -w)
    [ "$n" -eq "$NPROC" ] || { echo "restored tree has $n processes, expected $NPROC"; exit 1; }
    rm -f "$WORK"/ready.ok.*
    for p in $pids; do kill -USR1 "$p"; done
    for _ in $(seq 600); do
        [ "$(ls "$WORK"/ready.ok.* 2>/dev/null | wc -l)" -eq "$NPROC" ] && return 0
        sleep 0.05
    done
    echo "only $(ls "$WORK"/ready.ok.* 2>/dev/null | wc -l) of $NPROC processes report intact memory"
    exit 1
}

# The dumped tree is killed by the dump; its PIDs must be free before the restore (not timed).
wait_gone() {
    for _ in $(seq 600); do
        [ -z "$(ps -o pid= -s "$ROOTPID")" ] && [ ! -e "/proc/$ROOTPID" ] && return 0
        sleep 0.05
    done
    echo "the dumped tree did not go away"; exit 1
}

stop_tree() { kill -9 -- "-$ROOTPID" 2>/dev/null || true; sleep 0.2; ROOTPID=; }

one() { # tool: dump, restore, verify, kill; prints "tool dump restore"
    local tool=$1 d="$MNT/img" t0 t1 t2 td
    rm -rf "$d"; mkdir -p "$d"
    start_tree
    sync; sleep 0.5
    case $tool in
    stasis)
        t0=$(now); "$STASIS" dump -t "$ROOTPID" -D "$d" -o dump.log; t1=$(now); td=$(secs "$t0" "$t1")
        wait_gone
        t1=$(now); "$STASIS" restore -D "$d" -d -o restore.log; t2=$(now);;
    criu)
        t0=$(now); "$CRIU" dump -t "$ROOTPID" -D "$d" -o dump.log; t1=$(now); td=$(secs "$t0" "$t1")
        wait_gone
        t1=$(now); "$CRIU" restore -D "$d" -d -o restore.log; t2=$(now);;
    esac
    verify_tree
    printf '%s dump %.3f s restore %.3f s images %s\n' "$tool" "$td" "$(secs "$t1" "$t2")" \
        "$(du -sh "$d" | cut -f1)"
    stop_tree
    rm -rf "$d"
}

echo "tree of $NPROC processes x $MIB MiB, images on tmpfs, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    one stasis
    [ -n "$CRIU" ] && one criu
done
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
