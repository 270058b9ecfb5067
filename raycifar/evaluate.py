"""`python -m raycifar.evaluate ...` is `raycifar evaluate ...` (raycifar/cli/evaluate.py)."""
from raycifar.cli.main import as_script

as_script(__name__, "evaluate", prog="python -m raycifar.evaluate")
