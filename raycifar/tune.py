"""`python -m raycifar.tune ...` is `raycifar tune ...` (raycifar/cli/tune.py)."""
from raycifar.cli.main import as_script

as_script(__name__, "tune", prog="python -m raycifar.tune")
