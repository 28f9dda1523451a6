"""How an image file (or a PIL image) becomes the (H, W, 3) uint8 RGB array the runtime segments; the
bundled model and sample scenes are in :mod:`fisa_rt.runtime.assets`."""

from __future__ import annotations

import contextlib
import numbers
import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..errors import InputError, missing_file_error

# 100 megapixels (10000 x 10000): above any camera's photo but far below what a bomb claims.
DEFAULT_MAX_PIXELS = 100_000_000
WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def checked_max_pixels(max_pixels: Optional[int]) -> Optional[int]:
    """``max_pixels`` if it is a limit (an integer >= 0; None or 0: no limit); a negative one would refuse
    every image, each refusal blaming the image."""
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 0
    ):
        raise InputError(f"max_pixels must be an integer >= 0 (0 or None: no limit); got {max_pixels!r}")
    return max_pixels


def check_pixels(size: Tuple[int, int], max_pixels: Optional[int], name: str) -> None:
    """Refuse a (width, height) above ``max_pixels`` (None or 0: no limit) before anything is decoded:
    a small compressed file can claim billions of pixels (a decompression bomb)."""
    if checked_max_pixels(max_pixels) and size[0] * size[1] > max_pixels:
        raise InputError(
            f"image {name} is {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, "
            f"more than the limit of {max_pixels:,}; "
            "raise it with --max-pixels (max_pixels= in Python; 0: no limit) if the image is genuine"
        )


def decode_image(im: Image.Image, owned: bool = False, name: str = "given as a PIL.Image") -> np.ndarray:
    """(H, W, 3) uint8 RGB as the model must see it: turned upright by its EXIF orientation, 16-bit
    grayscale scaled to 8 bits rather than clipped, and transparency composited over white (the background a
    viewer shows) rather than dropped with whatever colour it hid. A float image (mode F) is refused: nothing
    says whether its range is [0, 1] or [0, 255]; so is a 32-bit integer one (mode I) beyond 16-bit values.
    ``owned``: ``im`` is this package's to change (opened from a file), so it is turned in place; a caller's
    image is left as it is."""
    if im.mode == "F":
        raise InputError(f"image {name} is 32-bit float (PIL mode F), whose range is not known; convert it to "
                         "8-bit RGB first (e.g. Image.fromarray((pixels * 255).round().astype('uint8')))")
    # in place, and no RGB -> RGB convert below: each copy of an 8000 x 8000 photo is 192 MB
    if owned:
        ImageOps.exif_transpose(im, in_place=True)
    elif im.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        im = ImageOps.exif_transpose(im)
    # some Pillow versions open 16-bit PNG and TIFF files as mode I: 16-bit values are read as such, others refused
    if im.mode == "I":
        low, high = im.getextrema()
        if low < 0 or high > 65535:
            raise InputError(f"image {name} is 32-bit integer (PIL mode I) with values {low}..{high}, outside the "
                             "16-bit range 0..65535 it is read in; scale it to 8-bit RGB first")
    if im.mode in WIDE_GRAY_MODES:
        gray = (np.asarray(im).astype(np.float64) / 257).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "La":  # premultiplied alpha: Pillow converts it to LA only, which the branch below takes
        im = im.convert("LA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


@contextlib.contextmanager
def _own_pixel_limit():
    """Pillow's decompression-bomb check raises its own exception (a traceback) at its own fixed limit;
    :func:`check_pixels` applies ours instead."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def load_image(path: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 RGB (see :func:`decode_image`); a missing, unreadable, corrupt or too large file is
    an InputError naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise missing_file_error(path, "image")
    try:
        with _own_pixel_limit(), Image.open(path) as im:
            check_pixels(im.size, max_pixels, path)
            return decode_image(im, owned=True, name=path)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


ImageInput = Union[str, "os.PathLike[str]", np.ndarray, Image.Image]  # a file, or decoded RGB pixels


def check_batch(images: Sequence[ImageInput]) -> None:
    """What ``segment_batch`` (local or a server's) refuses: one image where a list of them belongs, which it
    would otherwise take item by item (the characters of a path, the planes of a 4-D array)."""
    if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)) or not isinstance(images, Sequence):
        raise InputError(f"segment_batch takes a list of images; got {type(images).__name__} (use segment for one)")


def picture_of(image: ImageInput, max_pixels: Optional[int]) -> np.ndarray:
    """Any accepted image -> (H, W, 3) uint8 RGB, decoded as ``infer`` decodes files (also the server client's)."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, max_pixels)
    if isinstance(image, Image.Image):
        check_pixels(image.size, max_pixels, "given as a PIL.Image")
        try:  # a lazily opened image decodes here: one closed or cut short is the caller's input, not a bug
            image.load()
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the image given as a PIL.Image: {exc}") from None
        return decode_image(image)
    if not isinstance(image, np.ndarray):
        kind = type(image).__name__
        raise InputError(f"an image must be a path, a PIL.Image or an (H, W, 3) uint8 RGB array; got {kind}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise InputError(f"image must be (H, W, 3) uint8 RGB with H, W >= 1; got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)  # any strides (a view such as image[:, :, ::-1]) as a plain array
