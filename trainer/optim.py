"""The SGD side of training (section 5 of the paper): the learning-rate schedule, the parameter
groups, and the multi-task loss."""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import Config

SCHEDULE_PRESETS = {"scratch": ([50_000, 70_000], 80_000), "finetune": ([14_000], 20_000)}



def lr_schedule(cfg: Config) -> tuple[list[int], int]:
    """(iterations at which the LR is divided by 10, total iterations): a preset's scaled by
    ``optim.scale``, a custom schedule's as given (``optim.iterations`` says how many it wants)."""
    o = cfg.optim
    if o.schedule == "custom":
        milestones, total, scale = o.milestones, o.iterations, 1.0
    else:
        (milestones, total), scale = SCHEDULE_PRESETS[o.schedule], o.scale
    total = max(1, round(total * scale))
    milestones = sorted({min(total, max(1, round(m * scale))) for m in milestones})
    return [m for m in milestones if m < total], total


def lr_at(step: int, base: float, milestones: list[int]) -> float:
    return base * 0.1 ** sum(step >= m for m in milestones)


def task_loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor, tasks: torch.Tensor,
              names: list[str]) -> torch.Tensor:
    """Sum over datasets of the mean cross-entropy of that dataset's samples under its own head.

    A head without samples in the batch adds 0·(its outputs) so every parameter takes part in the
    graph (DDP needs that)."""
    total = outputs[names[0]].new_zeros((), dtype=torch.float32)
    for d, name in enumerate(names):
        mask = tasks == d
        if bool(mask.any()):
            total = total + nn.functional.cross_entropy(outputs[name][mask].float(), labels[mask])
        else:
            total = total + 0.0 * outputs[name].float().sum()
    return total


def parameter_groups(model: nn.Module, pretrained: set[str], multiplier: float) -> list[dict]:
    """SGD parameter groups: the layers the weights file gave at ``multiplier`` × the LR, the new ones at
    the LR (fine-tuning as TSN: pre-trained layers move slower than the new classifier)."""
    groups = [{"params": [], "lr_mult": multiplier, "name": "pretrained"},
              {"params": [], "lr_mult": 1.0, "name": "new"}]
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[0 if name in pretrained else 1]["params"].append(p)
    return [g for g in groups if g["params"]]
