"""CPU seconds per kind of process while a command runs: where the test suite's time goes.

    python results/suite-time/cpu_by_process.py [--by-name] -- python -m pytest -m ray

Reads /proc every 0.3 s and keeps, for every process on the machine (so run it on an idle
one), the CPU time it used since it was first seen (a process that lives less than 0.3 s is
missed; one already running counts from the first look). Ray names its worker processes
after what they run (`ray::RayTrainWorker`), so the kinds below are read from each process's
command line at its last sighting. `--by-name` adds a finer table: one row per Ray actor
class (`ray::TrainController`), Ray component (`raylet`, `dashboard/agent.py`, the dashboard's
module processes) or `python -m` command.
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
NAMES = [r"ray::\w+", r"ray-dashboard-\w+?-\d+", r"gcs_server", r"raylet", r"dashboard/agent\.py",
         r"dashboard/dashboard\.py", r"log_monitor", r"monitor\.py", r"ray\.util\.client",
         r"ray\.scripts", r"multiprocessing\.\w+", r"-m raycifar[.\w]*", r"-m pytest",
         r"python[\d.]* -u -c", r"ipykernel", r"python[\d.]* (-\w+ )*-c", r"^bash \S+"]
TICK = os.sysconf("SC_CLK_TCK")


def name_of(cmd: str) -> str:
    """A short name for a process: its Ray actor class, Ray component or command."""
    for pattern in NAMES:
        found = re.search(pattern, cmd)
        if found:
            return found.group(0)
    return "other"


def sample(seen: dict, first: dict, names: dict, first_pass: bool) -> None:
    own = str(os.getpid())  # not this sampler's own reading of /proc
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == own:
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
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    options, command = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    if set(options) - {"--by-name"}:
        print(f"unknown option(s) {' '.join(sorted(set(options) - {'--by-name'}))}",
              file=sys.stderr)
        return 2
    by_name = "--by-name" in options
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
    if by_name:
        named: dict[str, list] = {}
        for pid, cpu in seen.items():
            row = named.setdefault(name_of(names.get(pid, "")), [0, 0.0])
            row[0] += 1
            row[1] += cpu
        print("\n| process | processes | CPU seconds |\n|---|---|---|")
        small = [0, 0.0]  # the names under 1 CPU second, as one row
        for name, (n, cpu) in sorted(named.items(), key=lambda item: -item[1][1]):
            if cpu >= 1:
                print(f"| `{name}` | {n} | {cpu:.0f} |")
            else:
                small[0] += n
                small[1] += cpu
        print(f"| the names under 1 CPU second each | {small[0]} | {small[1]:.0f} |")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
