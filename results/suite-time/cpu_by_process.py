"""CPU seconds per kind of process while a command runs: where the test suite's time goes.

    python results/suite-time/cpu_by_process.py -- python -m pytest -m ray

Reads /proc every 0.3 s and keeps, for every process on the machine (so run it on an idle
one), the CPU time it used since it was first seen (a process that lives less than 0.3 s is
missed; one already running counts from the first look). Ray names its worker processes
after what they run (`ray::RayTrainWorker`), so the kinds below are read from each process's
command line at its last sighting.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

KINDS = [
    ("Ray Train workers", r"RayTrainWorker"),
    ("Ray Train controllers", r"TrainController"),
    ("Ray Tune trials", r"ImplicitFunc"),
    ("Ray Train's helper actors of each run",
     r"PlacementGroupCleaner|DatasetManager|SynchronizationActor|_QueueActor"),
    ("each Ray cluster's own processes",
     r"gcs_server|raylet|dashboard|DashboardAgent|log_monitor|monitor\.py|RuntimeEnvAgent|"
     r"ray\.util\.client|TrainStateActor|AutoscalingCoordinator|ray::IDLE|ray\.scripts"),
    ("the commands' drivers and the test processes", r"raycifar\.|python.* -c |ipykernel|pytest"),
]
TICK = os.sysconf("SC_CLK_TCK")


def sample(seen: dict, first: dict, names: dict, first_pass: bool) -> None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        first.setdefault(pid, cpu if first_pass else 0.0)
        seen[pid] = max(seen.get(pid, 0.0), cpu - first[pid])
        if cmd:
            names[pid] = cmd


def main(argv: list[str]) -> int:
    command = argv[argv.index("--") + 1:] if "--" in argv else argv
    seen, first, names = {}, {}, {}
    done = threading.Event()

    def watch():
        first_pass = True
        while not done.is_set():
            sample(seen, first, names, first_pass)
            first_pass = False
            time.sleep(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    rc = subprocess.call(command)
    wall = time.monotonic() - started
    done.set()
    watcher.join()
    totals = {name: [0, 0.0] for name, _ in KINDS + [("the rest", "")]}
    for pid, cpu in seen.items():
        kind = next((n for n, p in KINDS if re.search(p, names.get(pid, ""))), "the rest")
        totals[kind][0] += 1
        totals[kind][1] += cpu
    print("\n| kind of process | processes | CPU seconds |\n|---|---|---|")
    for kind, (n, cpu) in totals.items():
        print(f"| {kind} | {n} | {cpu:.0f} |")
    print(f"| all | {sum(n for n, _ in totals.values())} | "
          f"{sum(c for _, c in totals.values()):.0f} |\n\n{wall:.0f} s wall, exit {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
