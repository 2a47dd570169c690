"""CNN-M-2048 (Chatfield et al. 2014), the paper's spatial and temporal ConvNet (Figure 1).

conv1 7×7×96 stride 2, LRN, max-pool 3×3/2; conv2 5×5×256 stride 2 pad 1, LRN (spatial net only),
max-pool 3×3/2; conv3-5 3×3×512 stride 1 pad 1; max-pool 3×3/2; full6 4096 + dropout; full7 2048 +
dropout; one linear classifier per dataset (multi-task learning, section 4). ReLU after every
hidden layer. LRN as the VGG CNN-M Caffe model: size 5, k 2, beta 0.75, alpha 5e-4 (divided by the
size, as Caffe and ``torch.nn.LocalResponseNorm`` do). Pooling rounds up (Caffe), so full6 sees
512×6×6 at 224×224. ``width`` scales every layer's channels, for small CPU runs.
"""

from __future__ import annotations

import os

import torch
from torch import nn


def _channels(n: int, width: float) -> int:
    return max(8, int(round(n * width)))


class CNNM2048(nn.Module):
    def __init__(self, in_channels: int, heads: dict[str, int], width: float = 1.0, dropout: float = 0.5,
                 input_size: int = 224, second_norm: bool = True):
        super().__init__()
        c1, c2, c3 = _channels(96, width), _channels(256, width), _channels(512, width)
        f6, f7 = _channels(4096, width), _channels(2048, width)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, c1, 7, stride=2), nn.ReLU(inplace=True),
            nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(c1, c2, 5, stride=2, padding=1), nn.ReLU(inplace=True),
        ]
        if second_norm:
            layers.append(nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0))
        layers += [
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c3, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        ]
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            side = self.features(torch.zeros(1, in_channels, input_size, input_size)).shape[-1]
        self.feature_shape = (c3, side, side)
        self.trunk = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c3 * side * side, f6), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(f6, f7), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(f7, n) for name, n in heads.items()})
        self.in_channels = in_channels
        # He initialisation keeps the signal alive through this BatchNorm-free net (the Gaussian
        # std 0.01 of the original Caffe models needs tens of thousands of iterations to get going)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for head in self.heads.values():
            nn.init.normal_(head.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class scores (logits) of every head for every sample."""
        shared = self.trunk(self.features(x))
        return {name: head(shared) for name, head in self.heads.items()}

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())


def build_model(stream: str, flow_stack: int, heads: dict[str, int], width: float, dropout: float,
                input_size: int) -> CNNM2048:
    """The spatial net (3 RGB channels) or the temporal net (2L flow channels, no second LRN)."""
    if stream == "spatial":
        return CNNM2048(3, heads, width, dropout, input_size, second_norm=True)
    return CNNM2048(2 * flow_stack, heads, width, dropout, input_size, second_norm=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class WeightsError(Exception):
    """A weights file that cannot be loaded into the model."""


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> dict[str, list[str]]:
    """Load weights from a local file (a state dict, or a ``trainer fit`` checkpoint) by name.

    Tensors whose shape differs from the model's (e.g. a classifier for another number of classes)
    are skipped. Returns {"loaded", "missing", "unexpected", "mismatched"} key lists for the report.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
        raise WeightsError(f"{path}: not a PyTorch weights file ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and own[k].shape != v.shape]
    model.load_state_dict(usable, strict=False)
    if not usable:
        raise WeightsError(f"{path}: no tensor matches the model's names and shapes")
    return {
        "loaded": sorted(usable),
        "missing": sorted(k for k in own if k not in usable),
        "unexpected": sorted(k for k in state if k not in own),
        "mismatched": mismatched,
    }
