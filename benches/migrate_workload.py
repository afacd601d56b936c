"""Downtime probe for benches/migrate.sh: holds MIB MiB of touched memory, rewrites RATE
random pages per second in 1 ms steps, and keeps the largest gap between two consecutive
steps (CLOCK_MONOTONIC: one clock across the namespaces of one machine). SIGUSR1 writes
"max_gap_ms steps" to RESULT.
usage: migrate_workload.py RESULT MIB RATE"""
import random, signal, sys, time

result, mib, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
page = 4096
mem = bytearray(mib << 20)
for i in range(0, len(mem), page):
    mem[i] = 1
npages = len(mem) // page
state = {"gap": 0.0, "steps": 0}


def report(*_):
    with open(result, "w") as f:
        f.write("%.3f %d\n" % (state["gap"] * 1000, state["steps"]))


signal.signal(signal.SIGUSR1, report)
open(result + ".ready", "w").write("READY")
per_step = max(1, rate // 1000)
last = time.monotonic()
while True:
    for _ in range(per_step):
        mem[random.randrange(npages) * page] = random.randrange(256)
    time.sleep(0.001)
    now = time.monotonic()
    if now - last > state["gap"]:
        state["gap"] = now - last
    last = now
    state["steps"] += 1
