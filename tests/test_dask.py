"""flowprep extract --scheduler: the per-video work on a Dask cluster (2 worker processes on loopback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_video

from flowprep.storage.store import FlowStore

distributed = pytest.importorskip("distributed")

ARGS = ["--short-side", "0", "--algo", "brox"]


def extract(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowprep", "extract", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def frame_counts(out: Path) -> dict[str, tuple[int, int]]:
    store = FlowStore(out)
    counts = {m["video"]: (m["num_frames"], m["num_flows"]) for m in store.iter_meta()}
    store.close()
    return counts


@pytest.fixture
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as cluster:
        yield cluster


def test_cluster_run_matches_local_run_and_survives_a_killed_worker(cluster, tmp_path: Path) -> None:
    src = tmp_path / "videos"
    src.mkdir()
    for i in range(8):
        write_video(src / f"v{i}.avi", frames=30, seed=i)
    (src / "broken.avi").write_text("not a video")
    local = extract(src, tmp_path / "local", *ARGS, "--workers", "2")
    assert local.returncode == 1 and "broken.avi" in local.stderr

    out = tmp_path / "cluster"
    proc = subprocess.Popen([sys.executable, "-m", "flowprep", "extract", str(src), str(out), *ARGS,
                             "--scheduler", cluster.scheduler_address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    data = out / "shard-00000.lmdb" / "data.mdb"
    deadline = time.time() + 120
    while time.time() < deadline and not (data.exists() and data.stat().st_size > 100_000):
        time.sleep(0.05)
    with distributed.Client(cluster.scheduler_address) as client:
        pids = client.run(os.getpid)
        os.kill(next(iter(pids.values())), signal.SIGKILL)  # one worker process dies mid-run
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr
    assert "Dask cluster" in stderr and "failed: " in stderr and "broken.avi" in stderr
    assert frame_counts(out) == frame_counts(tmp_path / "local")
    assert len(frame_counts(out)) == 8
    verify = subprocess.run([sys.executable, "-m", "flowprep", "verify", str(out)], capture_output=True, text=True)
    assert verify.returncode == 0 and "ok: 8 videos" in verify.stdout


def test_unreachable_scheduler_is_one_line(tmp_path: Path) -> None:
    write_video(tmp_path / "v.avi", frames=4)
    result = extract(tmp_path / "v.avi", tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9", "--short-side", "0")
    assert result.returncode == 2 and "cannot reach the Dask scheduler" in result.stderr
    assert "Traceback" not in result.stderr
