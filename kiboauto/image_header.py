"""Width, height and format of an image file, read from its header without decoding it.

Pure byte parsing (standard library only), shared by the camera driver (a snapshot is refused
before it is decoded) and the vision core's :func:`~kiboauto.vision.io.load_image`, which must
not depend on each other.
"""

from __future__ import annotations

import struct

__all__ = ["image_dimensions", "image_format"]


# ---------------------------------------------------------------------------------------------
_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xDA)})  # TEM, RSTn, SOI, EOI


def image_format(data: bytes) -> str:
    """The image format the first bytes announce (``png``, ``jpeg``, ``tiff``, ...) or ``""``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7", b"PF", b"Pf"):
        return "pnm"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or data.startswith(b"\xff\x4f\xff\x51"):
        return "jpeg2000"
    return ""


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from the header of an encoded image, without decoding it.

    Knows PNG, JPEG, TIFF (classic and BigTIFF, first page), BMP, PNM/PAM/PFM, WebP, GIF and
    JPEG 2000. Returns ``None`` for another format or a header that cannot be read (truncated,
    damaged): callers refuse such data rather than hand it to a decoder unchecked.
    """
    try:
        size = _dimensions(data, image_format(data))
    except (struct.error, ValueError, IndexError):
        return None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _dimensions(data: bytes, fmt: str) -> tuple[int, int] | None:
    if fmt == "png":
        if data[12:16] != b"IHDR":
            return None
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if fmt == "jpeg":
        return _jpeg_dimensions(data)
    if fmt == "tiff":
        return _tiff_dimensions(data)
    if fmt == "bmp":
        (dib,) = struct.unpack("<I", data[14:18])
        if dib == 12:
            w, h = struct.unpack("<HH", data[18:22])
        else:
            w, h = struct.unpack("<ii", data[18:26])
        return abs(int(w)), abs(int(h))
    if fmt == "pnm":
        return _pnm_dimensions(data)
    if fmt == "webp":
        chunk = data[12:16]
        if chunk == b"VP8X":
            w = int.from_bytes(data[24:27], "little") + 1
            h = int.from_bytes(data[27:30], "little") + 1
            return w, h
        if chunk == b"VP8L":
            (bits,) = struct.unpack("<I", data[21:25])
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return int(w) & 0x3FFF, int(h) & 0x3FFF
        return None
    if fmt == "gif":
        w, h = struct.unpack("<HH", data[6:10])
        return int(w), int(h)
    if fmt == "jpeg2000":
        if data.startswith(b"\xff\x4f\xff\x51"):
            xs, ys, xo, yo = struct.unpack(">IIII", data[8:24])
            return int(xs) - int(xo), int(ys) - int(yo)
        at = data.find(b"ihdr", 0, 4096)
        if at < 0:
            return None
        h, w = struct.unpack(">II", data[at + 4 : at + 12])
        return int(w), int(h)
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    i = 2
    n = len(data)
    while i < n:
        if data[i] != 0xFF:
            return None
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker in _JPEG_NO_LENGTH:
            continue
        (length,) = struct.unpack(">H", data[i : i + 2])
        if marker in _JPEG_SOF:
            h, w = struct.unpack(">HH", data[i + 3 : i + 7])
            return int(w), int(h)
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += int(length)
    return None


def _tiff_dimensions(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    (magic,) = struct.unpack(order + "H", data[2:4])
    big = magic == 43
    if big:
        (ifd,) = struct.unpack(order + "Q", data[8:16])
        (count,) = struct.unpack(order + "Q", data[ifd : ifd + 8])
        pos, entry, field = ifd + 8, 20, 12
    else:
        (ifd,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
        pos, entry, field = ifd + 2, 12, 8
    formats = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
    found: dict[int, int] = {}
    for k in range(min(int(count), 4096)):
        at = pos + k * entry
        tag, kind = struct.unpack(order + "HH", data[at : at + 4])
        if tag in (256, 257) and kind in formats:
            value_at = at + 4 + field // 2 if not big else at + 12
            (found[tag],) = struct.unpack(
                order + formats[kind], data[value_at : value_at + struct.calcsize(formats[kind])]
            )
    if 256 in found and 257 in found:
        return int(found[256]), int(found[257])
    return None


def _pnm_dimensions(data: bytes) -> tuple[int, int] | None:
    head = data[:4096]
    if head[:2] == b"P7":  # PAM: WIDTH / HEIGHT lines
        fields: dict[bytes, int] = {}
        for line in head.split(b"\n")[1:]:
            parts = line.split()
            if parts and parts[0] == b"ENDHDR":
                break
            if len(parts) == 2 and parts[0] in (b"WIDTH", b"HEIGHT"):
                fields[parts[0]] = int(parts[1])
        if b"WIDTH" in fields and b"HEIGHT" in fields:
            return fields[b"WIDTH"], fields[b"HEIGHT"]
        return None
    tokens: list[int] = []
    for line in head[2:].split(b"\n"):
        for token in line.split(b"#", 1)[0].split():
            tokens.append(int(token))
            if len(tokens) == 2:
                return tokens[0], tokens[1]
    return None
