"""The flow implementations, one spec each: the only place that says what exists, where it runs,
its parameters and how to build it.

An implementation is code that computes one algorithm (``brox``, ``tvl1``, ...) somewhere: its id is
recorded in each video's metadata (``flow.implementation``) so a store says how its flow was made.
``--device`` picks among the implementations of an algorithm:

* ``cpu``: the implementation that runs on the CPU;
* ``cuda``: the first available GPU implementation in registry order (OpenCV's CUDA Brox where
  OpenCV has CUDA, else the fused Triton Brox on a GPU torch sees, else the eager PyTorch Brox); an
  error where none is. ``--param kernel=eager`` asks the Triton Brox for the eager one;
* ``torch-cpu``: the PyTorch Brox on the CPU (the GPU code path, checked on a CPU);
* ``auto``: ``cuda`` where a GPU implementation is available, else ``cpu``.

Adding an implementation is a module with its factory plus one :func:`register` call (or an entry in
:data:`IMPLEMENTATIONS` below); everything else (the CLI's choices, parameter checks, settings,
``trainer predict``) reads the registry. Factories are named as ``"module:function"`` and imported when
first used, so building the registry imports neither torch nor triton.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module

import cv2
import numpy as np

from flowprep.algorithms.devices import (
    has_opencv_cuda_brox,
    opencv_cuda_devices,
    torch_cuda_devices,
    triton_cuda_devices,
)
from flowprep.algorithms.method import FlowError, FlowMethod
from flowprep.errors import SettingError

DEVICES = ("auto", "cpu", "cuda", "torch-cpu")
Range = tuple[float, float]
_POSITIVE: Range = (1e-12, float("inf"))
_NON_NEGATIVE: Range = (0.0, float("inf"))
_COUNT: Range = (1, 10_000)


def _no_gpu() -> int:
    return 0


@dataclass(frozen=True)
class FlowImplementation:
    """One implementation of one flow algorithm.

    ``devices``: the ``--device`` values that run it (``cpu``, ``cuda``, ``torch-cpu``), in the
    order they are tried; ``defaults``: its parameters and their default values (the types of the
    defaults are the parameters' types); ``ranges``: allowed values of numeric parameters, inclusive
    (some out-of-range values do not raise in OpenCV but crash the process, so they are refused
    first); ``factory``: ``"module:function"`` (or the function) called as
    ``factory(params, device, max_batch)`` with the full parameters, device "cpu" or "cuda:N";
    ``batched``: it solves many pairs per call (``--batch`` applies); ``gpus``: how many CUDA devices
    it can use here (0: its ``cuda`` device is not available; CPU devices always are).
    """

    id: str
    algo: str
    devices: tuple[str, ...]
    defaults: dict
    factory: str | Callable[..., FlowMethod]
    ranges: dict[str, Range] = field(default_factory=dict)
    batched: bool = False
    gpus: Callable[[], int] = _no_gpu
    description: str = ""
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # allowed values of text parameters

    def available(self) -> bool:
        """Whether its ``cuda`` device can be used here."""
        return self.gpus() > 0

    def create(self, params: dict | None = None, device: str = "cpu", max_batch: int = 1) -> FlowMethod:
        """The method with ``params`` over the defaults, on ``device`` ("cpu" or "cuda:N")."""
        factory = self.factory
        if isinstance(factory, str):
            module, _, name = factory.partition(":")
            factory = getattr(import_module(module), name)
        method = factory({**self.defaults, **(params or {})}, device, max_batch)
        # what the metadata records is the spec's, or another implementation of the same algorithm the
        # factory handed over to (triton-brox with kernel=eager runs torch-brox)
        handed_over = IMPLEMENTATIONS.get(method.implementation)
        if handed_over is None or handed_over.algo != self.algo:
            method.implementation = self.id
        method.name = self.algo
        return method


# Tuned on the Middlebury RubberWhale/Grove3/Urban2 pairs and the synthetic pairs of the tests
# (see README, "Flow algorithms"). Intensities are 0-255; the data terms of VariationalRefinement
# are normalised by |∇I|² + 0.01, so the GPU values (alpha 0.197, gamma 50 on [0, 1]) do not apply.
_BROX_ENERGY = {
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
_BROX_RANGES = {
    "alpha": _POSITIVE, "gamma": _NON_NEGATIVE, "delta": _NON_NEGATIVE, "scale": (0.3, 0.99),
    "min_side": (4, 4096), "sigma": (0, 10), "outer_iterations": _COUNT, "inner_iterations": _COUNT,
    "omega": (0.01, 1.99),
}

IMPLEMENTATIONS: dict[str, FlowImplementation] = {}


def register(spec: FlowImplementation) -> FlowImplementation:
    """Add (or replace) an implementation; GPU candidates are tried in registration order."""
    IMPLEMENTATIONS[spec.id] = spec
    return spec


def unregister(implementation_id: str) -> None:
    IMPLEMENTATIONS.pop(implementation_id, None)


register(FlowImplementation(
    "opencv-cuda-brox", "brox", ("cuda",), factory="flowprep.algorithms.opencv:create_brox_cuda",
    # OpenCV's cuda::BroxOpticalFlow defaults, which the paper used through OpenCV; images in [0, 1]
    defaults={"alpha": 0.197, "gamma": 50.0, "scale_factor": 0.8, "inner_iterations": 5,
              "outer_iterations": 150, "solver_iterations": 10},
    ranges={"alpha": _POSITIVE, "gamma": _NON_NEGATIVE, "scale_factor": (0.3, 0.99),
            "inner_iterations": _COUNT, "outer_iterations": _COUNT, "solver_iterations": _COUNT},
    gpus=lambda: opencv_cuda_devices() if has_opencv_cuda_brox() else 0,
    description="OpenCV's CUDA Brox (needs an OpenCV built with CUDA)"))
_TORCH_BROX = {**_BROX_ENERGY,
               "epsilon": 0.001,  # of the robust penaliser
               "zeta": 0.01}  # added to the gradient magnitudes that normalise the data terms
register(FlowImplementation(
    "triton-brox", "brox", ("cuda",), factory="flowprep.algorithms.brox_triton:create_brox_triton",
    defaults={**_TORCH_BROX, "kernel": "fused"},  # kernel=eager: torch-brox (the reference) instead
    ranges={**_BROX_RANGES, "epsilon": _POSITIVE, "zeta": _NON_NEGATIVE}, batched=True,
    gpus=triton_cuda_devices, choices={"kernel": ("fused", "eager")},
    description="the PyTorch Brox as fused Triton kernels (flowprep/algorithms/brox_fused.py)"))
register(FlowImplementation(
    "torch-brox", "brox", ("cuda", "torch-cpu"), factory="flowprep.algorithms.brox_torch:create_brox_torch",
    defaults=dict(_TORCH_BROX),
    ranges={**_BROX_RANGES, "epsilon": _POSITIVE, "zeta": _NON_NEGATIVE}, batched=True,
    gpus=torch_cuda_devices, description="the batched PyTorch Brox"))
register(FlowImplementation(
    "cpu-pyramid-variational-refinement", "brox", ("cpu",), factory="flowprep.algorithms.opencv:create_brox_cpu",
    defaults=dict(_BROX_ENERGY), ranges=_BROX_RANGES,
    description="Brox on the CPU: a pyramid of OpenCV VariationalRefinement solves"))
register(FlowImplementation(
    "opencv-dual-tvl1", "tvl1", ("cpu",), factory="flowprep.algorithms.opencv:create_tvl1",
    defaults={"tau": 0.25, "lambda": 0.15, "theta": 0.3, "scales": 5, "warps": 5, "epsilon": 0.01,
              "scale_step": 0.5},
    ranges={"tau": _POSITIVE, "lambda": _POSITIVE, "theta": _POSITIVE, "scales": (1, 20), "warps": _COUNT,
            "epsilon": _POSITIVE, "scale_step": (0.1, 0.99)}))
register(FlowImplementation(
    "opencv-farneback", "farneback", ("cpu",), factory="flowprep.algorithms.opencv:create_farneback",
    defaults={"pyr_scale": 0.5, "levels": 5, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2},
    ranges={"pyr_scale": (0.1, 0.99), "levels": (0, 20), "winsize": (3, 255), "iterations": _COUNT,
            "poly_n": (5, 7), "poly_sigma": (0.1, 10)}))
register(FlowImplementation(
    "opencv-dis", "dis", ("cpu",), factory="flowprep.algorithms.opencv:create_dis", defaults={"preset": "medium"}))


def algorithms() -> tuple[str, ...]:
    """The algorithm names, in registry order."""
    return tuple(dict.fromkeys(spec.algo for spec in IMPLEMENTATIONS.values()))


ALGORITHMS = algorithms()  # the built-in ones (click's choices are fixed at import)


def get_implementation(implementation_id: str) -> FlowImplementation:
    try:
        return IMPLEMENTATIONS[implementation_id]
    except KeyError:
        raise ValueError(f"unknown flow implementation {implementation_id!r}") from None


def gpu_implementations(algo: str) -> list[FlowImplementation]:
    """The implementations of ``algo`` that run on a CUDA device, in the order they are tried."""
    return _on(algo, "cuda")


def usable_gpus(algo: str) -> int:
    """How many CUDA devices the first available GPU implementation of ``algo`` can use here (0: none)."""
    return next((spec.gpus() for spec in gpu_implementations(algo) if spec.available()), 0)


def check_gpus(algo: str, gpus: int) -> None:
    """Refuse ``gpus`` GPU workers (``--gpus``) for ``algo`` where it has no GPU implementation or this
    machine has fewer usable GPUs; 0 asks for none."""
    if not gpus:
        return
    if not gpu_implementations(algo):
        with_gpu = [a for a in algorithms() if gpu_implementations(a)]
        raise SettingError("gpus", f"runs {', '.join(with_gpu)} only; {algo} runs on the CPU (drop --gpus)")
    available = usable_gpus(algo)
    if available == 0:
        raise SettingError("gpus", "needs a GPU that OpenCV (built with CUDA; no PyPI wheel is) or torch can use, "
                           f"and none is visible here; drop --gpus to run {algo} on the CPU")
    if available < gpus:
        raise SettingError("gpus", f"asks for more GPUs than the {available} visible", gpus)


def check_algo(algo: str, setting: str = "algo") -> str:
    if algo not in algorithms():
        raise SettingError(setting, f"must be one of {', '.join(algorithms())}", algo)
    return algo


def _on(algo: str, device: str) -> list[FlowImplementation]:
    return [spec for spec in IMPLEMENTATIONS.values() if spec.algo == algo and device in spec.devices]


def resolve_implementation(algo: str, device: str = "auto", gpu: int | None = None) -> tuple[FlowImplementation, str]:
    """(implementation, concrete device "cpu" or "cuda:N") that ``algo`` runs with for ``device`` on
    this machine; ``gpu``: the CUDA device index (one worker per GPU with ``--gpus``)."""
    if device not in DEVICES:
        raise SettingError("device", f"must be one of {', '.join(DEVICES)}", device)
    check_algo(algo)
    if device in ("cuda", "torch-cpu") or gpu is not None:
        kind = "torch-cpu" if device == "torch-cpu" else "cuda"
        if not _on(algo, kind):
            gpu_algos = [a for a in algorithms() if _on(a, kind)]
            raise FlowError(f"--gpus and --device {device} run {', '.join(gpu_algos)} only; {algo} runs on the CPU")
    if device == "torch-cpu":
        return _on(algo, "torch-cpu")[0], "cpu"
    if device in ("auto", "cuda"):
        for spec in _on(algo, "cuda"):
            if spec.available():
                return spec, f"cuda:{gpu or 0}"
    if device == "cuda" or gpu is not None:
        raise FlowError("no CUDA device: neither OpenCV (no PyPI wheel has CUDA) nor torch sees a GPU; "
                        "use --device cpu (or auto) and no --gpus")
    found = _on(algo, "cpu")
    if not found:
        raise FlowError(f"{algo} has no CPU implementation; it needs --device cuda")
    return found[0], "cpu"


def create_flow(algo: str, params: dict | None = None, gpu: int | None = None, device: str = "auto",
                max_batch: int = 32) -> FlowMethod:
    """The flow method named ``algo`` with ``params`` over its implementation's defaults.

    ``device`` picks the implementation (see the module docstring); ``gpu`` is the CUDA device index
    (one worker per GPU with ``--gpus``); ``max_batch`` caps the pairs per call of a batched one.
    """
    spec, where = resolve_implementation(algo, device, gpu)
    return spec.create(params, where, max_batch)


def device_here(spec: FlowImplementation, gpu: int = 0) -> str | None:
    """Where ``spec`` itself can run on this machine: "cuda:N" where its GPU device is available, else
    "cpu" where it has a CPU device; None where it cannot run here."""
    if "cuda" in spec.devices and spec.available():
        return f"cuda:{gpu}"
    if "cpu" in spec.devices or "torch-cpu" in spec.devices:
        return "cpu"
    return None


def implementation_defaults(implementation_id: str) -> dict:
    """The parameters (with their defaults) of one implementation, as recorded in a video's metadata."""
    return dict(get_implementation(implementation_id).defaults)


def _coerce(spec: FlowImplementation, key: str, value: object) -> object:
    """``value`` as the type of the parameter's default (ints stay ints; "3" from a flag becomes 3)."""
    default = spec.defaults[key]
    setting = f"flow_params.{key}"
    if isinstance(default, str):
        if key in spec.choices and str(value) not in spec.choices[key]:
            raise SettingError(setting, f"must be one of {', '.join(spec.choices[key])}", value)
        return str(value)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SettingError(setting, "not a number", value) from None
    if not np.isfinite(number):
        raise SettingError(setting, "not a finite number", value)
    lo, hi = spec.ranges.get(key, (-float("inf"), float("inf")))
    if not lo <= number <= hi:
        shown = "> 0" if (lo, hi) == _POSITIVE else f">= {lo:g}" if hi == float("inf") else f"in {lo:g}..{hi:g}"
        raise SettingError(setting, f"must be {shown}", value)
    if isinstance(default, int):
        if not number.is_integer():
            raise SettingError(setting, "must be a whole number", value)
        return int(number)
    return number


def check_params(algo: str, params: dict, device: str = "auto") -> dict:
    """``params`` checked against the parameters of the implementation that will run, with their
    defaults' types; an unknown key is refused in one line listing the implementation's keys."""
    spec, _ = resolve_implementation(algo, device)
    unknown = sorted(set(params) - set(spec.defaults))
    if unknown:
        raise SettingError(f"flow_params.{unknown[0]}", f"not a parameter of {algo} ({spec.id}); "
                           f"its parameters are {', '.join(spec.defaults)}")
    return {key: _coerce(spec, key, value) for key, value in params.items()}


def try_params(algo: str, params: dict, device: str = "auto") -> None:
    """Build the method and run it on one small pair, so that a parameter value it cannot work with is
    refused once, before any video (skipped where it would run on a GPU: workers claim those).
    ``params`` must have passed :func:`check_params` (its ranges keep OpenCV from crashing)."""
    spec, where = resolve_implementation(algo, device)
    if where != "cpu":
        return
    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur(rng.integers(0, 256, (48, 64), dtype=np.uint8), (0, 0), 2)
    b = np.roll(a, 1, axis=1)
    try:
        spec.create(params, "cpu", 1)(a, b)
    except (ValueError, cv2.error, RuntimeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        raise SettingError("flow_params", f"{algo} ({spec.id}) does not run with {shown}: "
                           f"{lines[-1] if lines else exc}") from None
