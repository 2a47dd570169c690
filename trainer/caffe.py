"""Caffe ``.caffemodel`` weights (a binary protobuf ``NetParameter``), read without Caffe.

The paper's spatial net starts from CNN-M-2048 trained on ImageNet (Chatfield et al. 2014), released
as ``VGG_CNN_M_2048.caffemodel``. The file is parsed with the ``protobuf`` package and a schema of
the few messages it needs, with the field numbers of Caffe's ``caffe.proto``: the three layouts
Caffe wrote over the years all load (``layer`` = 100, the current ``LayerParameter``; ``layers`` = 2,
``V1LayerParameter``; and V0 layers nested in field 1 of those). A hand-written wire reader would be
shorter, but protobuf gives the packed/unpacked float handling and the error checks for free.

Caffe fed BGR images in 0..255 with a mean subtracted; :func:`rgb_conv1` rewrites conv1 so that our
RGB inputs, normalised with ``data.rgb_mean``/``rgb_std`` of [0, 1] pixels, give the same conv1
activations (conv1 has no padding, so the mean folds exactly into its bias).
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from flowprep.storage.atomic import atomic_write

# the mean pixel (B, G, R) of the ImageNet training set subtracted by the VGG Caffe models
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

_F = descriptor_pb2.FieldDescriptorProto
# message: [(field name, number, type, repeated, message type or None, packed)]
_SCHEMA = {
    "BlobShape": [("dim", 1, _F.TYPE_INT64, True, None, True)],
    "BlobProto": [("num", 1, _F.TYPE_INT32, False, None, False),
                  ("channels", 2, _F.TYPE_INT32, False, None, False),
                  ("height", 3, _F.TYPE_INT32, False, None, False),
                  ("width", 4, _F.TYPE_INT32, False, None, False),
                  ("data", 5, _F.TYPE_FLOAT, True, None, True),
                  ("shape", 7, _F.TYPE_MESSAGE, False, "BlobShape", False),
                  ("double_data", 8, _F.TYPE_DOUBLE, True, None, True)],
    "LayerParameter": [("name", 1, _F.TYPE_STRING, False, None, False),
                       ("type", 2, _F.TYPE_STRING, False, None, False),
                       ("blobs", 7, _F.TYPE_MESSAGE, True, "BlobProto", False)],
    "V0LayerParameter": [("name", 1, _F.TYPE_STRING, False, None, False),
                         ("type", 2, _F.TYPE_STRING, False, None, False),
                         ("blobs", 50, _F.TYPE_MESSAGE, True, "BlobProto", False)],
    "V1LayerParameter": [("layer", 1, _F.TYPE_MESSAGE, False, "V0LayerParameter", False),
                         ("name", 4, _F.TYPE_STRING, False, None, False),
                         ("type", 5, _F.TYPE_INT32, False, None, False),  # an enum in caffe.proto
                         ("blobs", 6, _F.TYPE_MESSAGE, True, "BlobProto", False)],
    "NetParameter": [("name", 1, _F.TYPE_STRING, False, None, False),
                     ("layers", 2, _F.TYPE_MESSAGE, True, "V1LayerParameter", False),
                     ("layer", 100, _F.TYPE_MESSAGE, True, "LayerParameter", False)],
}


class CaffeError(ValueError):
    """A file that is not a Caffe model of the expected layers; the message names the file."""


@cache
def message_class(name: str) -> type:
    """The protobuf class of one message of the schema (``NetParameter``, ``BlobProto``, ...)."""
    proto = descriptor_pb2.FileDescriptorProto(name="twostream/caffe_subset.proto", package="caffe",
                                               syntax="proto2")
    for message, fields in _SCHEMA.items():
        m = proto.message_type.add(name=message)
        for field_name, number, kind, repeated, type_name, packed in fields:
            f = m.field.add(name=field_name, number=number, type=kind,
                            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".caffe.{type_name}"
            if packed:
                f.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}"))


def blob_array(blob) -> np.ndarray:
    """A BlobProto as a float32 array of its shape (the 4-D num/channels/height/width of old files)."""
    data = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))
    if int(np.prod(shape)) != data.size:
        shape = (data.size,)
    return data.reshape(shape)


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """{layer name: [weights, bias, ...]} of every layer of a ``.caffemodel`` that has blobs."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        net = message_class("NetParameter")()
        net.ParseFromString(data)
    except OSError as exc:
        raise CaffeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except DecodeError as exc:
        raise CaffeError(f"{path}: not a Caffe model (binary NetParameter): {exc}") from None
    layers: dict[str, list[np.ndarray]] = {}
    for layer in net.layer:
        layers[layer.name] = [blob_array(b) for b in layer.blobs]
    for layer in net.layers:
        if layer.HasField("layer"):  # V0, nested
            layers[layer.layer.name] = [blob_array(b) for b in layer.layer.blobs]
        else:
            layers[layer.name] = [blob_array(b) for b in layer.blobs]
    layers = {name: blobs for name, blobs in layers.items() if blobs}
    if not layers:
        raise CaffeError(f"{path}: no layer with weights (not a Caffe model, or a prototxt without weights)")
    return layers


def read_mean_file(path: str | os.PathLike) -> tuple[float, float, float]:
    """The per-channel (B, G, R) mean of a Caffe mean image (``.binaryproto``, one BlobProto)."""
    try:
        blob = message_class("BlobProto")()
        with open(path, "rb") as f:
            blob.ParseFromString(f.read())
    except (OSError, DecodeError) as exc:
        raise CaffeError(f"{path}: not a Caffe mean file (binary BlobProto): {exc}") from None
    mean = blob_array(blob)
    if mean.ndim == 4:
        mean = mean[0]
    if mean.ndim != 3 or mean.shape[0] != 3:
        raise CaffeError(f"{path}: expected a 3-channel mean image, got shape {mean.shape}")
    return tuple(float(v) for v in mean.reshape(3, -1).mean(axis=1))


def rgb_conv1(weight: np.ndarray, bias: np.ndarray, rgb_mean: tuple[float, ...], rgb_std: tuple[float, ...],
              caffe_bgr_mean: tuple[float, ...] = CAFFE_BGR_MEAN) -> tuple[np.ndarray, np.ndarray]:
    """conv1 of a Caffe net (input: B, G, R in 0..255 minus ``caffe_bgr_mean``) rewritten for our input
    x_c = (p_c / 255 − rgb_mean_c) / rgb_std_c in R, G, B order.

    Caffe's input in our channel order is p_c − m_c = 255·rgb_std_c·x_c + (255·rgb_mean_c − m_c), so
    w'_c = 255·rgb_std_c·w_c (channels reversed) and b' = b + Σ w_c·(255·rgb_mean_c − m_c).
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise CaffeError(f"conv1 weights of shape {weight.shape}: expected (out, 3, h, w)")
    w_rgb = weight[:, ::-1].astype(np.float64)  # BGR → RGB
    mean_rgb = np.asarray(caffe_bgr_mean, np.float64)[::-1]
    scale = 255.0 * np.asarray(rgb_std, np.float64)
    shift = 255.0 * np.asarray(rgb_mean, np.float64) - mean_rgb
    new_weight = w_rgb * scale[None, :, None, None]
    new_bias = bias.astype(np.float64) + (w_rgb.sum(axis=(2, 3)) * shift[None, :]).sum(axis=1)
    return new_weight.astype(np.float32), new_bias.astype(np.float32)


def write_caffemodel(path: str | os.PathLike, layers: dict[str, list[np.ndarray]], layout: str = "layer",
                     name: str = "net") -> None:
    """Write ``layers`` ({name: blobs}) as a ``.caffemodel`` in Caffe's format: ``layout`` "layer"
    (current), "layers" (V1) or "v0". For tests and for exporting weights back to Caffe tools."""
    net = message_class("NetParameter")(name=name)
    for layer_name, blobs in layers.items():
        kind = "Convolution" if blobs[0].ndim == 4 else "InnerProduct"
        if layout == "layer":
            layer = net.layer.add(name=layer_name, type=kind)
        elif layout == "layers":
            layer = net.layers.add(name=layer_name, type=4 if kind == "Convolution" else 14)
        else:
            layer = net.layers.add().layer
            layer.name, layer.type = layer_name, kind.lower()
        for array in blobs:
            blob = layer.blobs.add()
            if layout == "layer":
                blob.shape.dim.extend(array.shape)
            else:  # the old 4-D fields: weights (out, in, h, w) or (1, 1, out, in); biases (1, 1, 1, n)
                dims = (1,) * (4 - array.ndim) + tuple(array.shape)
                blob.num, blob.channels, blob.height, blob.width = dims
            blob.data.extend(np.asarray(array, np.float32).ravel().tolist())
    with atomic_write(path) as f:
        f.write(net.SerializeToString())
