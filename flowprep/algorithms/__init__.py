"""Optical flow algorithms: the registry of implementations (:mod:`.registry`), the OpenCV methods,
the PyTorch Brox, synthetic pairs with known flow and Middlebury helpers."""
