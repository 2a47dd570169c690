"""Forward+backward samples/s of the spatial and temporal CNN-M-2048, with FLOPs per sample.

Usage: python bench/train_step.py [--batch 8] [--steps 3] [--size 224] [--width 1.0]

On the CPU in fp32; on every CUDA GPU torch sees also with bf16 autocast and channels_last (as
trainer fit runs there). FLOPs count multiply-adds of convolutions and linear layers twice (forward
only; a training step is about 3× that), so achieved FLOP/s = samples/s × 3 × FLOPs per sample.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

from trainer.models import build_model


def forward_flops(model: nn.Module, channels: int, size: int) -> int:
    """2 × multiply-adds of every Conv2d and Linear for one sample."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += 2 * output.numel() * per_output
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, channels, size, size))
    for h in handles:
        h.remove()
    return total


def samples_per_second(model: nn.Module, channels: int, size: int, batch: int, steps: int, device: torch.device,
                       bf16: bool) -> float:
    model = model.to(device, memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, channels, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(batch, dtype=torch.long, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x)["ucf101"].float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="samples per step on the CPU (GPU: 256)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    args = parser.parse_args()
    devices = [(torch.device("cpu"), False, args.batch)]
    devices += [(torch.device(f"cuda:{i}"), True, 256) for i in range(torch.cuda.device_count())]
    print(f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"input {args.size}x{args.size}, width {args.width}, 101 classes")
    print("| stream | device | precision | batch | GFLOP/sample (fwd) | samples/s | achieved TFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for stream, channels in (("spatial", 3), ("temporal", 20)):
        flops = forward_flops(build_model(stream, 10, {"ucf101": 101}, args.width, 0.5, args.size), channels,
                              args.size)
        for device, bf16, batch in devices:
            model = build_model(stream, 10, {"ucf101": 101}, args.width, 0.5, args.size)
            rate = samples_per_second(model, channels, args.size, batch, args.steps, device, bf16)
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            print(f"| {stream} | {name} | {'bf16' if bf16 else 'fp32'} | {batch} | {flops / 1e9:.2f} | {rate:.1f} | "
                  f"{rate * 3 * flops / 1e12:.3f} |", flush=True)


if __name__ == "__main__":
    main()
