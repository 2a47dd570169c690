"""CNN-M-2048 (Chatfield et al. 2014), the paper's spatial and temporal ConvNet (Figure 1).

conv1 7×7×96 stride 2, LRN, max-pool 3×3/2; conv2 5×5×256 stride 2 pad 1, LRN (spatial net only),
max-pool 3×3/2; conv3-5 3×3×512 stride 1 pad 1; max-pool 3×3/2; full6 4096 + dropout; full7 2048 +
dropout; one linear classifier per dataset (multi-task learning, section 4). ReLU after every
hidden layer. LRN as the VGG CNN-M Caffe model: size 5, k 2, beta 0.75, alpha 5e-4 (divided by the
size, as Caffe and ``torch.nn.LocalResponseNorm`` do). Pooling rounds up (Caffe), so full6 sees
512×6×6 at 224×224. ``width`` scales every layer's channels, for small CPU runs.
"""

from __future__ import annotations

import torch
from torch import nn

from flowprep.errors import UserError


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
        if input_size < MIN_INPUT:
            raise InputSizeError(f"data.crop {input_size} px is too small for CNN-M-2048: its convolutions and "
                                 f"poolings need at least {MIN_INPUT} px (the paper's is 224)")
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


TIMM_PREFIX = "timm/"


def torchvision_archs() -> list[str]:
    """Names of torchvision's ImageNet classification models (empty without torchvision)."""
    try:
        import torchvision.models
    except Exception:  # noqa: BLE001 - missing, or a torchvision that does not load with this torch
        return []
    return sorted(torchvision.models.list_models(module=torchvision.models))


def arch_problem(arch: str) -> str | None:
    """Why ``arch`` cannot be built here (None: it can), in one line saying how to name one."""
    if arch == "cnn_m_2048":
        return None
    if arch.startswith(TIMM_PREFIX):
        try:
            import timm
        except ImportError:
            return f"model.arch {arch} needs timm (pip install 'twostream[timm]')"
        if not timm.is_model(arch[len(TIMM_PREFIX):]):
            return f"model.arch {arch}: timm has no model {arch[len(TIMM_PREFIX):]!r} (timm.list_models())"
        return None
    names = torchvision_archs()
    if not names:
        return f"model.arch {arch} needs torchvision (pip install 'twostream[vision]'), or use cnn_m_2048"
    if arch not in names:
        return (f"model.arch must be cnn_m_2048 (the paper's net), a torchvision classification model (resnet18 ... "
                f"resnet152, vgg16, inception_v3, mobilenet_v3_large, efficientnet_b0, ...; {len(names)} in "
                f"torchvision.models.list_models()) or timm/<name>; got {arch!r}")
    return None


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


class BackboneNet(nn.Module):
    """A torchvision or timm ImageNet model as a stream: its classifier replaced by dropout and one linear
    head per dataset, its first conv taking ``in_channels`` (2L flow channels for a temporal net).
    ``partial_bn``: BatchNorm statistics of every layer but the first stay frozen while training (TSN)."""

    def __init__(self, arch: str, in_channels: int, heads: dict[str, int], dropout: float = 0.5,
                 partial_bn: bool = False):
        super().__init__()
        problem = arch_problem(arch)
        if problem:
            raise ValueError(problem)
        if arch.startswith(TIMM_PREFIX):
            import timm

            backbone = timm.create_model(arch[len(TIMM_PREFIX):], pretrained=False, num_classes=0)
            features = backbone.num_features
        else:
            import torchvision.models

            options = {"aux_logits": False, "init_weights": False} if arch in ("inception_v3", "googlenet") else {}
            backbone = torchvision.models.get_model(arch, weights=None, **options)
            name, last = [(n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Linear)][-1]
            _replace(backbone, name, nn.Identity())
            features = last.in_features
        conv_name, conv = next((n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d))
        if conv.in_channels != in_channels:
            _replace(backbone, conv_name, nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                                    conv.padding, conv.dilation, conv.groups, conv.bias is not None))
        self.arch, self.in_channels, self.partial_bn = arch, in_channels, partial_bn
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(features, n) for name, n in heads.items()})
        for head in self.heads.values():
            nn.init.normal_(head.weight, 0.0, 0.01)
            nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.dropout(torch.flatten(self.backbone(x), 1))
        return {name: head(shared) for name, head in self.heads.items()}

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def train(self, mode: bool = True) -> BackboneNet:
        super().train(mode)
        if mode and self.partial_bn:
            norms = [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            for m in norms[1:]:
                m.eval()
        return self


MIN_INPUT = 41  # pixels: the smallest square input CNN-M-2048's layers leave one pixel of


class InputSizeError(UserError):
    """A crop too small for the net; names data.crop."""


def build_model(stream: str, flow_stack: int, heads: dict[str, int], width: float, dropout: float,
                input_size: int, arch: str = "cnn_m_2048", partial_bn: bool = False) -> nn.Module:
    """The spatial net (3 RGB channels) or the temporal net (2L flow channels; CNN-M-2048 without its
    second LRN, as the paper). ``arch``: cnn_m_2048, a torchvision model name or timm/<name>."""
    channels = 3 if stream == "spatial" else 2 * flow_stack
    if arch == "cnn_m_2048":
        return CNNM2048(channels, heads, width, dropout, input_size, second_norm=stream == "spatial")
    return BackboneNet(arch, channels, heads, dropout, partial_bn)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class WeightsError(UserError):
    """A weights file that cannot be loaded into the model."""
