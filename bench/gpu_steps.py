"""The steps of bench/gpu_check.py, one function each: ``step(folder, dry_run) -> figures``.

Each runs in a process of its own (the check starts it with ``--step NAME``), writes what it makes under
``folder`` and returns its figures as a dict ({"skipped": why} where there is nothing to measure here).
On a CUDA host the sizes are the paper's; with ``dry_run`` every step runs at a tiny size on the CPU.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CUDA = torch.cuda.is_available()
# the built-in dataset at its smallest: 2 motion classes of 8 clips (two groups: test and training), 6 frames
TINY_SYNTH = ("--motion-classes", "2", "--appearance-classes", "0", "--clips-per-class", "8", "--frames", "6",
              "--width", "64", "--height", "48")


def run(*args: object, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """A command of ours (``flowprep ...``, ``trainer ...``, ``torchrun ...``) that must succeed."""
    command = [str(a) for a in args]
    if command[0] in ("flowprep", "trainer"):
        command = [sys.executable, "-m", *command]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"{' '.join(command[:4])} ... failed with exit status {done.returncode}")
    return done


def summary(stderr: str) -> dict:
    """Videos, flow records and seconds from the summary line of `flowprep extract`."""
    match = re.search(r"stored (\d+) videos \((\d+) flow \w+, .*?\) in ([\d.]+) s", stderr)
    if not match:
        raise SystemExit(f"no summary line in: {stderr[-500:]}")
    videos, pairs, seconds = int(match.group(1)), int(match.group(2)), float(match.group(3))
    return {"videos": videos, "pairs": pairs, "seconds": seconds}


def cuda_tests(folder: Path, dry_run: bool) -> dict:
    """The test suite's tests marked ``cuda`` (skipped without CUDA, as in CI)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"],
                          capture_output=True, text=True, cwd=REPO)
    print(done.stdout[-3000:], done.stderr[-2000:], sep="\n")
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", done.stdout)}
    if done.returncode not in (0, 5):
        raise SystemExit(f"pytest -m cuda: exit status {done.returncode}")
    figures = {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0)}
    if not CUDA:
        figures["skipped"] = "no CUDA (the marked tests skip)"
    return figures


def flow(folder: Path, dry_run: bool) -> dict:
    """The PyTorch Brox, fused (Triton kernels, triton-brox) and eager (torch-brox): pairs/s at 320x240
    and 340x256 for a few batches; EPE on Middlebury, here and on the CPU; peak GPU memory."""
    from flowprep.algorithms.middlebury import end_point_error, read_flo
    from flowprep.algorithms.pairs import translation
    from flowprep.algorithms.registry import create_flow

    device = "cuda" if CUDA else "torch-cpu"
    params = {"outer_iterations": 1, "inner_iterations": 2} if dry_run else None
    sizes, batches = ([(64, 48)], [1, 2]) if dry_run else ([(320, 240), (340, 256)], [1, 32, 128])
    figures = {}
    for kernel in ("fused", "eager") if CUDA else ("eager",):
        chosen = {**(params or {}), **({"kernel": kernel} if CUDA else {})}
        method = create_flow("brox", chosen, device=device, max_batch=max(batches))
        for w, h in sizes:
            for batch in batches:
                pairs = [translation(h, w, dx=3.0 + 0.1 * i, dy=-1.0, seed=i)[:2] for i in range(batch)]
                method.max_batch = batch
                method.many([pairs[0][0]], [pairs[0][1]])  # warm-up (and the kernels' compile)
                if CUDA:
                    torch.cuda.synchronize()
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < (0.2 if dry_run else 3.0) or done == 0:
                    method.many([a for a, _ in pairs], [b for _, b in pairs])
                    done += batch
                rate = done / (time.perf_counter() - start)
                figures[f"{method.implementation} {w}x{h} batch {batch} pairs/s"] = round(rate, 2)
    if CUDA:
        figures["peak GPU memory GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    names = [n for n in ("RubberWhale", "Grove3", "Urban2") if (SHARED / "flow-gt" / n).is_dir()][:1 if dry_run else 3]
    here, cpu = [], []
    for name in names:
        import cv2

        pair = [cv2.imread(str(SHARED / "flow-gt" / name / f), cv2.IMREAD_GRAYSCALE)
                for f in ("frame10.png", "frame11.png")]
        truth = read_flo(str(SHARED / "flow-gt" / name / "flow10.flo"))
        if dry_run:  # a corner, so the CPU run takes a second
            pair, truth = [p[:64, :96] for p in pair], truth[:64, :96]
        here.append(end_point_error(create_flow("brox", params, device=device)(*pair), truth))
        cpu.append(end_point_error(create_flow("brox", params, device="torch-cpu")(*pair), truth))
    if names:
        figures["Middlebury EPE px (here)"] = round(float(np.mean(here)), 4)
        figures["Middlebury EPE px (CPU)"] = round(float(np.mean(cpu)), 4)
    return figures


def _stores_epe(a: Path, b: Path, limit: int) -> float:
    """Mean EPE in pixels between the flow of two stores of the same clips (up to ``limit`` fields each)."""
    from flowprep.algorithms.middlebury import end_point_error
    from flowprep.storage.store import FlowStore

    first, second = FlowStore(a), FlowStore(b)
    errors = []
    for video in first.videos():
        count = min(first.video_meta(video).num_flows, limit)
        for x, y in zip(first.flows(video, range(count)), second.flows(video, range(count)), strict=True):
            errors.append(end_point_error(x, y))
    return float(np.mean(errors))


def extract(folder: Path, dry_run: bool) -> dict:
    """`flowprep extract --gpus 1` on the real clips and on the built-in dataset: videos/s, pairs/s, GPU
    utilisation, the decoder's share, `verify`, and the EPE of the stored flow against a CPU store."""
    from gpu_check import sample_utilisation

    from flowprep.video import read_frames

    folder.mkdir(parents=True, exist_ok=True)
    if dry_run:  # tiny clips of the built-in kind instead of the real ones
        run("flowprep", "synth", folder / "clips", *TINY_SYNTH)
        source = folder / "clips" / "videos"
        gpu_args = ["--device", "torch-cpu", "--param", "outer_iterations=1", "--param", "inner_iterations=2"]
    else:
        source = SHARED / "videos"
        gpu_args = ["--gpus", "1"]
    samples: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_utilisation, args=(stop, samples), daemon=True)
    if CUDA:
        sampler.start()
    gpu = summary(run("flowprep", "extract", source, folder / "gpu", "--short-side", "256", *gpu_args).stderr)
    stop.set()
    run("flowprep", "verify", folder / "gpu", "--no-decode")
    start = time.perf_counter()
    for video in sorted(p for p in source.rglob("*") if p.suffix in (".avi", ".mp4")):
        read_frames(video, 256)
    decode_s = time.perf_counter() - start
    cpu_args = (["--param", "outer_iterations=1", "--param", "inner_iterations=2"] if dry_run else [])
    run("flowprep", "extract", source, folder / "cpu", "--short-side", "256", "--device", "cpu",
        "--workers", str(os.cpu_count()), *cpu_args)
    figures = {"clips videos/s": round(gpu["videos"] / gpu["seconds"], 2),
               "clips pairs/s": round(gpu["pairs"] / gpu["seconds"], 1),
               "decode share": round(decode_s / gpu["seconds"], 2),
               "EPE px vs CPU store": round(_stores_epe(folder / "gpu", folder / "cpu", 20), 3)}
    if samples:
        figures["GPU utilisation % (median)"] = statistics.median(samples)
    if not dry_run:
        data = folder / "data"
        run("flowprep", "data", "pipelines/synthetic.yaml", "--data-root", data)
        # 24 of its 192 clips (550 pairs): the eager PyTorch Brox does tens of pairs/s, and the step has 110 s
        videos = data / "synthetic" / "videos"
        listing = videos / "gpu-check.txt"  # beside the clips: ids are paths relative to the list
        listing.write_text("".join(f"{clip.relative_to(videos)}\n" for clip in sorted(videos.rglob("*.avi"))[::8]))
        built_in = summary(run("flowprep", "extract", listing, folder / "built-in", "--short-side", "128", "--gpus",
                               "1").stderr)
        figures["built-in videos/s"] = round(built_in["videos"] / built_in["seconds"], 2)
        figures["built-in pairs/s"] = round(built_in["pairs"] / built_in["seconds"], 1)
    return figures


def train(folder: Path, dry_run: bool) -> dict:
    """Both built-in configs with `trainer fit` on the device, and full-size train steps of CNN-M-2048 and
    ResNet-50 (batch 256, bf16, channels_last): samples/s and achieved TFLOP/s, spatial and temporal."""
    from train_step import forward_flops, samples_per_second

    from trainer.models import build_model

    folder.mkdir(parents=True, exist_ok=True)
    figures = {}
    data = folder / "data"
    if dry_run:
        run("flowprep", "synth", data / "synthetic", *TINY_SYNTH)
        run("flowprep", "extract", data / "synthetic" / "videos", data / "flow" / "synthetic", "--algo", "dis",
            "--short-side", "0")
    else:
        run("flowprep", "data", "pipelines/synthetic.yaml", "--data-root", data)
        run("flowprep", "extract", "pipelines/synthetic.yaml", "--data-root", data, "--algo", "dis")
    for stream in ("spatial", "temporal"):
        extra = (["--set", "optim.scale=0.0002", "--set", "optim.batch_size=4", "--set", "data.crop=64",
                  "--set", "data.workers=0"] if dry_run else ["--set", "optim.scale=0.002"])
        start = time.perf_counter()
        run("trainer", "fit", f"configs/synthetic-{stream}.yaml", "--set", f"run.dir={folder / stream}",
            "--set", f"run.device={'cuda' if CUDA else 'cpu'}", *extra, env={"TWOSTREAM_DATA": str(data)})
        figures[f"fit built-in {stream} s"] = round(time.perf_counter() - start, 1)
    device = torch.device("cuda" if CUDA else "cpu")
    batch, size, steps = (2, 64, 1) if dry_run else (256, 224, 5)
    for arch in ("cnn_m_2048", "resnet50"):
        for stream, channels in (("spatial", 3), ("temporal", 20)):
            model = build_model(stream, 10, {"ucf101": 101}, 0.125 if dry_run else 1.0, 0.9, size, arch)
            flops = forward_flops(model, channels, size)
            rate = samples_per_second(model, channels, size, batch, steps, device, bf16=CUDA)
            figures[f"{arch} {stream} samples/s"] = round(rate, 1)
            figures[f"{arch} {stream} TFLOP/s"] = round(rate * 3 * flops / 1e12, 2)
    return figures


def feed(folder: Path, dry_run: bool) -> dict:
    """bench/feed.py: the loader against the train step, decoding on the CPU and on the device."""
    if dry_run:  # a tiny store in the layout bench/feed.py makes (store/, splits/), a tiny net
        run("flowprep", "synth", folder, *TINY_SYNTH)
        run("flowprep", "extract", folder / "videos", folder / "store", "--algo", "dis", "--short-side", "0")
        args = ["--store", folder, "--batch", "2", "--steps", "1", "--workers", "1", "--width", "0.125",
                "--streams", "temporal"]
    else:
        args = ["--workers", "4", "8", "--steps", "20"]
    done = run(sys.executable, "bench/feed.py", *args, timeout=40)
    print(done.stdout)
    figures = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[4].replace(".", "").isdigit():
            figures[f"{cells[0]} {cells[1]} {cells[2]} w{cells[3]} samples/s"] = float(cells[4])
    return figures


def distributed(folder: Path, dry_run: bool) -> dict:
    """`torchrun --nproc_per_node=1` (NCCL on CUDA, gloo on a CPU) for a few iterations, then resumed;
    `trainer test` and `trainer predict` on the device."""
    from flowprep.datasets.synthetic import SynthConfig, write_dataset
    from flowprep.extract import run_extract
    from flowprep.storage.settings import ExtractSettings

    folder.mkdir(parents=True, exist_ok=True)
    write_dataset(folder / "ds", SynthConfig(motion_classes=2, appearance_classes=0, clips_per_class=4,
                                             clips_per_group=1, frames=6, width=64, height=48))
    run_extract(folder / "ds" / "videos", folder / "ds" / "flow", ExtractSettings(algo="dis", short_side=0),
                workers=2)
    config = folder / "config.yaml"
    config.write_text(
        f"run: {{dir: {folder / 'run'}, device: {'cuda' if CUDA else 'cpu'}}}\n"
        f"data: {{datasets: [{{name: ds, store: {folder / 'ds' / 'flow'}, splits: {folder / 'ds' / 'splits'}, "
        "split_format: ucf101}], stream: temporal, flow_stack: 4, crop: 64, workers: 0}\n"
        "model: {width: 0.125}\n"
        "optim: {batch_size: 4, lr: 0.001, schedule: custom, iterations: 4, milestones: [3]}\n"
        "train: {log_every: 1, val_every: 0, checkpoint_every: 2}\n")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29533", "-m",
                "trainer", "fit", config]
    start = time.perf_counter()
    run(*torchrun)
    first = time.perf_counter() - start
    run(*torchrun, "--resume", "--set", "optim.iterations=6")
    checkpoint = folder / "run" / "checkpoint.pt"
    run("trainer", "test", checkpoint, "--frames", "2", "-o", folder / "eval")
    clip = sorted((folder / "ds" / "videos").rglob("*.avi"))[0]
    predicted = run("trainer", "predict", clip, "--temporal", checkpoint)
    return {"torchrun 4 iterations s": round(first, 1), "resumed to 6": "ok", "test": "ok",
            "predict": predicted.stdout.splitlines()[0][:80]}


STEPS = {"cuda_tests": cuda_tests, "flow": flow, "extract": extract, "train": train, "feed": feed,
         "distributed": distributed}
