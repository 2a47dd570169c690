"""trainer under faults, as an outside audit found them: run folder lock, damaged data, bad configs,
unreadable checkpoints, predict's flow implementation."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import to_pre_index_format, write_config
from test_store_faults import edit_shard, flip
from test_trainer_fit import REPO, trainer

from flowprep.algorithms.brox_torch import BROX_TORCH_DEFAULTS
from flowprep.storage.shard import record_key
from trainer import checkpoint as ckpt
from trainer.config import ConfigError, load_config
from trainer.predict import predict
from trainer.scores import EvaluationError


def one_line(result: subprocess.CompletedProcess) -> str:
    """The one error line of a command that failed, after whatever progress it logged."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


def copy_store(tiny: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset ``a`` (store and splits) that a test may damage."""
    shutil.copytree(tiny / "a" / "flow", tmp_path / "a" / "flow")
    shutil.copytree(tiny / "a" / "splits", tmp_path / "a" / "splits")
    return tmp_path


# 1: one trainer fit per run folder


def test_a_second_fit_on_one_run_folder_is_refused_and_the_lock_dies_with_the_process(tiny: Path,
                                                                                     tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, iterations=100_000, train={"log_every": 1, "val_every": 0,
                                                                     "checkpoint_every": 100_000})
    first = subprocess.Popen([sys.executable, "-m", "trainer", "fit", str(config)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        metrics = tmp_path / "run" / "metrics.csv"
        deadline = time.time() + 300
        while time.time() < deadline and not metrics.exists():
            time.sleep(0.1)
        assert metrics.exists(), "the first run should be training"
        second = trainer("fit", config, "--resume")
        line = one_line(second)
        assert second.returncode == 2
        assert line.startswith(f"error: {tmp_path / 'run'}: in use by another trainer fit (pid {first.pid}: ")
    finally:
        os.kill(first.pid, signal.SIGKILL)  # the trainer alone: its DataLoader worker must not keep the lock
        first.wait()
    again = trainer("fit", config, "--resume", "--set", "optim.iterations=2", "--set", "optim.milestones=[1]")
    assert again.returncode == 0, again.stderr


# 8, 9: damaged stores stop training in one line naming dataset, video and record


def test_fit_on_damaged_records_names_dataset_video_and_record(tiny: Path, tmp_path: Path) -> None:
    data = copy_store(tiny, tmp_path / "data")
    store = data / "a" / "flow"
    config = write_config(data, tmp_path, iterations=4)

    def damage_every_flow_record(txn, records, meta) -> None:
        for key, value in list(txn.cursor(db=records)):
            if b"/flow/" in key:
                txn.put(key, flip(value, [len(value) - 300]), db=records)

    edit_shard(store / "shard-00000.lmdb", damage_every_flow_record)
    result = trainer("fit", config)
    line = one_line(result)
    assert result.returncode == 2
    assert line.startswith("error: dataset a: ") and ": flow record " in line and "CRC-32 mismatch" in line
    assert line.endswith(f"`flowprep verify {store}` lists every damaged record")

    def undecodable(txn, records, meta) -> None:
        for video in list(txn.cursor(db=meta).iternext(values=False)):
            key = record_key(video.decode(), "flow", 0)
            txn.put(key, txn.get(key, db=records)[:200], db=records)

    to_pre_index_format(store / "shard-00000.lmdb", checksums=False)  # a store written before checksums
    edit_shard(store / "shard-00000.lmdb", undecodable)
    result = trainer("fit", config, "--set", "data.flow_stack=1")
    line = one_line(result)
    assert result.returncode == 2 and line.startswith("error: dataset a: ") and ": flow record 0 in " in line
    assert "does not decode" in line

    edit_shard(store / "shard-00000.lmdb", lambda txn, records, meta: txn.put(
        next(iter(txn.cursor(db=meta)))[0], b"{damaged", db=meta))
    result = trainer("fit", config)
    assert result.returncode == 2 and "metadata of video" in one_line(result) and "is damaged" in one_line(result)

    os.truncate(store / "shard-00000.lmdb" / "data.mdb", (store / "shard-00000.lmdb" / "data.mdb").stat().st_size // 2)
    result = trainer("fit", config)
    assert result.returncode == 2 and "truncated LMDB shard" in one_line(result)


# 10: config values are range-checked on load


@pytest.mark.parametrize("override,message", [
    ("train.val_videos=-1", "train.val_videos must be >= 0"),
    ("run.seed=-1", "run.seed must be in 0.."),
    ("optim.momentum=-5", "optim.momentum must be in [0, 1), got -5.0"),
    ("data.crop=5000", "data.crop must be in 32..512 pixels, got 5000"),
    ("data.flow_scale=0", "data.flow_scale must be in (0, 100]"),
    ("optim.weight_decay=-1", "optim.weight_decay must be in [0, 1)"),
    ("train.val_every=-3", "train.val_every must be >= 0"),
    ("data.workers=1.5", "data.workers must be an int, got 1.5"),
])
def test_config_ranges_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(REPO / "configs" / "synthetic-temporal.yaml", [override])


def test_yaml_errors_and_exponent_floats(tmp_path: Path) -> None:
    text = (REPO / "configs" / "synthetic-temporal.yaml").read_text()
    path = tmp_path / "c.yaml"
    path.write_text(text.replace("optim:", "optim: [", 1))
    with pytest.raises(ConfigError, match=r"not valid YAML: line \d+, column \d+: "):
        load_config(path)
    assert load_config(REPO / "configs" / "synthetic-temporal.yaml", ["optim.lr=1e-3"]).optim.lr == 0.001
    path.write_text(text + "\n")
    cfg = load_config(path, ["optim.lr=5e-4"])
    assert cfg.optim.lr == pytest.approx(5e-4)


# 5: predict computes flow with the implementation the net was trained on


@pytest.fixture(scope="module")
def temporal_checkpoint(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("temporal")
    config = write_config(tiny, tmp, iterations=2, train={"log_every": 1, "val_every": 0, "checkpoint_every": 2})
    result = trainer("fit", config)
    assert result.returncode == 0, result.stderr
    return tmp / "run" / "checkpoint.pt"


def _with_flow(checkpoint: Path, flow: dict, path: Path) -> Path:
    state = ckpt.load(checkpoint)
    state["flow"]["a"]["flow"] = flow
    torch.save(state, path)
    return path


def test_predict_uses_the_recorded_flow_implementation(temporal_checkpoint: Path, tiny: Path, tmp_path: Path) -> None:
    clip = sorted((tiny / "a" / "videos").rglob("*.avi"))[0]
    params = {**BROX_TORCH_DEFAULTS, "inner_iterations": 3, "outer_iterations": 2, "device": "cuda:0"}
    torch_net = _with_flow(temporal_checkpoint, {"algo": "brox", "implementation": "torch-brox", "params": params},
                           tmp_path / "torch.pt")
    result = predict(clip, None, torch_net)
    assert result.flow.startswith("brox (torch-brox on ") and "the training data's parameters" in result.flow

    cuda_net = _with_flow(temporal_checkpoint, {"algo": "brox", "implementation": "opencv-cuda-brox",
                                                "params": {"alpha": 0.197}}, tmp_path / "cuda.pt")
    with pytest.raises(EvaluationError, match="trained on brox flow from opencv-cuda-brox, which cannot run here"):
        predict(clip, None, cuda_net)
    refused = trainer("predict", clip, "--temporal", cuda_net)
    assert refused.returncode == 2 and "--allow-other-flow" in one_line(refused)
    allowed = predict(clip, None, cuda_net, allow_other_flow=True)
    assert "NOT the training data's opencv-cuda-brox" in allowed.flow


# Smaller ones


def test_unreadable_checkpoints_get_one_line(temporal_checkpoint: Path, tiny: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    result = trainer("test", junk)
    assert result.returncode == 2 and "not a readable checkpoint" in one_line(result)
    config = write_config(tiny, tmp_path, iterations=2)
    (tmp_path / "run").mkdir()
    shutil.copy(temporal_checkpoint, tmp_path / "run" / "checkpoint.pt")
    wider = trainer("fit", config, "--resume", "--set", "model.width=0.25")
    assert wider.returncode == 2 and "size mismatch for" in one_line(wider)
    (tmp_path / "run" / "checkpoint.pt").write_bytes((tmp_path / "run" / "checkpoint.pt").read_bytes()[:5000])
    cut = trainer("fit", config, "--resume")
    assert cut.returncode == 2 and "not a readable checkpoint, damaged or truncated" in one_line(cut)


def test_resume_reports_changed_settings_and_empty_classes(temporal_checkpoint: Path, tiny: Path,
                                                           tmp_path: Path) -> None:
    data = copy_store(tiny, tmp_path / "data")
    splits = data / "a" / "splits"
    train = (splits / "trainlist01.txt").read_text().splitlines()
    first_class = train[0].split("/")[0]
    (splits / "trainlist01.txt").write_text("\n".join(ln for ln in train if not ln.startswith(first_class)) + "\n")
    (splits / "testlist01.txt").write_text(f"{first_class}/v_{first_class}_g99_c01.avi\n")  # not in the store
    config = write_config(data, tmp_path, iterations=4, optim={"lr": 0.001})
    (tmp_path / "run").mkdir()
    shutil.copy(temporal_checkpoint, tmp_path / "run" / "checkpoint.pt")
    result = trainer("fit", config, "--resume")
    assert result.returncode == 0, result.stderr
    assert f"1 class(es) have no training video and are never trained on: {first_class}" in result.stderr
    assert "no validation" in result.stderr and "validation at iteration 4: skipped" in result.stderr
    assert "the config differs from the checkpoint's" in result.stderr and "optim.lr: 0.01 -> 0.001" in result.stderr


def test_ctrl_c_while_starting_is_quiet(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, iterations=100_000)
    for delay in (0.3, 1.0):
        proc = subprocess.Popen([sys.executable, "-m", "trainer", "fit", str(config)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err)


def test_any_junk_file_is_an_unreadable_checkpoint(tmp_path: Path) -> None:
    """torch.load of random bytes fails in many ways (IndexError, KeyError, UnpicklingError, ...): each
    is one CheckpointError line, never a traceback (seed 17 gave an IndexError, seed 62 a KeyError)."""
    for seed in range(80):
        path = tmp_path / f"junk-{seed}.pt"
        path.write_bytes(np.random.default_rng(seed).bytes(4096))
        with pytest.raises(ckpt.CheckpointError, match="not a readable checkpoint"):
            ckpt.load(path)
