"""`python jobs/report.py ...` is `raycifar report ...` (raycifar/cli/report.py)."""
from raycifar.cli.main import as_script

as_script(__name__, "report", prog="jobs/report.py")
