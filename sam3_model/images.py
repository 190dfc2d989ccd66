"""Reading images the way annotation tools show them: EXIF orientation applied, RGB, one clear error per bad file.

Phones store a rotated photo as unrotated pixels plus an EXIF orientation tag. labelme, Roboflow, ultralytics
and our synth pool all annotate the image as displayed (tag applied), so every reader here applies it too, and
image sizes are compared after it: a 4000x3000 stored JPEG with orientation 6 is a 3000x4000 image.
"""

from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import storage
from .errors import ImageError

ImageInput = Union[Image.Image, np.ndarray, str, os.PathLike]
EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height
_DECODE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError)


def orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1, upright, when there is none or it is unreadable)."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to refuse the pixels
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as displayed, i.e. after its EXIF orientation."""
    width, height = image.size
    return (height, width) if orientation(image) in _TRANSPOSED else (width, height)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file or URL as displayed, from its header; `ImageError` naming the file."""
    try:
        with storage.open_binary(path) as handle, Image.open(handle) as image:
            return displayed_size(image)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except _DECODE_ERRORS as err:
        raise ImageError(f"{path}: cannot read or decode the image ({type(err).__name__}: {err})") from None


def load_image(image: ImageInput, where: str) -> Image.Image:
    """An RGB PIL image (EXIF orientation applied) from a PIL image, an (H, W, 3) uint8 array, a file path or URL."""
    if isinstance(image, (str, os.PathLike)):
        try:  # a URL is read whole first: PIL's many small reads would each be a request
            source = io.BytesIO(storage.read_bytes(image)) if storage.is_url(image) else image
            with Image.open(source) as opened:
                return _upright(opened).convert("RGB")
        except FileNotFoundError:
            raise ImageError(f"{image}: no such image file") from None
        except _DECODE_ERRORS as err:
            raise ImageError(f"{image}: cannot read or decode the image ({type(err).__name__}: {err})") from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ImageError(f"{where}: expected an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
        return Image.fromarray(image)
    if isinstance(image, Image.Image):
        if 0 in image.size:
            raise ImageError(f"{where}: the image is empty ({image.size[0]}x{image.size[1]})")
        return _upright(image).convert("RGB")
    raise ImageError(f"{where}: expected a PIL image, an (H, W, 3) uint8 array or a path, got {type(image).__name__}")


def _upright(image: Image.Image) -> Image.Image:
    """The image as displayed: rotated and flipped per its EXIF orientation (itself when upright)."""
    return ImageOps.exif_transpose(image) if orientation(image) != 1 else image
