"""raycifar: a custom ResNet trained on CIFAR-10 with One Cycle, on one machine or a Ray cluster.

    import raycifar
    run = raycifar.fit(subset=5000, epochs=4, peak_epoch=1)   # finds its LRs, then trains
    print(run.final_test_acc, run.run_dir)

`raycifar.api` is the API (`fit`, `find_lrs`, `open_run`, and a `Run`'s `evaluate`, `predict`
and `report`; `raycifar.evaluate` and `raycifar.predict` are the `python -m` commands' modules).
Importing the package does nothing beyond defining names: no data, no CUDA, no Ray, no torch
until a function of the API is called.
"""

__version__ = "0.1.0"

from .recipe.config import ConfigError, RaycifarError, TrainConfig  # noqa: E402

API = ("fit", "find_lrs", "open_run", "Run")

__all__ = ["__version__", "ConfigError", "RaycifarError", "TrainConfig", *API]


def __getattr__(name: str):
    """The API's names, imported on first use (they bring torch)."""
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'raycifar' has no attribute {name!r}")
