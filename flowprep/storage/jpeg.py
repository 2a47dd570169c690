"""What a JPEG file is, read from its markers without decoding it.

``flowprep import`` keeps other tools' JPEG bytes as they are; it needs each file's size (frames and
flow of one video must agree) and must notice a file cut short, at the speed of reading files: a
decode costs about 100 times more than walking the markers. ``flowprep verify`` decodes every record
afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
# start-of-frame markers (baseline, extended, progressive, lossless, arithmetic); C4, C8, CC are not
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_NO_LENGTH = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}


class JpegError(ValueError):
    """Bytes that are not a whole JPEG image."""


@dataclass(frozen=True)
class JpegInfo:
    width: int  # pixels
    height: int  # pixels
    channels: int  # 1 (grey) or 3 (colour)


def jpeg_info(data: bytes | memoryview) -> JpegInfo:
    """Size and channels of a JPEG image from its frame header; JpegError if the bytes are not a JPEG or
    end before their end-of-image marker (a file cut short by an interrupted copy or a full disk)."""
    if bytes(data[:2]) != _SOI:
        raise JpegError("not a JPEG file (no start-of-image marker)")
    info = None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise JpegError(f"damaged JPEG header (byte {i})")
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF:
            if i + 10 > n:
                break
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            info = JpegInfo(width, height, data[i + 9])
            break
        if marker == 0xDA:
            raise JpegError("JPEG without a frame header")
        i += 2 + length
    if info is None:
        raise JpegError("truncated JPEG (ends inside its header)")
    if info.width == 0 or info.height == 0 or info.channels not in (1, 3):
        raise JpegError(f"unsupported JPEG ({info.width}x{info.height}, {info.channels} channels)")
    if not bytes(data[-2:]) == _EOI and not bytes(data).rstrip(b"\0").endswith(_EOI):
        raise JpegError("truncated JPEG (no end-of-image marker)")
    return info
