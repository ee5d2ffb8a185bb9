"""sppnet: classify images of any size with CNNs that end in spatial pyramid pooling."""

from ._version import __version__
from .errors import ConfigError, DataError, SppnetError
from .models import build_model, list_models
from .pooling import SpatialPyramidPooling, spatial_pyramid_pool
from .predict import Prediction, Predictor
from .train import TrainConfig, train

__all__ = [
    "__version__",
    "ConfigError",
    "DataError",
    "SppnetError",
    "Prediction",
    "Predictor",
    "SpatialPyramidPooling",
    "TrainConfig",
    "build_model",
    "list_models",
    "spatial_pyramid_pool",
    "train",
]
