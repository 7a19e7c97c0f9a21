"""Image decoding shared by every image dataset and by `noisymaml predict`.

Training and prediction must see an image the same way: grey datasets (Omniglot) convert to
"L", resize with LANCZOS and invert (255 - pixel) so that strokes are bright, as Finn et al.
2017 (1 - image); RGB datasets (MiniImageNet, D'Claw) convert to RGB and resize with LANCZOS
when not already square of the right size, as the `proc_images.py` scripts of Finn et al. and
Rajendran et al. do. Every class of a pool must hold the same number of images.
"""

from __future__ import annotations

import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from noisymaml.errors import DataError

# What a corrupt file or member can raise from zipfile, zlib or PIL (PIL plugins use SyntaxError).
DECODE_ERRORS = (OSError, EOFError, SyntaxError, ValueError, zlib.error, zipfile.BadZipFile,
                 Image.DecompressionBombError)


def grey(image: Image.Image, image_size: int) -> np.ndarray:
    """uint8 [S, S]: grey, LANCZOS-resized, inverted (strokes bright)."""
    resized = image.convert("L").resize((image_size, image_size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(resized, dtype=np.uint8)


def rgb(image: Image.Image, image_size: int) -> np.ndarray:
    """uint8 [S, S, 3]: RGB, LANCZOS-resized when not already S x S."""
    converted = image.convert("RGB")
    if converted.size != (image_size, image_size):
        converted = converted.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(converted, dtype=np.uint8)


def read_rgb(path: Path, image_size: int) -> np.ndarray:
    """Decode one image file to uint8 RGB [image_size, image_size, 3]."""
    try:
        with Image.open(path) as image:
            return rgb(image, image_size)
    except DECODE_ERRORS as error:
        raise DataError(f"cannot decode image {path} ({error}); expected a readable PNG or JPEG file") from error


def common_count(counts: dict[str, int], what: str) -> int:
    """The number of images every class holds; a class with another count is an error naming it.

    `what` says where the classes come from, e.g. "in train.csv (MiniImageNet: 600 each)".
    """
    expected = Counter(counts.values()).most_common(1)[0][0]
    for name, count in counts.items():
        if count != expected:
            raise DataError(f"class {name} has {count} images {what}, while most have {expected}: "
                            "every class needs the same number of images")
    if expected == 0:
        raise DataError(f"the classes {what} hold no images")
    return expected
