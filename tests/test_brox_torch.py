"""The batched PyTorch Brox: accuracy against known flow and against the CPU brox, batching, OOM retry."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import write_video

from flowprep.algorithms.brox_torch import brox_flow
from flowprep.algorithms.method import FlowMethod
from flowprep.algorithms.middlebury import end_point_error, read_flo
from flowprep.algorithms.pairs import SYNTHETIC_PAIRS, interior
from flowprep.algorithms.registry import create_flow
from flowprep.extract import Compute, VideoSource, extract_video
from flowprep.storage.settings import ExtractSettings
from flowprep.storage.shard import record_key


@pytest.mark.parametrize("pair", sorted(SYNTHETIC_PAIRS))
def test_synthetic_accuracy_matches_cpu_brox(pair: str) -> None:
    first, second, truth = SYNTHETIC_PAIRS[pair]()
    torch_flow = create_flow("brox", device="torch-cpu")(first, second)
    cpu_flow = create_flow("brox", device="cpu")(first, second)
    torch_epe = end_point_error(interior(torch_flow), interior(truth))
    cpu_epe = end_point_error(interior(cpu_flow), interior(truth))
    assert torch_epe <= 1.1 * cpu_epe, f"{pair}: torch {torch_epe:.3f} px vs CPU brox {cpu_epe:.3f} px"
    assert torch_epe < 0.1


def test_rubberwhale_accuracy_matches_cpu_brox(shared_data: Path) -> None:
    folder = shared_data / "flow-gt" / "RubberWhale"
    first = cv2.imread(str(folder / "frame10.png"), cv2.IMREAD_GRAYSCALE)
    second = cv2.imread(str(folder / "frame11.png"), cv2.IMREAD_GRAYSCALE)
    truth = read_flo(str(folder / "flow10.flo"))
    torch_epe = end_point_error(create_flow("brox", device="torch-cpu")(first, second), truth)
    cpu_epe = end_point_error(create_flow("brox", device="cpu")(first, second), truth)
    assert torch_epe <= 1.1 * cpu_epe, f"torch {torch_epe:.3f} px vs CPU brox {cpu_epe:.3f} px"


def test_a_batch_gives_the_flows_of_its_pairs() -> None:
    pairs = [SYNTHETIC_PAIRS[name](120, 160) for name in sorted(SYNTHETIC_PAIRS)]
    firsts = torch.from_numpy(np.stack([p[0] for p in pairs]))
    seconds = torch.from_numpy(np.stack([p[1] for p in pairs]))
    batched = brox_flow(firsts, seconds)
    assert batched.shape == (3, 120, 160, 2) and batched.dtype == torch.float32
    for i in range(3):
        alone = brox_flow(firsts[i:i + 1], seconds[i:i + 1])[0]
        assert torch.allclose(batched[i], alone, atol=1e-3)


def test_out_of_memory_halves_the_batch_and_retries() -> None:
    calls = []

    def compute_batch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        calls.append(len(a))
        if len(a) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return np.stack([np.full(x.shape + (2,), x[0, 0], np.float32) for x in a])

    method = FlowMethod("brox", "test", {}, lambda a, b: None, compute_batch=compute_batch, max_batch=16)
    frames = [np.full((4, 4), i, np.uint8) for i in range(10)]
    flows = method.many(frames, frames)
    assert [int(f[0, 0, 0]) for f in flows] == list(range(10))
    assert calls[:3] == [10, 5, 2] and method.max_batch == 2


def test_extraction_with_the_torch_brox(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", frames=6, size=(96, 72))
    settings = ExtractSettings(short_side=0, bidirectional=True)
    got = extract_video(VideoSource("clip", str(video)), settings, compute=Compute("torch-cpu", max_batch=4))
    ref = extract_video(VideoSource("clip", str(video)), settings, compute=Compute("cpu"))
    assert got.meta["flow"]["implementation"] == "torch-brox" and got.meta["flow"]["params"]["device"] == "cpu"
    assert ref.meta["flow"]["implementation"] == "cpu-pyramid-variational-refinement"
    keys = {k for k, _ in got.records}
    assert keys == {k for k, _ in ref.records}
    assert record_key("clip", "back", 4) in keys and record_key("clip", "flow", 5) not in keys
