"""The flow methods OpenCV provides: the CPU Brox pyramid, OpenCV's CUDA Brox, TV-L1, Farnebäck, DIS.

``brox`` is the flow the paper uses (Brox, Bruhn, Papenberg and Weickert, ECCV 2004). Where OpenCV
is built with CUDA and sees a GPU, ``cv2.cuda.BroxOpticalFlow`` with OpenCV's defaults (the paper's
set-up); on the CPU the same energy: a coarse-to-fine pyramid with one ``cv2.VariationalRefinement``
solve per level (colour + gradient constancy, Ψ-penalised smoothness, fixed-point iterations with an
SOR inner solver, warping at every level), starting from zero flow.

Each ``create_*`` takes the full parameters (the registry merges its defaults with the user's),
the device ("cpu" or "cuda:N") and the batch cap (unused: these solve pair by pair).
"""

from __future__ import annotations

import cv2
import numpy as np

from flowprep.algorithms.devices import has_opencv_cuda_brox
from flowprep.algorithms.method import FlowError, FlowMethod

DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
               "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def _scaled_pyramid(image: np.ndarray, scale: float, min_side: int) -> list[np.ndarray]:
    levels = [image]
    while min(levels[-1].shape[:2]) * scale >= min_side:
        h, w = levels[-1].shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        levels.append(cv2.resize(levels[-1], size, interpolation=cv2.INTER_AREA))
    return levels


def _resize_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    fh, fw = flow.shape[:2]
    out = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
    out[..., 0] *= width / fw
    out[..., 1] *= height / fh
    return out


def create_brox_cpu(p: dict, device: str = "cpu", max_batch: int = 1) -> FlowMethod:
    if not 0.3 <= p["scale"] < 1.0:
        raise ValueError(f"brox scale must be in [0.3, 1), got {p['scale']}")
    refine = cv2.VariationalRefinement_create()
    refine.setAlpha(float(p["alpha"]))
    refine.setGamma(float(p["gamma"]))
    refine.setDelta(float(p["delta"]))
    refine.setFixedPointIterations(int(p["outer_iterations"]))
    refine.setSorIterations(int(p["inner_iterations"]))
    refine.setOmega(float(p["omega"]))

    def compute(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        a, b = prev.astype(np.float32), nxt.astype(np.float32)
        if p["sigma"] > 0:
            a = cv2.GaussianBlur(a, (0, 0), p["sigma"])
            b = cv2.GaussianBlur(b, (0, 0), p["sigma"])
        pyr_a = _scaled_pyramid(a, p["scale"], p["min_side"])
        pyr_b = _scaled_pyramid(b, p["scale"], p["min_side"])
        flow = np.zeros(pyr_a[-1].shape + (2,), np.float32)
        for level_a, level_b in zip(reversed(pyr_a), reversed(pyr_b), strict=True):
            h, w = level_a.shape
            if flow.shape[:2] != (h, w):
                flow = _resize_flow(flow, h, w)
            refine.calc(level_a, level_b, flow)
        return flow

    return FlowMethod("brox", "cpu-pyramid-variational-refinement", p, compute)


def create_brox_cuda(p: dict, device: str = "cuda:0", max_batch: int = 1) -> FlowMethod:
    if not has_opencv_cuda_brox():
        raise FlowError(
            "this OpenCV has no CUDA (cv2.cuda.getCudaEnabledDeviceCount() is 0; no PyPI wheel has it): "
            "drop --gpus to run brox on the CPU"
        )
    index = int(device.partition(":")[2] or 0)
    cv2.cuda.setDevice(index)
    brox = cv2.cuda.BroxOpticalFlow_create(
        p["alpha"], p["gamma"], p["scale_factor"],
        p["inner_iterations"], p["outer_iterations"], p["solver_iterations"],
    )
    gpu_a, gpu_b = cv2.cuda_GpuMat(), cv2.cuda_GpuMat()

    def compute(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        gpu_a.upload(prev.astype(np.float32) / 255.0)
        gpu_b.upload(nxt.astype(np.float32) / 255.0)
        return brox.calc(gpu_a, gpu_b, None).download()

    return FlowMethod("brox", "opencv-cuda-brox", {**p, "device": index}, compute)


def create_tvl1(p: dict, device: str = "cpu", max_batch: int = 1) -> FlowMethod:
    tv = cv2.optflow.DualTVL1OpticalFlow_create(
        tau=p["tau"], lambda_=p["lambda"], theta=p["theta"], nscales=int(p["scales"]),
        warps=int(p["warps"]), epsilon=p["epsilon"], scaleStep=p["scale_step"],
    )
    return FlowMethod("tvl1", "opencv-dual-tvl1", p, lambda a, b: tv.calc(a, b, None))


def create_farneback(p: dict, device: str = "cpu", max_batch: int = 1) -> FlowMethod:
    def compute(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return cv2.calcOpticalFlowFarneback(
            a, b, None, p["pyr_scale"], int(p["levels"]), int(p["winsize"]),
            int(p["iterations"]), int(p["poly_n"]), p["poly_sigma"], 0,
        )

    return FlowMethod("farneback", "opencv-farneback", p, compute)


def create_dis(p: dict, device: str = "cpu", max_batch: int = 1) -> FlowMethod:
    if p["preset"] not in DIS_PRESETS:
        raise ValueError(f"dis preset must be one of {sorted(DIS_PRESETS)}, got {p['preset']!r}")
    method = cv2.DISOpticalFlow_create(DIS_PRESETS[p["preset"]])
    return FlowMethod("dis", "opencv-dis", p, lambda a, b: method.calc(a, b, None))
