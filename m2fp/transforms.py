"""The ModelScope pipeline's preprocessing, exactly: shortest-edge resize with Pillow's bilinear
filter, then float32 CHW RGB in 0..255 (normalisation and padding happen inside the model).

`resize_image` is the reference (Pillow itself, bit-exact on the CPU); `resize_tensor` is its
torch twin for batches already on a GPU, within one intensity level of Pillow.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
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


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → float32 (3, H, W) in 0..255, the model's input for one image.

    Equal to the pipeline's `ToTensor()(img) * 255.`: (v / 255) * 255 is exactly v in float32
    for every uint8 v.
    """
    return torch.from_numpy(check_image(image)).permute(2, 0, 1).float()


def preprocess(
    image: np.ndarray, *, short_edge: int = SHORT_EDGE, max_size: int = MAX_SIZE
) -> torch.Tensor:
    """The whole pipeline preprocessing of one image: float32 (3, new_h, new_w) in 0..255."""
    image = check_image(image)
    size = preprocess_shape(*image.shape[:2], short_edge=short_edge, max_size=max_size)
    return to_tensor(resize_image(image, size))


def resize_tensor(images: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Torch twin of `resize_image` for a batch on any device.

    Args:
        images: (B, 3, H, W) uint8 or float in 0..255.
        size_hw: the output size (new_h, new_w).

    Returns:
        float32 (B, 3, new_h, new_w) holding integers in 0..255 (rounded like Pillow's uint8
        output). Pillow rounds to uint8 between its horizontal and vertical passes and uses
        fixed-point weights; this computes in float, so values differ from Pillow's by at most
        one intensity level.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
    x = images.float()
    if tuple(x.shape[-2:]) == tuple(size_hw):
        return x.round()
    # antialias=True is Pillow's separable triangle filter, widened by the scale when reducing.
    x = F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0.0, 255.0)
