"""sppnet: classify images of any size with CNNs that end in spatial pyramid pooling."""

from ._version import __version__
from .errors import ConfigError, DataError, SppnetError
from .pooling import SpatialPyramidPooling, spatial_pyramid_pool

__all__ = [
    "__version__",
    "ConfigError",
    "DataError",
    "SppnetError",
    "SpatialPyramidPooling",
    "spatial_pyramid_pool",
]
