"""Any convolutional network with an SPP head: torchvision and timm families, or a module of your own.

``build_model("torchvision:resnet18")`` takes torchvision's network without its pooling and
classifier, ``build_model("timm:mobilenetv3_small_100")`` timm's ``forward_features``, and
:func:`backbone_spp` any ``nn.Module`` that maps images to a feature map. Each gets the same
head as the flower family (spatial pyramid pooling, dropout, a hidden dense layer, the
classifier), so training, evaluation, prediction, Grad-CAM, export and serving treat them alike.
The stride and channels of the map are probed with one forward pass, not assumed.

Input stays RGB 0..255 (the contract of every sppnet model): the model normalises it with the
ImageNet mean and standard deviation its family was trained with (``input_convention``).

Padded mixed-size batches: zero padding changes a generic network's output (a convolution near
an image's edge sees the padding, a batch norm or attention would too), so ``forward(x, sizes)``
runs each distinct valid size of a padded batch as its own sub-batch, on the images cropped to
their valid region, and pools each map over its own size: every image gets exactly the logits
it gets alone, at the price of one forward pass per distinct size in the batch (shape-grouped
``native`` batches hold few). torchvision and timm come with the extra ``sppnet[backbones]``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..pooling import SpatialPyramidPooling
from .flower import PooledClassifier, _check_dropout, _check_int
from .registry import register_family

__all__ = ["BackboneSPP", "backbone_spp", "torchvision_backbone", "timm_backbone", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The side of the square image the stride and channels are probed with.
PROBE_SIZE = 256

#: The smallest image side a backbone is tried with (sppnet's native policies never go below it).
MIN_SIDE = 8

#: A torchvision network's attributes that belong to its head, not its features.
_TORCHVISION_HEAD = ("avgpool", "fc", "dropout", "aux1", "aux2", "AuxLogits", "classifier")


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"--model {module}:NAME needs the {module} package: pip install 'sppnet[backbones]' "
                          "(torch, torchvision and timm of matching versions)") from None


class _ForwardFeatures(nn.Module):
    """A network whose ``forward_features`` gives its map (timm's models)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)


class BackboneSPP(PooledClassifier):
    """A feature network, spatial pyramid pooling, dropout and two dense layers.

    Args:
        backbone: maps (N, 3, H, W) normalised images to a feature map (N, C, h, w).
        num_classes: number of output logits. Default 5.
        levels: SPP levels. Default (1, 2, 4).
        pool: ``"max"`` (default) or ``"avg"``.
        dropout: dropout before the dense layers. Default 0.2.
        hidden: units of the hidden dense layer. Default 128.
        freeze_backbone: keep the backbone's weights and batch-norm statistics as they are: its
            parameters do not train and it runs in eval mode even while the model trains.
        mean, std: the input normalisation per channel, on the 0..1 scale. Default ImageNet's.
        config: the arguments the model was built with, kept for saving and rebuilding; its
            ``stride`` and ``channels`` (when present) must match the probed ones.

    Shape:
        x: (N, 3, H, W) float RGB 0..255 with H, W >= ``min_side`` (probed: 8 for networks whose
        strided convolutions pad, else ``stride``); sizes: (N, 2) optional;
        output: (N, num_classes) logits.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 5, levels: Sequence[int] = (1, 2, 4),
                 pool: str = "max", dropout: float = 0.2, hidden: int = 128, freeze_backbone: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 config: dict | None = None) -> None:
        super().__init__()
        num_classes = _check_int("num_classes", num_classes, 1)
        hidden = _check_int("hidden", hidden, 1)
        dropout = _check_dropout(dropout)
        if not isinstance(freeze_backbone, bool):
            raise ConfigError(f"freeze_backbone must be True or False, got {freeze_backbone!r}")
        if not isinstance(backbone, nn.Module):
            raise ConfigError(f"a backbone must be an nn.Module, got {type(backbone).__name__}")
        self.features = backbone
        self.freeze_backbone = freeze_backbone
        # Non-persistent: the weights files hold what trains, the convention is in config.json.
        self.register_buffer("mean", 255.0 * torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", 255.0 * torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.input_convention = {"kind": "normalize", "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        channels, self.stride = self._probe()
        self.config = dict(config or {})
        for key, probed in (("stride", self.stride), ("channels", channels)):
            recorded = self.config.get(key)
            if recorded is not None and recorded != probed:
                raise ConfigError(f"the backbone's {key} is {probed}, the model was recorded with {recorded} "
                                  "(another torchvision/timm version?)")
            self.config[key] = probed
        self.pool = SpatialPyramidPooling(levels, pool)
        self.num_features = self.pool.output_features(channels)
        self.classifier = self.make_classifier(self.num_features, hidden, num_classes, dropout)
        if freeze_backbone:
            self.features.requires_grad_(False)
            self.features.eval()

    @torch.no_grad()
    def _probe(self) -> tuple[int, int]:
        """The channels and total stride of the backbone's map, and (``min_side``) the smallest
        image side it takes, from forward passes in eval mode."""
        was_training = self.features.training
        self.features.eval()
        try:
            try:
                out = self.features(torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
            except Exception as err:  # noqa: BLE001 - any failure of the user's module is reported as such
                raise ConfigError(f"the backbone failed on a {PROBE_SIZE}x{PROBE_SIZE} image: {err}") from None
            if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[0] != 1:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ConfigError(f"the backbone must map images to a feature map (N, C, h, w), got {shape}")
            channels, height = int(out.shape[1]), int(out.shape[2])
            stride = max(1, round(PROBE_SIZE / max(height, 1)))
            # Networks whose strided convolutions pad take images smaller than their stride (a map
            # of 1 x 1 or more): elongated photos get short sides in the native policies.
            self.min_side = stride
            for side in sorted({MIN_SIDE, stride}):
                try:
                    if min(self.features(torch.zeros(1, 3, side, side)).shape[-2:]) >= 1:
                        self.min_side = side
                        break
                except RuntimeError:
                    continue
        finally:
            self.features.train(was_training)
        return channels, stride

    def train(self, mode: bool = True) -> "BackboneSPP":
        super().train(mode)
        if self.freeze_backbone:
            self.features.eval()  # its batch-norm statistics stay those it was given
        return self

    def _check_input(self, x: Tensor, sizes: Tensor | None) -> None:
        smallest = self.smallest_side(x, sizes)
        if smallest is not None and smallest < self.min_side:
            raise ConfigError(f"input of {x.shape[-2]}x{x.shape[-1]} (smallest side {smallest}) is smaller than the "
                              f"{self.min_side} px this network takes; use images of at least "
                              f"{self.min_side}x{self.min_side}")

    def forward_features(self, x: Tensor, sizes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Normalises and runs the backbone; a padded batch one valid size at a time.

        Returns:
            The feature map (N, C, h, w), zero beyond each image's own map, and each image's map
            size (None when ``sizes`` is None).
        """
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if sizes is None:
            return self.features(x), None
        if len(x) == 0:  # an empty batch: nothing to run the backbone on
            return x.new_zeros((0, self.num_features // sum(n * n for n in self.pool.levels), 1, 1)), sizes
        distinct, group = torch.unique(sizes, dim=0, return_inverse=True)
        if len(distinct) == 1 and tuple(distinct[0].tolist()) == tuple(x.shape[-2:]):
            out = self.features(x)
            return out, torch.tensor([out.shape[-2:]], device=x.device).expand(len(x), 2)
        parts, map_sizes = [], torch.zeros_like(sizes)
        for g, (height, width) in enumerate(distinct.tolist()):
            index = (group == g).nonzero().squeeze(1)
            part = self.features(x[index, :, :height, :width])  # (n, C, h, w): as the images alone
            parts.append((index, part))
            map_sizes[index] = torch.tensor(part.shape[-2:], device=sizes.device)
        first = parts[0][1]
        height, width = int(map_sizes[:, 0].max()), int(map_sizes[:, 1].max())
        out = first.new_zeros((len(x), first.shape[1], height, width))
        for index, part in parts:
            out[index, :, : part.shape[-2], : part.shape[-1]] = part
        return out, map_sizes


    def default_weights(self) -> Path:
        """The family's own pretrained weights in its local cache (``--pretrained default``).

        Raises:
            ConfigError: the model has no family, or its weights are not in the local cache.
        """
        finder = getattr(self, "_find_default_weights", None)
        if finder is None:
            raise ConfigError("--pretrained default needs a torchvision: or timm: model; give a weights file")
        return finder()


def backbone_spp(backbone: nn.Module, num_classes: int = 5, levels: Sequence[int] = (1, 2, 4), pool: str = "max",
                 dropout: float = 0.2, hidden: int = 128, freeze_backbone: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> BackboneSPP:
    """An SPP model over a feature network of your own (a module mapping images to a map).

    The map's channels and stride are probed with one forward pass. Such a model trains,
    predicts and exports from Python; a run folder can only rebuild registered models, so for the
    command line register a builder with :func:`sppnet.models.register_model`.
    """
    config = dict(name="custom", num_classes=num_classes, levels=list(levels), pool=pool, dropout=dropout,
                  hidden=hidden)
    return BackboneSPP(backbone, num_classes, levels, pool, dropout, hidden, freeze_backbone, mean, std, config)


def _head_config(family: str, network: str, num_classes, levels, pool, dropout, hidden, freeze_backbone,
                 stride, channels) -> dict:
    config = dict(name=f"{family}:{network}", num_classes=num_classes, levels=list(levels), pool=pool,
                  dropout=dropout, hidden=hidden)
    if freeze_backbone:
        config["freeze_backbone"] = True
    return {**config, "stride": stride, "channels": channels}


@register_family("torchvision", "torchvision's classification networks, their features with an SPP head "
                 "(extra sppnet[backbones])", ("resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0",
                                               "convnext_tiny", "regnet_y_400mf"))
def torchvision_backbone(network: str, num_classes: int = 5, levels: Sequence[int] = (1, 2, 4), pool: str = "max",
                         dropout: float = 0.2, hidden: int = 128, freeze_backbone: bool = False,
                         stride: int | None = None, channels: int | None = None) -> BackboneSPP:
    """torchvision's ``network`` (randomly initialised) without its pooling and classifier, then
    the SPP head. ``stride``/``channels``: as recorded in a run, checked against the probe."""
    _require("torchvision")
    import torchvision.models  # the registry of networks

    names = torchvision.models.list_models(module=torchvision.models)
    if network not in names:
        import difflib

        close = difflib.get_close_matches(network, names, n=1)
        hint = f"; did you mean 'torchvision:{close[0]}'?" if close else ""
        raise ConfigError(f"torchvision has no classification network {network!r}{hint} "
                          f"(e.g. {', '.join(names[:6])}, ...)")
    net = torchvision.models.get_model(network, weights=None)
    children = OrderedDict((n, m) for n, m in net.named_children() if n not in _TORCHVISION_HEAD)
    if hasattr(net, "features") and isinstance(net.features, nn.Module):
        features = net.features  # mobilenet, efficientnet, convnext, vgg, densenet, ...
    elif "fc" in dict(net.named_children()):
        features = nn.Sequential(children)  # resnet, resnext, regnet, shufflenet, ...: the stem and stages
    else:
        raise ConfigError(f"torchvision:{network}: no convolutional feature map to find (neither a 'features' "
                          "module nor stages before an 'fc'); use a convolutional network")
    config = _head_config("torchvision", network, num_classes, levels, pool, dropout, hidden, freeze_backbone,
                          stride, channels)
    model = BackboneSPP(features, num_classes, levels, pool, dropout, hidden, freeze_backbone, config=config)

    def find() -> Path:
        weights = torchvision.models.get_model_weights(network).DEFAULT
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not path.is_file():
            raise ConfigError(f"--pretrained default: torchvision's {network} weights are not in the local cache "
                              f"({path}); sppnet downloads nothing: put the file there or give --pretrained FILE")
        return path

    model._find_default_weights = find
    return model


@register_family("timm", "timm's networks, their forward_features with an SPP head (extra sppnet[backbones])",
                 ("resnet18", "mobilenetv3_small_100", "efficientnet_b0", "convnext_atto", "regnetx_002"))
def timm_backbone(network: str, num_classes: int = 5, levels: Sequence[int] = (1, 2, 4), pool: str = "max",
                  dropout: float = 0.2, hidden: int = 128, freeze_backbone: bool = False,
                  stride: int | None = None, channels: int | None = None) -> BackboneSPP:
    """timm's ``network`` (randomly initialised) without its head (``forward_features``), then the
    SPP head, normalised with the network's own mean and standard deviation."""
    timm = _require("timm")
    if not timm.is_model(network):
        import difflib

        close = difflib.get_close_matches(network, timm.list_models(), n=1)
        hint = f"; did you mean 'timm:{close[0]}'?" if close else ""
        raise ConfigError(f"timm has no network {network!r}{hint}")
    net = timm.create_model(network, pretrained=False, num_classes=0, global_pool="")
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    config = _head_config("timm", network, num_classes, levels, pool, dropout, hidden, freeze_backbone,
                          stride, channels)
    model = BackboneSPP(_ForwardFeatures(net), num_classes, levels, pool, dropout, hidden, freeze_backbone,
                        mean, std, config)

    def find() -> Path:
        candidates = []
        if cfg.get("hf_hub_id"):
            try:
                from huggingface_hub import try_to_load_from_cache
            except ImportError:
                pass
            else:
                repo = cfg["hf_hub_id"].split("@")[0]
                for filename in ("model.safetensors", "pytorch_model.bin"):
                    found = try_to_load_from_cache(repo, filename)
                    if isinstance(found, str):
                        return Path(found)
                    candidates.append(f"{repo}/{filename}")
        if cfg.get("url"):
            path = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg["url"]).name
            if path.is_file():
                return path
            candidates.append(str(path))
        where = ", ".join(candidates) or "no known file"
        raise ConfigError(f"--pretrained default: timm's {network} weights are not in the local cache ({where}); "
                          "sppnet downloads nothing: give --pretrained FILE")

    model._find_default_weights = find
    return model
