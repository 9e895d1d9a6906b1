"""Uploaded images, checked before anything decodes them fully.

The type is read from the bytes (magic numbers), never from the file name or the declared
content type; the pixel count is checked from the header before the pixels are decoded, which
is what stops a decompression bomb (a small file that decodes to gigabytes); truncated or corrupt
files are refused, never decoded with grey padding.

Whatever follows the image's own end (a zip archive appended to a PNG, a script after a JPEG) is
cut off before anything decodes or stores it, so the service never serves a polyglot file. The
image's bytes themselves are kept as sent: the same pixels, the same file, metadata included.
"""
from __future__ import annotations

import io
import struct

from PIL import Image, UnidentifiedImageError


class BadUpload(Exception):
    """An upload the service refuses: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


ACCEPTED = "JPEG, PNG, WebP, BMP or GIF"


def sniff(data: bytes) -> str | None:
    """The image format of ``data`` by its first bytes (a PIL format name), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    return None


def decode_upload(data: bytes, name: str, max_pixels: int) -> tuple[Image.Image, str, bytes]:
    """The decoded image, its format and its bytes without anything after its end, or
    :class:`BadUpload` saying what is wrong with it."""
    name = " ".join(str(name).split())[:100] or "the image"  # a client's file name, shown on one line
    if not data:
        raise BadUpload(400, f"{name} is empty; send the image file's bytes")
    kind = sniff(data)
    if kind is None:
        raise BadUpload(415, f"{name} is not an image this service takes ({ACCEPTED}, recognised by content)")
    end = image_end(data, kind)
    if end is None:
        raise BadUpload(422, f"{name} looks like {kind} but has no end: it is truncated or corrupt")
    data = data[:end]
    try:  # PIL itself raises DecompressionBombError above twice its own limit (~179 M pixels)
        image = Image.open(io.BytesIO(data), formats=[kind])
        width, height = image.size
        if width * height > max_pixels:
            raise BadUpload(413, f"{name} is {width}x{height} pixels; at most {max_pixels:,} pixels are "
                                 "accepted, downscale it")
        image.load()
    except BadUpload:
        raise
    except Image.DecompressionBombError:
        raise BadUpload(413, f"{name} declares more pixels than this service accepts ({max_pixels:,}); "
                             "downscale it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise BadUpload(422, f"{name} looks like {kind} but cannot be decoded: it is truncated or corrupt") from None
    return image, kind, data


def image_end(data: bytes, kind: str) -> int | None:
    """Where the image in ``data`` ends, by its format's own structure (what follows is not part
    of it), or None if the structure runs past the data."""
    try:
        return _ENDS[kind](data)
    except (IndexError, struct.error):
        return None


def _png_end(data: bytes) -> int | None:
    pos = 8  # signature, then chunks: length, type, payload, CRC; IEND is the last
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        pos += 12 + length
        if kind == b"IEND":
            return pos if pos <= len(data) else None
    return None


def _jpeg_end(data: bytes) -> int | None:
    pos = 2  # after SOI: marker segments; entropy-coded data after each SOS; EOI ends the image
    while True:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            return pos + 2
        if marker == 0xFF:  # fill byte
            pos += 1
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn, TEM: no length
            pos += 2
        else:
            pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]  # the length counts itself, not the marker
            if marker == 0xDA:  # SOS: scan data until a marker that is not a stuffed 0xFF00 or an RSTn
                pos = _next_marker(data, pos)
                if pos is None:
                    return None


def _next_marker(data: bytes, pos: int) -> int | None:
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return None
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            pos += 2
        elif following == 0xFF:
            pos += 1
        else:
            return pos


def _gif_end(data: bytes) -> int | None:
    pos = 13 + _color_table(data[10])  # header, logical screen descriptor, global colour table
    while True:
        block = data[pos]
        if block == 0x3B:  # trailer
            return pos + 1
        if block == 0x21:  # extension: label, then data sub-blocks
            pos = _after_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image: descriptor, local colour table, LZW code size, data sub-blocks
            pos = _after_sub_blocks(data, pos + 10 + _color_table(data[pos + 9]) + 1)
        else:
            return None


def _color_table(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _after_sub_blocks(data: bytes, pos: int) -> int:
    while data[pos]:
        pos += 1 + data[pos]
    return pos + 1


def _riff_end(data: bytes) -> int | None:  # WebP: the RIFF header says how long the file is
    end = 8 + struct.unpack_from("<I", data, 4)[0]
    return end if end <= len(data) else None


def _bmp_end(data: bytes) -> int | None:  # the file header says how long the file is
    end, offset = struct.unpack_from("<I", data, 2)[0], struct.unpack_from("<I", data, 10)[0]
    return end if 26 <= end <= len(data) and offset < end else None


_ENDS = {"PNG": _png_end, "JPEG": _jpeg_end, "GIF": _gif_end, "WEBP": _riff_end, "BMP": _bmp_end}
