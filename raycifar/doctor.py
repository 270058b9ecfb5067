"""`python -m raycifar.doctor ...` is `raycifar doctor ...` (raycifar/cli/doctor.py)."""
from raycifar.cli.main import as_script

as_script(__name__, "doctor", prog="python -m raycifar.doctor")
