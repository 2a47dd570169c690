"""``trainer predict``: classify one video file with trained spatial and/or temporal nets.

The clip is decoded and rescaled as at extraction, its flow is computed with the implementation and
parameters recorded in the temporal checkpoint (the flow its training data was made with) and
passed through the same [0,255] + JPEG round trip as the training data; both nets then score it with
the test protocol and the softmax scores are fused by averaging. Where that implementation cannot run
here (OpenCV's CUDA Brox without a CUDA OpenCV) prediction is refused unless another is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from flowprep.algorithms.method import FlowError, FlowMethod
from flowprep.algorithms.registry import IMPLEMENTATIONS, create_flow, device_here
from flowprep.storage.codec import decode_rgb, encode_flow, encode_rgb
from flowprep.video import read_frames
from trainer.checkpoint import StoreFlow
from trainer.evaluate import LoadedNet, load_checkpoint, protocol_inputs
from trainer.scores import EvaluationError
from trainer.volumes import VideoEntry


class ClipStore:
    """The FlowStore interface over one decoded clip: records are computed and encoded on demand."""

    def __init__(self, frames_bgr: np.ndarray, method: FlowMethod | None, bound: float | str, quality: int,
                 rgb_quality: int):
        self.frames = frames_bgr
        self.grey = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames_bgr]
        self.method, self.bound, self.quality, self.rgb_quality = method, bound, quality, rgb_quality
        self.root = "the clip"
        self._cache: dict[tuple[str, int], bytes] = {}

    def records(self, video: str, kind: str, ts: Sequence[int]) -> list[bytes]:
        out = []
        for t in ts:
            if kind == "rgb":
                out.append(encode_rgb(self.frames[t], self.rgb_quality))
                continue
            if (kind, t) not in self._cache:
                a, b = (self.grey[t], self.grey[t + 1]) if kind == "flow" else (self.grey[t + 1], self.grey[t])
                self._cache[(kind, t)] = encode_flow(self.method(a, b), self.bound, self.quality)
            out.append(self._cache[(kind, t)])
        return out

    def rgb(self, video: str, t: int) -> np.ndarray:
        return decode_rgb(encode_rgb(self.frames[t], self.rgb_quality))


@dataclass
class Prediction:
    classes: list[str]
    fused: np.ndarray
    per_stream: dict[str, np.ndarray]
    frames: int
    flow: str


def recorded_flow_method(flow: dict, allow_other: bool = False) -> tuple[FlowMethod, str]:
    """The flow method a temporal net's training data was made with (``flow``: the checkpoint's
    {"algo", "implementation", "params"}), and a description of what runs. Where that implementation
    cannot run here: EvaluationError, or with ``allow_other`` the algorithm's default implementation
    here, said in the description."""
    algo, implementation = flow["algo"], flow["implementation"]
    params = {k: v for k, v in flow.get("params", {}).items() if k != "device"}
    spec = IMPLEMENTATIONS.get(implementation)
    device = device_here(spec) if spec is not None and spec.algo == algo else None
    if device is not None:
        try:
            method = spec.create(params, device)
        except (FlowError, ValueError) as exc:
            why = str(exc)
        else:
            where = f" on {method.params['device']}" if "device" in method.params else ""
            return method, f"{algo} ({implementation}{where}, the training data's parameters)"
    else:
        why = (f"{spec.description or implementation} does not run on this machine" if spec is not None
               else "another tool computed it; flowprep imported its files" if implementation.startswith("imported")
               else "this version of flowprep does not know it")
    fallback = create_flow(algo)
    if not allow_other:
        raise EvaluationError(f"the temporal net was trained on {algo} flow from {implementation}, which cannot run "
                              f"here ({why}); --allow-other-flow computes it with {fallback.implementation} "
                              "instead (other flow than in training: accuracy may drop)")
    return fallback, (f"{algo} ({fallback.implementation} with its defaults, NOT the training data's {implementation}:"
                      " allowed by --allow-other-flow)")


def _head(net: LoadedNet, head: str | None) -> str:
    heads = list(net.checkpoint.classes)
    if head is None:
        return heads[0]
    if head not in heads:
        raise EvaluationError(f"the checkpoint has heads {', '.join(heads)}, not {head!r}")
    return head


@torch.no_grad()
def _scores(net: LoadedNet, store: ClipStore, entry: VideoEntry, head: str) -> np.ndarray:
    inputs = protocol_inputs(net.spec, store, entry)
    probs = [torch.softmax(net.model(chunk)[head].float(), dim=1) for chunk in inputs.split(125)]
    return torch.cat(probs).mean(0).numpy()


def predict(video: str | os.PathLike, spatial: str | None, temporal: str | None, head: str | None = None,
            allow_other_flow: bool = False) -> Prediction:
    if not spatial and not temporal:
        raise EvaluationError("give --spatial CKPT and/or --temporal CKPT")
    nets = {name: load_checkpoint(path) for name, path in (("spatial", spatial), ("temporal", temporal)) if path}
    for name, net in nets.items():
        if net.stream != name:
            raise EvaluationError(f"--{name} {spatial if name == 'spatial' else temporal} is a {net.stream} net")
    heads = {name: _head(net, head) for name, net in nets.items()}
    class_lists = {name: net.checkpoint.classes[heads[name]] for name, net in nets.items()}
    if len({tuple(c) for c in class_lists.values()}) > 1:
        raise EvaluationError("the spatial and temporal checkpoints classify different class lists")
    reference = "temporal" if "temporal" in nets else "spatial"  # its store says how frames were made
    made = nets[reference].checkpoint.flow.get(heads[reference], StoreFlow())
    frames = read_frames(video, int(made.short_side or 256))[1]
    if len(frames) < 2:
        raise EvaluationError(f"{video}: only one frame decodes")
    flow = made.flow
    method, description = None, "-"
    if "temporal" in nets:
        method, description = recorded_flow_method(flow, allow_other_flow)
    store = ClipStore(frames, method, made.bound, int(made.quality or 90),
                      int(made.rgb_quality or 90))  # None: imported files, quality unknown
    bidirectional = "temporal" in nets and nets["temporal"].cfg.data.bidirectional
    entry = VideoEntry(str(video), -1, len(frames), len(frames) - 1, len(frames) - 1 if bidirectional else 0)
    per_stream = {name: _scores(net, store, entry, heads[name]) for name, net in nets.items()}
    fused = np.mean(list(per_stream.values()), axis=0)
    return Prediction(next(iter(class_lists.values())), fused, per_stream, len(frames), description)
