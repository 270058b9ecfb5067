"""`raycifar COMMAND ...`: the one console script (pyproject.toml), and what the
`python -m raycifar.<command>` modules and `jobs/*.py` scripts call."""

from __future__ import annotations

import importlib
import sys
from typing import Optional

# Each command's module, in raycifar.cli, has build_parser(prog), main(args) and cli(argv, prog).
COMMANDS = {
    "train": "train the network with One Cycle on Ray Train (finds its LRs first)",
    "tune": "the LR range test, the LRMAX search and seed studies as Tune runs",
    "evaluate": "a finished run's model on test data",
    "predict": "classify image files with a finished run",
    "report": "a finished run's plots and report.md",
    "compare": "two runs on the same test set: the gap and its standard error",
    "bench": "throughput, start-up and memory, plain and under Ray",
    "doctor": "what a run would use here: devices, precision, versions, the cluster",
}


def usage(prog: str = "raycifar") -> str:
    width = max(map(len, COMMANDS))
    return "\n".join([f"usage: {prog} COMMAND [options]   ({prog} COMMAND --help for its own)",
                      "", "commands:"] +
                     [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()])


def run(command: str, argv: list[str], prog: Optional[str] = None) -> int:
    """Run one command with its arguments; `prog` names it in --help and error lines."""
    module = importlib.import_module(f"raycifar.cli.{command}")
    return module.cli(argv, prog or f"raycifar {command}")


def as_script(name: str, command: str, prog: str) -> None:
    """Run `command` with this process's arguments when the calling module is `__main__`."""
    if name == "__main__":
        sys.exit(run(command, sys.argv[1:], prog))


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"raycifar: error: no command {argv[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
