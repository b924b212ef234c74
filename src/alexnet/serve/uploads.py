"""Turning an uploaded file into the network's input, refusing what could hurt the server.

Limits are checked before the work they guard: the request's size while it is read, an image's pixel
count from its header before anything is decoded (a decompression bomb declares its size honestly; it
is the decoding that would cost gigabytes). Every refusal is an :class:`UploadError` with an HTTP status
and a message naming the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..data import loaders
from ..runtime.inference import Classifier

__all__ = ["Limits", "UploadError", "decode_upload"]


@dataclass(frozen=True)
class Limits:
    """What one request may send: bytes per file, pixels per image, files per request."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_files: int = 16

    @property
    def max_request_bytes(self) -> int:
        """The whole multipart body: every file at its limit, plus room for the part headers."""
        return self.max_files * (self.max_upload_bytes + 4096) + 65536


class UploadError(Exception):
    """A request the server refuses: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def check_size(name: str, size: int, limits: Limits) -> None:
    """Refuse an empty file or one over the per-file byte limit."""
    if size == 0:
        raise UploadError(400, f"{name}: empty upload (0 bytes); send an image file")
    if size > limits.max_upload_bytes:
        raise UploadError(413, f"{name}: {_mb(size)} is over the upload limit of {_mb(limits.max_upload_bytes)}")


def decode_upload(clf: Classifier, name: str, raw: bytes, limits: Limits) -> tuple[Tensor, tuple[int, int]]:
    """An uploaded file -> (uint8 (3, resize, resize) image as the model's card prescribes, (width, height)).

    Raises :class:`UploadError`: 400 empty, 413 too many bytes or pixels, 415 not an image (only raster
    formats are read), 422 an image that cannot be decoded (truncated or corrupt) or of a shape refused by
    :func:`alexnet.data.loaders.check_shape`.
    """
    check_size(name, len(raw), limits)
    try:
        with Image.open(io.BytesIO(raw), formats=loaders.RASTER_FORMATS) as im:  # reads the header only
            width, height = im.size
    except UnidentifiedImageError as e:
        raise UploadError(415, f"{name}: not an image (JPEG, PNG, GIF, TIFF, WebP, BMP, ...)") from e
    except Image.DecompressionBombError as e:
        raise UploadError(413, f"{name}: refused as a decompression bomb ({e})") from e
    except loaders.DECODE_ERRORS as e:
        raise UploadError(422, f"{name}: cannot read the image, truncated or corrupt ({loaders._reason(e)})") from e
    pixels = width * height
    if pixels > limits.max_pixels:
        raise UploadError(
            413,
            f"{name}: {width}x{height} is {pixels / 1e6:.1f} Mpixel, over the limit of {limits.max_pixels / 1e6:g} "
            "Mpixel (a decompression bomb, or a photo to scale down first)",
        )
    try:
        loaders.check_shape(width, height)
    except loaders.ImageShapeError as e:
        raise UploadError(422, f"{name}: {e}") from e
    try:
        return clf.decode(io.BytesIO(raw)), (width, height)
    except Image.DecompressionBombError as e:
        raise UploadError(413, f"{name}: refused as a decompression bomb ({e})") from e
    except loaders.DECODE_ERRORS as e:
        raise UploadError(422, f"{name}: cannot decode the image, truncated or corrupt ({loaders._reason(e)})") from e
