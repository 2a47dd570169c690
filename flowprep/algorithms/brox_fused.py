"""The fused Brox: the energy of :mod:`flowprep.algorithms.brox_torch` cut into the passes a GPU runs
as single kernels, and a torch mirror of those kernels' arithmetic.

Why: the eager solver launches one small kernel per tensor operation (~179,000 a call at 320×240)
and moves ~31 GB a frame pair (``bench/brox_model.py``); a red-black SOR sweep needs only the flow
increment and a few coefficients per pixel. Per pyramid level the fused solver runs:

* ``derivatives``: the second frame warped by the current flow (bilinear, coordinates clamped to the
  image: grid_sample's border mode) and the eight derivative planes of the data terms, in two
  passes (the first derivatives, then the second ones from them);
* per fixed-point (outer) iteration, ``smoothness`` (the robust smoothness weight ψ′ per pixel from
  the flow u + du) and ``coefficients`` (data-term weights, the SOR system: right sides, diagonals,
  the u–v coupling);
* per SOR (inner) iteration, ``sor`` once per colour: red pixels, then black.

The SOR arrays are stored **by colour** (checkerboard packing): colour c = (y + x) mod 2 of pixel
(y, x) lives at ``packed[:, c, y, x // 2]``. A colour pass then reads only its own pixels'
coefficients and the other colour's increments, ~52 bytes a pixel an iteration for both passes
(interleaved, every pass would read every pixel's coefficients: ~88). The link weight between two
pixels is 0.5·(ψ′(p) + ψ′(q)), rebuilt from the ψ′ plane where it is used, as the eager code does.

:class:`MirrorOps` computes each pass with torch tensor operations in the same order of arithmetic as
the kernels of :mod:`flowprep.algorithms.brox_triton` (the reference the kernels are tested against;
it runs on any device). :func:`brox_flow_fused` drives either.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from flowprep.algorithms.brox_torch import (
    BROX_TORCH_DEFAULTS,
    coarse_to_fine,
    data_system,
    gradient_norms,
    link_weights,
    smoothness_system,
    smoothness_weights,
)

# the 5-tap derivative of the eager code, as float32 (its centre tap is 0)
DERIVATIVE_TAPS = tuple(float(c) for c in (torch.tensor([1.0, -8.0, 0.0, 8.0, -1.0]) / 12.0))
DERIVATIVE_PLANES = ("ix", "iy", "iz", "ixx", "ixy", "iyy", "ixz", "iyz")
COEFFICIENT_PLANES = ("rhs_u", "rhs_v", "a12", "diag_u", "diag_v")


def packed_width(width: int) -> int:
    """Columns of one colour's array: ceil(W/2) (rows where the colour starts at x = 1 leave the last unused)."""
    return (width + 1) // 2


_INDEX_CACHE: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _pack_index(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat packed index, flat full-layout index) of every pixel: packed slot (c, y, j) holds pixel
    (y, 2j + (y + c) mod 2)."""
    key = (height, width, str(device))
    if key not in _INDEX_CACHE:  # built with numpy (fixed sizes: fake tensors count the GPU path)
        wc = packed_width(width)
        c, y, j = np.meshgrid(np.arange(2), np.arange(height), np.arange(wc), indexing="ij")
        x = 2 * j + (y + c) % 2
        valid = (x < width).reshape(-1)
        slots = np.arange(2 * height * wc)[valid]
        pixels = (y * width + x).reshape(-1)[valid]
        _INDEX_CACHE[key] = (torch.from_numpy(slots).to(device), torch.from_numpy(pixels).to(device))
    return _INDEX_CACHE[key]


def pack(full: torch.Tensor) -> torch.Tensor:
    """N×H×W → N×2×H×Wc by colour; unused slots 0."""
    n, h, w = full.shape
    slots, pixels = _pack_index(h, w, full.device)
    out = torch.zeros(n, 2 * h * packed_width(w), dtype=full.dtype, device=full.device)
    out[:, slots] = full.reshape(n, h * w)[:, pixels]
    return out.view(n, 2, h, packed_width(w))


def unpack(packed: torch.Tensor, width: int) -> torch.Tensor:
    """N×2×H×Wc → N×H×W."""
    n, _, h, wc = packed.shape
    slots, pixels = _pack_index(h, width, packed.device)
    out = torch.empty(n, h * width, dtype=packed.dtype, device=packed.device)
    out[:, pixels] = packed.reshape(n, 2 * h * wc)[:, slots]
    return out.view(n, h, width)


class FusedOps(Protocol):
    """The passes of one pyramid level; arrays are float32, contiguous; N pairs."""

    def derivatives(self, first: torch.Tensor, second: torch.Tensor, u: torch.Tensor, v: torch.Tensor
                    ) -> torch.Tensor:
        """N×H×W frames and flow → N×8×H×W planes (:data:`DERIVATIVE_PLANES`)."""

    def smoothness(self, u: torch.Tensor, v: torch.Tensor, du: torch.Tensor, dv: torch.Tensor, alpha: float,
                   eps2: float) -> torch.Tensor:
        """ψ′ of the smoothness term at u + du, packed N×2×H×Wc (du, dv packed)."""

    def coefficients(self, d: torch.Tensor, u: torch.Tensor, v: torch.Tensor, du: torch.Tensor, dv: torch.Tensor,
                     psi: torch.Tensor, p: dict) -> torch.Tensor:
        """The SOR system, packed N×5×2×H×Wc (:data:`COEFFICIENT_PLANES`)."""

    def sor(self, colour: int, coeff: torch.Tensor, psi: torch.Tensor, du: torch.Tensor, dv: torch.Tensor,
            omega: float, width: int) -> None:
        """One SOR pass over the pixels of ``colour``, in place on packed du, dv (``width``: the image's)."""


# --- the mirror: each pass with torch operations, in the kernels' order of arithmetic ---

def _clamped_shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """images(y + dy, x + dx) with coordinates clamped to the image (replicated borders)."""
    h, w = images.shape[-2:]
    rows = (torch.arange(h, device=images.device) + dy).clamp(0, h - 1)
    cols = (torch.arange(w, device=images.device) + dx).clamp(0, w - 1)
    return images[..., rows, :][..., cols]


def _derivative(images: torch.Tensor, axis: str) -> torch.Tensor:
    """The 5-tap derivative with replicated borders, tap by tap from the left/top (the centre tap 0 skipped)."""
    out = None
    for k, tap in enumerate(DERIVATIVE_TAPS):
        if tap == 0.0:
            continue
        shifted = _clamped_shift(images, k - 2, 0) if axis == "y" else _clamped_shift(images, 0, k - 2)
        out = shifted * tap if out is None else out + shifted * tap
    return out


def warp_bilinear(images: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """images(x + u, y + v), bilinear, the sample point clamped to [0, W−1]×[0, H−1]; N×H×W."""
    n, h, w = images.shape
    ys = torch.arange(h, dtype=images.dtype, device=images.device).view(1, h, 1)
    xs = torch.arange(w, dtype=images.dtype, device=images.device).view(1, 1, w)
    px = (xs + u).clamp(0.0, float(w - 1))
    py = (ys + v).clamp(0.0, float(h - 1))
    x0f, y0f = torch.floor(px), torch.floor(py)
    fx, fy = px - x0f, py - y0f
    x0, y0 = x0f.long(), y0f.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    flat = images.reshape(n, h * w)

    def at(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return torch.gather(flat, 1, (yi * w + xi).reshape(n, h * w)).view(n, h, w)

    top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx
    return top * (1.0 - fy) + bottom * fy


class MirrorOps:
    """The passes with torch operations (any device): the reference of the Triton kernels."""

    def __init__(self) -> None:
        self._coeff: torch.Tensor | None = None
        self._system: dict[int, tuple] = {}

    def derivatives(self, first: torch.Tensor, second: torch.Tensor, u: torch.Tensor, v: torch.Tensor
                    ) -> torch.Tensor:
        warped = warp_bilinear(second, u, v)
        dxf, dyf = _derivative(first, "x"), _derivative(first, "y")
        dxw, dyw = _derivative(warped, "x"), _derivative(warped, "y")
        ix = 0.5 * (dxf + dxw)
        iy = 0.5 * (dyf + dyw)
        return torch.stack([ix, iy, warped - first, _derivative(ix, "x"), _derivative(ix, "y"), _derivative(iy, "y"),
                            dxw - dxf, dyw - dyf], 1).contiguous()

    def smoothness(self, u: torch.Tensor, v: torch.Tensor, du: torch.Tensor, dv: torch.Tensor, alpha: float,
                   eps2: float) -> torch.Tensor:
        w = u.shape[-1]
        return pack(smoothness_weights(u + unpack(du, w), v + unpack(dv, w), alpha, eps2))

    def coefficients(self, d: torch.Tensor, u: torch.Tensor, v: torch.Tensor, du: torch.Tensor, dv: torch.Tensor,
                     psi: torch.Tensor, p: dict) -> torch.Tensor:
        w = u.shape[-1]
        ix, iy, _, ixx, ixy, iyy, _, _ = planes = d.unbind(1)
        norms = gradient_norms(ix, iy, ixx, ixy, iyy, p["zeta"])
        # the eager solver's functions, in the kernel's order of arithmetic
        a11, a12, a22, b1, b2 = data_system(planes, norms, unpack(du, w), unpack(dv, w), p)
        rhs_u, rhs_v, diag_u, diag_v = smoothness_system(*link_weights(unpack(psi, w)), u, v, a11, a22, b1, b2)
        return torch.stack([pack(rhs_u), pack(rhs_v), pack(a12), pack(diag_u), pack(diag_v)], 1)

    def sor(self, colour: int, coeff: torch.Tensor, psi: torch.Tensor, du: torch.Tensor, dv: torch.Tensor,
            omega: float, width: int) -> None:
        n, _, h, wc = du.shape
        index, masks, valid = _neighbour_slots(h, width, du.device)[colour]
        if self._coeff is not coeff:  # the system changes once per outer iteration
            self._coeff, self._system = coeff, {}
        if colour not in self._system:
            flat_psi = psi.reshape(n, -1)
            own_psi = flat_psi[:, colour * h * wc:(colour + 1) * h * wc]
            zero = torch.zeros((), device=psi.device)
            weights = (torch.where(masks[0], 0.5 * (flat_psi[:, index[0]] + own_psi), zero),
                       torch.where(masks[1], 0.5 * (own_psi + flat_psi[:, index[1]]), zero),
                       torch.where(masks[2], 0.5 * (flat_psi[:, index[2]] + own_psi), zero),
                       torch.where(masks[3], 0.5 * (own_psi + flat_psi[:, index[3]]), zero))
            self._system[colour] = (coeff[:, :, colour].reshape(n, 5, h * wc).unbind(1), weights)
        (rhs_u, rhs_v, a12, diag_u, diag_v), (w_r, w_l, w_d, w_u) = self._system[colour]
        flat_du, flat_dv = du.view(n, -1), dv.view(n, -1)
        own_du = flat_du[:, colour * h * wc:(colour + 1) * h * wc]
        own_dv = flat_dv[:, colour * h * wc:(colour + 1) * h * wc]
        nu = (w_r * flat_du[:, index[0]] + w_l * flat_du[:, index[1]] + w_d * flat_du[:, index[2]]
              + w_u * flat_du[:, index[3]])
        new = (rhs_u + nu - a12 * own_dv) / diag_u
        own_du.copy_(torch.where(valid, own_du + omega * (new - own_du), own_du))
        nv = (w_r * flat_dv[:, index[0]] + w_l * flat_dv[:, index[1]] + w_d * flat_dv[:, index[2]]
              + w_u * flat_dv[:, index[3]])
        new = (rhs_v + nv - a12 * own_du) / diag_v
        own_dv.copy_(torch.where(valid, own_dv + omega * (new - own_dv), own_dv))


_NEIGHBOUR_CACHE: dict[tuple[int, int, str], list] = {}


def _neighbour_slots(height: int, width: int, device: torch.device) -> list[tuple]:
    """Per colour: (packed flat indices of the right, left, down and up neighbours of each slot of the
    colour, clamped into the image; whether each neighbour exists; whether the slot holds a pixel), as
    the SOR kernel forms them."""
    key = (height, width, str(device))
    if key not in _NEIGHBOUR_CACHE:
        wc = packed_width(width)
        y, j = (a.reshape(-1) for a in np.meshgrid(np.arange(height), np.arange(wc), indexing="ij"))
        out = []
        for colour in (0, 1):
            x = 2 * j + (y + colour) % 2
            valid = x < width
            xc, other = np.minimum(x, width - 1), 1 - colour

            def slot(yy: np.ndarray, xx: np.ndarray, other: int = other) -> torch.Tensor:
                flat = other * height * wc + np.clip(yy, 0, height - 1) * wc + np.clip(xx, 0, width - 1) // 2
                return torch.from_numpy(flat).to(device)

            index = (slot(y, xc + 1), slot(y, xc - 1), slot(y + 1, xc), slot(y - 1, xc))
            masks = tuple(torch.from_numpy(m).to(device) for m in
                          (valid & (xc + 1 < width), valid & (xc >= 1), valid & (y + 1 < height), valid & (y >= 1)))
            out.append((index, masks, torch.from_numpy(valid).to(device)))
        _NEIGHBOUR_CACHE[key] = out
    return _NEIGHBOUR_CACHE[key]


def _refine(first: torch.Tensor, second: torch.Tensor, u: torch.Tensor, v: torch.Tensor, p: dict, ops: FusedOps
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One pyramid level (N×H×W frames and flow): the fused passes, then u + du."""
    n, h, w = first.shape
    eps2 = p["epsilon"] ** 2
    d = ops.derivatives(first, second, u, v)
    du = torch.zeros(n, 2, h, packed_width(w), dtype=torch.float32, device=first.device)
    dv = torch.zeros_like(du)
    for _ in range(int(p["outer_iterations"])):
        psi = ops.smoothness(u, v, du, dv, p["alpha"], eps2)
        coeff = ops.coefficients(d, u, v, du, dv, psi, p)
        for _ in range(int(p["inner_iterations"])):
            ops.sor(0, coeff, psi, du, dv, p["omega"], w)
            ops.sor(1, coeff, psi, du, dv, p["omega"], w)
    return u + unpack(du, w), v + unpack(dv, w)


@torch.no_grad()
def brox_flow_fused(first: torch.Tensor, second: torch.Tensor, params: dict | None = None,
                    ops: FusedOps | None = None) -> torch.Tensor:
    """Flow of N pairs, as :func:`flowprep.algorithms.brox_torch.brox_flow` (N×H×W grey frames 0-255 →
    N×H×W×2 float32 pixels), through ``ops`` (default: the torch mirror). Pre-smoothing, the pyramid and
    the flow's resizing between levels are the eager code's (one pass each, once a level)."""
    ops = ops if ops is not None else MirrorOps()

    def refine(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor, v: torch.Tensor, p: dict
               ) -> tuple[torch.Tensor, torch.Tensor]:
        fu, fv = _refine(a[:, 0].contiguous(), b[:, 0].contiguous(), u[:, 0].contiguous(), v[:, 0].contiguous(), p,
                         ops)
        return fu.unsqueeze(1), fv.unsqueeze(1)

    return coarse_to_fine(first, second, {**BROX_TORCH_DEFAULTS, **(params or {})}, refine)
