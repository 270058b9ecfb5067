"""The Python API, for notebooks and scripts; the commands in `raycifar.cli` are thin layers
over it.

    import raycifar
    run = raycifar.fit(data_dir="cifar10", subset=5000, epochs=4, peak_epoch=1)
    run.final_test_acc, run.metrics[-1], run.run_dir
    run.report()                          # the plots and report.md, as `raycifar report`
    raycifar.open_run(run.run_dir).predict(["cat.png"])

`fit` takes a `TrainConfig`, a dict of its fields, or the fields as keywords, and finds LRMAX
and LRMIN first unless `lr_max`/`lr_min` are given, as `raycifar train` does. Ray is joined or
started as the CLI does (`address=None`); `address="local"` starts a fresh local Ray even where
a `ray start` cluster runs on this node. A second call in the same process reuses the Ray the
first one started.
"""

from .results import Run, evaluate, open_run, predict, report
from .training import find_lrs, fit

__all__ = ["Run", "evaluate", "find_lrs", "fit", "open_run", "predict", "report"]
