"""The CUDA paths, where a GPU is there (marked ``cuda``: CI skips them; ``make gpu-check`` runs them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_config
from test_trainer_fit import trainer

from flowprep.algorithms.middlebury import end_point_error
from flowprep.algorithms.pairs import interior, translation
from flowprep.algorithms.registry import create_flow
from flowprep.storage.store import FlowStore
from trainer import checkpoint as ckpt
from trainer.inputs import InputSpec, to_device
from trainer.volumes import VideoEntry

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device torch can use")]


def test_torch_brox_on_the_gpu_matches_the_cpu() -> None:
    first, second, truth = translation(96, 128, dx=3.5, dy=-1.25)
    params = {"outer_iterations": 3, "inner_iterations": 10}
    gpu = create_flow("brox", params, device="cuda")
    assert gpu.implementation == "torch-brox" and gpu.params["device"].startswith("cuda")
    cpu = create_flow("brox", params, device="torch-cpu")
    a, b = gpu(first, second), cpu(first, second)
    assert end_point_error(interior(a), interior(b)) < 0.01
    assert end_point_error(interior(a), interior(truth)) < 0.2


@pytest.mark.parametrize("stream", ["spatial", "temporal"])
def test_inputs_decoded_on_the_gpu_equal_the_cpu_path(tiny: Path, stream: str) -> None:
    store = FlowStore(tiny / "a" / "flow")
    meta = store.video_meta(store.videos()[0])
    entry = VideoEntry.of(meta.video, meta, 0)
    cpu_spec = InputSpec(stream, 4, "optical_flow", False, True, 64, True, 0.0, (0.5,) * 3, (0.25,) * 3, 1.0, "cpu")
    gpu_spec = InputSpec(stream, 4, "optical_flow", False, True, 64, True, 0.0, (0.5,) * 3, (0.25,) * 3, 1.0, "device")
    from trainer.encoded import collate

    for seed in range(3):
        cpu = cpu_spec.training_input(store, entry, seed)
        gpu = to_device(collate([gpu_spec.training_input(store, entry, seed, packed=True)]), torch.device("cuda"))
        assert np.allclose(gpu[0].float().cpu().numpy(), cpu.numpy(), atol=2 / 255 / 0.25 + 1e-4), seed


def test_fit_and_test_on_the_gpu(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, iterations=4, run={"dir": str(tmp_path / "run"), "seed": 0,
                                                             "device": "cuda"})
    result = trainer("fit", config)
    assert result.returncode == 0 and "on cuda" in result.stderr, result.stderr
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert ckpt.load(checkpoint)["step"] == 4
    scored = trainer("test", checkpoint, "--frames", "2", "-o", tmp_path / "eval")
    assert scored.returncode == 0, scored.stderr
