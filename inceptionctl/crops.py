"""Test-time crops of "Going deeper with convolutions" (Szegedy et al., 2014), section 7.

Crops are cut from one decoded image with tensor operations: one torchvision resize per scale
(plus one batched resize of the three squares per scale for the 144-crop protocol), then slicing
and ``flip(-1)``. ``crop_boxes`` describes the same crops, in the same order, as boxes in the
original image's pixel coordinates, so the geometry can be checked without looking at pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

COUNTS = (1, 10, 144)


@dataclass(frozen=True)
class CropBox:
    """The source box of one crop in original-image pixels (edges, bottom/right exclusive)."""

    top: float
    left: float
    bottom: float
    right: float
    mirrored: bool
    scale: int


def _validate(count: int, size: int, scales: Sequence[int]) -> tuple[int, ...]:
    """Return ``scales`` as a tuple of ints, or raise ValueError with a one-line reason."""
    if count not in COUNTS:
        raise ValueError(f"crop count must be 1, 10 or 144, got {count!r}")
    if size < 1:
        raise ValueError(f"crop size must be >= 1, got {size}")
    scales = tuple(int(s) for s in scales)
    if not scales:
        raise ValueError("scales must name at least one shorter-side size, got none")
    small = [s for s in scales if s < size]
    if small:
        raise ValueError(f"every scale must be >= the crop size {size}, got {small[0]}")
    if count == 144 and len(scales) != 4:
        raise ValueError(
            f"144 crops need exactly 4 scales (4 scales x 3 squares x 6 crops x 2 mirrors), got {len(scales)}"
        )
    return scales


def _resized_shape(height: int, width: int, scale: int) -> tuple[int, int]:
    """Return (h, w) after torchvision's ``resize(img, [scale])``: shorter side = scale."""
    # Same expression as torchvision's _compute_resized_output_size (tests check agreement).
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(scale * long / short)
    return (new_long, scale) if width <= height else (scale, new_long)


def _center(length: int, size: int) -> int:
    """Return the offset of a centred window, rounded the way torchvision's center_crop does."""
    return int(round((length - size) / 2.0))


def _five_offsets(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """Return (top, left) of the crops [top-left, top-right, bottom-left, bottom-right, center]."""
    dy, dx = height - size, width - size
    return [(0, 0), (0, dx), (dy, 0), (dy, dx), (_center(height, size), _center(width, size))]


def _square_offsets(height: int, width: int) -> list[tuple[int, int]]:
    """Return (top, left) of the [left, center, right] (or [top, center, bottom]) squares."""
    side = min(height, width)
    if width >= height:
        return [(0, 0), (0, _center(width, side)), (0, width - side)]
    return [(0, 0), (_center(height, side), 0), (height - side, 0)]


def _cut(image: Tensor, offsets: list[tuple[int, int]], size: int) -> list[Tensor]:
    """Return the ``size`` x ``size`` slices of ``image`` [..., H, W] at each (top, left)."""
    return [image[..., t : t + size, l : l + size] for t, l in offsets]


def _resize(image: Tensor, size: list[int], interpolation: str) -> Tensor:
    """torchvision's antialiased ``resize`` with the recipe's ``data.interpolation`` (``area``
    too), for one image ``[C, H, W]`` or a stack ``[N, C, H, W]``."""
    if interpolation == "bilinear":
        return TF.resize(image, size, antialias=True)
    if interpolation != "area":
        mode = TF.InterpolationMode(interpolation)
        return TF.resize(image, size, interpolation=mode, antialias=mode != TF.InterpolationMode.NEAREST)
    h, w = image.shape[-2:]
    if len(size) == 1:  # rounded as training's area resize rounds (data._AreaResize)
        k = size[0] / min(h, w)
        shape = (max(1, round(h * k)), max(1, round(w * k)))
    else:
        shape = (size[0], size[1])
    batch = image if image.dim() == 4 else image[None]
    out = F.interpolate(batch.float(), size=shape, mode="area")
    if not image.is_floating_point():
        out = out.round_().clamp_(0, 255).to(image.dtype)
    return out if image.dim() == 4 else out[0]


def take_crops(image: Tensor, count: int, size: int, scales: Sequence[int],
               interpolation: str = "bilinear") -> Tensor:
    """Return the paper's test-time crops of one image as ``[count, C, size, size]`` (input dtype).

    ``image`` is one decoded image ``[C, H, W]`` (uint8 or float). Resizing is torchvision's
    bilinear, antialiased ``resize(img, [S])`` ("shorter side resized to S"); centred windows
    use torchvision's center-crop offset ``int(round((L - size) / 2))``. Order of the crops:

    * 1: shorter side to ``scales[0]``, the center crop (= ``Resize(S)`` + ``CenterCrop(size)``).
    * 10: shorter side to ``scales[0]``; exactly torchvision's ``TenCrop`` order:
      [tl, tr, bl, br, center] of the resized image, then [tl, tr, bl, br, center] of its
      horizontal mirror. So crop 5 is the mirror of crop 1 (tr), 6 of 0, 7 of 3, 8 of 2; crop 9
      is the mirror image's own center crop, the mirror of crop 4 only when ``W - size`` is even.
    * 144: scale-major over ``scales``; per scale, the squares [left, center, right] (portrait:
      [top, center, bottom]) of side S; per square 12 crops: [tl, tr, bl, br, center,
      whole square resized to ``size``], then the exact mirrors (``flip(-1)``) of those 6 in the
      same order. Index = ((scale_i * 3 + square_i) * 2 + mirrored) * 6 + crop_i.

    ``scales`` beyond the first are ignored for 1 and 10 crops. ``interpolation`` is the
    recipe's ``data.interpolation`` (bilinear, bicubic, nearest or area), as training's
    validation resizes.
    """
    scales = _validate(count, size, scales)
    if image.dim() != 3:
        raise ValueError(f"image must be one [C, H, W] tensor, got shape {tuple(image.shape)}")
    if count in (1, 10):
        resized = _resize(image, [scales[0]], interpolation)
        h, w = resized.shape[-2:]
        if count == 1:
            return torch.stack(_cut(resized, [(_center(h, size), _center(w, size))], size))
        offsets = _five_offsets(h, w, size)
        # The mirror half cuts the mirrored image (TenCrop), not mirrors of the first five.
        return torch.stack(_cut(resized, offsets, size) + _cut(resized.flip(-1), offsets, size))
    out = []
    for scale in scales:
        resized = _resize(image, [scale], interpolation)
        squares = torch.stack(_cut(resized, _square_offsets(*resized.shape[-2:]), scale))
        # One batched resize for the three "whole square" crops of this scale.
        wholes = _resize(squares, [size, size], interpolation)
        offsets = _five_offsets(scale, scale, size)
        for square, whole in zip(squares, wholes):
            six = torch.stack(_cut(square, offsets, size) + [whole])
            out += [six, six.flip(-1)]
    return torch.cat(out)


def crop_boxes(height: int, width: int, count: int, size: int, scales: Sequence[int]) -> list[CropBox]:
    """Return the source box of each crop ``take_crops`` makes, in the same order.

    Boxes are in the original ``height`` x ``width`` image's pixel coordinates: a pixel ``i`` of
    an image resized from ``L`` to ``l`` covers ``[i * L / l, (i + 1) * L / l)`` (the convention
    of torch's interpolate with ``align_corners=False``).
    """
    scales = _validate(count, size, scales)
    if count in (1, 10):
        h, w = _resized_shape(height, width, scales[0])
        box = _boxer(height, width, scales[0])
        if count == 1:
            return [box(_center(h, size), _center(w, size), size, False)]
        offsets = _five_offsets(h, w, size)
        # A crop at column l of the mirrored image covers columns [w - l - size, w - l).
        mirrors = [box(t, w - l - size, size, True) for t, l in offsets]
        return [box(t, l, size, False) for t, l in offsets] + mirrors
    boxes: list[CropBox] = []
    for scale in scales:
        box = _boxer(height, width, scale)
        for t0, l0 in _square_offsets(*_resized_shape(height, width, scale)):
            six = [box(t0 + t, l0 + l, size, False) for t, l in _five_offsets(scale, scale, size)]
            six.append(box(t0, l0, scale, False))
            boxes += six + [replace(b, mirrored=True) for b in six]
    return boxes


def _boxer(height: int, width: int, scale: int) -> Callable[[int, int, int, bool], CropBox]:
    """Return a function mapping a (top, left, side) window of the image resized to ``scale``
    to its CropBox in original pixels."""
    h, w = _resized_shape(height, width, scale)
    sy, sx = height / h, width / w

    def box(top: int, left: int, side: int, mirrored: bool) -> CropBox:
        return CropBox(top * sy, left * sx, (top + side) * sy, (left + side) * sx, mirrored, scale)

    return box


def normalize(crops: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Return float crops normalised per channel: ``(x - mean) / std`` over ``[..., C, H, W]``.

    uint8 input is first scaled to [0, 1]; float input is taken to be in [0, 1] already.
    """
    channels = crops.shape[-3]
    if len(mean) != channels or len(std) != channels:
        got = f"got {len(mean)} and {len(std)}"
        raise ValueError(f"mean and std need {channels} values (one per channel), {got}")
    if crops.dtype == torch.uint8:
        x = crops.float() / 255.0
    else:
        x = crops if crops.is_floating_point() else crops.float()
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s
