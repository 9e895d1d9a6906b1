"""Uploaded images, checked before anything decodes them fully.

The type is read from the bytes (magic numbers), never from the file name or the declared
content type; the pixel count is checked from the header before the pixels are decoded, which
is what stops a decompression bomb (a small file that decodes to gigabytes); truncated or corrupt
files are refused, never decoded with grey padding.
"""
from __future__ import annotations

import io

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


def decode_upload(data: bytes, name: str, max_pixels: int) -> tuple[Image.Image, str]:
    """The decoded image and its format, or :class:`BadUpload` saying what is wrong with it."""
    name = " ".join(str(name).split())[:100] or "the image"  # a client's file name, shown on one line
    if not data:
        raise BadUpload(400, f"{name} is empty; send the image file's bytes")
    kind = sniff(data)
    if kind is None:
        raise BadUpload(415, f"{name} is not an image this service takes ({ACCEPTED}, recognised by content)")
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
    return image, kind
