"""`python -m raycifar.train ...` is `raycifar train ...` (raycifar/cli/train.py)."""
from raycifar.cli.main import as_script

as_script(__name__, "train", prog="python -m raycifar.train")
