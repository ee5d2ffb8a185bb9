"""sppnet: classify images of any size with CNNs that end in spatial pyramid pooling."""

from ._version import __version__
from .config import PRESETS, TrainConfig
from .errors import ConfigError, DataError, ExportError, SppnetError
from .evaluate import evaluate_run
from .models import ModelSpec, build_model, list_models
from .pooling import SpatialPyramidPooling, spatial_pyramid_pool
from .predict import Prediction, Predictor
from .runs import RunConfig, RunFolder
from .train import train

__all__ = [
    "__version__",
    "ConfigError",
    "DataError",
    "ExportError",
    "SppnetError",
    "ModelSpec",
    "PRESETS",
    "Prediction",
    "Predictor",
    "RunConfig",
    "RunFolder",
    "SpatialPyramidPooling",
    "TrainConfig",
    "build_model",
    "evaluate_run",
    "list_models",
    "spatial_pyramid_pool",
    "train",
]
