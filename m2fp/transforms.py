"""The ModelScope pipeline's preprocessing, exactly: shortest-edge resize with Pillow's bilinear
filter (bit-exact with the pipeline). The pipeline then feeds float32 CHW RGB in 0..255
(`ToTensor() * 255`, which gives back the uint8 values exactly); `Parser` batches the resized
pixels as such, and normalisation and padding happen inside the model.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SHORT_EDGE = 640
MAX_SIZE = 1333


def preprocess_shape(
    height: int, width: int, *, short_edge: int = SHORT_EDGE, max_size: int = MAX_SIZE
) -> tuple[int, int]:
    """(new_h, new_w) for an image of `height` x `width`: ModelScope's `_get_preprocess_shape`.

    The short side goes to `short_edge`; if the long side would then exceed `max_size`, both are
    scaled so it equals `max_size`; each side is rounded as `int(x + 0.5)`. The same float
    arithmetic in the same order as the pipeline, so sizes agree to the pixel. One deliberate
    difference: a side never rounds down to 0 (extreme aspect ratios, where the pipeline would
    fail), it is at least 1.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    size = short_edge * 1.0
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h = new_h * scale
        new_w = new_w * scale
    return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an (H, W, 3) uint8 RGB array and return it C-contiguous.

    Raises:
        TypeError: not a numpy array.
        ValueError: wrong dtype, shape or an empty image.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array (H, W, 3) uint8 RGB, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    return np.ascontiguousarray(image)


def resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 RGB image to `size_hw` with Pillow's BILINEAR filter (what
    torchvision's `Resize` does on a PIL image; Pillow antialiases when it downscales).

    Returns the input itself when the size already matches (Pillow would copy it unchanged).
    """
    image = check_image(image)
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return image
    resized = Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR)
    return np.array(resized)  # a writable array of its own
