"""Brox et al. 2004 optical flow in PyTorch, for a batch of frame pairs on any device.

The energy is the one of the CPU ``brox`` (OpenCV's VariationalRefinement): brightness constancy
and gradient constancy data terms, each normalised by its local gradient magnitude (+ ζ) and
robustly penalised with Ψ(s²) = sqrt(s² + ε²), plus α·Ψ(|∇u|² + |∇v|²) smoothness. It is
minimised coarse to fine over a pyramid (scale factor ``scale``): at each level the second frame is
warped with the current flow, then ``outer_iterations`` lagged-nonlinearity fixed-point steps each
recompute the robust weights and run ``inner_iterations`` red-black SOR sweeps on the flow increment.
Every step is a tensor operation over the whole batch, so N pairs of one size cost about as much
GPU time as one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from flowprep.algorithms.method import FlowMethod
from flowprep.algorithms.registry import get_implementation

# the registry holds every implementation's defaults (flowprep.algorithms.registry, "torch-brox")
BROX_TORCH_DEFAULTS = get_implementation("torch-brox").defaults

_DERIVATIVE = torch.tensor([1.0, -8.0, 0.0, 8.0, -1.0]) / 12.0


def _gaussian(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))


def _dx(images: torch.Tensor) -> torch.Tensor:
    k = _DERIVATIVE.to(images).view(1, 1, 1, 5)
    return F.conv2d(F.pad(images, (2, 2, 0, 0), mode="replicate"), k)


def _dy(images: torch.Tensor) -> torch.Tensor:
    k = _DERIVATIVE.to(images).view(1, 1, 5, 1)
    return F.conv2d(F.pad(images, (0, 0, 2, 2), mode="replicate"), k)


def _warp(images: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """images(x + u, y + v), bilinear, borders replicated; all N×1×H×W."""
    n, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=images.dtype, device=images.device),
                            torch.arange(w, dtype=images.dtype, device=images.device), indexing="ij")
    gx = (xs + u[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + v[:, 0]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _pyramid(images: torch.Tensor, scale: float, min_side: int) -> list[torch.Tensor]:
    levels = [images]
    while min(levels[-1].shape[-2:]) * scale >= min_side:
        h, w = levels[-1].shape[-2:]
        levels.append(F.interpolate(levels[-1], size=(max(1, round(h * scale)), max(1, round(w * scale))),
                                    mode="area"))
    return levels


def _resize_flow(u: torch.Tensor, v: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    fh, fw = u.shape[-2:]
    up = F.interpolate(torch.cat([u, v], 1), size=(h, w), mode="bilinear", align_corners=True)
    return up[:, :1] * (w / fw), up[:, 1:] * (h / fh)


def _neighbour_sums(weights_x: torch.Tensor, weights_y: torch.Tensor, field: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Σ_n w_n·field_n and Σ_n w_n over the 4 neighbours; w_x[..., j] links columns j and j+1."""
    wx = F.pad(weights_x, (0, 1))  # to the right
    wl = F.pad(weights_x, (1, 0))  # to the left
    wy = F.pad(weights_y, (0, 0, 0, 1))  # below
    wu = F.pad(weights_y, (0, 0, 1, 0))  # above
    right = F.pad(field[..., 1:], (0, 1))
    left = F.pad(field[..., :-1], (1, 0))
    down = F.pad(field[..., 1:, :], (0, 0, 0, 1))
    up = F.pad(field[..., :-1, :], (0, 0, 1, 0))
    return wx * right + wl * left + wy * down + wu * up, wx + wl + wy + wu


def _refine(first: torch.Tensor, second: torch.Tensor, u: torch.Tensor, v: torch.Tensor, p: dict
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One level: warp, then fixed-point iterations with red-black SOR on the increment (du, dv)."""
    eps2, zeta = p["epsilon"] ** 2, p["zeta"]
    warped = _warp(second, u, v)
    ix = 0.5 * (_dx(first) + _dx(warped))
    iy = 0.5 * (_dy(first) + _dy(warped))
    iz = warped - first
    ixx, ixy, iyy = _dx(ix), _dy(ix), _dy(iy)
    ixz = _dx(warped) - _dx(first)
    iyz = _dy(warped) - _dy(first)
    norms = gradient_norms(ix, iy, ixx, ixy, iyy, zeta)
    h, w = first.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h, device=first.device), torch.arange(w, device=first.device), indexing="ij")
    red = ((yy + xx) % 2 == 0).to(first.dtype)
    black = 1.0 - red
    du, dv = torch.zeros_like(u), torch.zeros_like(v)
    omega = p["omega"]
    for _ in range(int(p["outer_iterations"])):
        a11, a12, a22, b1, b2 = data_system((ix, iy, iz, ixx, ixy, iyy, ixz, iyz), norms, du, dv, p)
        weights_x, weights_y = link_weights(smoothness_weights(u + du, v + dv, p["alpha"], eps2))
        rhs_u, rhs_v, diag_u, diag_v = smoothness_system(weights_x, weights_y, u, v, a11, a22, b1, b2)
        for _ in range(int(p["inner_iterations"])):
            du, dv = sor_iteration(du, dv, rhs_u, rhs_v, a12, diag_u, diag_v, weights_x, weights_y, red, black, omega)
    return u + du, v + dv


def gradient_norms(ix: torch.Tensor, iy: torch.Tensor, ixx: torch.Tensor, ixy: torch.Tensor, iyy: torch.Tensor,
                   zeta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1/(|∇I|² + ζ) of the brightness term and of the x- and y-gradient terms: each data term is
    normalised by its local gradient magnitude."""
    return (1.0 / (ix * ix + iy * iy + zeta), 1.0 / (ixx * ixx + ixy * ixy + zeta),
            1.0 / (ixy * ixy + iyy * iyy + zeta))


def smoothness_weights(fu: torch.Tensor, fv: torch.Tensor, alpha: float, eps2: float) -> torch.Tensor:
    """ψ′ of the smoothness term at the flow (fu, fv): (α/2) / sqrt(|∇fu|² + |∇fv|² + ε²), forward
    differences (0 past the last column and row)."""
    ux, vx = F.pad(fu[..., 1:] - fu[..., :-1], (0, 1)), F.pad(fv[..., 1:] - fv[..., :-1], (0, 1))
    uy, vy = F.pad(fu[..., 1:, :] - fu[..., :-1, :], (0, 0, 0, 1)), F.pad(fv[..., 1:, :] - fv[..., :-1, :],
                                                                        (0, 0, 0, 1))
    return alpha * 0.5 / torch.sqrt(ux * ux + uy * uy + vx * vx + vy * vy + eps2)


def link_weights(psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of the links between horizontal and vertical neighbours, 0.5·(ψ′(p) + ψ′(q)):
    ``weights_x[..., j]`` links columns j and j+1, ``weights_y[..., i, :]`` rows i and i+1."""
    return 0.5 * (psi[..., 1:] + psi[..., :-1]), 0.5 * (psi[..., 1:, :] + psi[..., :-1, :])


def smoothness_system(weights_x: torch.Tensor, weights_y: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                      a11: torch.Tensor, a22: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rhs_u, rhs_v, diag_u, diag_v) of the SOR system: the smoothness acts on u + du, so the known
    part (neighbour u minus own u) moves to the right side and the link weights join the diagonal."""
    su, total = _neighbour_sums(weights_x, weights_y, u)
    sv, _ = _neighbour_sums(weights_x, weights_y, v)
    return b1 + su - total * u, b2 + sv - total * v, a11 + total, a22 + total


def data_system(d: tuple[torch.Tensor, ...], norms: tuple[torch.Tensor, ...], du: torch.Tensor, dv: torch.Tensor,
                p: dict) -> tuple[torch.Tensor, ...]:
    """(a11, a12, a22, b1, b2): the data terms' part of the 2×2 system of the increment at each pixel,
    their robust weights taken at the current increment (lagged non-linearity). ``d``: the derivative
    planes ix, iy, iz, ixx, ixy, iyy, ixz, iyz; ``norms``: 1/(|∇I|² + ζ) of the brightness, x- and
    y-gradient terms."""
    ix, iy, iz, ixx, ixy, iyy, ixz, iyz = d
    norm_c, norm_x, norm_y = norms
    eps2 = p["epsilon"] ** 2
    rc = iz + ix * du + iy * dv
    psi_c = p["delta"] * 0.5 / torch.sqrt(rc * rc * norm_c + eps2) * norm_c
    rx = ixz + ixx * du + ixy * dv
    ry = iyz + ixy * du + iyy * dv
    psi_g = p["gamma"] * 0.5 / torch.sqrt(rx * rx * norm_x + ry * ry * norm_y + eps2)
    gx, gy = psi_g * norm_x, psi_g * norm_y
    a11 = psi_c * ix * ix + gx * ixx * ixx + gy * ixy * ixy
    a12 = psi_c * ix * iy + gx * ixx * ixy + gy * ixy * iyy
    a22 = psi_c * iy * iy + gx * ixy * ixy + gy * iyy * iyy
    b1 = -(psi_c * ix * iz + gx * ixx * ixz + gy * ixy * iyz)
    b2 = -(psi_c * iy * iz + gx * ixy * ixz + gy * iyy * iyz)
    return a11, a12, a22, b1, b2


def sor_iteration(du: torch.Tensor, dv: torch.Tensor, rhs_u: torch.Tensor, rhs_v: torch.Tensor, a12: torch.Tensor,
                  diag_u: torch.Tensor, diag_v: torch.Tensor, weights_x: torch.Tensor, weights_y: torch.Tensor,
                  red: torch.Tensor, black: torch.Tensor, omega: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One red-black SOR iteration on the increment: red pixels, then black; at each, du from its
    neighbours, then dv with the new du."""
    for mask in (red, black):
        nu, _ = _neighbour_sums(weights_x, weights_y, du)
        new = (rhs_u + nu - a12 * dv) / diag_u
        du = du + mask * omega * (new - du)
        nv, _ = _neighbour_sums(weights_x, weights_y, dv)
        new = (rhs_v + nv - a12 * du) / diag_v
        dv = dv + mask * omega * (new - dv)
    return du, dv


@torch.no_grad()
def brox_flow(first: torch.Tensor, second: torch.Tensor, params: dict | None = None) -> torch.Tensor:
    """Flow of N pairs: ``first``/``second`` N×H×W grey frames (0-255, any dtype) → N×H×W×2 float32
    pixels (dx, dy) on the same device."""
    return coarse_to_fine(first, second, {**BROX_TORCH_DEFAULTS, **(params or {})}, _refine)


def coarse_to_fine(first: torch.Tensor, second: torch.Tensor, p: dict, refine: Callable) -> torch.Tensor:
    """Pre-smoothing, the two pyramids, and ``refine(first, second, u, v, p) -> (u, v)`` (N×1×h×w
    each) from the coarsest level to the finest, the flow resized between levels; N×H×W×2 out."""
    a = first.to(torch.float32).unsqueeze(1)
    b = second.to(torch.float32).unsqueeze(1)
    if p["sigma"] > 0:
        a, b = _gaussian(a, p["sigma"]), _gaussian(b, p["sigma"])
    pyr_a = _pyramid(a, p["scale"], p["min_side"])
    pyr_b = _pyramid(b, p["scale"], p["min_side"])
    u = torch.zeros_like(pyr_a[-1])
    v = torch.zeros_like(pyr_a[-1])
    for level_a, level_b in zip(reversed(pyr_a), reversed(pyr_b), strict=True):
        h, w = level_a.shape[-2:]
        if u.shape[-2:] != (h, w):
            u, v = _resize_flow(u, v, h, w)
        u, v = refine(level_a, level_b, u, v, p)
    return torch.cat([u, v], 1).permute(0, 2, 3, 1).contiguous()


def create_brox_torch(p: dict, device: str = "cpu", max_batch: int = 32) -> FlowMethod:
    """The registry's factory of ``torch-brox``: :func:`brox_flow` on ``device`` ("cpu", "cuda:0", ...).

    ``max_batch`` caps the pairs per call; on CUDA it is also capped by the free memory (about
    70 float32 H×W planes per pair)."""
    return torch_flow_method("torch-brox", brox_flow, p, device, max_batch, planes=70)


def torch_flow_method(implementation: str, flow: Callable, p: dict, device: str, max_batch: int, planes: int
                      ) -> FlowMethod:
    """A batched brox method around ``flow(firsts, seconds, p)`` (N×H×W tensors on ``device``); on CUDA
    each batch is also capped by the free memory, ``planes`` float32 H×W planes a pair."""
    dev = torch.device(device)

    def compute_batch(firsts: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        if dev.type == "cuda":  # later batches fit what is free now
            free, _ = torch.cuda.mem_get_info(dev)
            method.max_batch = max(1, min(method.max_batch, int(free * 0.8) // (planes * 4 * firsts[0].size)))
        a = torch.from_numpy(firsts).to(dev)
        b = torch.from_numpy(seconds).to(dev)
        return flow(a, b, p).cpu().numpy()

    method = FlowMethod("brox", implementation, {**p, "device": str(dev)},
                        lambda a, b: compute_batch(a[None], b[None])[0], compute_batch=compute_batch,
                        max_batch=max_batch)
    return method
