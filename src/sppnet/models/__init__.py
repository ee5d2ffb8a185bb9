"""Models: the registry, the study's CNN family, and SPP heads on torchvision and timm networks.

* :mod:`.registry`: ``build_model``, ``list_models``, ``register_model``, :class:`ModelSpec`;
* :mod:`.flower`: the study's :class:`FlowerCNN` with the ``spp``, ``flatten`` and ``gap`` heads;
* :mod:`.backbones`: ``torchvision:NAME``, ``timm:NAME`` (extra ``sppnet[backbones]``) and
  :func:`backbone_spp` over a feature network of your own;
* :mod:`.weights`: pretrained weights from a local file into a model's features.
"""

from .. import kernels
from .._deprecated import moved
from .backbones import BackboneSPP, backbone_spp
from .flower import FlattenHead, FlowerCNN, GlobalAvgPool
from torch import nn

from . import registry
from .registry import (ModelSpec, builder_parameters, check_weights, count_parameters, list_families, list_models,
                       register_family, register_model)
from .weights import PretrainedReport, load_pretrained, read_state_dict

__all__ = [
    "FlowerCNN", "BackboneSPP", "backbone_spp", "ModelSpec", "build_model", "list_models", "list_families",
    "register_model", "register_family", "builder_parameters", "count_parameters", "check_weights",
    "load_pretrained", "read_state_dict", "PretrainedReport", "GlobalAvgPool", "FlattenHead",
]


def build_model(name: str | nn.Module, **kwargs) -> nn.Module:
    """Builds a registered model by name (``"spp"``, ``"torchvision:resnet18"``, ...: see
    :func:`sppnet.models.registry.build_model`), or, given an ``nn.Module`` that maps images to a
    feature map, an SPP model over it (:func:`backbone_spp`: its stride and channels probed).

    Raises:
        ConfigError: an unknown name (with the closest one), an invalid argument, or a module
            that does not give a feature map.
    """
    if isinstance(name, nn.Module):
        return backbone_spp(name, **kwargs)
    return registry.build_model(name, **kwargs)


def __getattr__(name: str):
    # The CPU fast paths moved to sppnet.kernels (sppnet._deprecated lists them).
    return moved(__name__, name, {"sppnet.kernels": kernels})
