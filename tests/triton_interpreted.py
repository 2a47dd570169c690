"""Run by tests/test_brox_fused.py in a process of its own with TRITON_INTERPRET=1 (the interpreter
must be chosen before triton compiles anything): each Triton kernel of the fused Brox on small CPU
inputs (odd sizes, 2 pairs, flow reaching past the borders) against its torch mirror, then a whole
small solve. Prints one JSON object of largest differences."""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402

from flowprep.algorithms.brox_fused import MirrorOps, brox_flow_fused, pack  # noqa: E402
from flowprep.algorithms.brox_torch import BROX_TORCH_DEFAULTS  # noqa: E402
from flowprep.algorithms.brox_triton import TritonOps  # noqa: E402


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp(min=1.0)).max())


def passes(n: int, h: int, w: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    first = torch.rand(n, h, w) * 255
    second = torch.roll(first, 1, -1) + 8 * torch.rand(n, h, w)
    u, v = 3 * torch.randn(n, h, w), 3 * torch.randn(n, h, w)  # samples past every border
    mirror, kernels = MirrorOps(), TritonOps(block=64)  # several programs a pair
    d_m, d_k = mirror.derivatives(first, second, u, v), kernels.derivatives(first, second, u, v)
    p = dict(BROX_TORCH_DEFAULTS)
    du, dv = pack(0.3 * torch.randn(n, h, w)), pack(0.3 * torch.randn(n, h, w))
    psi_m = mirror.smoothness(u, v, du, dv, p["alpha"], p["epsilon"] ** 2)
    psi_k = kernels.smoothness(u, v, du, dv, p["alpha"], p["epsilon"] ** 2)
    c_m, c_k = mirror.coefficients(d_m, u, v, du, dv, psi_m, p), kernels.coefficients(d_m, u, v, du, dv, psi_m, p)
    du_k, dv_k = du.clone(), dv.clone()
    for colour in (0, 1, 0, 1):
        mirror.sor(colour, c_m, psi_m, du, dv, p["omega"], w)
        kernels.sor(colour, c_m, psi_m, du_k, dv_k, p["omega"], w)
    return {"derivatives": relative(d_k, d_m), "smoothness": relative(psi_k, psi_m),
            "coefficients": relative(c_k, c_m), "sor": max(relative(du_k, du), relative(dv_k, dv))}


def solve() -> float:
    torch.manual_seed(3)
    base = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 50, 60) * 255, 3, 1, 1)[0]
    first = torch.cat([base[:, 4:38, 4:45], base[:, 6:40, 5:46]])  # 2 pairs, 34×41
    second = torch.cat([base[:, 5:39, 6:47], base[:, 6:40, 7:48]])
    params = {"outer_iterations": 2, "inner_iterations": 3, "min_side": 20}
    flow_k = brox_flow_fused(first, second, params, TritonOps(block=256))
    flow_m = brox_flow_fused(first, second, params, MirrorOps())
    return float((flow_k - flow_m).abs().max())


if __name__ == "__main__":
    out = {}
    for n, h, w in ((2, 11, 13), (1, 6, 9), (2, 8, 8)):
        for name, diff in passes(n, h, w, seed=h * w).items():
            out[name] = max(out.get(name, 0.0), diff)
    out["solve"] = solve()
    json.dump(out, sys.stdout)
