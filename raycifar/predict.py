"""`python -m raycifar.predict ...` is `raycifar predict ...` (raycifar/cli/predict.py)."""
from raycifar.cli.main import as_script

as_script(__name__, "predict", prog="python -m raycifar.predict")
