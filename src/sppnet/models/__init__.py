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
from .registry import (ModelSpec, build_model, builder_parameters, check_weights, count_parameters, list_families,
                       list_models, register_family, register_model)
from .weights import PretrainedReport, load_pretrained, read_state_dict

__all__ = [
    "FlowerCNN", "BackboneSPP", "backbone_spp", "ModelSpec", "build_model", "list_models", "list_families",
    "register_model", "register_family", "builder_parameters", "count_parameters", "check_weights",
    "load_pretrained", "read_state_dict", "PretrainedReport", "GlobalAvgPool", "FlattenHead",
]


def __getattr__(name: str):
    # The CPU fast paths moved to sppnet.kernels (sppnet._deprecated lists them).
    return moved(__name__, name, {"sppnet.kernels": kernels})
