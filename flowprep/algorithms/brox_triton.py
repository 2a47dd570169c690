"""The fused Brox passes of :mod:`flowprep.algorithms.brox_fused` as Triton kernels (``triton-brox``).

One kernel a pass (see that module for the passes and the checkerboard packing); each program
handles ``BLOCK`` pixels of one pair, the grid covers the batch. Every load is masked and every
neighbour index clamped into the image, so no address outside an array is formed (the interpreter,
``TRITON_INTERPRET=1``, does not check bounds). Imported only where the fused path runs: building the
registry or running on the CPU imports no triton.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import torch
import triton
import triton.language as tl

from flowprep.algorithms.brox_fused import DERIVATIVE_TAPS, brox_flow_fused, packed_width
from flowprep.algorithms.brox_torch import create_brox_torch, torch_flow_method
from flowprep.algorithms.method import FlowMethod

BLOCK = 256  # pixels a program (a power of two): 2 a thread of 4 warps; 512 spills in the SOR kernel on sm_90
C0, C1, C3, C4 = DERIVATIVE_TAPS[0], DERIVATIVE_TAPS[1], DERIVATIVE_TAPS[3], DERIVATIVE_TAPS[4]


@triton.jit
def _clamp(i, hi):
    return tl.minimum(tl.maximum(i, 0), hi)


@triton.jit
def _taps(i, hi):
    """i − 2, i − 1, i + 1, i + 2 clamped into [0, hi]: the points of the 5-tap derivative (its centre is 0)."""
    return _clamp(i - 2, hi), _clamp(i - 1, hi), _clamp(i + 1, hi), _clamp(i + 2, hi)


@triton.jit
def _five_tap(ptr, at0, at1, at3, at4, mask, c0, c1, c3, c4):
    """Σ c_k·ptr[at_k] over the four outer points of the 5-tap derivative, from the left/top."""
    return tl.load(ptr + at0, mask=mask, other=0.0) * c0 + tl.load(ptr + at1, mask=mask, other=0.0) * c1 \
        + tl.load(ptr + at3, mask=mask, other=0.0) * c3 + tl.load(ptr + at4, mask=mask, other=0.0) * c4


@triton.jit
def _warped(second, u, v, base, y, x, H, W, mask):
    """second(x + u(y, x), y + v(y, x)), bilinear, the point clamped to the image (y, x inside it)."""
    at = base + y * W + x
    px = tl.minimum(tl.maximum(x.to(tl.float32) + tl.load(u + at, mask=mask, other=0.0), 0.0), (W - 1) * 1.0)
    py = tl.minimum(tl.maximum(y.to(tl.float32) + tl.load(v + at, mask=mask, other=0.0), 0.0), (H - 1) * 1.0)
    x0f = tl.floor(px)
    y0f = tl.floor(py)
    fx = px - x0f
    fy = py - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    x1 = tl.minimum(x0 + 1, W - 1)
    y1 = tl.minimum(y0 + 1, H - 1)
    top = tl.load(second + base + y0 * W + x0, mask=mask, other=0.0) * (1.0 - fx) \
        + tl.load(second + base + y0 * W + x1, mask=mask, other=0.0) * fx
    bottom = tl.load(second + base + y1 * W + x0, mask=mask, other=0.0) * (1.0 - fx) \
        + tl.load(second + base + y1 * W + x1, mask=mask, other=0.0) * fx
    return top * (1.0 - fy) + bottom * fy


@triton.jit
def _first_derivatives_kernel(first, second, u, v, d, H, W, c0, c1, c3, c4, BLOCK: tl.constexpr):
    """Planes ix, iy, iz, ixz, iyz of ``d`` (N×8×H×W): the warp fused in (the warped frame at the 9
    points of the two 5-tap stencils)."""
    n = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    y = _clamp(offs // W, H - 1)
    x = offs % W
    base = n * H * W
    xm2, xm1, xp1, xp2 = _taps(x, W - 1)
    ym2, ym1, yp1, yp2 = _taps(y, H - 1)
    image = first + base
    f0 = tl.load(image + y * W + x, mask=mask, other=0.0)
    dxf = _five_tap(image, y * W + xm2, y * W + xm1, y * W + xp1, y * W + xp2, mask, c0, c1, c3, c4)
    dyf = _five_tap(image, ym2 * W + x, ym1 * W + x, yp1 * W + x, yp2 * W + x, mask, c0, c1, c3, c4)
    w0 = _warped(second, u, v, base, y, x, H, W, mask)
    dxw = _warped(second, u, v, base, y, xm2, H, W, mask) * c0 + _warped(second, u, v, base, y, xm1, H, W, mask) * c1 \
        + _warped(second, u, v, base, y, xp1, H, W, mask) * c3 + _warped(second, u, v, base, y, xp2, H, W, mask) * c4
    dyw = _warped(second, u, v, base, ym2, x, H, W, mask) * c0 + _warped(second, u, v, base, ym1, x, H, W, mask) * c1 \
        + _warped(second, u, v, base, yp1, x, H, W, mask) * c3 + _warped(second, u, v, base, yp2, x, H, W, mask) * c4
    plane = H * W
    out = d + n * 8 * plane + y * W + x
    tl.store(out, 0.5 * (dxf + dxw), mask=mask)
    tl.store(out + plane, 0.5 * (dyf + dyw), mask=mask)
    tl.store(out + 2 * plane, w0 - f0, mask=mask)
    tl.store(out + 6 * plane, dxw - dxf, mask=mask)
    tl.store(out + 7 * plane, dyw - dyf, mask=mask)


@triton.jit
def _second_derivatives_kernel(d, H, W, c0, c1, c3, c4, BLOCK: tl.constexpr):
    """Planes ixx = ∂x ix, ixy = ∂y ix, iyy = ∂y iy of ``d``, from its planes ix and iy."""
    n = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    y = _clamp(offs // W, H - 1)
    x = offs % W
    plane = H * W
    ix = d + n * 8 * plane
    iy = ix + plane
    xm2, xm1, xp1, xp2 = _taps(x, W - 1)
    ym2, ym1, yp1, yp2 = _taps(y, H - 1)
    ixx = _five_tap(ix, y * W + xm2, y * W + xm1, y * W + xp1, y * W + xp2, mask, c0, c1, c3, c4)
    ixy = _five_tap(ix, ym2 * W + x, ym1 * W + x, yp1 * W + x, yp2 * W + x, mask, c0, c1, c3, c4)
    iyy = _five_tap(iy, ym2 * W + x, ym1 * W + x, yp1 * W + x, yp2 * W + x, mask, c0, c1, c3, c4)
    out = ix + y * W + x
    tl.store(out + 3 * plane, ixx, mask=mask)
    tl.store(out + 4 * plane, ixy, mask=mask)
    tl.store(out + 5 * plane, iyy, mask=mask)


@triton.jit
def _slot(c, y, x, H, Wc):
    """Offset of pixel (y, x) of colour c in a packed N×2×H×Wc array (within one pair)."""
    return c * H * Wc + y * Wc + x // 2


@triton.jit
def _packed_pixels(H, W, Wc, BLOCK: tl.constexpr):
    """(pair, colour, y, x, mask) of this program's packed slots over both colours of one pair; y and
    x clamped into the image, mask false for slots past the array or holding no pixel."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    c = offs // (H * Wc)
    rest = offs % (H * Wc)
    y = rest // Wc
    x = 2 * (rest % Wc) + ((y + c) % 2)
    mask = (offs < 2 * H * Wc) & (x < W)
    return tl.program_id(1), c, _clamp(y, H - 1), _clamp(x, W - 1), mask


@triton.jit
def _smoothness_kernel(u, v, du, dv, psi, H, W, Wc, alpha_half, eps2, BLOCK: tl.constexpr):
    """ψ′ = (α/2) / sqrt(|∇(u + du)|² + |∇(v + dv)|² + ε²), forward differences (0 past the last
    column/row), stored packed."""
    n, c, y, x, mask = _packed_pixels(H, W, Wc, BLOCK)
    full = n * H * W
    packed = n * 2 * H * Wc
    has_right = x + 1 < W
    has_down = y + 1 < H
    xr = _clamp(x + 1, W - 1)
    yd = _clamp(y + 1, H - 1)
    own = packed + _slot(c, y, x, H, Wc)
    right = packed + _slot(1 - c, y, xr, H, Wc)
    down = packed + _slot(1 - c, yd, x, H, Wc)
    fu = tl.load(u + full + y * W + x, mask=mask, other=0.0) + tl.load(du + own, mask=mask, other=0.0)
    fv = tl.load(v + full + y * W + x, mask=mask, other=0.0) + tl.load(dv + own, mask=mask, other=0.0)
    m = mask & has_right
    ux = tl.where(m, tl.load(u + full + y * W + xr, mask=m, other=0.0) + tl.load(du + right, mask=m, other=0.0) - fu,
                  0.0)
    vx = tl.where(m, tl.load(v + full + y * W + xr, mask=m, other=0.0) + tl.load(dv + right, mask=m, other=0.0) - fv,
                  0.0)
    m = mask & has_down
    uy = tl.where(m, tl.load(u + full + yd * W + x, mask=m, other=0.0) + tl.load(du + down, mask=m, other=0.0) - fu,
                  0.0)
    vy = tl.where(m, tl.load(v + full + yd * W + x, mask=m, other=0.0) + tl.load(dv + down, mask=m, other=0.0) - fv,
                  0.0)
    tl.store(psi + own, alpha_half / tl.sqrt(ux * ux + uy * uy + vx * vx + vy * vy + eps2), mask=mask)


@triton.jit
def _links(psi, packed, c, y, x, H, W, Wc, mask):
    """Weights 0.5·(ψ′(p) + ψ′(q)) of the links to the right, left, down and up neighbours (0 off the
    image), and the packed offsets of those neighbours (the other colour)."""
    own_psi = tl.load(psi + packed + _slot(c, y, x, H, Wc), mask=mask, other=0.0)
    o = 1 - c
    at_r = packed + _slot(o, y, _clamp(x + 1, W - 1), H, Wc)
    at_l = packed + _slot(o, y, _clamp(x - 1, W - 1), H, Wc)
    at_d = packed + _slot(o, _clamp(y + 1, H - 1), x, H, Wc)
    at_u = packed + _slot(o, _clamp(y - 1, H - 1), x, H, Wc)
    m_r = mask & (x + 1 < W)
    m_l = mask & (x >= 1)
    m_d = mask & (y + 1 < H)
    m_u = mask & (y >= 1)
    w_r = tl.where(m_r, 0.5 * (tl.load(psi + at_r, mask=m_r, other=0.0) + own_psi), 0.0)
    w_l = tl.where(m_l, 0.5 * (own_psi + tl.load(psi + at_l, mask=m_l, other=0.0)), 0.0)
    w_d = tl.where(m_d, 0.5 * (tl.load(psi + at_d, mask=m_d, other=0.0) + own_psi), 0.0)
    w_u = tl.where(m_u, 0.5 * (own_psi + tl.load(psi + at_u, mask=m_u, other=0.0)), 0.0)
    return w_r, w_l, w_d, w_u, at_r, at_l, at_d, at_u, m_r, m_l, m_d, m_u


@triton.jit
def _coefficients_kernel(d, u, v, du, dv, psi, coeff, H, W, Wc, delta_half, gamma_half, eps2, zeta,
                         BLOCK: tl.constexpr):
    """The SOR system of the increment (du, dv) at each pixel: rhs_u, rhs_v, a12, diag_u, diag_v,
    packed into ``coeff`` (N×5×2×H×Wc); the data terms' robust weights at the current increment."""
    n, c, y, x, mask = _packed_pixels(H, W, Wc, BLOCK)
    plane = H * W
    at = n * 8 * plane + y * W + x
    ix = tl.load(d + at, mask=mask, other=0.0)
    iy = tl.load(d + at + plane, mask=mask, other=0.0)
    iz = tl.load(d + at + 2 * plane, mask=mask, other=0.0)
    ixx = tl.load(d + at + 3 * plane, mask=mask, other=0.0)
    ixy = tl.load(d + at + 4 * plane, mask=mask, other=0.0)
    iyy = tl.load(d + at + 5 * plane, mask=mask, other=0.0)
    ixz = tl.load(d + at + 6 * plane, mask=mask, other=0.0)
    iyz = tl.load(d + at + 7 * plane, mask=mask, other=0.0)
    packed = n * 2 * H * Wc
    own = packed + _slot(c, y, x, H, Wc)
    dui = tl.load(du + own, mask=mask, other=0.0)
    dvi = tl.load(dv + own, mask=mask, other=0.0)
    norm_c = 1.0 / (ix * ix + iy * iy + zeta)
    norm_x = 1.0 / (ixx * ixx + ixy * ixy + zeta)
    norm_y = 1.0 / (ixy * ixy + iyy * iyy + zeta)
    rc = iz + ix * dui + iy * dvi
    psi_c = delta_half / tl.sqrt(rc * rc * norm_c + eps2) * norm_c
    rx = ixz + ixx * dui + ixy * dvi
    ry = iyz + ixy * dui + iyy * dvi
    psi_g = gamma_half / tl.sqrt(rx * rx * norm_x + ry * ry * norm_y + eps2)
    gx = psi_g * norm_x
    gy = psi_g * norm_y
    a11 = psi_c * ix * ix + gx * ixx * ixx + gy * ixy * ixy
    a12 = psi_c * ix * iy + gx * ixx * ixy + gy * ixy * iyy
    a22 = psi_c * iy * iy + gx * ixy * ixy + gy * iyy * iyy
    b1 = -(psi_c * ix * iz + gx * ixx * ixz + gy * ixy * iyz)
    b2 = -(psi_c * iy * iz + gx * ixy * ixz + gy * iyy * iyz)
    w_r, w_l, w_d, w_u, at_r, at_l, at_d, at_u, m_r, m_l, m_d, m_u = _links(psi, packed, c, y, x, H, W, Wc, mask)
    total = w_r + w_l + w_d + w_u
    full = n * plane
    xr, xl = _clamp(x + 1, W - 1), _clamp(x - 1, W - 1)
    yd, yu = _clamp(y + 1, H - 1), _clamp(y - 1, H - 1)
    ui = tl.load(u + full + y * W + x, mask=mask, other=0.0)
    vi = tl.load(v + full + y * W + x, mask=mask, other=0.0)
    su = w_r * tl.load(u + full + y * W + xr, mask=m_r, other=0.0) \
        + w_l * tl.load(u + full + y * W + xl, mask=m_l, other=0.0) \
        + w_d * tl.load(u + full + yd * W + x, mask=m_d, other=0.0) \
        + w_u * tl.load(u + full + yu * W + x, mask=m_u, other=0.0)
    sv = w_r * tl.load(v + full + y * W + xr, mask=m_r, other=0.0) \
        + w_l * tl.load(v + full + y * W + xl, mask=m_l, other=0.0) \
        + w_d * tl.load(v + full + yd * W + x, mask=m_d, other=0.0) \
        + w_u * tl.load(v + full + yu * W + x, mask=m_u, other=0.0)
    out = coeff + n * 5 * 2 * H * Wc + _slot(c, y, x, H, Wc)
    stride = 2 * H * Wc
    tl.store(out, b1 + su - total * ui, mask=mask)
    tl.store(out + stride, b2 + sv - total * vi, mask=mask)
    tl.store(out + 2 * stride, a12, mask=mask)
    tl.store(out + 3 * stride, a11 + total, mask=mask)
    tl.store(out + 4 * stride, a22 + total, mask=mask)


@triton.jit
def _sor_kernel(coeff, psi, du, dv, H, W, Wc, colour, omega, BLOCK: tl.constexpr):
    """One over-relaxed Gauss–Seidel step at the pixels of ``colour``: du from its neighbours (the
    other colour), then dv with the new du (the order of the eager code)."""
    n = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    y = offs // Wc
    x = 2 * (offs % Wc) + ((y + colour) % 2)
    mask = (offs < H * Wc) & (x < W)
    y = _clamp(y, H - 1)
    x = _clamp(x, W - 1)
    packed = n * 2 * H * Wc
    own = packed + _slot(colour, y, x, H, Wc)
    w_r, w_l, w_d, w_u, at_r, at_l, at_d, at_u, m_r, m_l, m_d, m_u = _links(psi, packed, colour, y, x, H, W, Wc, mask)
    system = coeff + n * 5 * 2 * H * Wc + _slot(colour, y, x, H, Wc)
    stride = 2 * H * Wc
    rhs_u = tl.load(system, mask=mask, other=0.0)
    rhs_v = tl.load(system + stride, mask=mask, other=0.0)
    a12 = tl.load(system + 2 * stride, mask=mask, other=0.0)
    diag_u = tl.load(system + 3 * stride, mask=mask, other=1.0)
    diag_v = tl.load(system + 4 * stride, mask=mask, other=1.0)
    dui = tl.load(du + own, mask=mask, other=0.0)
    dvi = tl.load(dv + own, mask=mask, other=0.0)
    nu = w_r * tl.load(du + at_r, mask=m_r, other=0.0) + w_l * tl.load(du + at_l, mask=m_l, other=0.0) \
        + w_d * tl.load(du + at_d, mask=m_d, other=0.0) + w_u * tl.load(du + at_u, mask=m_u, other=0.0)
    new = (rhs_u + nu - a12 * dvi) / diag_u
    dui = dui + omega * (new - dui)
    nv = w_r * tl.load(dv + at_r, mask=m_r, other=0.0) + w_l * tl.load(dv + at_l, mask=m_l, other=0.0) \
        + w_d * tl.load(dv + at_d, mask=m_d, other=0.0) + w_u * tl.load(dv + at_u, mask=m_u, other=0.0)
    new = (rhs_v + nv - a12 * dui) / diag_v
    dvi = dvi + omega * (new - dvi)
    tl.store(du + own, dui, mask=mask)
    tl.store(dv + own, dvi, mask=mask)


KERNELS = {  # name → kernel, for the compile test and the model
    "first_derivatives": _first_derivatives_kernel, "second_derivatives": _second_derivatives_kernel,
    "smoothness": _smoothness_kernel, "coefficients": _coefficients_kernel, "sor": _sor_kernel,
}


_INT_ARGS = {"H", "W", "Wc", "colour"}
_FLOAT_ARGS = {"omega", "alpha_half", "eps2", "delta_half", "gamma_half", "zeta", "c0", "c1", "c3", "c4"}


def kernel_resources(capability: int = 90, block: int = BLOCK) -> dict[str, tuple[int, int]]:
    """{kernel: (registers a thread, bytes spilled)} of each kernel built for sm_``capability`` here,
    without a GPU: ``triton.compile`` for that target, then the ptxas bundled with triton run with
    ``-v`` on the PTX (what the driver would load)."""
    import triton.backends.nvidia as nvidia
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptxas = os.path.join(os.path.dirname(nvidia.__file__), "bin", "ptxas")
    out = {}
    for name, kernel in KERNELS.items():
        signature = {arg: "constexpr" if arg == "BLOCK" else "i32" if arg in _INT_ARGS
                     else "fp32" if arg in _FLOAT_ARGS else "*fp32" for arg in kernel.arg_names}
        built = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs={"BLOCK": block}),
                               target=GPUTarget("cuda", capability, 32))
        with tempfile.TemporaryDirectory() as folder:
            ptx = os.path.join(folder, "kernel.ptx")
            with open(ptx, "w") as f:
                f.write(built.asm["ptx"])
            arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
            report = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", ptx, "-o", os.path.join(folder, "k.cubin")],
                                    capture_output=True, text=True, check=True)
        text = report.stdout + report.stderr
        registers = int(re.search(r"Used (\d+) registers", text).group(1))
        spilled = sum(int(b) for b in re.findall(r"(\d+) bytes spill stores", text))
        out[name] = (registers, spilled)
    return out


class TritonOps:
    """The passes of :class:`flowprep.algorithms.brox_fused.FusedOps` as Triton launches."""

    def __init__(self, block: int = BLOCK):
        self.block = block

    def _grid(self, size: int, n: int) -> tuple[int, int]:
        return triton.cdiv(size, self.block), n

    def derivatives(self, first: torch.Tensor, second: torch.Tensor, u: torch.Tensor, v: torch.Tensor
                    ) -> torch.Tensor:
        n, h, w = first.shape
        d = torch.empty(n, 8, h, w, dtype=torch.float32, device=first.device)
        grid = self._grid(h * w, n)
        _first_derivatives_kernel[grid](first, second, u, v, d, h, w, C0, C1, C3, C4, BLOCK=self.block)
        _second_derivatives_kernel[grid](d, h, w, C0, C1, C3, C4, BLOCK=self.block)
        return d

    def smoothness(self, u: torch.Tensor, v: torch.Tensor, du: torch.Tensor, dv: torch.Tensor, alpha: float,
                   eps2: float) -> torch.Tensor:
        n, h, w = u.shape
        wc = packed_width(w)
        psi = torch.zeros(n, 2, h, wc, dtype=torch.float32, device=u.device)
        _smoothness_kernel[self._grid(2 * h * wc, n)](u, v, du, dv, psi, h, w, wc, alpha * 0.5, eps2,
                                                       BLOCK=self.block)
        return psi

    def coefficients(self, d: torch.Tensor, u: torch.Tensor, v: torch.Tensor, du: torch.Tensor, dv: torch.Tensor,
                     psi: torch.Tensor, p: dict) -> torch.Tensor:
        n, h, w = u.shape
        wc = packed_width(w)
        coeff = torch.zeros(n, 5, 2, h, wc, dtype=torch.float32, device=u.device)
        _coefficients_kernel[self._grid(2 * h * wc, n)](d, u, v, du, dv, psi, coeff, h, w, wc, p["delta"] * 0.5,
                                                         p["gamma"] * 0.5, p["epsilon"] ** 2, p["zeta"],
                                                         BLOCK=self.block)
        return coeff

    def sor(self, colour: int, coeff: torch.Tensor, psi: torch.Tensor, du: torch.Tensor, dv: torch.Tensor,
            omega: float, width: int) -> None:
        n, _, h, wc = du.shape
        _sor_kernel[self._grid(h * wc, n)](coeff, psi, du, dv, h, width, wc, colour, omega, BLOCK=self.block)


def brox_flow_triton(first: torch.Tensor, second: torch.Tensor, params: dict | None = None) -> torch.Tensor:
    """:func:`flowprep.algorithms.brox_fused.brox_flow_fused` with the Triton kernels (CUDA tensors, or
    CPU tensors under ``TRITON_INTERPRET=1``)."""
    return brox_flow_fused(first, second, params, TritonOps())


def create_brox_triton(p: dict, device: str = "cuda:0", max_batch: int = 32) -> FlowMethod:
    """The registry's factory of ``triton-brox``: the fused kernels on ``device`` (about 30 float32 planes a
    pair at the finest level). ``kernel=eager`` runs the eager PyTorch Brox instead (``torch-brox``,
    which the metadata then records)."""
    params = {k: v for k, v in p.items() if k != "kernel"}
    if p.get("kernel", "fused") == "eager":
        return create_brox_torch(params, device, max_batch)
    method = torch_flow_method("triton-brox", brox_flow_triton, params, device, max_batch, planes=30)
    method.params = {**p, "device": str(torch.device(device))}  # the kernel choice recorded too
    return method
