"""`python jobs/compare.py ...` is `raycifar compare ...` (raycifar/cli/compare.py)."""
from raycifar.cli.main import as_script

as_script(__name__, "compare", prog="jobs/compare.py")
