#!/bin/bash
# Downtime of a live migration between two "hosts" (pid/net/mount/uts namespaces joined by a
# veth pair, addresses of 198.18.0.0/15), side by side in one run:
#   stop-and-copy   stasis dump (tree killed) -> files -> stasis restore in host B
#   pre-copy        stasis migrate -> stasis migrate-receive --restore
# The workload (benches/migrate_workload.py) holds MIB MiB and rewrites RATE pages/s; it
# measures its own largest gap between two 1 ms steps (that is the downtime it saw).
#
#   benches/migrate.sh [MIB] [RATE]        (root; STASIS=path/to/stasis, default release build)
#
# Not measured here yet (see the issue): redis with a connected client (needs
# --tcp-established in migrate), CRIU 4.2 stop-and-copy, post-copy (--lazy-pages).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
S=${STASIS:-$HERE/../target/release/stasis}
MIB=${1:-256}
RATE=${2:-2000}
W=$(mktemp -d /dev/shm/stasis-mig-bench.XXXXXX)
PY=$(command -v python3)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	ip link del mbva 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT

host() { # starts a host; sets INIT to the pid of its init
	unshare --pid --net --mount --uts --fork --kill-child --mount-proc sleep infinity \
		</dev/null >/dev/null 2>&1 &
	local u=$!
	PIDS+=("$u")
	for _ in $(seq 100); do
		local c=""
		read -r c _ <"/proc/$u/task/$u/children" || true
		if [ -n "$c" ] && [ "$(cat "/proc/$c/comm")" = sleep ]; then
			INIT=$c
			return
		fi
		sleep 0.02
	done
	echo "no host" >&2
	exit 1
}

host
A=$INIT
host
B=$INIT
ip link add mbva type veth peer name mbvb
ip link set mbva netns "$A"
ip link set mbvb netns "$B"
nsenter -t "$A" -n sh -c 'ip addr add 198.18.0.1/24 dev mbva; ip link set mbva up; ip link set lo up'
nsenter -t "$B" -n sh -c 'ip addr add 198.18.0.2/24 dev mbvb; ip link set mbvb up; ip link set lo up'

launch() { # $1: tag, $2: PID; the workload at PID $2 of host A (a killed copy stays a zombie
	# there: the host's init does not reap, so each mode has its own PID)
	rm -f "$W/$1.result"*
	nsenter -t "$A" -a sh -c "echo $(($2 - 1)) > /proc/sys/kernel/ns_last_pid
		setsid $PY $HERE/migrate_workload.py $W/$1.result $MIB $RATE </dev/null >/dev/null 2>&1 &"
	for _ in $(seq 600); do [ -e "$W/$1.result.ready" ] && break; sleep 0.1; done
	sleep 1
}

verdict() { # $1: tag, $2: PID; the largest gap seen by the copy now in host B, then it is killed
	nsenter -t "$B" -a kill -USR1 "$2"
	for _ in $(seq 100); do [ -s "$W/$1.result" ] && break; sleep 0.05; done
	read -r gap steps <"$W/$1.result"
	nsenter -t "$B" -a kill -9 "$2"
	sleep 0.2
	echo "$gap"
}

now_ms() { date +%s%3N; }

echo "workload: $MIB MiB, $RATE pages/s rewritten"
printf '%-16s %14s %12s\n' mode "downtime (ms)" "total (ms)"

launch stop 1001
mkdir -p "$W/stop"
t0=$(now_ms)
nsenter -t "$A" -a "$S" dump -t 1001 -D "$W/stop" -o dump.log
nsenter -t "$B" -a "$S" restore -D "$W/stop" -d -o restore.log
t1=$(now_ms)
printf '%-16s %14s %12s\n' stop-and-copy "$(verdict stop 1001)" $((t1 - t0))

launch pre 2001
mkdir -p "$W/in"
nsenter -t "$B" -a "$S" migrate-receive --listen 198.18.0.2:4700 -D "$W/in" --restore \
	-o "$W/receive.log" &
PIDS+=($!)
sleep 0.5
t0=$(now_ms)
nsenter -t "$A" -a "$S" migrate -t 2001 --to 198.18.0.2:4700 --max-downtime 50 \
	-o "$W/migrate.log" --display-stats --profile "$W/migrate-trace.json" | sed 's/^/  /' >&2
t1=$(now_ms)
printf '%-16s %14s %12s\n' pre-copy "$(verdict pre 2001)" $((t1 - t0))
grep -h "pre-copy stopped" "$W/migrate.log" | sed 's/^([^)]*) /  /' >&2
