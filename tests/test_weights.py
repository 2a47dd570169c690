"""Starting weights: Caffe's CNN-M-2048 file format and conv1 conversion, torchvision backbones,
cross-modality initialisation, the load report and its errors."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
import yaml
from conftest import write_config

from trainer.caffe import CAFFE_BGR_MEAN, message_class, read_caffemodel, write_caffemodel
from trainer.config import ConfigError, load_config
from trainer.fit import fit
from trainer.models import WeightsError, build_model
from trainer.weights import RGBInput, cnnm_layer_names, load_weights

REPO = Path(__file__).resolve().parents[1]
RGB = RGBInput((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def caffe_blobs(model: torch.nn.Module, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random blobs of CNN-M-2048's Caffe layers for ``model``'s shapes, fc8 an ImageNet classifier."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    blobs = {}
    for layer, module in cnnm_layer_names(model).items():
        weight = state[f"{module}.weight"]
        shape = tuple(weight.shape)
        if layer == "conv1":
            shape = (shape[0], 3, *shape[2:])
        blobs[layer] = [rng.normal(0, 0.01, shape).astype(np.float32),
                        rng.normal(0, 0.1, shape[0]).astype(np.float32)]
    blobs["fc8"] = [rng.normal(0, 0.01, (1000, blobs["fc7"][0].shape[0])).astype(np.float32),
                    np.zeros(1000, np.float32)]
    return blobs


def test_schema_reads_caffes_wire_format() -> None:
    """Bytes encoded by hand with caffe.proto's field numbers: NetParameter.layer (100) holding a
    LayerParameter (name 1, blobs 7) whose BlobProto has shape (7 → dim 1) and packed data (5)."""
    def field(number: int, wire: int, payload: bytes) -> bytes:
        return _varint(number << 3 | wire) + (_varint(len(payload)) + payload if wire == 2 else payload)

    floats = struct.pack("<3f", 1.5, -2.0, 0.25)
    blob = field(7, 2, field(1, 2, _varint(3))) + field(5, 2, floats)
    layer = field(1, 2, b"conv1") + field(2, 2, b"Convolution") + field(7, 2, blob)
    net = message_class("NetParameter")()
    net.ParseFromString(field(100, 2, layer))
    assert net.layer[0].name == "conv1" and list(net.layer[0].blobs[0].data) == [1.5, -2.0, 0.25]
    v1 = field(4, 2, b"fc6") + field(5, 0, _varint(14)) + field(6, 2, field(4, 0, _varint(3)) + field(5, 2, floats))
    net.ParseFromString(field(2, 2, v1))
    assert net.layers[0].name == "fc6" and net.layers[0].blobs[0].width == 3


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


@pytest.mark.parametrize("layout", ["layer", "layers", "v0"])
def test_caffe_cnn_m_2048_gives_caffes_conv1_activations(layout: str, tmp_path: Path) -> None:
    model = build_model("spatial", 1, {"ucf101": 5}, 0.25, 0.5, 112)
    blobs = caffe_blobs(model)
    path = tmp_path / "VGG_CNN_M_2048.caffemodel"
    write_caffemodel(path, blobs, layout)
    assert set(read_caffemodel(path)) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"}
    report = load_weights(model, path, RGB)
    assert report.new == ["heads.ucf101.bias", "heads.ucf101.weight"] and "caffe:fc8.weight" in report.unused
    assert "features.0.weight" in report.adapted

    image = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3)).astype(np.float32)  # RGB, 0..255
    ours = (image / 255.0 - np.array(RGB.mean)) / np.array(RGB.std)
    with torch.no_grad():
        ours_out = model.features[0](torch.from_numpy(ours).permute(0, 3, 1, 2).float())
    caffe_in = image[..., ::-1] - np.array(CAFFE_BGR_MEAN)  # BGR, 0..255, mean-subtracted
    caffe_out = F.conv2d(torch.from_numpy(caffe_in.copy()).permute(0, 3, 1, 2).float(),
                         torch.from_numpy(blobs["conv1"][0]), torch.from_numpy(blobs["conv1"][1]), stride=2)
    np.testing.assert_allclose(ours_out.numpy(), caffe_out.numpy(), rtol=1e-4, atol=1e-3)
    assert torch.equal(model.trunk[1].weight, torch.from_numpy(blobs["fc6"][0]))
    assert torch.equal(model.trunk[4].weight, torch.from_numpy(blobs["fc7"][0]))
    assert torch.equal(model.trunk[4].bias, torch.from_numpy(blobs["fc7"][1]))

    # the temporal net (no second LRN: other module indices) from the same file, cross-modality conv1
    temporal = build_model("temporal", 10, {"ucf101": 5}, 0.25, 0.5, 112)
    report = load_weights(temporal, path, RGB)
    w = temporal.features[0].weight
    assert w.shape[1] == 20 and torch.allclose(w[:, 0], w[:, 19]) and "cross-modality" in report.adapted[
        "features.0.weight"]
    scaled = blobs["conv1"][0][:, ::-1] * (255 * np.array(RGB.std))[None, :, None, None]
    np.testing.assert_allclose(w[:, 0].detach().numpy(), scaled.mean(axis=1), rtol=1e-5, atol=1e-6)
    assert torch.equal(temporal.features[7].weight, torch.from_numpy(blobs["conv3"][0]))


def test_torchvision_resnet18_temporal_and_spatial(tiny: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    mean_rgb = source.conv1.weight.detach().mean(dim=1, keepdim=True)

    config = write_config(tiny, tmp_path, stream="temporal", iterations=2,
                          data={"flow_stack": 10, "crop": 64}, optim={"batch_size": 4, "pretrained_lr": 0.1},
                          model={"arch": "resnet18", "width": 1.0, "partial_bn": True,
                                 "pretrained": str(tmp_path / "resnet18-f37072fd.pth")})
    cfg = load_config(config)
    model = build_model("temporal", 10, {"a": 4}, 1.0, 0.5, 64, "resnet18", True)
    report = load_weights(model, tmp_path / "resnet18-f37072fd.pth")
    assert torch.equal(model.backbone.conv1.weight, mean_rgb.repeat(1, 20, 1, 1))
    assert report.unused == ["backbone.fc.bias", "backbone.fc.weight"]
    assert report.new == ["heads.a.bias", "heads.a.weight"]
    model.train()
    assert model.backbone.bn1.training and not model.backbone.layer1[0].bn1.training  # partial BN
    summary = fit(cfg)
    assert summary["iterations"] == 2

    spatial = build_model("spatial", 1, {"a": 4}, 1.0, 0.5, 64, "resnet18")
    report = load_weights(spatial, tmp_path / "resnet18-f37072fd.pth")
    assert not report.adapted and torch.equal(spatial.backbone.conv1.weight, source.conv1.weight)
    assert torch.equal(spatial.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)

    # weights of another arch: one line naming tensors
    with pytest.raises(WeightsError, match=r"no tensor fits the net \(first: conv1.weight \(not in the net\)"):
        load_weights(build_model("spatial", 1, {"a": 4}, 0.25, 0.5, 64), tmp_path / "resnet18-f37072fd.pth")
    with pytest.raises(WeightsError, match=r"fits the net poorly: .*backbone.layer"):
        load_weights(build_model("spatial", 1, {"a": 4}, 1.0, 0.5, 64, "resnet34"), tmp_path / "resnet18-f37072fd.pth")


def test_arch_errors_and_the_cli(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, stream="temporal", iterations=2, optim={"batch_size": 4})
    with pytest.raises(ConfigError, match="model.arch must be cnn_m_2048 .* torchvision.models.list_models"):
        load_config(config, ["model.arch=resnet19"])
    result = subprocess.run([sys.executable, "-m", "trainer", "fit", config, "--set", "model.arch=resnet18"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "temporal resnet18 (8 input channels" in result.stderr
    assert "model.width 0.125 scales cnn_m_2048 only" in result.stderr
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["model"]["arch"] == "resnet18"
    result = subprocess.run([sys.executable, "-m", "trainer", "fit", config, "--set", "model.arch=resnet19"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
