"""`python -m raycifar.bench ...` is `raycifar bench ...` (raycifar/cli/bench.py)."""
from raycifar.cli.main import as_script

as_script(__name__, "bench", prog="python -m raycifar.bench")
