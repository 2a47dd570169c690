"""The flow registry: one spec per implementation, read by everything else (issue 20)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_video

from flowprep.algorithms.method import FlowError, FlowMethod
from flowprep.algorithms.registry import (
    IMPLEMENTATIONS,
    FlowImplementation,
    check_params,
    create_flow,
    register,
    resolve_implementation,
    unregister,
)
from flowprep.errors import SettingError
from flowprep.extract import run_extract
from flowprep.storage.settings import ExtractSettings
from flowprep.storage.store import FlowStore


def create_shift(params: dict, device: str = "cpu", max_batch: int = 1) -> FlowMethod:
    """A toy 'flow': every pixel moves by (dx, 0) pixels."""

    def compute(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        flow = np.zeros(a.shape + (2,), np.float32)
        flow[..., 0] = params["dx"]
        return flow

    return FlowMethod("shift", "toy-shift", params, compute)


@pytest.fixture
def toy() -> FlowImplementation:
    spec = register(FlowImplementation("toy-shift", "shift", ("cpu",), defaults={"dx": 1.5}, factory=create_shift,
                                       ranges={"dx": (-20, 20)}))
    yield spec
    unregister(spec.id)


def test_a_registered_implementation_extracts_with_nothing_else_touched(toy: FlowImplementation,
                                                                         tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", frames=6)
    out = tmp_path / "store"
    report = run_extract(video, out, ExtractSettings(algo="shift", short_side=0, flow_params={"dx": "-3"}))
    assert report.stored == 1 and not report.failures
    store = FlowStore(out)
    meta = store.video_meta("clip")
    assert (meta.flow.algo, meta.flow.implementation, meta.flow.params) == ("shift", "toy-shift", {"dx": -3.0})
    assert np.allclose(store.flow("clip", 2)[..., 0], -3.0, atol=0.2)
    with pytest.raises(SettingError, match="must be in -20..20"):
        check_params("shift", {"dx": 99})
    with pytest.raises(FlowError, match="shift runs on the CPU"):
        create_flow("shift", device="cuda")


def test_every_spec_is_complete_and_auto_picks_the_cpu_here() -> None:
    for spec in IMPLEMENTATIONS.values():
        assert spec.devices and set(spec.devices) <= {"cpu", "cuda", "torch-cpu"}, spec.id
        assert set(spec.ranges) <= set(spec.defaults), spec.id
        assert create_flow(spec.algo, device="cpu" if "cpu" in spec.devices else "torch-cpu")
    assert resolve_implementation("brox", "auto")[0].id == "cpu-pyramid-variational-refinement"
    assert resolve_implementation("brox", "torch-cpu") == (IMPLEMENTATIONS["torch-brox"], "cpu")

