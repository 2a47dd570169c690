"""The fused Brox without a GPU: packing, the torch mirror against eager torch-brox (Middlebury EPE),
the Triton kernels against the mirror under the interpreter, sm_90/sm_80 builds without spills, and
which implementation ``--device cuda`` selects."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from flowprep.algorithms import registry
from flowprep.algorithms.brox_fused import brox_flow_fused, pack, unpack
from flowprep.algorithms.brox_torch import brox_flow
from flowprep.algorithms.middlebury import end_point_error, read_flo
from flowprep.algorithms.pairs import SYNTHETIC_PAIRS, interior
from flowprep.errors import SettingError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shape", [(2, 5, 7), (1, 6, 8), (3, 1, 1), (1, 4, 1), (1, 1, 5)])
def test_packing_by_colour_round_trips(shape: tuple[int, int, int]) -> None:
    full = torch.randn(*shape)
    packed = pack(full)
    n, h, w = shape
    assert packed.shape == (n, 2, h, (w + 1) // 2)
    assert torch.equal(unpack(packed, w), full)
    if h > 1 and w > 1:  # pixel (1, 0) is black (colour 1), the first of its row
        assert packed[0, 1, 1, 0] == full[0, 1, 0] and packed[0, 0, 0, 0] == full[0, 0, 0]


def test_mirror_gives_eager_flow_on_synthetic_pairs() -> None:
    pairs = [SYNTHETIC_PAIRS[name](96, 128) for name in sorted(SYNTHETIC_PAIRS)]
    firsts = torch.from_numpy(np.stack([p[0] for p in pairs]))
    seconds = torch.from_numpy(np.stack([p[1] for p in pairs]))
    eager, mirror = brox_flow(firsts, seconds), brox_flow_fused(firsts, seconds)
    for i, (_, _, truth) in enumerate(pairs):
        a = end_point_error(interior(eager[i].numpy()), interior(truth))
        b = end_point_error(interior(mirror[i].numpy()), interior(truth))
        assert abs(a - b) <= 0.01 * a + 1e-4, (i, a, b)
    assert float((eager - mirror).abs().max()) < 0.05  # the same solve, other rounding


def test_mirror_epe_equals_eager_on_middlebury(shared_data: Path) -> None:
    for name in ("RubberWhale", "Grove3", "Urban2"):
        folder = shared_data / "flow-gt" / name
        first, second = (torch.from_numpy(cv2.imread(str(folder / f), cv2.IMREAD_GRAYSCALE))[None]
                         for f in ("frame10.png", "frame11.png"))
        truth = read_flo(str(folder / "flow10.flo"))
        eager = end_point_error(brox_flow(first, second)[0].numpy(), truth)
        mirror = end_point_error(brox_flow_fused(first, second)[0].numpy(), truth)
        assert abs(mirror - eager) <= 0.01 * eager, f"{name}: mirror {mirror:.4f} px, eager {eager:.4f} px"


def test_each_kernel_equals_its_mirror_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    result = subprocess.run([sys.executable, str(REPO / "tests" / "triton_interpreted.py")], capture_output=True,
                            text=True, timeout=600, cwd=REPO, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    diffs = json.loads(result.stdout)
    assert diffs["derivatives"] < 1e-5 and diffs["sor"] < 1e-5, diffs
    assert diffs["smoothness"] < 1e-5 and diffs["coefficients"] < 1e-5, diffs
    assert diffs["solve"] < 1e-4, diffs  # two levels, 2 × 3 iterations, 2 pairs, through every kernel


@pytest.mark.parametrize("capability", [90, 80])
def test_each_kernel_builds_for_the_gpu_without_spills(capability: int) -> None:
    pytest.importorskip("triton")
    from flowprep.algorithms.brox_triton import kernel_resources

    resources = kernel_resources(capability)
    assert set(resources) == {"first_derivatives", "second_derivatives", "smoothness", "coefficients", "sor"}
    for name, (regs, spills) in resources.items():
        assert spills == 0, f"{name} spills {spills} bytes on sm_{capability}"
        assert 0 < regs <= 128, f"{name}: {regs} registers on sm_{capability}"


def _with_gpus(monkeypatch: pytest.MonkeyPatch, **gpus: int) -> None:
    """The registry as on a machine where the named implementations see that many GPUs."""
    for spec_id, count in gpus.items():
        spec = registry.IMPLEMENTATIONS[spec_id]
        monkeypatch.setitem(registry.IMPLEMENTATIONS, spec_id, dataclasses.replace(spec, gpus=lambda c=count: c))


def test_cuda_selects_the_fused_kernels_and_eager_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")  # the factory module is the kernels' (imported only where it runs)
    _with_gpus(monkeypatch, **{"triton-brox": 1, "torch-brox": 1, "opencv-cuda-brox": 0})
    spec, where = registry.resolve_implementation("brox", "cuda")
    assert (spec.id, where) == ("triton-brox", "cuda:0")
    assert registry.resolve_implementation("brox", "auto")[0].id == "triton-brox"
    fused = registry.create_flow("brox", device="cuda")  # built, not run: no GPU here
    assert fused.implementation == "triton-brox" and fused.params["kernel"] == "fused"
    assert registry.check_params("brox", {"kernel": "eager"}, "cuda") == {"kernel": "eager"}
    with pytest.raises(SettingError, match="kernel.*must be one of fused, eager"):
        registry.check_params("brox", {"kernel": "fast"}, "cuda")
    eager = registry.get_implementation("triton-brox").create({"kernel": "eager"}, "cpu", 4)
    assert eager.implementation == "torch-brox" and "kernel" not in eager.params  # the metadata says which ran
    first, second, _ = SYNTHETIC_PAIRS["translation"](48, 64)
    assert eager(first, second).shape == (48, 64, 2)
    # without triton (or its GPU) the eager PyTorch Brox runs on CUDA
    _with_gpus(monkeypatch, **{"triton-brox": 0})
    assert registry.resolve_implementation("brox", "cuda")[0].id == "torch-brox"
