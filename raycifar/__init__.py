"""raycifar: a custom ResNet trained on CIFAR-10 with One Cycle, on one machine or a Ray cluster.

Importing the package does nothing beyond defining names: no data, no CUDA, no ray.init.
"""

__version__ = "0.1.0"

from .recipe.config import ConfigError, RaycifarError, TrainConfig  # noqa: E402

__all__ = ["__version__", "ConfigError", "RaycifarError", "TrainConfig"]
