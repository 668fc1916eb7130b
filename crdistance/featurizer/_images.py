"""Image inputs of PatchFeaturizer: validation, batching and preprocessing.

Every accepted input becomes a float32 tensor (b, 3, h, w), resized, centre
cropped and normalised with the ImageNet statistics the backbones were
trained with.
"""

from os import PathLike

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_images(images):
    """Check the container of `images` and return it; a 1-D NumPy array of paths
    or images (such as ``load_mvtec(...).paths``) is returned as a list."""
    if isinstance(images, np.ndarray) and images.ndim == 1 and (
        images.dtype.kind in "USO"
    ):
        images = list(images)
    if isinstance(images, str | bytes | PathLike | Image.Image):
        raise TypeError(
            "Expected a collection of images (a list of paths or PIL images, an "
            f"array or a tensor), got a single {type(images).__name__}; wrap it "
            "in a list."
        )
    if isinstance(images, np.ndarray | torch.Tensor):
        _check_array_layout(images, batched=True)
    elif not isinstance(images, list | tuple):
        raise TypeError(
            "Expected a list of image paths or PIL images, a NumPy array "
            "(n, H, W[, C]) or a torch tensor (n, C, H, W); got "
            f"{type(images).__name__}."
        )
    if len(images) == 0:
        raise ValueError("Expected at least one image, got none.")
    return images


def _check_array_layout(array, *, batched):
    prefix = "(n, " if batched else "("
    if isinstance(array, np.ndarray):
        layout = f"{prefix}H, W) or {prefix}H, W, C) with C in (1, 3)"
        valid_ndim = (3, 4) if batched else (2, 3)
        channels = array.shape[-1] if array.ndim == valid_ndim[1] else 1
    else:
        layout = f"{prefix}C, H, W) with C in (1, 3)"
        valid_ndim = (4,) if batched else (3,)
        channels = array.shape[-3] if array.ndim == valid_ndim[0] else None
    if array.ndim not in valid_ndim or channels not in (1, 3):
        kind = "NumPy array" if isinstance(array, np.ndarray) else "torch tensor"
        raise ValueError(
            f"Expected a {kind} of shape {layout} (NumPy arrays are channels-last, "
            f"torch tensors channels-first), got shape {tuple(array.shape)}."
        )


def iter_batches(images, batch_size):
    """Yield consecutive slices of at most `batch_size` images, with their start."""
    for start in range(0, len(images), batch_size):
        yield start, images[start : start + batch_size]


def preprocess(batch, *, resize, crop_size, device):
    """Turn a batch of images into a normalised float32 tensor (b, 3, h, w).

    Parameters
    ----------
    batch : list, ndarray or Tensor
        A slice of the input accepted by ``check_images``.
    resize : tuple (height, width) or None
        Size every image is resized to (bilinear, antialiased); None keeps it.
    crop_size : tuple (height, width) or None
        Size of the centre crop taken after resizing; None takes none.
    device : torch.device
    """
    if isinstance(batch, np.ndarray | torch.Tensor):
        groups = [batch]
    else:
        groups = [_load(item) for item in batch]
    prepared = [
        _prepare(group, resize=resize, crop_size=crop_size, device=device)
        for group in groups
    ]
    sizes = {tuple(tensor.shape[-2:]) for tensor in prepared}
    if len(sizes) > 1:
        raise ValueError(
            f"Images have different sizes {sorted(sizes)} after preprocessing; "
            "set resize to a common size."
        )
    images = torch.cat(prepared)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (images - mean) / std


def _load(item):
    """Return one image as a batch of one: ndarray (1, H, W[, C]) or Tensor."""
    if isinstance(item, str | PathLike):
        try:
            with Image.open(item) as image:
                item = _pil_to_array(image)
        except (OSError, Image.DecompressionBombError) as exc:
            raise ValueError(f"Cannot read image file {item}: {exc}") from exc
    elif isinstance(item, Image.Image):
        item = _pil_to_array(item)
    elif not isinstance(item, np.ndarray | torch.Tensor):
        raise TypeError(
            "Each image must be a path, a PIL image, a NumPy array (H, W[, C]) or a "
            f"torch tensor (C, H, W); got {type(item).__name__}."
        )
    _check_array_layout(item, batched=False)
    return item[None]


def _pil_to_array(image):
    return np.array(image if image.mode in ("L", "RGB") else image.convert("RGB"))


def _prepare(images, *, resize, crop_size, device):
    """One group of images to floats (b, 3, h, w) in [0, 1], resized and cropped.

    uint8 images on the CPU are resized before conversion: the antialiased
    uint8 kernel is many times faster, and rounds like PIL does.
    """
    images = _as_tensor(images).to(device)
    resize_as_uint8 = images.dtype == torch.uint8 and images.device.type == "cpu"
    if not resize_as_uint8:
        images = _to_unit_float(images)
    images = _resize_and_crop(images, resize, crop_size)
    if resize_as_uint8:
        images = _to_unit_float(images)
    return images.expand(-1, 3, -1, -1)


def _as_tensor(images):
    """A batched ndarray (b, H, W[, C]) as a tensor (b, C, H, W); tensors as is."""
    if isinstance(images, torch.Tensor):
        return images
    if images.ndim == 3:
        images = images[..., None]
    images = torch.from_numpy(np.require(images, requirements=["C", "W"]))
    return images.permute(0, 3, 1, 2)


def _to_unit_float(images):
    if images.dtype == torch.uint8:
        return images.float() / 255
    if not images.is_floating_point():
        raise TypeError(
            f"Images must be uint8 (0-255) or floating point (0-1); got {images.dtype}."
        )
    low, high = images.min().item(), images.max().item()
    if low < 0 or high > 1:
        raise ValueError(
            f"Floating-point images must lie in [0, 1], got values in [{low}, "
            f"{high}]; pass uint8 for 0-255 data and do not normalise beforehand."
        )
    return images.float()


def _resize_and_crop(images, resize, crop_size):
    if resize is not None and tuple(images.shape[-2:]) != resize:
        images = F.interpolate(
            images, size=resize, mode="bilinear", align_corners=False, antialias=True
        )
    if crop_size is None:
        return images
    height, width = images.shape[-2:]
    crop_height, crop_width = crop_size
    if crop_height > height or crop_width > width:
        raise ValueError(
            f"crop_size={crop_size} is larger than the image size {(height, width)}."
        )
    top = round((height - crop_height) / 2)
    left = round((width - crop_width) / 2)
    return images[..., top : top + crop_height, left : left + crop_width]
