"""The optimiser, its learning-rate schedule and the moving average of the weights."""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig
from ..errors import ConfigError

__all__ = ["learning_rate", "make_optimizer", "ema_update"]


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate at global step ``step`` (from 0) of ``total_steps``.

    Linear warm-up over ``warmup_epochs`` (as a share of the steps), then ``constant`` or
    ``cosine`` decay towards 0 at the last step. A function of the step alone, so a resumed run
    follows the same schedule.
    """
    warmup = min(total_steps, round(total_steps * config.warmup_epochs / config.epochs)) if config.epochs else 0
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "cosine":
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, the study's; AdamW when ``weight_decay`` > 0, with no decay on biases and norms.

    Frozen parameters are left out. With ``backbone_lr`` other than 1, the parameters of the
    model's ``features`` form their own groups whose ``lr_scale`` multiplies the learning rate
    (:func:`train_one_epoch` applies it at every step).
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("nothing to train: every parameter of the model is frozen")
    scale_of = (lambda name: config.backbone_lr if name.startswith("features.") else 1.0) \
        if config.backbone_lr != 1.0 else (lambda name: 1.0)
    groups: dict[tuple[float, float], list] = {}
    for name, p in trainable:
        decay = config.weight_decay if p.ndim > 1 else 0.0
        groups.setdefault((scale_of(name), decay), []).append(p)
    param_groups = [{"params": ps, "weight_decay": decay, "lr_scale": scale, "lr": config.lr * scale}
                    for (scale, decay), ps in groups.items()]
    if config.weight_decay == 0:
        return torch.optim.Adam(param_groups, lr=config.lr)
    return torch.optim.AdamW(param_groups, lr=config.lr)


def ema_update(decay: float):
    """The update of an exponential moving average of the weights, for
    ``torch.optim.swa_utils.AveragedModel(multi_avg_fn=...)``: after ``n`` updates the average
    moves towards the weights by ``1 - min(decay, (1 + n) / (10 + n))``, so early in training,
    when the weights change fast, the average follows them instead of keeping the random start."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        for avg, cur in zip(averaged, current):
            if avg.is_floating_point():
                avg.lerp_(cur, weight)
            else:  # counters such as batch norm's num_batches_tracked
                avg.copy_(cur)

    return update
