"""Optical flow algorithms behind one interface.

Every method takes two grey frames (uint8, H×W, same size) and returns the displacement of each
pixel of the first frame as float32 H×W×2, in pixels: ``[..., 0]`` is dx (to the right),
``[..., 1]`` is dy (down), so ``first(y, x) ≈ second(y + dy, x + dx)``.

``brox`` is the flow the paper uses (Brox, Bruhn, Papenberg and Weickert, ECCV 2004). Where OpenCV
is built with CUDA and sees a GPU it runs ``cv2.cuda.BroxOpticalFlow`` with OpenCV's defaults (the
paper's set-up); where torch sees a GPU, the batched PyTorch implementation of
:mod:`flowprep.brox_torch`; elsewhere the same energy on the CPU: a coarse-to-fine pyramid with one
``cv2.VariationalRefinement`` solve per level (colour + gradient constancy, Ψ-penalised smoothness,
fixed-point iterations with an SOR inner solver, warping at every level), starting from zero flow.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

ALGORITHMS = ("brox", "tvl1", "farneback", "dis")


class FlowError(RuntimeError):
    """A flow method cannot run here (for example CUDA asked for but missing)."""


@dataclass
class FlowMethod:
    """A configured flow algorithm: call it with two grey frames.

    ``implementation`` names the code that ran (e.g. ``opencv-cuda-brox``) and ``params`` its
    settings; both go into each video's metadata so a store says how its flow was made.
    """

    name: str
    implementation: str
    params: dict
    compute: Callable[[np.ndarray, np.ndarray], np.ndarray] = field(repr=False)
    # solves N pairs of one size at once (N×H×W uint8 each → N×H×W×2); None: pair by pair
    compute_batch: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    max_batch: int = 1  # pairs per compute_batch call (halved after an out-of-memory error)

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if prev.shape != nxt.shape or prev.ndim != 2:
            raise ValueError(f"need two grey frames of one size, got {prev.shape} and {nxt.shape}")
        flow = self.compute(prev, nxt)
        return np.ascontiguousarray(flow, dtype=np.float32)

    def many(self, firsts: list[np.ndarray], seconds: list[np.ndarray]) -> list[np.ndarray]:
        """Flow of every pair (firsts[i] → seconds[i]), in batches of up to ``max_batch`` where the
        method solves batches; a GPU out-of-memory error halves the batch and retries it."""
        if self.compute_batch is None:
            return [self(a, b) for a, b in zip(firsts, seconds, strict=True)]
        out: list[np.ndarray] = []
        start = 0
        while start < len(firsts):
            size = min(self.max_batch, len(firsts) - start)
            try:
                flows = self.compute_batch(np.stack(firsts[start:start + size]), np.stack(seconds[start:start + size]))
            except Exception as exc:
                if size == 1 or not _is_gpu_oom(exc):
                    raise
                self.max_batch = max(1, size // 2)
                _release_gpu_memory()
                continue
            out += [np.ascontiguousarray(f, dtype=np.float32) for f in flows]
            start += size
        return out


def _is_gpu_oom(exc: Exception) -> bool:
    """A CUDA out-of-memory error of torch (only batched torch methods raise one: torch is loaded then;
    the check must not import torch, which costs every `flowprep` command 1.5 s)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def _release_gpu_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# Tuned on the Middlebury RubberWhale/Grove3/Urban2 pairs and the synthetic pairs of the tests
# (see README, "Flow algorithms"). Intensities are 0-255; the data terms of VariationalRefinement
# are normalised by |∇I|² + 0.01, so the GPU values (alpha 0.197, gamma 50 on [0, 1]) do not apply.
BROX_CPU_DEFAULTS = {
    "alpha": 4.0,  # smoothness weight
    "gamma": 3.0,  # gradient constancy weight
    "delta": 1.0,  # colour (brightness) constancy weight
    "scale": 0.8,  # pyramid scale factor between levels
    "min_side": 16,  # pixels: the coarsest level's smaller side is at least this
    "sigma": 0.6,  # pixels: Gaussian pre-smoothing of the input frames
    "outer_iterations": 5,  # fixed-point (lagged non-linearity) iterations per level
    "inner_iterations": 25,  # SOR iterations per fixed-point iteration
    "omega": 1.6,  # SOR relaxation factor
}

# OpenCV's cuda::BroxOpticalFlow defaults, which the paper used through OpenCV; images in [0, 1].
BROX_CUDA_DEFAULTS = {
    "alpha": 0.197,
    "gamma": 50.0,
    "scale_factor": 0.8,
    "inner_iterations": 5,
    "outer_iterations": 150,
    "solver_iterations": 10,
}


def opencv_cuda_devices() -> int:
    """Number of CUDA devices OpenCV can use (0 for every OpenCV wheel on PyPI)."""
    try:
        return int(cv2.cuda.getCudaEnabledDeviceCount())
    except (AttributeError, cv2.error):
        return 0


def has_opencv_cuda_brox() -> bool:
    return opencv_cuda_devices() > 0 and hasattr(cv2.cuda, "BroxOpticalFlow_create")


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


def brox_cpu(params: dict | None = None) -> FlowMethod:
    p = {**BROX_CPU_DEFAULTS, **(params or {})}
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


def brox_cuda(params: dict | None = None, device: int = 0) -> FlowMethod:
    if not has_opencv_cuda_brox():
        raise FlowError(
            "this OpenCV has no CUDA (cv2.cuda.getCudaEnabledDeviceCount() is 0; no PyPI wheel has it): "
            "drop --gpus to run brox on the CPU"
        )
    p = {**BROX_CUDA_DEFAULTS, **(params or {})}
    cv2.cuda.setDevice(device)
    brox = cv2.cuda.BroxOpticalFlow_create(
        p["alpha"], p["gamma"], p["scale_factor"],
        p["inner_iterations"], p["outer_iterations"], p["solver_iterations"],
    )
    gpu_a, gpu_b = cv2.cuda_GpuMat(), cv2.cuda_GpuMat()

    def compute(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        gpu_a.upload(prev.astype(np.float32) / 255.0)
        gpu_b.upload(nxt.astype(np.float32) / 255.0)
        return brox.calc(gpu_a, gpu_b, None).download()

    return FlowMethod("brox", "opencv-cuda-brox", {**p, "device": device}, compute)


TVL1_DEFAULTS = {"tau": 0.25, "lambda": 0.15, "theta": 0.3, "scales": 5, "warps": 5,
                 "epsilon": 0.01, "scale_step": 0.5}


def tvl1(params: dict | None = None) -> FlowMethod:
    p = {**TVL1_DEFAULTS, **(params or {})}
    tv = cv2.optflow.DualTVL1OpticalFlow_create(
        tau=p["tau"], lambda_=p["lambda"], theta=p["theta"], nscales=int(p["scales"]),
        warps=int(p["warps"]), epsilon=p["epsilon"], scaleStep=p["scale_step"],
    )
    return FlowMethod("tvl1", "opencv-dual-tvl1", p, lambda a, b: tv.calc(a, b, None))


FARNEBACK_DEFAULTS = {"pyr_scale": 0.5, "levels": 5, "winsize": 15, "iterations": 3,
                      "poly_n": 5, "poly_sigma": 1.2}


def farneback(params: dict | None = None) -> FlowMethod:
    p = {**FARNEBACK_DEFAULTS, **(params or {})}

    def compute(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return cv2.calcOpticalFlowFarneback(
            a, b, None, p["pyr_scale"], int(p["levels"]), int(p["winsize"]),
            int(p["iterations"]), int(p["poly_n"]), p["poly_sigma"], 0,
        )

    return FlowMethod("farneback", "opencv-farneback", p, compute)


DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
               "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def dis(params: dict | None = None) -> FlowMethod:
    p = {"preset": "medium", **(params or {})}
    if p["preset"] not in DIS_PRESETS:
        raise ValueError(f"dis preset must be one of {sorted(DIS_PRESETS)}, got {p['preset']!r}")
    method = cv2.DISOpticalFlow_create(DIS_PRESETS[p["preset"]])
    return FlowMethod("dis", "opencv-dis", p, lambda a, b: method.calc(a, b, None))


DEVICES = ("auto", "cpu", "cuda", "torch-cpu")


def torch_cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def brox_torch(params: dict | None = None, device: str = "cpu", max_batch: int = 32) -> FlowMethod:
    """The PyTorch Brox (:mod:`flowprep.brox_torch`) on ``device`` ("cpu", "cuda:0", ...).

    ``max_batch`` caps the pairs per call; on CUDA it is also capped by the free memory (about
    70 float32 H×W planes per pair)."""
    import torch

    from flowprep.brox_torch import BROX_TORCH_DEFAULTS, brox_flow

    p = {**BROX_TORCH_DEFAULTS, **(params or {})}
    dev = torch.device(device)

    def compute_batch(firsts: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        if dev.type == "cuda":  # later batches fit what is free now
            free, _ = torch.cuda.mem_get_info(dev)
            method.max_batch = max(1, min(method.max_batch, int(free * 0.8) // (70 * 4 * firsts[0].size)))
        a = torch.from_numpy(firsts).to(dev)
        b = torch.from_numpy(seconds).to(dev)
        return brox_flow(a, b, p).cpu().numpy()

    method = FlowMethod("brox", "torch-brox", {**p, "device": str(dev)},
                        lambda a, b: compute_batch(a[None], b[None])[0], compute_batch=compute_batch,
                        max_batch=max_batch)
    return method


def create_flow(algo: str, params: dict | None = None, gpu: int | None = None, device: str = "auto",
                max_batch: int = 32) -> FlowMethod:
    """The flow method named ``algo``.

    For ``brox``, ``device`` picks the implementation: "auto" runs OpenCV's CUDA Brox where OpenCV
    has CUDA, else the PyTorch Brox on a CUDA GPU where torch sees one, else the CPU pyramid; "cpu"
    the CPU pyramid; "cuda" one of the two GPU ones; "torch-cpu" the PyTorch Brox on the CPU. ``gpu``
    is the CUDA device index (one worker per GPU with ``--gpus``).
    """
    if device not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if algo == "brox":
        if device == "torch-cpu":
            return brox_torch(params, "cpu", max_batch)
        if device in ("auto", "cuda") and has_opencv_cuda_brox():
            return brox_cuda(params, device=gpu or 0)
        if device in ("auto", "cuda") and torch_cuda_devices():
            return brox_torch(params, f"cuda:{gpu or 0}", max_batch)
        if device == "cuda" or gpu is not None:
            raise FlowError("no CUDA device: neither OpenCV (no PyPI wheel has CUDA) nor torch sees a GPU; "
                            "use --device cpu (or auto) and no --gpus")
        return brox_cpu(params)
    if gpu is not None or device in ("cuda", "torch-cpu"):
        raise FlowError(f"--gpus and --device {device} run brox only; {algo} runs on the CPU")
    makers = {"tvl1": tvl1, "farneback": farneback, "dis": dis}
    if algo not in makers:
        raise ValueError(f"unknown flow algorithm {algo!r}; choose one of {', '.join(ALGORITHMS)}")
    return makers[algo](params)


def end_point_error(flow: np.ndarray, truth: np.ndarray) -> float:
    """Mean Euclidean distance in pixels between two flow fields; ground truth ≥ 1e9 is unknown."""
    known = np.all(np.abs(truth) < 1e9, axis=-1)
    return float(np.linalg.norm(flow - truth, axis=-1)[known].mean())


def read_flo(path: str) -> np.ndarray:
    """Read a Middlebury ``.flo`` file as float32 H×W×2."""
    with open(path, "rb") as f:
        magic = np.fromfile(f, np.float32, 1)
        if magic.size != 1 or magic[0] != 202021.25:
            raise ValueError(f"{path}: not a Middlebury .flo file")
        w, h = (int(v) for v in np.fromfile(f, np.int32, 2))
        data = np.fromfile(f, np.float32, w * h * 2)
    if data.size != w * h * 2:
        raise ValueError(f"{path}: truncated .flo file")
    return data.reshape(h, w, 2)


IMPLEMENTATIONS = ("cpu-pyramid-variational-refinement", "torch-brox", "opencv-cuda-brox", "opencv-dual-tvl1",
                   "opencv-farneback", "opencv-dis")


def implementation_defaults(implementation: str) -> dict:
    """The parameters (with their defaults) of one implementation, as recorded in a video's metadata."""
    if implementation == "torch-brox":
        from flowprep.brox_torch import BROX_TORCH_DEFAULTS

        return dict(BROX_TORCH_DEFAULTS)
    tables = {"cpu-pyramid-variational-refinement": BROX_CPU_DEFAULTS, "opencv-cuda-brox": BROX_CUDA_DEFAULTS,
              "opencv-dual-tvl1": TVL1_DEFAULTS, "opencv-farneback": FARNEBACK_DEFAULTS,
              "opencv-dis": {"preset": "medium"}}
    if implementation not in tables:
        raise ValueError(f"unknown flow implementation {implementation!r}")
    return dict(tables[implementation])


def resolve_implementation(algo: str, device: str = "auto") -> str:
    """The implementation :func:`create_flow` runs for ``algo`` on ``device`` on this machine."""
    if algo != "brox":
        return {"tvl1": "opencv-dual-tvl1", "farneback": "opencv-farneback", "dis": "opencv-dis"}[algo]
    if device == "cpu":
        return "cpu-pyramid-variational-refinement"
    if device == "torch-cpu":
        return "torch-brox"
    if has_opencv_cuda_brox():
        return "opencv-cuda-brox"
    if torch_cuda_devices() or device == "cuda":
        return "torch-brox"
    return "cpu-pyramid-variational-refinement"


_POSITIVE = (1e-12, float("inf"))
_COUNT = (1, 10_000)
# Allowed values of each numeric parameter (inclusive). Some out-of-range values do not raise in
# OpenCV but crash the process (farneback winsize < 0: "double free"), so they are refused first.
PARAM_RANGES = {
    "alpha": _POSITIVE, "gamma": (0, float("inf")), "delta": (0, float("inf")), "scale": (0.3, 0.99),
    "min_side": (4, 4096), "sigma": (0, 10), "outer_iterations": _COUNT, "inner_iterations": _COUNT,
    "omega": (0.01, 1.99), "epsilon": _POSITIVE, "zeta": (0, float("inf")), "scale_factor": (0.3, 0.99),
    "solver_iterations": _COUNT, "tau": _POSITIVE, "lambda": _POSITIVE, "theta": _POSITIVE, "scales": (1, 20),
    "warps": _COUNT, "scale_step": (0.1, 0.99), "pyr_scale": (0.1, 0.99), "levels": (0, 20), "winsize": (3, 255),
    "iterations": _COUNT, "poly_n": (5, 7), "poly_sigma": (0.1, 10),
}


def _coerce(key: str, value: object, default: object) -> object:
    """``value`` as the type of the parameter's default (ints stay ints; "3" from a flag becomes 3)."""
    if isinstance(default, str):
        return str(value)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"--param {key}={value!r}: not a number") from None
    if not np.isfinite(number):
        raise ValueError(f"--param {key}={value!r}: not a finite number")
    lo, hi = PARAM_RANGES.get(key, (-float("inf"), float("inf")))
    if not lo <= number <= hi:
        shown = "> 0" if (lo, hi) == _POSITIVE else f">= {lo:g}" if hi == float("inf") else f"in {lo:g}..{hi:g}"
        raise ValueError(f"--param {key}={value!r}: must be {shown}")
    if isinstance(default, int):
        if not number.is_integer():
            raise ValueError(f"--param {key}={value!r}: must be a whole number")
        return int(number)
    return number


def check_params(algo: str, params: dict, device: str = "auto") -> dict:
    """``params`` checked against the parameters of the implementation that will run, with their
    defaults' types; an unknown key is refused in one line listing the implementation's keys."""
    implementation = resolve_implementation(algo, device)
    defaults = implementation_defaults(implementation)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"--param {unknown[0]}: not a parameter of {algo} ({implementation}); "
                         f"its parameters are {', '.join(defaults)}")
    return {key: _coerce(key, value, defaults[key]) for key, value in params.items()}


def try_params(algo: str, params: dict, device: str = "auto") -> None:
    """Build the method and run it on one small pair, so that a parameter value it cannot work with is
    refused once, before any video (skipped where it would run on a GPU: workers claim those).
    ``params`` must have passed :func:`check_params` (its ranges keep OpenCV from crashing)."""
    implementation = resolve_implementation(algo, device)
    if implementation == "opencv-cuda-brox" or (implementation == "torch-brox" and device != "torch-cpu"):
        return
    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur(rng.integers(0, 256, (48, 64), dtype=np.uint8), (0, 0), 2)
    b = np.roll(a, 1, axis=1)
    try:
        method = create_flow(algo, params, device="torch-cpu" if implementation == "torch-brox" else
                             "cpu" if algo == "brox" else "auto")
        method(a, b)
    except (ValueError, cv2.error, RuntimeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ValueError(f"{algo} ({implementation}) does not run with --param "
                         f"{', '.join(f'{k}={v}' for k, v in params.items())}: {lines[-1] if lines else exc}") from None
