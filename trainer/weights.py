"""Starting weights from a local file: the paper's Caffe CNN-M-2048, torchvision or timm ImageNet weights,
or a ``trainer fit`` checkpoint; adapted to the net, with one report of what was loaded.

* A ``.caffemodel`` is read by :mod:`trainer.caffe` and mapped by layer name (conv1…conv5, fc6, fc7;
  the classifier is new); a spatial net's conv1 is rewritten for our RGB normalisation.
* Other files are state dicts (``.pth``/``.pt``, ``.safetensors``) or our checkpoints. Two CNN-M-2048
  state dicts are matched layer by layer (conv1…conv5, fc6, fc7) rather than by module index, so a
  spatial checkpoint (two LRN layers) starts a temporal net (one).
* Cross-modality initialisation (Wang et al., TSN): where the file's first conv takes 3 (RGB)
  channels and the net's takes 2L flow channels, its weights are averaged over RGB and replicated
  over the 2L channels.

A file that fits the net poorly (any tensor but the classifier new, or of another shape) is an error
naming the first such tensors, unless ``partial`` is asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer.caffe import CAFFE_BGR_MEAN, CaffeError, read_caffemodel, read_mean_file, rgb_conv1
from trainer.checkpoint import torch_load_problem
from trainer.models import CNNM2048, WeightsError

CNNM_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


@dataclass
class LoadReport:
    """What a weights file gave the net, by tensor name of the net."""

    path: str
    loaded: list[str] = field(default_factory=list)  # copied as they are
    adapted: dict[str, str] = field(default_factory=dict)  # name → how
    new: list[str] = field(default_factory=list)  # the net's tensors the file does not give
    unused: list[str] = field(default_factory=list)  # the file's tensors the net has no place for
    mismatched: list[str] = field(default_factory=list)  # same name, another shape

    def summary(self) -> str:
        def few(names: list[str]) -> str:
            return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") if names else "-"

        adapted = "; ".join(f"{k}: {v}" for k, v in self.adapted.items()) or "-"
        return (f"weights {self.path}: {len(self.loaded)} tensors loaded, {len(self.adapted)} adapted ({adapted}), "
                f"{len(self.new)} new ({few(self.new)}), {len(self.unused)} unused ({few(self.unused)})"
                + (f", {len(self.mismatched)} of another shape ({few(self.mismatched)})" if self.mismatched else ""))


def cnnm_layer_names(model: CNNM2048) -> dict[str, str]:
    """{"conv1": "features.0", ..., "fc7": "trunk.4"}: the module of each CNN-M-2048 layer."""
    convs = [name for name, m in model.features.named_children() if isinstance(m, nn.Conv2d)]
    linears = [name for name, m in model.trunk.named_children() if isinstance(m, nn.Linear)]
    return dict(zip(CNNM_LAYERS, [f"features.{n}" for n in convs] + [f"trunk.{n}" for n in linears], strict=True))


def _cnnm_state_layers(state: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]] | None:
    """A CNN-M-2048 state dict of ours as {layer: [weight, bias]} (None if it is not one)."""
    if "features.0.weight" not in state or not any(k.startswith("trunk.") for k in state):
        return None
    convs = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.") and k.endswith(".weight")})
    linears = sorted({int(k.split(".")[1]) for k in state if k.startswith("trunk.") and k.endswith(".weight")})
    modules = [f"features.{i}" for i in convs] + [f"trunk.{i}" for i in linears]
    if len(modules) != len(CNNM_LAYERS):
        return None
    return {layer: [state[f"{m}.weight"], state[f"{m}.bias"]] for layer, m in zip(CNNM_LAYERS, modules, strict=True)}


def read_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file by name: a state dict (.pth/.pt/.safetensors) or a trainer checkpoint."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError(f"{path}: reading .safetensors needs the safetensors package "
                               "(pip install safetensors; timm brings it)") from None
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
            raise WeightsError(f"{path}: not a safetensors file ({type(exc).__name__}: {exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
        raise WeightsError(f"{path}: not a PyTorch weights file ({torch_load_problem(exc)})") from None
    for key in ("model", "state_dict"):  # trainer checkpoints; many training scripts
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel / DDP saves


def cross_modality(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """An RGB first-conv weight (out, 3, h, w) for ``channels`` inputs: its mean over RGB, replicated."""
    return weight.mean(dim=1, keepdim=True).repeat(1, channels, 1, 1)


@dataclass(frozen=True)
class RGBInput:
    """How the net's RGB input is normalised ([0, 1] pixels), for converting Caffe's conv1."""

    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    caffe_mean: tuple[float, ...] | str = CAFFE_BGR_MEAN  # B, G, R in 0..255, or a .binaryproto file


def _from_caffe(model: CNNM2048, path: Path, rgb: RGBInput) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The Caffe file's layers as the net's state-dict entries, and how conv1 was adapted."""
    try:
        layers = read_caffemodel(path)
        caffe_mean = read_mean_file(rgb.caffe_mean) if isinstance(rgb.caffe_mean, str) else rgb.caffe_mean
    except CaffeError as exc:
        raise WeightsError(str(exc)) from None
    names = cnnm_layer_names(model)
    state, adapted = {}, {}
    for layer, blobs in layers.items():
        target = names.get(layer)
        if target is None:
            state[f"caffe:{layer}.weight"] = torch.from_numpy(np.ascontiguousarray(blobs[0]))
            continue
        weight, bias = blobs[0], blobs[1] if len(blobs) > 1 else np.zeros(blobs[0].shape[0], np.float32)
        own = model.state_dict()[f"{target}.weight"]
        if weight.size == own.numel():
            weight = weight.reshape(tuple(own.shape))  # old 4-D blobs of fully connected layers
        if layer == "conv1" and weight.ndim == 4 and weight.shape[1] == 3:
            converted, converted_bias = rgb_conv1(weight, bias, rgb.mean, rgb.std, caffe_mean)
            if model.in_channels == 3:
                weight, bias = converted, converted_bias
                adapted[f"{target}.weight"] = "Caffe BGR 0..255 minus mean → our normalised RGB"
            else:  # flow is zero-centred: the scaled weights (averaged below), Caffe's own bias
                weight = converted
                adapted[f"{target}.weight"] = "Caffe conv1 scaled for inputs of unit spread"
        state[f"{target}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"{target}.bias"] = torch.from_numpy(np.ascontiguousarray(bias).reshape(-1))
    return state, adapted


def _match_cnnm(model: CNNM2048, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CNN-M-2048 state dict renamed layer by layer onto ``model`` (spatial ↔ temporal module indices)."""
    layers = _cnnm_state_layers(state)
    if layers is None:
        return state
    names = cnnm_layer_names(model)
    out = {k: v for k, v in state.items() if not k.startswith(("features.", "trunk."))}
    for layer, (weight, bias) in layers.items():
        out[f"{names[layer]}.weight"], out[f"{names[layer]}.bias"] = weight, bias
    return out


def _first_conv(model: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))


def load_weights(model: nn.Module, path: str | os.PathLike, rgb: RGBInput = RGBInput(),
                 partial: bool = False) -> LoadReport:
    """Load a weights file into ``model`` (see the module docstring); WeightsError on a poor fit."""
    path = Path(path)
    report = LoadReport(str(path))
    if path.suffix == ".caffemodel":
        if not isinstance(model, CNNM2048):
            raise WeightsError(f"{path}: a Caffe model loads into model.arch cnn_m_2048 only")
        state, report.adapted = _from_caffe(model, path, rgb)
    else:
        state = read_state(path)
        if isinstance(model, CNNM2048):
            state = _match_cnnm(model, state)
        elif hasattr(model, "backbone") and not any(k.startswith("backbone.") for k in state):
            state = {f"backbone.{k}": v for k, v in state.items()}  # torchvision's / timm's own names
    own = model.state_dict()
    first = f"{_first_conv(model)}.weight"
    usable = {}
    for key, value in state.items():
        if key not in own:
            report.unused.append(key)
        elif own[key].shape == value.shape:
            usable[key] = value
        elif key == first and value.ndim == 4 and value.shape[1] == 3 and own[key].shape[1] != 3 \
                and value.shape[0] == own[key].shape[0] and value.shape[2:] == own[key].shape[2:]:
            usable[key] = cross_modality(value, own[key].shape[1])
            how = f"cross-modality: mean over RGB replicated over {own[key].shape[1]} channels"
            report.adapted[key] = f"{report.adapted[key]}, then {how}" if key in report.adapted else how
        else:
            report.mismatched.append(f"{key} {tuple(value.shape)} (net: {tuple(own[key].shape)})")
    report.loaded = sorted(k for k in usable if k not in report.adapted)
    report.new = sorted(k for k in own if k not in usable)
    report.unused.sort()
    if not usable:
        first = report.mismatched[:3] or [f"{k} (not in the net)" for k in list(state)[:3]]
        raise WeightsError(f"{path}: no tensor fits the net (first: {', '.join(first)}); weights of another "
                           "model.arch or model.width?")
    poor = [m for m in report.mismatched] + [k for k in report.new if not k.startswith("heads.")
                                             and not k.endswith("num_batches_tracked")]
    if poor and not partial:
        raise WeightsError(f"{path} fits the net poorly: {len(poor)} tensors beyond the classifier are new or of "
                           f"another shape (first: {', '.join(poor[:3])}); weights of another model.arch or "
                           "width? model.pretrained_partial: true loads what fits")
    with torch.no_grad():
        for key, value in usable.items():
            own[key].copy_(value.to(own[key].dtype))
    return report
