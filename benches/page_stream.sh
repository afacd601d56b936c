#!/usr/bin/env bash
# Page pipeline benchmark (as root): redis-server holding ~1 GiB of typical data (JSON-like
# records: words, numbers, hex ids) dumped with --leave-running to ext4, plain and packed, to
# a page server over loopback, and (when CRIU=path/to/criu is set) by CRIU 4.2 the same ways.
# Usage: benches/page_stream.sh [STASIS_BIN] [GIB]
set -euo pipefail
STASIS=${1:-target/release/stasis}
GIB=${2:-1}
WORK=${WORK:-/var/tmp/stasis-bench-pages}
PORT=$((20000 + RANDOM % 20000))
rm -rf "$WORK"; mkdir -p "$WORK"
head -c 32 /dev/urandom > "$WORK/key"

setsid redis-server --port $PORT --save '' --appendonly no --daemonize no >"$WORK/redis.log" 2>&1 &
RPID=$!
trap 'kill -9 $RPID 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p $PORT ping >/dev/null 2>&1 && break; sleep 0.1; done
python3 - "$GIB" <<'PY' | redis-cli -p $PORT --pipe >/dev/null
import random, sys
random.seed(7)
words = "alpha beta gamma delta order user item price status shipped pending paid cart session \
token region europe america asia name email street city country phone created updated".split()
target = int(float(sys.argv[1]) * (1 << 30))
n, size = 0, 0
out = sys.stdout
while size < target:
    rec = '{"id":%d,"user":"%s%d","email":"%s.%s@example.com","tags":[%s],"total":%.2f,"ts":%d,"sid":"%032x","note":"%s"}' % (
        n, random.choice(words), random.randrange(10**6), random.choice(words), random.choice(words),
        ",".join('"%s"' % random.choice(words) for _ in range(random.randrange(1, 6))),
        random.random() * 1000, 1700000000 + random.randrange(10**8), random.getrandbits(128),
        " ".join(random.choice(words) for _ in range(random.randrange(5, 40))))
    key = "rec:%d" % n
    out.write("*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(rec), rec))
    size += len(rec) + 64
    n += 1
PY
echo "redis $RPID: $(redis-cli -p $PORT dbsize) keys, $(grep VmRSS /proc/$RPID/status)"

t() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "$e - $s" | bc; }
wait_listen() { for _ in $(seq 100); do ss -ltnH "sport = :$1" | grep -q . && return; sleep 0.1; done; echo "nothing listens on $1"; exit 1; }
pages_size() { du -cb "$1"/pages-* 2>/dev/null | tail -1 | cut -f1; }

run() { # name, then dump args
    local name=$1; shift
    local d="$WORK/$name"; rm -rf "$d"; mkdir -p "$d"
    sync; echo 3 > /proc/sys/vm/drop_caches
    local secs; secs=$(t "$STASIS" dump -t $RPID -D "$d" -R -o dump.log "$@")
    echo "$name: $secs s, pages files $(pages_size "$d") bytes"
}
run plain
run zstd1 --compress zstd:1
run zstd3 --compress zstd:3
run zstd3-sealed --compress zstd:3 --encrypt-key "$WORK/key"

ps_run() { # name, server binary, server args...
    local name=$1 server=$2; shift 2
    local d="$WORK/$name" s="$WORK/$name-server" p=$((PORT + 1))
    rm -rf "$d" "$s"; mkdir -p "$d" "$s"
    sync; echo 3 > /proc/sys/vm/drop_caches
    "$server" page-server -D "$s" --address 127.0.0.1 --port $p -o ps.log "$@" &
    local spid=$!; wait_listen $p
    local secs; secs=$(t "$STASIS" dump -t $RPID -D "$d" -R -o dump.log --page-server --address 127.0.0.1 --port $p)
    wait $spid
    echo "$name: $secs s, server pages files $(pages_size "$s") bytes"
}
ps_run ps-stasis "$STASIS"
ps_run ps-stasis-zstd1 "$STASIS" --compress zstd:1

if [ -n "${CRIU:-}" ]; then
    d="$WORK/criu"; rm -rf "$d"; mkdir -p "$d"; sync; echo 3 > /proc/sys/vm/drop_caches
    echo "criu local: $(t "$CRIU" dump -t $RPID -D "$d" -R -j -o dump.log) s, pages $(pages_size "$d") bytes"
    ps_run ps-criu-server "$CRIU"
    d="$WORK/criu-ps"; s="$WORK/criu-ps-server"; rm -rf "$d" "$s"; mkdir -p "$d" "$s"
    sync; echo 3 > /proc/sys/vm/drop_caches
    "$CRIU" page-server -D "$s" --address 127.0.0.1 --port $((PORT + 2)) -o ps.log & spid=$!; wait_listen $((PORT + 2))
    echo "criu dump -> criu page-server: $(t "$CRIU" dump -t $RPID -D "$d" -R -j -o dump.log --page-server --address 127.0.0.1 --port $((PORT + 2))) s"
    wait $spid
fi
