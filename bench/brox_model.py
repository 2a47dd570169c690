"""A model of the GPU Brox's speed, without a GPU: launches per batch, bytes moved per pair, and the
ceilings they put on pairs/s on an H100 and an H200, for the eager torch-brox and the fused Triton
path side by side; then the EPE-against-iterations curve on Middlebury with the torch mirror.

How it counts (METHOD of the device tool: count bytes and launches, divide by bandwidth):

* eager: ``brox_flow`` runs on fake CUDA tensors (``FakeTensorMode``: nothing is computed or
  allocated) under a ``TorchDispatchMode`` that counts every operation that launches a kernel (not
  views, not ``empty``) and the bytes of its input and output tensors;
* fused: the same driver (``brox_flow_fused``) runs on fake CUDA tensors with the kernels replaced
  by their design figures (:class:`ModelOps`: which planes each kernel reads and writes, 4 bytes a
  pixel each), while the torch operations around them (pre-smoothing, pyramid, flow resizing,
  unpacking the increment) are counted as for eager.

A ceiling is pairs/s = batch / max(batch · bytes a pair / bandwidth, launches · launch time): all
bytes from DRAM once (no L2 reuse, which only helps), a launch costing ``--launch-us`` on the GPU's
queue. These are modelled figures, not measurements.

    python bench/brox_model.py                  # the table, the kernels' registers, the EPE curve (~6 min)
    python bench/brox_model.py --no-epe         # the table and the registers
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowprep.algorithms import brox_fused  # noqa: E402
from flowprep.algorithms.brox_fused import brox_flow_fused, packed_width  # noqa: E402
from flowprep.algorithms.brox_torch import BROX_TORCH_DEFAULTS, brox_flow  # noqa: E402

GPUS = {"H100 SXM": 3.35e12, "H200": 4.8e12}  # bytes/s of HBM
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "detach", "lift_fresh", "_local_scalar_dense", "alias",
              "_unsafe_view", "view", "expand", "permute", "slice", "select", "unsqueeze", "squeeze", "t",
              "as_strided", "unbind", "split", "reshape", "clone_view"}


class Count(TorchDispatchMode):
    """Launching operations and the bytes of their operands, from the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.launches = 0
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func.is_view or name in _NO_KERNEL:
            return out
        self.launches += 1
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        return out

    def add(self, launches: int, nbytes: int) -> None:
        self.launches += launches
        self.bytes += nbytes


class ModelOps:
    """The fused passes as their design: outputs of the right shape (not computed) and, per launch,
    the planes each kernel reads and writes (4 bytes a pixel; packed planes count their pixels)."""

    def __init__(self, count: Count):
        self.count = count

    def derivatives(self, first, second, u, v):  # noqa: ANN001, ANN201
        n, h, w = first.shape
        plane = 4 * n * h * w
        # first pass: first, second, u, v in (the stencil's neighbours from cache), 5 planes out;
        # second pass: ix, iy in, ixx, ixy, iyy out
        self.count.add(2, (4 + 5) * plane + (2 + 3) * plane)
        return torch.empty(n, 8, h, w, device=first.device)

    def smoothness(self, u, v, du, dv, alpha, eps2):  # noqa: ANN001, ANN201
        n, h, w = u.shape
        self.count.add(1, 4 * n * h * w * (2 + 2 + 1))  # u, v, du, dv in; ψ′ out
        return torch.empty(n, 2, h, packed_width(w), device=u.device)

    def coefficients(self, d, u, v, du, dv, psi, p):  # noqa: ANN001, ANN201
        n, h, w = u.shape
        self.count.add(1, 4 * n * h * w * (8 + 2 + 3 + 5))  # 8 derivative planes, u, v, du, dv, ψ′ in; 5 out
        return torch.empty(n, 5, 2, h, packed_width(w), device=u.device)

    def sor(self, colour, coeff, psi, du, dv, omega, width):  # noqa: ANN001, ANN201
        n, _, h, _ = du.shape
        half = 4 * n * h * width / 2  # one colour's pixels
        # own: 5 coefficients, ψ′, du, dv in, du, dv out; the other colour's du, dv, ψ′ (neighbours) in
        self.count.add(1, int(half * (5 + 1 + 2 + 2 + 3)))


def count_call(run, n: int, h: int, w: int) -> Count:  # noqa: ANN001
    """Launches and bytes of one call on ``n`` fake CUDA pairs of h×w."""
    count = Count()
    with FakeTensorMode(allow_non_fake_inputs=True):  # constants (the derivative taps) are real CPU tensors
        first = torch.empty(n, h, w, dtype=torch.uint8, device="cuda")
        second = torch.empty(n, h, w, dtype=torch.uint8, device="cuda")
        with count:
            run(first, second, count)
    brox_fused._INDEX_CACHE.clear()  # fake tensors must not outlive the mode
    brox_fused._NEIGHBOUR_CACHE.clear()
    return count


def pyramid_pixels(h: int, w: int, p: dict) -> tuple[int, float]:
    """(levels, pixels of all levels / pixels of the finest), as brox_torch._pyramid sizes them."""
    sizes = [(h, w)]
    while min(sizes[-1]) * p["scale"] >= p["min_side"]:
        sh, sw = sizes[-1]
        sizes.append((max(1, round(sh * p["scale"])), max(1, round(sw * p["scale"]))))
    return len(sizes), sum(a * b for a, b in sizes) / (h * w)


def ceilings(launches: int, bytes_per_pair: float, batch: int, launch_us: float) -> dict[str, float]:
    """Pairs/s each GPU allows: the slower of moving the bytes and issuing the launches."""
    return {gpu: batch / max(batch * bytes_per_pair / bandwidth, launches * launch_us * 1e-6)
            for gpu, bandwidth in GPUS.items()}


def model_table(params: dict, batch: int, launch_us: float, sizes: list[tuple[int, int]],
                paths: tuple[str, ...] = ("eager", "fused")) -> list[dict]:
    rows = []
    for w, h in sizes:
        levels, ratio = pyramid_pixels(h, w, params)
        for path in paths:
            start = time.perf_counter()
            if path == "eager":
                count = count_call(lambda a, b, c: brox_flow(a, b, params), 1, h, w)
            else:
                count = count_call(lambda a, b, c: brox_flow_fused(a, b, params, ModelOps(c)), 1, h, w)
            seconds = time.perf_counter() - start
            per_pair = count.bytes  # batch 1: every byte is this pair's (launches do not grow with the batch)
            row = {"size": f"{w}x{h}", "path": path, "levels": levels, "pixels": ratio, "launches": count.launches,
                   "gb_per_pair": per_pair / 1e9, "count_s": seconds,
                   "bytes_per_level_pixel": per_pair / (ratio * h * w)}
            row.update(ceilings(count.launches, per_pair, batch, launch_us))
            rows.append(row)
    return rows


def epe_curve(settings: list[dict]) -> list[dict]:
    """Middlebury EPE (RubberWhale, Grove3, Urban2) of the torch mirror for each setting."""
    import cv2

    from flowprep.algorithms.middlebury import end_point_error, read_flo

    folder = REPO.parent / "shared" / "data" / "flow-gt"
    pairs = []
    for name in ("RubberWhale", "Grove3", "Urban2"):
        a, b = (torch.from_numpy(cv2.imread(str(folder / name / f), cv2.IMREAD_GRAYSCALE))[None]
                for f in ("frame10.png", "frame11.png"))
        pairs.append((name, a, b, read_flo(str(folder / name / "flow10.flo"))))
    rows = []
    for setting in settings:
        params = {**BROX_TORCH_DEFAULTS, **setting}
        row = dict(setting)
        for name, a, b, truth in pairs:
            row[name] = end_point_error(brox_flow_fused(a, b, params)[0].numpy(), truth)
        rows.append(row)
    return rows


def print_kernel_resources() -> None:
    """Registers a thread and bytes spilled of each fused kernel, built here for sm_90 and sm_80."""
    try:
        from flowprep.algorithms.brox_triton import kernel_resources
    except ImportError:
        print("\n(no triton here: kernel registers not reported)")
        return
    built = {capability: kernel_resources(capability) for capability in (90, 80)}
    print("\n| kernel | sm_90 registers | sm_80 registers | bytes spilled |")
    print("|---|---|---|---|")
    for name in built[90]:
        print(f"| {name} | {built[90][name][0]} | {built[80][name][0]} | {built[90][name][1] + built[80][name][1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="pairs a call (the fused path needs ~9 MB a pair "
                        "at 320x240: 128 take ~1.2 GB)")
    parser.add_argument("--launch-us", type=float, default=4.0, help="GPU time a launch costs (µs)")
    parser.add_argument("--no-epe", action="store_true", help="skip the Middlebury EPE curve")
    args = parser.parse_args()
    params = dict(BROX_TORCH_DEFAULTS)
    print(f"settings: outer {params['outer_iterations']} × inner {params['inner_iterations']}, scale "
          f"{params['scale']}, min side {params['min_side']}; batch {args.batch}, {args.launch_us} µs a launch "
          "(modelled, no GPU)")
    print("| size | path | levels | launches a call | launch time a call | GB a pair | B a pixel of all levels | "
          "H100 pairs/s | H200 pairs/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in model_table(params, args.batch, args.launch_us, [(320, 240), (340, 256)]):
        print(f"| {row['size']} | {row['path']} | {row['levels']} ({row['pixels']:.2f}× the pixels) | "
              f"{row['launches']:,} | {row['launches'] * args.launch_us / 1000:,.1f} ms | {row['gb_per_pair']:.3f} | "
              f"{row['bytes_per_level_pixel']:,.0f} | "
              f"{row['H100 SXM']:,.0f} | {row['H200']:,.0f} |", flush=True)
    print_kernel_resources()
    if args.no_epe:
        return
    settings = [{"outer_iterations": o, "inner_iterations": i} for o, i in
                ((5, 25), (5, 20), (5, 15), (5, 10), (4, 25), (3, 25), (5, 30), (6, 25))]
    print("\n| outer × inner | RubberWhale | Grove3 | Urban2 | mean | H100 pairs/s (320x240, modelled) |")
    print("|---|---|---|---|---|---|")
    for row in epe_curve(settings):
        params = {**BROX_TORCH_DEFAULTS, **{k: row[k] for k in ("outer_iterations", "inner_iterations")}}
        fused = model_table(params, args.batch, args.launch_us, [(320, 240)], ("fused",))[0]
        mean = (row["RubberWhale"] + row["Grove3"] + row["Urban2"]) / 3
        print(f"| {row['outer_iterations']} × {row['inner_iterations']} | {row['RubberWhale']:.3f} | "
              f"{row['Grove3']:.3f} | {row['Urban2']:.3f} | {mean:.3f} | {fused['H100 SXM']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
