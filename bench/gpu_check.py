"""Every GPU figure from one prepared command: ``make gpu-check OUT=DIR`` (README, "Running on a GPU").

Runs each step below in a process of its own with its own time limit, goes on after a failure, and
writes ``DIR/gpu-check.json`` (every figure; every failure with its last lines; device, driver, CUDA,
torch and triton versions) and ``DIR/gpu-check.md`` (rows for bench/RESULTS.md, device named). The exit
status is 1 if any step failed. ``--dry-run`` runs every step at a tiny size on the CPU (CUDA-only parts
say "skipped: no CUDA"), so that `make test` keeps the script from rotting.

Steps and their time limits on the GPU host (seconds; with the install, 450 of the 480 the issue
allows): cuda_tests 60, flow 75, extract 110, train 80, feed 45, distributed 60; install 20.
``--missing`` prints the Python distributions the project imports that the GPU host lacks (what
bench/gpu_wheels.sh downloads).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
STEP_SECONDS = {"cuda_tests": 60, "flow": 75, "extract": 110, "train": 80, "feed": 45, "distributed": 60}
INSTALL_SECONDS = 20
FIGURES = "GPU-CHECK-FIGURES "  # the line a step prints its figures on, as JSON
# What the GPU host has (the device tool's KINDS.md): distributions the project imports need not travel.
HOST_HAS = {"torch", "torchvision", "triton", "opencv-python-headless", "click", "pyyaml", "joblib", "pillow",
            "protobuf", "scikit-learn", "numpy", "matplotlib", "timm", "safetensors"}
# top-level module → distribution, for the third-party modules flowprep and trainer import
DISTRIBUTIONS = {"torch": "torch", "torchvision": "torchvision", "triton": "triton", "cv2": "opencv-python-headless",
                 "click": "click", "yaml": "pyyaml", "joblib": "joblib", "PIL": "pillow", "google": "protobuf",
                 "sklearn": "scikit-learn", "numpy": "numpy", "matplotlib": "matplotlib", "timm": "timm",
                 "lmdb": "lmdb", "distributed": "distributed", "safetensors": "safetensors"}
OPTIONAL = {"distributed"}  # imported only by `flowprep extract --scheduler` (a Dask cluster), not checked here


def project_imports() -> set[str]:
    """Top-level third-party modules that flowprep/ and trainer/ import."""
    modules = set()
    for path in [*REPO.glob("flowprep/**/*.py"), *REPO.glob("trainer/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    local = {"flowprep", "trainer", "__future__"}
    return {m for m in modules if m not in local and m not in sys.stdlib_module_names}


def missing_on_host() -> list[str]:
    """Distributions the project needs that the GPU host does not have."""
    unknown = project_imports() - set(DISTRIBUTIONS)
    if unknown:
        raise SystemExit(f"gpu_check: no distribution known for the imported modules {sorted(unknown)}")
    needed = {DISTRIBUTIONS[m] for m in project_imports()} - {DISTRIBUTIONS[m] for m in OPTIONAL}
    return sorted(needed - HOST_HAS)


# ---------------------------------------------------------------------------------------------
# Running the steps


def python_env() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    return env


def run_step(name: str, out: Path, dry_run: bool) -> dict:
    """One step in a process of its own, killed at its time limit; its figures and, on failure, its last lines."""
    command = [sys.executable, str(Path(__file__)), "--step", name, "--out", str(out)] + (["--dry-run"] if dry_run
                                                                                          else [])
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=STEP_SECONDS[name], cwd=REPO,
                              env=python_env())
        status = "ok" if done.returncode == 0 else "failed"
        text = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:  # its output comes as bytes whatever text= said
        status = "failed"
        text = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part
                       for part in (exc.stdout or "", exc.stderr or ""))
        text += f"\nkilled at its time limit of {STEP_SECONDS[name]} s"
    figures = {}
    for line in text.splitlines():
        if line.startswith(FIGURES):
            figures = json.loads(line[len(FIGURES):])
    skipped = figures.pop("skipped", None)
    step = {"name": name, "status": "skipped" if skipped and status == "ok" else status,
            "seconds": round(time.perf_counter() - start, 1), "budget_s": STEP_SECONDS[name], "figures": figures}
    if skipped:
        step["why"] = skipped
    if status != "ok":
        step["tail"] = [line for line in text.splitlines() if not line.startswith(FIGURES)][-30:]
    return step


def device_info() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu_cores": os.cpu_count(), "name": f"CPU ({os.cpu_count()} cores)", "driver": None}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name(0)
        try:
            query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                    "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            name, driver, memory = (part.strip() for part in query.stdout.splitlines()[0].split(","))
            info.update(name=name, driver=driver, memory=memory)
        except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
            pass
    return info


def markdown(report: dict) -> str:
    device = report["device"]
    dry = " - DRY RUN on the CPU, tiny sizes" if report["dry_run"] else ""
    lines = [f"# gpu-check on {device['name']} (driver {device['driver']}, CUDA {device['cuda']}, torch "
             f"{device['torch']}, triton {device['triton']}){dry}",
             "", "| step | status | seconds (limit) | figures |", "|---|---|---|---|"]
    for step in report["steps"]:
        figures = "; ".join(f"{k} {v}" for k, v in step["figures"].items()) or step.get("why", "")
        lines.append(f"| {step['name']} | {step['status']} | {step['seconds']} ({step['budget_s']}) | {figures} |")
    return "\n".join(lines) + "\n"


def check(out: Path, dry_run: bool, steps: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    report = {"dry_run": dry_run, "device": device_info(), "missing_wheels": missing_on_host(), "steps": []}
    for name in steps:
        step = run_step(name, out, dry_run)
        report["steps"].append(step)
        print(f"{name}: {step['status']} in {step['seconds']} s" + (f" ({step['why']})" if "why" in step else ""),
              flush=True)
        (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")  # what is done so far survives
    (out / "gpu-check.md").write_text(markdown(report))
    failed = [s["name"] for s in report["steps"] if s["status"] == "failed"]
    print(f"wrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'}" + (f"; failed: {', '.join(failed)}" if failed
                                                                         else ""))
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Folder of the reports (and of the steps' files).")
    parser.add_argument("--dry-run", action="store_true", help="Every step at a tiny size on the CPU.")
    parser.add_argument("--step", choices=list(STEP_SECONDS), help="Run one step here (what the check does).")
    parser.add_argument("--only", nargs="+", choices=list(STEP_SECONDS), help="Run only these steps.")
    parser.add_argument("--missing", action="store_true", help="Print what the GPU host lacks, one a line.")
    args = parser.parse_args()
    if args.missing:
        print("\n".join(missing_on_host()))
        return
    if args.out is None:
        parser.error("--out DIR is required")
    if args.step:
        from gpu_steps import STEPS

        figures = STEPS[args.step](args.out / args.step, args.dry_run)
        print(FIGURES + json.dumps(figures), flush=True)
        return
    sys.exit(check(args.out, args.dry_run, args.only or list(STEP_SECONDS)))


def sample_utilisation(stop: threading.Event, samples: list[float]) -> None:
    """GPU utilisation (%) from nvidia-smi every half second until ``stop`` is set."""
    while not stop.is_set():
        try:
            query = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                   capture_output=True, text=True, timeout=5)
            samples.append(float(query.stdout.split()[0]))
        except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
            return
        stop.wait(0.5)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
