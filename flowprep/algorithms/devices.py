"""Which GPUs each flow library can use here. None of these imports torch unless asked: the check is
on every ``flowprep`` command's path, and importing torch costs 1.5 s."""

from __future__ import annotations

import cv2


def opencv_cuda_devices() -> int:
    """Number of CUDA devices OpenCV can use (0 for every OpenCV wheel on PyPI)."""
    try:
        return int(cv2.cuda.getCudaEnabledDeviceCount())
    except (AttributeError, cv2.error):
        return 0


def has_opencv_cuda_brox() -> bool:
    return opencv_cuda_devices() > 0 and hasattr(cv2.cuda, "BroxOpticalFlow_create")


def torch_cuda_devices() -> int:
    """Number of CUDA devices torch sees (0 where torch is missing)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def triton_cuda_devices() -> int:
    """CUDA devices the Triton kernels can run on: torch's, where triton is installed (found, not
    imported: importing it costs seconds)."""
    from importlib.util import find_spec

    return torch_cuda_devices() if find_spec("triton") is not None else 0
