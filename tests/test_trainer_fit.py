"""trainer fit on a real (tiny) store: checkpoints, resume after kill -9, NaN, DDP, multi-task, configs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_config

from trainer import checkpoint as ckpt
from trainer.config import ConfigError, load_config
from trainer.metrics import read_rows
from trainer.models import WeightsError, build_model, count_parameters
from trainer.optim import lr_at, lr_schedule
from trainer.weights import load_weights

REPO = Path(__file__).resolve().parents[1]


def trainer(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env={**os.environ, **(env or {})})


def test_cnn_m_2048_as_the_paper() -> None:
    spatial = build_model("spatial", 10, {"ucf101": 101}, 1.0, 0.5, 224)
    temporal = build_model("temporal", 10, {"ucf101": 101}, 1.0, 0.9, 224)
    assert spatial.feature_shape == (512, 6, 6) and temporal.feature_shape == (512, 6, 6)
    assert 90e6 < count_parameters(spatial) < 92e6
    convs = [m for m in spatial.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (96, (7, 7), (2, 2), (0, 0)), (256, (5, 5), (2, 2), (1, 1)), (512, (3, 3), (1, 1), (1, 1)),
        (512, (3, 3), (1, 1), (1, 1)), (512, (3, 3), (1, 1), (1, 1))]
    lrn = [m for m in spatial.features if isinstance(m, torch.nn.LocalResponseNorm)]
    assert len(lrn) == 2 and (lrn[0].size, lrn[0].alpha, lrn[0].beta, lrn[0].k) == (5, 5e-4, 0.75, 2.0)
    assert sum(isinstance(m, torch.nn.LocalResponseNorm) for m in temporal.features) == 1
    assert temporal.features[0].in_channels == 20
    linears = [m for m in temporal.trunk if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512 * 36, 4096), (4096, 2048)]
    assert [m.p for m in temporal.trunk if isinstance(m, torch.nn.Dropout)] == [0.9, 0.9]
    small = build_model("temporal", 10, {"a": 5, "b": 7}, 0.25, 0.5, 112)
    out = small(torch.zeros(2, 20, 112, 112))
    assert out["a"].shape == (2, 5) and out["b"].shape == (2, 7)


def test_pretrained_weights_report(tmp_path: Path) -> None:
    source = build_model("spatial", 1, {"imagenet": 10}, 0.25, 0.5, 112)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = build_model("spatial", 1, {"ucf101": 4}, 0.25, 0.5, 112)
    report = load_weights(target, tmp_path / "w.pt")
    assert report.new == ["heads.ucf101.bias", "heads.ucf101.weight"]
    assert report.unused == ["heads.imagenet.bias", "heads.imagenet.weight"]
    assert torch.equal(target.features[0].weight, source.features[0].weight)
    # a temporal net (one LRN: other module indices) from a spatial one, layer by layer
    other = build_model("temporal", 10, {"ucf101": 4}, 0.25, 0.5, 112)
    report = load_weights(other, tmp_path / "w.pt")
    assert "cross-modality" in report.adapted["features.0.weight"]
    assert torch.equal(other.features[7].weight, source.features[8].weight)  # conv3
    wider = build_model("spatial", 1, {"ucf101": 4}, 0.5, 0.5, 112)
    with pytest.raises(WeightsError, match=r"no tensor fits the net \(first: features.0.weight \(24, 3, 7, 7\)"):
        load_weights(wider, tmp_path / "w.pt")


def test_schedule_presets_scale() -> None:
    cfg = load_config(REPO / "configs" / "temporal.yaml")
    assert lr_schedule(cfg) == ([50_000, 70_000], 80_000)
    cfg.optim.scale = 0.005
    assert lr_schedule(cfg) == ([250, 350], 400)
    cfg.optim.schedule, cfg.optim.scale = "finetune", 1.0
    assert lr_schedule(cfg) == ([14_000], 20_000)
    assert [lr_at(s, 0.01, [250, 350]) for s in (0, 249, 250, 350)] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4])


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=0.1", "unknown key 'optim.lrr'"),
    ("optim.lr=fast", "optim.lr must be a float, got 'fast'"),
    ("data.stream=audio", "data.stream must be one of spatial, temporal"),
    ("model.pretrained=/nonexistent/w.pt", "model.pretrained: /nonexistent/w.pt not found"),
    ("model.train=last_layer", "last_layer needs model.pretrained"),
])
def test_config_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs" / "temporal.yaml", [override])


def test_paper_configs_load() -> None:
    for name in ("spatial", "temporal", "multitask", "synthetic-spatial", "synthetic-temporal"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 5e-4
    assert [d.name for d in load_config(REPO / "configs" / "multitask.yaml").data.datasets] == ["ucf101", "hmdb51"]


def test_config_typo_fails_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text((REPO / "configs" / "synthetic-temporal.yaml").read_text().replace("flow_stack:", "flow_stak:"))
    result = trainer("fit", path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: unknown key 'data.flow_stak' (known: bidirectional, crop, datasets, decode, flip, flow_scale, "
        "flow_stack, mean_subtraction, rgb_jitter, rgb_mean, rgb_std, split, stacking, stream, workers)"]


def test_fit_writes_run_folder_and_refuses_to_overwrite(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, stream="spatial")
    result = trainer("fit", config)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    assert {"checkpoint.pt", "metrics.csv", "curves.png", "config.yaml"} <= {p.name for p in run.iterdir()}
    state = ckpt.load(run / "checkpoint.pt")
    assert state["step"] == 12 and state["stream"] == "spatial" and state["classes"]["a"][0] == "MoveUp"
    assert state["flow"]["a"]["flow"]["algo"] == "dis"
    rows = read_rows(run / "metrics.csv")
    assert [int(r["iteration"]) for r in rows if r["kind"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert [float(r["lr"]) for r in rows if r["kind"] == "train"] == pytest.approx([0.01] * 3 + [0.001] * 3)
    assert any(r["kind"] == "val" and r["dataset"] == "a" for r in rows)
    again = trainer("fit", config)
    assert again.returncode == 2 and "add --resume" in again.stderr and "Traceback" not in again.stderr


def test_kill_minus_9_then_resume_ends_at_the_same_iteration(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, iterations=40, train={"log_every": 1, "val_every": 0,
                                                                "checkpoint_every": 3})
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "fit", str(config)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    path = tmp_path / "run" / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not path.exists():
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.load(path)["step"]
    assert 3 <= killed_at < 40, "the run should be killed part-way"
    stale = path.with_name(".checkpoint.pt.tmp999999")  # as a kill during a checkpoint write leaves it
    stale.write_bytes(b"half a checkpoint")
    resumed = trainer("fit", config, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {path} at iteration {killed_at}" in resumed.stderr
    state = ckpt.load(path)
    assert state["step"] == 40 and state["milestones"] == [20] and state["total"] == 40
    assert not stale.exists() and "removed" in resumed.stderr
    rows = [r for r in read_rows(tmp_path / "run" / "metrics.csv") if r["kind"] == "train"]
    assert len(rows) == len({r["iteration"] for r in rows}), "iterations redone after the resume are logged once"
    by_iteration = {int(r["iteration"]): float(r["lr"]) for r in rows}
    assert max(by_iteration) == 40 and set(range(killed_at + 1, 41)) <= set(by_iteration)
    assert all(lr == pytest.approx(0.01 if i <= 20 else 0.001) for i, lr in by_iteration.items())


def test_nan_loss_stops_with_a_clear_message(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, iterations=30, optim={"lr": 1e12})
    result = trainer("fit", config)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "loss became" in result.stderr and "Lower optim.lr" in result.stderr


def test_multitask_heads_each_learn_their_own_dataset(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, datasets=("a", "b"), iterations=6)
    result = trainer("fit", config)
    assert result.returncode == 0, result.stderr
    state = ckpt.load(tmp_path / "run" / "checkpoint.pt")
    assert {"heads.a.weight", "heads.b.weight"} <= set(state["model"])
    assert set(state["val"]) == {"a", "b"}


@pytest.mark.parametrize("stream", ["temporal", "spatial"])
def test_fit_and_test_with_device_decoding(tiny: Path, tmp_path: Path, stream: str) -> None:
    """data.decode: device on a CPU: workers hand over JPEG bytes, the training process decodes them
    (torchvision) for training, validation and the 25 x 10 test protocol."""
    config = write_config(tiny, tmp_path, stream=stream, iterations=4, data={"decode": "device", "workers": 1},
                          train={"log_every": 2, "val_every": 0, "checkpoint_every": 4})
    result = trainer("fit", config)
    assert result.returncode == 0, result.stderr
    assert ckpt.load(tmp_path / "run" / "checkpoint.pt")["config"]["data"]["decode"] == "device"
    result = trainer("test", tmp_path / "run" / "checkpoint.pt", "--frames", "2", "--workers", "1", "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "top-1" in result.stdout


def test_torchrun_two_cpu_processes(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, iterations=6)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "trainer", "fit", str(config)],
        capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr
    assert [p.name for p in (tmp_path / "run").glob("*.pt")] == ["checkpoint.pt"]
    assert ckpt.load(tmp_path / "run" / "checkpoint.pt")["step"] == 6
    assert result.stdout.count("done: 6 iterations") == 1


def test_a_crop_too_small_for_the_net_is_one_line(tiny: Path, tmp_path: Path) -> None:
    """data.crop 32 passed the config's range, then ended in a max_pool2d traceback."""
    result = trainer("fit", write_config(tiny, tmp_path, iterations=2), "--set", "data.crop=32")
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines == ["error: data.crop 32 px is too small for CNN-M-2048: its convolutions and poolings need at "
                     "least 41 px (the paper's is 224)"]
