"""``trainer fit``: SGD training of one stream (spatial or temporal) as in section 5 of the paper.

Counted in iterations: each builds a class-balanced batch (see :func:`trainer.data.batch_items`).
Runs on CUDA when present (bf16 autocast, channels_last), else on the CPU; under ``torchrun`` the
global batch is split over the processes (DDP; gloo on CPU, NCCL on GPUs) and only rank 0 writes
logs, metrics and checkpoints.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn

from flowprep.lock import FolderBusyError, FolderLock
from trainer import checkpoint as ckpt
from trainer.config import Config
from trainer.data import CentreInputs, StepBatches, TrainingSet, TrainInputs, open_datasets
from trainer.encoded import collate
from trainer.inputs import InputSpec, as_input
from trainer.metrics import append_row, drop_rows_after, plot_curves
from trainer.models import build_model, count_parameters
from trainer.weights import RGBInput, load_weights

SCHEDULE_PRESETS = {"scratch": ([50_000, 70_000], 80_000), "finetune": ([14_000], 20_000)}


class TrainError(Exception):
    """Training cannot start or go on; one line saying why."""


@dataclass
class Processes:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_processes(device: str) -> Processes:
    """Rank, world size and device; joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("run.device is cuda but torch sees no CUDA device")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    elif world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Processes(rank, world, local_rank, dev)


def lr_schedule(cfg: Config) -> tuple[list[int], int]:
    """(iterations at which the LR is divided by 10, total iterations), preset ones scaled."""
    o = cfg.optim
    milestones, total = (o.milestones, o.iterations) if o.schedule == "custom" else SCHEDULE_PRESETS[o.schedule]
    total = max(1, round(total * o.scale))
    milestones = sorted({min(total, max(1, round(m * o.scale))) for m in milestones})
    return [m for m in milestones if m < total], total


def lr_at(step: int, base: float, milestones: list[int]) -> float:
    return base * 0.1 ** sum(step >= m for m in milestones)


def task_loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor, tasks: torch.Tensor,
              names: list[str]) -> torch.Tensor:
    """Sum over datasets of the mean cross-entropy of that dataset's samples under its own head.

    A head without samples in the batch adds 0·(its outputs) so every parameter takes part in the
    graph (DDP needs that)."""
    total = outputs[names[0]].new_zeros((), dtype=torch.float32)
    for d, name in enumerate(names):
        mask = tasks == d
        if bool(mask.any()):
            total = total + nn.functional.cross_entropy(outputs[name][mask].float(), labels[mask])
        else:
            total = total + 0.0 * outputs[name].float().sum()
    return total


@torch.no_grad()
def validate(model: nn.Module, datasets: list[TrainingSet], spec: InputSpec, limit: int, workers: int,
             device: torch.device, batch_size: int = 64) -> dict[str, float]:
    """Top-1 accuracy per dataset: centre crop of the middle frame of (up to ``limit``) test videos."""
    inputs = CentreInputs(datasets, spec, limit)
    if len(inputs) == 0:
        return {}
    loader = torch.utils.data.DataLoader(inputs, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    names = [ds.name for ds in datasets]
    correct, seen = [0] * len(names), [0] * len(names)
    was_training = model.training
    model.eval()
    for x, y, task in loader:
        x = as_input(x, device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs = model(x)
        for d, name in enumerate(names):
            mask = task == d
            if bool(mask.any()):
                pred = outputs[name][mask.to(device)].argmax(1).cpu()
                correct[d] += int((pred == y[mask]).sum())
                seen[d] += int(mask.sum())
    model.train(was_training)
    return {name: correct[d] / seen[d] for d, name in enumerate(names) if seen[d]}


class Progress:
    """A progress bar on a terminal (iteration, loss, LR, samples/s, ETA), log lines otherwise."""

    def __init__(self, start: int, total: int, log_every: int, enabled: bool):
        self.start, self.total, self.log_every, self.enabled = start, total, log_every, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def update(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        if not self.enabled:
            return
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step)
        text = (f"iter {step}/{self.total}  loss {loss:.4f}  lr {lr:.1e}  {samples_per_s:.1f} samples/s  "
                f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        if self.tty:
            width = 24
            filled = int(width * step / self.total)
            print(f"\r[{'#' * filled}{'-' * (width - filled)}] {text}", end="", file=sys.stderr, flush=True)
            if step == self.total:
                print(file=sys.stderr)
        elif step % self.log_every == 0 or step == self.total:
            print(text, file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(("\n" if self.tty else "") + text, file=sys.stderr, flush=True)


def _build(cfg: Config, datasets: list[TrainingSet], log: Callable[[str], None]) -> tuple[nn.Module, set[str]]:
    """The net, with its starting weights loaded; and the names of the parameters those weights gave."""
    heads = {ds.name: len(ds.classes) for ds in datasets}
    model = build_model(cfg.data.stream, cfg.data.flow_stack, heads, cfg.model.width, cfg.model.dropout,
                        cfg.data.crop, cfg.model.arch, cfg.model.partial_bn)
    pretrained: set[str] = set()
    if cfg.model.pretrained:
        rgb = RGBInput(tuple(cfg.data.rgb_mean), tuple(cfg.data.rgb_std),
                       cfg.model.caffe_mean if isinstance(cfg.model.caffe_mean, str) else tuple(cfg.model.caffe_mean))
        report = load_weights(model, cfg.model.pretrained, rgb, cfg.model.pretrained_partial)
        log(report.summary())
        pretrained = set(report.loaded) | set(report.adapted)
    if cfg.model.train == "last_layer":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.head_parameters():
            p.requires_grad_(True)
    return model, pretrained


def parameter_groups(model: nn.Module, pretrained: set[str], multiplier: float) -> list[dict]:
    """SGD parameter groups: the layers the weights file gave at ``multiplier`` × the LR, the new ones at
    the LR (fine-tuning as TSN: pre-trained layers move slower than the new classifier)."""
    groups = [{"params": [], "lr_mult": multiplier, "name": "pretrained"},
              {"params": [], "lr_mult": 1.0, "name": "new"}]
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[0 if name in pretrained else 1]["params"].append(p)
    return [g for g in groups if g["params"]]


def lock_run_dir(run_dir: Path) -> FolderLock:
    """The run folder's lock: one ``trainer fit`` writes a run folder at a time (rank 0 holds it)."""
    try:
        return FolderLock(run_dir, "trainer fit")
    except FolderBusyError as exc:
        raise TrainError(str(exc)) from None
    except OSError as exc:
        raise TrainError(f"{run_dir}: cannot create the run folder: {exc.strerror or exc}") from None


def fit(cfg: Config, resume: bool = False) -> dict:
    """Train as configured; returns {"iterations", "val", "checkpoint", "run_dir"}."""
    procs = setup_processes(cfg.run.device)
    lock = lock_run_dir(Path(cfg.run.dir)) if procs.main else None
    try:
        return _fit(cfg, resume, procs)
    finally:
        if lock is not None:
            lock.release()
        if procs.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _config_changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every config value that differs (nested sections flattened)."""
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _state_dict_problem(exc: Exception) -> str:
    """The telling line of a load_state_dict error (the first size mismatch or missing key)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines[1:] if line.startswith(("size mismatch", "Missing key", "Unexpected key"))),
                  lines[-1] if lines else type(exc).__name__)
    return detail[:300]


def _fit(cfg: Config, resume: bool, procs: Processes) -> dict:
    run_dir = Path(cfg.run.dir)
    checkpoint_path = run_dir / ckpt.CHECKPOINT
    milestones, total = lr_schedule(cfg)
    if cfg.optim.batch_size % procs.world:
        raise TrainError(f"optim.batch_size {cfg.optim.batch_size} does not split over {procs.world} processes")
    progress = Progress(0, total, cfg.train.log_every, procs.main)
    log = progress.message

    datasets = open_datasets(cfg)
    for ds in datasets:
        log(f"{ds.name}: {len(ds.train)} train / {len(ds.test)} test videos, {len(ds.classes)} classes"
            + (f"; {ds.missing_report}" if ds.missing_report else ""))
        unsampled = [ds.classes[c] for c, videos in enumerate(ds.train_by_class) if not videos]
        if unsampled:
            log(f"warning: {ds.name}: {len(unsampled)} class(es) have no training video and are never trained on: "
                f"{', '.join(unsampled[:5])}{', ...' if len(unsampled) > 5 else ''}")
        if not ds.test:
            log(f"warning: {ds.name}: no test video of split {cfg.data.split} is in the store: no validation")
    spec = InputSpec.from_config(cfg.data, procs.device.type)
    torch.manual_seed(cfg.run.seed)
    model, pretrained = _build(cfg, datasets, log)
    arch = "CNN-M-2048" if cfg.model.arch == "cnn_m_2048" else cfg.model.arch
    if cfg.model.arch != "cnn_m_2048" and cfg.model.width != 1.0:
        log(f"note: model.width {cfg.model.width} scales cnn_m_2048 only; {arch} is built as its library defines it")
    log(f"{cfg.data.stream} {arch} ({f'width {cfg.model.width}, ' if arch == 'CNN-M-2048' else ''}"
        f"{spec.channels} input channels, "
        f"{cfg.data.crop}x{cfg.data.crop}): {count_parameters(model) / 1e6:.1f}M parameters on {procs.device}"
        + (f", {procs.world} processes" if procs.world > 1 else ""))
    cuda = procs.device.type == "cuda"
    model.to(procs.device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    optimizer = torch.optim.SGD(parameter_groups(model, pretrained, cfg.optim.pretrained_lr), lr=cfg.optim.lr,
                                momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)

    start, last_val, last_saved = 0, {}, None
    if procs.main:
        for tmp in ckpt.remove_partial(checkpoint_path):
            log(f"removed {tmp} (a checkpoint write that a killed run left unfinished)")
    if checkpoint_path.exists():
        try:
            state = ckpt.load(checkpoint_path)
        except ckpt.CheckpointError as exc:
            raise TrainError(f"{exc}; move it away to start again, or restore it") from None
        if not resume:
            raise TrainError(f"{checkpoint_path} exists (iteration {state['step']}): add --resume to continue "
                             "it, or set run.dir to start a new run")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            problem = _state_dict_problem(exc)
            raise TrainError(f"{checkpoint_path} does not fit this config's model: {problem}") from None
        torch.set_rng_state(state["torch_rng"])
        start, last_val, last_saved = state["step"], state.get("val", {}), state["step"]
        log(f"resumed from {checkpoint_path} at iteration {start}")
        changes = _config_changes(state.get("config", {}), cfg.to_dict())
        if changes:
            log(f"note: the config differs from the checkpoint's, the new values apply from iteration {start}: "
                + "; ".join(changes))
        if procs.main:
            dropped = drop_rows_after(run_dir / "metrics.csv", start)
            if dropped:
                log(f"dropped {dropped} metrics.csv row(s) after iteration {start} (they are redone)")
    elif resume:
        log(f"no checkpoint in {run_dir}: starting at iteration 0")
    if procs.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".config.yaml.tmp{os.getpid()}"
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        os.replace(tmp, run_dir / "config.yaml")

    net = model
    if procs.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[procs.device.index] if cuda else None)
    names = [ds.name for ds in datasets]
    workers = cfg.data.workers
    loader = torch.utils.data.DataLoader(
        TrainInputs(datasets, spec),
        batch_sampler=StepBatches(datasets, cfg.optim.batch_size, cfg.run.seed, start, total,
                                  procs.rank, procs.world),
        num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None, collate_fn=collate,
    )

    def save(step: int) -> None:
        nonlocal last_saved
        if procs.main:
            ckpt.save_atomic({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "total": total,
                "milestones": milestones, "config": cfg.to_dict(), "torch_rng": torch.get_rng_state(),
                "classes": {ds.name: ds.classes for ds in datasets}, "stream": cfg.data.stream,
                "flow": {ds.name: ds.flow_meta for ds in datasets}, "val": last_val,
            }, checkpoint_path)
        last_saved = step

    def run_validation(step: int) -> None:
        nonlocal last_val
        if procs.main:
            last_val = validate(model, datasets, spec, cfg.train.val_videos, workers, procs.device)
            if not last_val:
                log(f"validation at iteration {step}: skipped, no test video in the store")
            for name, acc in last_val.items():
                append_row(run_dir / "metrics.csv", iteration=step, kind="val", dataset=name, accuracy=f"{acc:.4f}")
            if last_val:
                log(f"validation at iteration {step}: "
                    + ", ".join(f"{name} {100 * acc:.1f}%" for name, acc in last_val.items()))
        if procs.world > 1:
            dist.barrier()

    progress.start, progress.t0 = start, time.perf_counter()
    net.train()
    window_loss, window_count, window_t = 0.0, 0, time.perf_counter()
    step = start
    for x, y, task in loader:
        lr = lr_at(step, cfg.optim.lr, milestones)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)  # checkpoints before parameter groups have none
        x = as_input(x, procs.device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        y, task = y.to(procs.device, non_blocking=True), task.to(procs.device, non_blocking=True)
        with torch.autocast(procs.device.type, dtype=torch.bfloat16, enabled=cuda):
            outputs = net(x)
        loss = task_loss(outputs, y, task, names)
        finite = torch.isfinite(loss.detach()).float()
        if procs.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            where = (f"last good checkpoint: {checkpoint_path} (iteration {last_saved})" if last_saved is not None
                     else "no checkpoint was written")
            raise TrainError(f"loss became {loss.item()} at iteration {step + 1} (lr {lr:g}); stopped; {where}. "
                             "Lower optim.lr or check the input data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        window_loss += loss.item()
        window_count += 1
        elapsed = time.perf_counter() - window_t
        samples_per_s = window_count * cfg.optim.batch_size / max(elapsed, 1e-9)
        progress.update(step, window_loss / window_count, lr, samples_per_s)
        if step % cfg.train.log_every == 0 or step == total:
            if procs.main:
                append_row(run_dir / "metrics.csv", iteration=step, kind="train", lr=f"{lr:g}",
                           loss=f"{window_loss / window_count:.5f}", samples_per_s=f"{samples_per_s:.1f}",
                           seconds=f"{elapsed:.2f}")
            window_loss, window_count, window_t = 0.0, 0, time.perf_counter()
        if cfg.train.val_every and step % cfg.train.val_every == 0 and step != total:
            run_validation(step)
        if step % cfg.train.checkpoint_every == 0 and step != total:
            save(step)
    if step != total:
        raise TrainError(f"the data loader stopped at iteration {step} of {total}")
    if start < total or not last_val:
        run_validation(total)
    save(total)
    if procs.main and (run_dir / "metrics.csv").exists():
        plot_curves(run_dir / "metrics.csv", run_dir / "curves.png",
                    f"{cfg.data.stream} stream, {', '.join(names)} split {cfg.data.split}")
    return {"iterations": total, "val": last_val, "checkpoint": str(checkpoint_path), "run_dir": str(run_dir),
            "milestones": milestones, "lr_final": lr_at(total - 1, cfg.optim.lr, milestones)}
