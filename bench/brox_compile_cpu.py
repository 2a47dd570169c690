"""Does ``torch.compile`` pay for ``--device torch-cpu``? The inner red-black SOR iteration of the eager
torch-brox (``flowprep/algorithms/brox_torch.py``), eager against compiled, on one pyramid level:
time a call, first-call (compile) time, and whether the results are equal. A 320×240 video has 13
pyramid levels of different sizes, each a new compile in every process (``dynamic=True`` compiles
once but took 1,404 s and ~9.7 GB of gcc memory for a 1.3× gain when tried on the whole solver).

    python bench/brox_compile_cpu.py            # 8 pairs at 240×320, 10 iterations
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowprep.algorithms.brox_torch import sor_iteration as sweep  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    n, h, w = args.pairs, 240, 320
    shape = (n, 1, h, w)
    rhs_u, rhs_v, a12 = (torch.randn(shape) for _ in range(3))
    diag_u, diag_v = (4 + torch.rand(shape) for _ in range(2))
    weights_x, weights_y = torch.rand(n, 1, h, w - 1), torch.rand(n, 1, h - 1, w)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    red = ((yy + xx) % 2 == 0).float()
    black = 1 - red
    inputs = (rhs_u, rhs_v, a12, diag_u, diag_v, weights_x, weights_y, red, black, 1.6)

    def run(fn) -> tuple[torch.Tensor, torch.Tensor, float]:  # noqa: ANN001
        du, dv = torch.zeros(shape), torch.zeros(shape)
        start = time.perf_counter()
        for _ in range(args.iterations):
            du, dv = fn(du, dv, *inputs)
        return du, dv, time.perf_counter() - start

    eager_u, eager_v, eager_s = run(sweep)
    compiled = torch.compile(sweep)
    start = time.perf_counter()
    compiled(torch.zeros(shape), torch.zeros(shape), *inputs)
    first_call = time.perf_counter() - start
    comp_u, comp_v, comp_s = run(compiled)
    diff = max(float((eager_u - comp_u).abs().max()), float((eager_v - comp_v).abs().max()))
    print(f"{n} pairs at {h}x{w}, {args.iterations} red-black iterations, {torch.get_num_threads()} threads")
    print(f"eager     {eager_s:.2f} s")
    print(f"compiled  {comp_s:.2f} s ({eager_s / comp_s:.1f}x); first call (compile) {first_call:.1f} s; "
          f"largest difference {diff:.3g}")
    print(f"a 320x240 video's 13 pyramid levels: ~{13 * first_call / 60:.0f} min of compiling in each process")


if __name__ == "__main__":
    main()
