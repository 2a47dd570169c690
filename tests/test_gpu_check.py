"""`make gpu-check DRY_RUN=1`: every step of the GPU check rehearsed at a tiny size on the CPU (issue 23)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_trainer_fit import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402
from gpu_check import STEP_SECONDS, missing_on_host, run_step  # noqa: E402


def test_the_dry_run_writes_both_reports_with_every_step(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(out), "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["dry_run"] is True and report["missing_wheels"] == ["lmdb"]
    assert {"name", "driver", "cuda", "torch", "triton", "python"} <= set(report["device"])
    assert [s["name"] for s in report["steps"]] == list(STEP_SECONDS)
    by_name = {s["name"]: s for s in report["steps"]}
    for step in report["steps"]:
        assert {"status", "seconds", "budget_s", "figures"} <= set(step), step
        assert step["status"] in ("ok", "skipped"), step
    assert by_name["cuda_tests"]["status"] == "skipped" and "no CUDA" in by_name["cuda_tests"]["why"]
    assert any("pairs/s" in k for k in by_name["flow"]["figures"])
    assert "EPE px vs CPU store" in by_name["extract"]["figures"]
    assert "resnet50 temporal TFLOP/s" in by_name["train"]["figures"]
    assert by_name["distributed"]["figures"]["test"] == "ok"
    table = (out / "gpu-check.md").read_text()
    assert "DRY RUN" in table and all(f"| {name} |" in table for name in STEP_SECONDS)


def test_the_host_lacks_exactly_lmdb_and_the_plan_fits_eight_minutes() -> None:
    assert missing_on_host() == ["lmdb"]
    script = (REPO / "bench" / "gpu_wheels.sh").read_text()
    assert "gpu_check.py --missing" in script and "--python-version 3.12" in script
    from gpu_check import INSTALL_SECONDS

    assert sum(STEP_SECONDS.values()) + INSTALL_SECONDS <= 480


def test_a_step_past_its_time_limit_is_a_failure_with_its_last_lines(tmp_path: Path) -> None:
    saved = gpu_check.STEP_SECONDS["train"]
    gpu_check.STEP_SECONDS["train"] = 3
    try:
        step = run_step("train", tmp_path, dry_run=True)
    finally:
        gpu_check.STEP_SECONDS["train"] = saved
    assert step["status"] == "failed" and step["budget_s"] == 3
    assert step["tail"][-1] == "killed at its time limit of 3 s"
    assert not any(line.startswith(("b'", 'b"')) for line in step["tail"]), "output shown as text, not bytes' repr"
