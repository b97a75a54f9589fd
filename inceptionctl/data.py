"""Datasets and the paper's training transforms.

Sources (``--data``):

* ``digits`` -- scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes),
  upscaled once to the recipe's resize size; a fixed stratified 80/20 train/val split.
* ``synthetic`` -- random images of the recipe's shape, for throughput.
* a folder -- an ImageFolder tree (``train/`` and ``val/`` subfolders, or one folder split with
  ``val_split``), or the ILSVRC-2012 layout: ``train/<synset>/...`` and a flat ``val/`` folder
  with a ground-truth file (``LOC_val_solution.csv``, or ``val.txt`` / ``val_labels.txt``
  with ``FILE LABEL`` lines, LABEL a synset or a class index).

Images are decoded with ``torchvision.io`` (RGB whatever the source mode: grayscale, CMYK, RGBA,
palette); unreadable files are reported by path and skipped, or fail the run when ``strict``.
Augmentation randomness is keyed by ``(seed, epoch, index)``, so a sample gets the same crop
whichever worker, world size or resume point produces it. For training, a JPEG's crop is drawn
from its header first, so a crop that is large enough decodes at 1/2, 1/4 or 1/8 scale
(:mod:`inceptionctl.jpeg`); with ``train --decode gpu`` the workers only read the files and
the GPU decodes and augments each batch with the same draws (:func:`finish_on_device`).
A run keeps the listing of its class folders (:mod:`inceptionctl.filelist`).

Images for the checks around an artifact come from here too: :func:`eval_source` (the images
``eval`` scores, labelled with a model's classes), :func:`load_samples` (preprocessed images for
parity and ``compare``) and :func:`calibration_batches` (INT8 calibration).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import random
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .errors import InceptionError, one_line
from .filelist import FileLists, is_image
from .host import keep_freed_memory_in_worker
from .jpeg import (decode_full, decode_on_device, decode_scaled, draft_scale, jpeg_header,
                   read_bytes)
from .recipe import Recipe


class DataError(InceptionError):
    """Data that cannot be used (missing folder, no images, unreadable file with strict)."""


INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}
PAPER_INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic")

# AlexNet's PCA lighting noise: eigenvalues / eigenvectors of ImageNet's RGB covariance.
_EIGVAL = [0.2175, 0.0188, 0.0045]
_EIGVEC = [[-0.5675, 0.7192, 0.4009],
           [-0.5808, -0.0045, -0.8140],
           [-0.5836, -0.6948, 0.4203]]


# ------------------------------------------------------------------------------------ decoding

def decode_rgb(path: str | os.PathLike) -> Tensor:
    """Decode an image file to uint8 ``[3, H, W]``; raises ValueError for what cannot be decoded."""
    return decode_full(read_bytes(path))


# ---------------------------------------------------------------------------------- transforms
#
# The training transform is a list of steps; each step draws its random numbers in ``params``
# (from the image's shape alone) and applies them in ``apply_batch``. Drawing them all first is
# what lets a JPEG be decoded at a reduced scale when the crop is large (the crop is known
# before the pixels), and lets a batch be decoded and augmented on the GPU with the very draws
# a DataLoader worker made for each sample.

class PaperCrop(torch.nn.Module):
    """The paper's sampling: a crop of ``scale`` of the area with aspect ``ratio``, resized to
    ``size`` with an interpolation drawn uniformly from ``interpolations``."""

    def __init__(self, size: int, scale: Sequence[float], ratio: Sequence[float],
                 interpolations: Sequence[str] = PAPER_INTERPOLATIONS):
        super().__init__()
        self.size = size
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.interpolations = tuple(interpolations)

    def params(self, shape: Sequence[int], rng: random.Random
               ) -> tuple[int, int, int, int, int, int, str]:
        """(image height, width, crop top, left, height, width, interpolation)."""
        h, w = int(shape[-2]), int(shape[-1])
        top, left, ch, cw = crop_box(h, w, self.scale, self.ratio, rng)
        mode = self.interpolations[rng.randrange(len(self.interpolations))]
        return h, w, top, left, ch, cw, mode

    def draft_scale(self, p: tuple) -> int:
        """How much smaller the image may be decoded for the crop ``p`` (1: full size).

        Only the antialiased interpolations: ``nearest`` picks pixels of the full-size image.
        """
        return 1 if p[6] == "nearest" else draft_scale(p[4], p[5], self.size)

    def apply(self, img: Tensor, p: tuple) -> Tensor:
        """Crop and resize ``img``; an image decoded at a reduced scale gets the crop scaled."""
        h, w, top, left, ch, cw, mode = p
        ih, iw = img.shape[-2:]
        if (ih, iw) != (h, w):
            sy, sx = ih / h, iw / w
            top, left = min(ih - 1, round(top * sy)), min(iw - 1, round(left * sx))
            ch = max(1, min(ih - top, round(ch * sy)))
            cw = max(1, min(iw - left, round(cw * sx)))
        crop = img[..., top:top + ch, left:left + cw]
        return resize_to(crop, (self.size, self.size), mode)

    def forward(self, img: Tensor) -> Tensor:
        return self.apply(img, self.params(img.shape, _torch_seeded()))


def _torch_seeded() -> random.Random:
    """Draws for a transform called on its own: seeded from torch's generator, so that
    ``torch.manual_seed`` decides them as it decides torchvision's."""
    return random.Random(int(torch.randint(2 ** 62, ())))


def crop_box(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
             rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, height, width): torchvision's ``RandomResizedCrop.get_params`` step for step
    (area uniform in ``scale``, log aspect uniform in ``log(ratio)``, up to 10 tries, then the
    central crop), drawing from ``rng``: Python numbers, a few microseconds a crop."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = float(width) / float(height)  # fallback: the central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_to(img: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize a uint8 ``[C, H, W]`` image with a named interpolation (``area`` included)."""
    if mode == "area":
        return area_resize(img, size)
    return TF.resize(img, list(size), interpolation=INTERPOLATIONS[mode], antialias=True)


def area_resize(img: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.interpolate(mode="area")`` (adaptive average pooling) of a uint8 image, rounded.

    Up to twice the size, a window is at most 3 pixels long: the window sums are then a few
    shifted rows (and columns) added up, which is exact (integer sums in float32) and about
    twice as fast as the pooling kernel; larger images use that kernel.
    """
    h, w = img.shape[-2:]
    if h > 2 * size[0] or w > 2 * size[1]:
        out = F.interpolate(img[None].float(), size=size, mode="area")[0]
        return out.round_().clamp_(0, 255).to(img.dtype)
    # CHW memory (decoders hand out HWC memory): gathering rows is then a few long copies
    x = img.to(torch.float32, memory_format=torch.contiguous_format)
    rows, lh = _window_sums(x, -2, size[0])
    # columns as rows: gathering whole rows is much faster than gathering along the last dim
    sums, lw = _window_sums(rows.transpose(-1, -2).contiguous(), -2, size[1])
    count = (lw[:, None] * lh[None, :]).to(sums)
    return sums.div_(count).round_().clamp_(0, 255).to(img.dtype).transpose(-1, -2)


def _window_sums(x: Tensor, dim: int, n_out: int) -> tuple[Tensor, Tensor]:
    """Sums over adaptive pooling's windows along ``dim`` (window i spans
    ``[floor(i n / n_out), ceil((i + 1) n / n_out))``), and the window lengths."""
    n_in = x.shape[dim]
    i = torch.arange(n_out)
    start = (i * n_in) // n_out
    length = ((i + 1) * n_in + n_out - 1) // n_out - start
    shape = [1] * x.ndim
    shape[dim] = n_out
    shortest, total = int(length.min()), None
    for k in range(int(length.max())):
        part = x.index_select(dim, (start + k).clamp_(max=n_in - 1).to(x.device))
        if k >= shortest:
            part.mul_((length > k).to(x).view(shape))
        total = part if total is None else total.add_(part)
    assert total is not None
    return total, length.to(x.device)


class _BatchStep(torch.nn.Module):
    """A step applied to a batch ``[N, C, H, W]`` with one draw per sample (``params``).

    ``apply_batch`` may work in place on the batch it is given (the training transform hands
    each step the batch the one before made); called on an image, a step leaves it as it was.
    """

    def params(self, shape: Sequence[int], rng: random.Random) -> Any:
        return None

    def apply_batch(self, x: Tensor, params: list[Any]) -> Tensor:
        raise NotImplementedError

    def forward(self, img: Tensor) -> Tensor:
        return self.apply_batch(img[None].clone(), [self.params(img.shape, _torch_seeded())])[0]


class HFlip(_BatchStep):
    """Horizontal flip with probability ``p`` (drawn as torchvision's RandomHorizontalFlip)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def params(self, shape: Sequence[int], rng: random.Random) -> bool:
        return rng.random() < self.p

    def apply_batch(self, x: Tensor, params: list[bool]) -> Tensor:
        if len(params) == 1:
            return x.flip(-1) if params[0] else x
        if not any(params):
            return x
        mask = torch.tensor(params).to(x.device, non_blocking=True).view(-1, 1, 1, 1)
        return torch.where(mask, x.flip(-1), x)


class ToFloat(_BatchStep):
    """uint8 -> float in [0, 1], as ``v2.ToDtype(torch.float32, scale=True)``."""

    def apply_batch(self, x: Tensor, params: list[None]) -> Tensor:
        return x.to(torch.float32).mul_(1.0 / 255)


class ColorJitter(_BatchStep):
    """torchvision's ColorJitter (its draws: an order of the four operations and a factor
    each), applied to float images: brightness, contrast, saturation and hue as
    ``torchvision.transforms.v2.functional`` computes them on floats, hue in one pass."""

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float):
        super().__init__()
        self.draw = v2.ColorJitter(brightness, contrast, saturation, hue)

    def params(self, shape: Sequence[int], rng: random.Random
               ) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """(the order of the four operations, their factors): what v2.ColorJitter's make_params
        draws (a random order; each factor uniform in its range, from torchvision's checks of
        the arguments); an operation it leaves out gets a neutral factor."""
        d = self.draw
        order = tuple(rng.sample(range(4), 4))
        factors = [1.0, 1.0, 1.0, 0.0]
        for k, bounds in enumerate((d.brightness, d.contrast, d.saturation, d.hue)):
            if bounds is not None:
                factors[k] = rng.uniform(bounds[0], bounds[1])
        return order, tuple(factors)

    def apply_batch(self, x: Tensor, params: list[tuple]) -> Tensor:
        if len(params) == 1:  # Python numbers: broadcasting a [1, 1, 1, 1] tensor is slow
            order, factors = params[0]
            for op in order:
                x = _JITTER[op](x, factors[op])
            return x
        factors = torch.tensor([p[1] for p in params], dtype=x.dtype).to(x.device,
                                                                       non_blocking=True)
        everyone = list(range(len(params)))
        for position in range(4):  # each sample its own order: each op on the samples due
            for op in range(4):
                due = [i for i, p in enumerate(params) if p[0][position] == op]
                if not due:
                    continue
                if due == everyone:
                    x = _JITTER[op](x, factors[:, op].view(-1, 1, 1, 1))
                    continue
                rows = torch.tensor(due).to(x.device, non_blocking=True)
                done = _JITTER[op](x.index_select(0, rows),
                                   factors.index_select(0, rows)[:, op].view(-1, 1, 1, 1))
                x.index_copy_(0, rows, done)
        return x


def _gray(x: Tensor) -> Tensor:
    if x.shape[-3] == 1:
        return x
    r, g, b = x.unbind(-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)


# The operations take a factor per sample (a [N, 1, 1, 1] tensor, or a float for one image)
# and overwrite their input: fewer large temporaries is what makes them fast on a CPU.

def _blend(a: Tensor, b: Tensor | float, f: Tensor | float) -> Tensor:
    if isinstance(f, float):
        a.mul_(f)
        return (a.add_(b, alpha=1.0 - f) if isinstance(b, Tensor) else a.add_(b * (1.0 - f))
                ).clamp_(0.0, 1.0)
    return a.mul_(f).add_(b * (1.0 - f)).clamp_(0.0, 1.0)


def _brightness(x: Tensor, f: Tensor | float) -> Tensor:
    return x.mul_(f).clamp_(0.0, 1.0)


def _contrast(x: Tensor, f: Tensor | float) -> Tensor:
    mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, float(mean) if isinstance(f, float) else mean, f)


def _saturation(x: Tensor, f: Tensor | float) -> Tensor:
    return x if x.shape[-3] == 1 else _blend(x, _gray(x), f)


_HSV_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)


def _hue(x: Tensor, f: Tensor | float) -> Tensor:
    """Rotate the HSV hue by ``f`` turns: torchvision's adjust_hue (RGB -> HSV -> RGB) in one
    pass of plain arithmetic. With V the max, C the max - min and H in sixths of a turn (the
    sector formula of torchvision's _rgb_to_hsv: red, else green, else blue is the max),
    channel k = V - C * clamp(min(t, 4 - t), 0, 1) for t = (n_k + H + 6 f) mod 6, n = 5, 3, 1.
    The sector masks come from ceil() of differences in [0, 1] (0 where equal, else 1), which
    is several times faster on the CPU than comparisons and boolean masks.
    """
    if x.shape[-3] == 1:
        return x
    r, g, b = x.unbind(-3)
    mx = torch.maximum(r, g)
    torch.maximum(mx, b, out=mx)
    chroma = torch.minimum(r, g)
    torch.minimum(chroma, b, out=chroma)
    chroma.neg_().add_(mx)
    not_r = torch.sub(mx, r).ceil_()  # 0 where red is the max, else 1
    is_g = torch.sub(mx, g).ceil_().neg_().add_(1.0).mul_(not_r)  # green is, red is not
    h = torch.sub(g, b).mul_(not_r.neg().add_(1.0))
    h.add_(torch.sub(b, r).add_(chroma, alpha=2.0).mul_(is_g))
    h.add_(torch.sub(r, g).add_(chroma, alpha=4.0).mul_(not_r.sub_(is_g)))  # blue is the max
    inv = torch.ceil(chroma).neg_().add_(chroma).add_(1.0).reciprocal_()  # 1 / C; 1 if grey
    h.mul_(inv).add_(6.0 * (f if isinstance(f, float) else f.view(-1, 1, 1)))
    t = torch.add(h.unsqueeze(-3), _HSV_OFFSETS.to(x.device), out=x)  # x is no longer needed
    t.sub_(torch.mul(t, 1.0 / 6.0).floor_().mul_(6.0))  # mod 6
    weight = torch.neg(t).add_(4.0)
    torch.minimum(t, weight, out=weight)
    weight.clamp_(0.0, 1.0).mul_(chroma.unsqueeze(-3)).neg_().add_(mx.unsqueeze(-3))
    return weight.clamp_(0.0, 1.0)


_JITTER = (_brightness, _contrast, _saturation, _hue)


class Lighting(_BatchStep):
    """AlexNet-style PCA lighting noise on a float image in [0, 1]."""

    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def params(self, shape: Sequence[int], rng: random.Random) -> tuple[float, ...] | None:
        """The RGB shift V (alpha * eigval), alpha ~ N(0, std) per eigenvector."""
        if self.std <= 0 or shape[-3] != 3:
            return None
        alpha = [rng.gauss(0.0, self.std) * e for e in _EIGVAL]
        return tuple(sum(v * a for v, a in zip(row, alpha)) for row in _EIGVEC)

    def apply_batch(self, x: Tensor, params: list[tuple[float, ...] | None]) -> Tensor:
        if all(p is None for p in params):
            return x
        if len(params) == 1:  # Python numbers: see ColorJitter
            for channel, value in zip(x[0], params[0]):
                channel.add_(value)
            return x.clamp_(0.0, 1.0)
        shift = torch.tensor([(0.0, 0.0, 0.0) if p is None else p for p in params])
        return x.add_(shift.to(x.device, non_blocking=True).view(-1, 3, 1, 1)).clamp_(0.0, 1.0)


class Normalize(_BatchStep):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.mean, self.std = list(mean), list(std)

    def apply_batch(self, x: Tensor, params: list[None]) -> Tensor:
        return TF.normalize(x, self.mean, self.std, inplace=True)


class TrainTransform(v2.Compose):
    """uint8 image -> normalised float tensor: the crop, then per-sample steps on batches.

    ``plan(shape)`` draws every random number of one sample (from its shape alone, in the
    order the steps run); ``apply_batch(images, plans)`` applies the plans on the images'
    device. ``transform(img)`` is the two in one.
    """

    @property
    def crop(self) -> PaperCrop:
        return self.transforms[0]

    def plan(self, shape: Sequence[int], rng: random.Random | None = None) -> list[Any]:
        """Every random number of one sample, from ``rng`` (None: seeded from torch's)."""
        rng = _torch_seeded() if rng is None else rng
        return [t.params(shape, rng) for t in self.transforms]

    @property
    def split(self) -> int:
        """Where the uint8 steps (the crop, the flip) end and the float ones begin."""
        return next((i for i, t in enumerate(self.transforms) if isinstance(t, ToFloat)),
                    len(self.transforms))

    def geometric(self, img: Tensor, plan: list[Any]) -> Tensor:
        """The uint8 steps of one image: its crop (resized), flipped where drawn."""
        x = self.crop.apply(img, plan[0])[None]
        for i in range(1, self.split):
            x = self.transforms[i].apply_batch(x, [plan[i]])
        return x[0]

    def photometric(self, x: Tensor, plans: Sequence[list[Any]]) -> Tensor:
        """The float steps (colour, lighting, normalisation) of a uint8 batch of crops, on its
        device, each sample with its own draws."""
        for i in range(self.split, len(self.transforms)):
            x = self.transforms[i].apply_batch(x, [p[i] for p in plans])
        return x

    def apply_batch(self, images: Sequence[Tensor], plans: Sequence[list[Any]]) -> Tensor:
        x = torch.stack([self.crop.apply(img, p[0]) for img, p in zip(images, plans)])
        for i in range(1, self.split):
            x = self.transforms[i].apply_batch(x, [p[i] for p in plans])
        return self.photometric(x, plans)

    def apply(self, img: Tensor, plan: list[Any]) -> Tensor:
        return self.apply_batch([img], [plan])[0]

    def forward(self, img: Tensor) -> Tensor:
        return self.apply(img, self.plan(img.shape))


def train_transform(recipe: Recipe) -> TrainTransform:
    """uint8 image -> normalised float tensor, with the paper's augmentation."""
    t, d = recipe.train, recipe.data
    interps = PAPER_INTERPOLATIONS if t.random_interpolation else (d.interpolation,)
    steps: list[Any] = [PaperCrop(d.input_size, t.scale, t.ratio, interps)]
    if t.hflip > 0:
        steps.append(HFlip(t.hflip))
    steps.append(ToFloat())
    if t.color_jitter > 0:
        j = t.color_jitter
        steps.append(ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4)))
    steps += [Lighting(t.lighting), Normalize(d.mean, d.std)]
    return TrainTransform(steps)


def eval_transform(recipe: Recipe) -> Callable[[Tensor], Tensor]:
    """uint8 image -> shorter side to ``data.resize``, center crop ``data.input_size``, normalise."""
    d = recipe.data
    resize = (v2.Resize(d.resize, interpolation=INTERPOLATIONS[d.interpolation], antialias=True)
              if d.interpolation != "area" else _AreaResize(d.resize))
    return v2.Compose([resize, v2.CenterCrop(d.input_size), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(d.mean), list(d.std))])


class _AreaResize(torch.nn.Module):
    def __init__(self, shorter: int):
        super().__init__()
        self.shorter = shorter

    def forward(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        s = self.shorter / min(h, w)
        return resize_to(img, (max(1, round(h * s)), max(1, round(w * s))), "area")


# ------------------------------------------------------------------------------------ datasets

@dataclass(frozen=True)
class Sample:
    """One item a dataset yields: the image (or None when unreadable), its label, its source."""

    image: Tensor | None
    label: int
    path: str
    error: str | None = None


class ImageSource(Dataset):
    """Labelled images: ``source[i]`` -> uint8 ``[3, H, W]`` image, label, path."""

    classes: list[str]

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        raise NotImplementedError

    def labels(self) -> list[int]:
        raise NotImplementedError


class TensorSource(ImageSource):
    """Images held in memory (the embedded digits, synthetic data)."""

    def __init__(self, images: Tensor, labels: Tensor, classes: list[str], name: str):
        self.images, self.targets, self.classes, self.name = images, labels, classes, name

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> Sample:
        return Sample(self.images[index], int(self.targets[index]), f"{self.name}[{index}]")

    def labels(self) -> list[int]:
        return self.targets.tolist()


class FileSource(ImageSource):
    """Image files with labels; decoding happens in ``load`` (in DataLoader workers)."""

    def __init__(self, items: list[tuple[str, int]], classes: list[str], root: str):
        self.items, self.classes, self.root = items, classes, root

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Sample:
        path, label = self.items[index]
        try:
            return Sample(decode_rgb(path), label, path)
        except Exception as exc:  # corrupt, truncated, zero-byte, not an image
            return Sample(None, label, path, one_line(exc, 120))

    def read(self, index: int) -> tuple[bytearray | None, int, str, str | None]:
        """(the file's bytes or None, label, path, why it could not be read)."""
        path, label = self.items[index]
        try:
            data = read_bytes(path)
        except OSError as exc:
            return None, label, path, one_line(exc, 120)
        return (data, label, path, None) if data else (None, label, path, "empty file")

    def labels(self) -> list[int]:
        return [label for _, label in self.items]


def listing_digest(source: ImageSource) -> dict[str, Any] | None:
    """What a resumed run compares to know its images are those it started with: their count
    and a digest of the (label, path under the data folder) list, in order. None for images
    held in memory (digits, synthetic), which do not change."""
    if not isinstance(source, FileSource):
        return None
    digest = hashlib.sha256()
    root = str(source.root)
    for path, label in source.items:
        under = (path[len(root):] if path.startswith(root) else path).lstrip("/\\")
        digest.update(f"{label}\t{under}\n".encode("utf-8", "surrogateescape"))
    return {"images": len(source.items), "sha256": digest.hexdigest()}


def digits(resize: int, split: str) -> TensorSource:
    """scikit-learn's handwritten digits, upscaled to ``resize``; ``split`` is train or val."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float() * (255.0 / 16.0)  # 0..16 -> 0..255
    labels = torch.from_numpy(bunch.target).long()
    index = torch.arange(len(labels))
    train_idx, val_idx = train_test_split(index.numpy(), test_size=0.2, random_state=0,
                                          stratify=labels.numpy())
    chosen = torch.from_numpy(train_idx if split == "train" else val_idx)
    big = F.interpolate(images[chosen][:, None], size=(resize, resize), mode="bilinear",
                        align_corners=False, antialias=False)
    rgb = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return TensorSource(rgb, labels[chosen], [str(i) for i in range(10)], f"digits-{split}")


def synthetic(recipe: Recipe, count: int, seed: int = 0) -> TensorSource:
    """Random uint8 images of the recipe's input size, for throughput."""
    g = torch.Generator().manual_seed(seed)
    size, n_cls = recipe.data.input_size, recipe.model.num_classes
    images = torch.randint(0, 256, (count, recipe.model.in_channels, size, size), generator=g,
                           dtype=torch.uint8)
    labels = torch.randint(0, n_cls, (count,), generator=g)
    return TensorSource(images, labels, [str(i) for i in range(n_cls)], "synthetic")


def class_folders(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def image_folder(root: Path, classes: list[str] | None = None,
                 lists: FileLists | None = None, allow_empty: bool = False) -> FileSource:
    """An ImageFolder tree: one sub-folder of images per class (listed through ``lists``,
    which may hold the listing from an earlier run). A class folder without images is an error
    unless ``allow_empty`` (evaluation: such a class simply has no images to score)."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    found = class_folders(root)
    if not found:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    if classes is not None and found != classes:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise DataError(f"{root}: class folders do not match the training classes "
                        f"(missing: {', '.join(missing[:5]) or '-'}; "
                        f"unexpected: {', '.join(extra[:5]) or '-'})")
    items = []
    per_class = (lists or FileLists()).class_files(root, found)
    for label, (name, files) in enumerate(zip(found, per_class)):
        if not files and not allow_empty:
            raise DataError(f"{root / name}: class folder has no images")
        items += [(f, label) for f in files]
    if not items:
        raise DataError(f"{root}: no images in its class folders")
    return FileSource(items, found, str(root))


def ground_truth(val_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """Labels of a flat ILSVRC val folder from its ground-truth file."""
    candidates = [val_dir.parent / "LOC_val_solution.csv", val_dir / "LOC_val_solution.csv",
                  val_dir.parent / "val.txt", val_dir.parent / "val_labels.txt",
                  val_dir / "val_labels.txt"]
    if not any(is_image(e.name) and e.is_file() for e in os.scandir(val_dir)):
        raise DataError(f"{val_dir}: no images in this folder (expected <class>/<image> "
                        f"folders, or images beside a ground-truth file)")
    gt = next((p for p in candidates if p.is_file()), None)
    if gt is None:
        raise DataError(f"{val_dir}: flat val folder without a ground-truth file (looked for "
                        f"LOC_val_solution.csv, val.txt, val_labels.txt)")
    index = {c: i for i, c in enumerate(classes)}
    try:
        labels = _read_ground_truth(gt, index)
    except UnicodeDecodeError:
        raise DataError(f"{gt}: not a text file (a ground-truth list of 'FILE LABEL' lines or "
                        f"LOC_val_solution.csv)") from None
    items = []
    for path in sorted(Path(e.path) for e in os.scandir(val_dir)
                       if is_image(e.name) and e.is_file()):
        label = labels.get(path.stem)
        if label is None:
            raise DataError(f"{path}: not in the ground-truth file {gt}")
        if not 0 <= label < len(classes):
            raise DataError(f"{gt}: the label of {path.name} is not one of the training classes")
        items.append((str(path), label))
    if not items:
        raise DataError(f"{val_dir}: no images")
    return items


def _read_ground_truth(gt: Path, index: dict[str, int]) -> dict[str, int]:
    """``{image stem: label}`` from LOC_val_solution.csv or a ``FILE LABEL`` list (-1: a class
    the training set lacks)."""
    labels: dict[str, int] = {}
    with open(gt, newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's BOM
        if gt.suffix == ".csv":
            reader = csv.DictReader(fh)
            if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or []):
                raise DataError(f"{gt}: expected the columns ImageId,PredictionString, got "
                                f"{','.join(reader.fieldnames or []) or 'none'}")
            for n, row in enumerate(reader, 2):
                words = (row["PredictionString"] or "").split()
                if not row["ImageId"] or not words:
                    raise DataError(f"{gt}:{n}: expected 'ImageId,SYNSET ...', got an empty field")
                labels[row["ImageId"]] = index.get(words[0], -1)
        else:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise DataError(f"{gt}:{n}: expected 'FILE LABEL', got {line.strip()!r}")
                name, label = parts
                # an index written in 0-9, else a class name ("²" is a digit to str.isdigit,
                # and no number to int)
                numeric = label.isascii() and label.isdigit()
                labels[Path(name).stem] = (int(label) if numeric and label not in index
                                           else index.get(label, -1))
    return labels


@dataclass
class Splits:
    train: ImageSource
    val: ImageSource
    classes: list[str]
    description: str


def data_root(spec: str) -> Path:
    """``--data``'s folder (not 'digits' or 'synthetic'), or one line saying why not."""
    root = Path(spec)
    if not root.exists():
        raise DataError(f"{root}: no such folder (give a folder, 'digits' or 'synthetic')")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    return root


def open_data(spec: str, recipe: Recipe, val_split: float = 0.0,
              synthetic_count: int = 512, lists: FileLists | None = None) -> Splits:
    """Resolve ``--data`` to train and val sources (folders listed through ``lists``)."""
    if not 0 <= val_split < 1:  # nan too; 0: not asked for
        raise DataError(f"--val-split: expected a fraction in (0, 1), got {val_split}")
    if spec != "synthetic" and recipe.model.in_channels != 3:
        raise DataError(f"{spec}: images load as RGB (3 channels), but model.in_channels is "
                        f"{recipe.model.in_channels}; set model.in_channels=3 (only --data "
                        f"synthetic makes {recipe.model.in_channels}-channel images)")
    if spec == "digits":
        if val_split:
            raise DataError(f"--val-split {val_split}: digits has its own val split")
        train, val = digits(recipe.data.resize, "train"), digits(recipe.data.resize, "val")
        return Splits(train, val, train.classes, "digits (scikit-learn, 1437 train / 360 val)")
    if spec == "synthetic":
        train = synthetic(recipe, synthetic_count, seed=0)
        val = synthetic(recipe, max(8, synthetic_count // 8), seed=1)
        return Splits(train, val, train.classes, f"synthetic ({synthetic_count} random images)")
    root = data_root(spec)
    # train/ of class folders is the train/val layout; train/ of images is a class named "train"
    # (one folder to split with --val-split)
    if (root / "train").is_dir() and (class_folders(root / "train") or not val_split
                                      or (root / "val").is_dir()):
        if not class_folders(root / "train"):
            raise DataError(f"{root / 'train'}: no class folders (expected train/<class>/<image>; "
                            f"where 'train' is a class of one folder, pass --val-split to split "
                            f"it)")
        train = image_folder(root / "train", lists=lists)
        val_dir = root / "val"
        if not val_dir.is_dir():
            if val_split <= 0:
                raise DataError(f"{root}: has train/ but no val/ (add val/ or pass --val-split)")
            return _split(train, val_split, f"{root}/train")
        if val_split:
            raise DataError(f"--val-split {val_split}: {root} has its own val/ (drop "
                            f"--val-split, or point --data at one folder to split)")
        if class_folders(val_dir):
            val = image_folder(val_dir, train.classes, lists)
        else:
            val = FileSource(ground_truth(val_dir, train.classes), train.classes, str(val_dir))
        return Splits(train, val, train.classes,
                      f"{root} ({len(train)} train / {len(val)} val, {len(train.classes)} classes)")
    if val_split == 0:
        raise DataError(f"{root}: no train/ and val/ sub-folders; pass --val-split to split one "
                        f"ImageFolder tree")
    return _split(image_folder(root, lists=lists), val_split, str(root))


def _split(source: FileSource, fraction: float, name: str) -> Splits:
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise DataError(f"--val-split: expected a fraction in (0, 1), got {fraction}")
    idx = list(range(len(source)))
    labels = source.labels()
    try:
        tr, va = train_test_split(idx, test_size=fraction, random_state=0, stratify=labels)
    except ValueError:
        try:
            tr, va = train_test_split(idx, test_size=fraction, random_state=0)
        except ValueError:  # a side would be empty
            raise DataError(f"--val-split {fraction:g}: {name} has {len(idx)} images, too few "
                            f"to leave some on both sides of the split") from None
    train = FileSource([source.items[i] for i in sorted(tr)], source.classes, source.root)
    val = FileSource([source.items[i] for i in sorted(va)], source.classes, source.root)
    return Splits(train, val, source.classes,
                  f"{name} split {1 - fraction:.0%}/{fraction:.0%} ({len(train)} / {len(val)})")


# --------------------------------------------------------------------- keyed, transformed items

def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample seed from (run seed, epoch, dataset index)."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2 ** 63 - 1)


class Transformed(Dataset):
    """``source`` through ``transform``; items are requested as ``(index, epoch)`` keys.

    The random numbers of the transform are drawn from a generator seeded by the key (the
    training transform's plan from a ``random.Random`` of its own; another transform inside
    ``fork_rng``), so the caller's RNG is untouched: augmentation is a pure function of the key.

    With the training transform, a JPEG's crop is drawn from its header before it is decoded,
    and a crop large enough is decoded at a reduced scale (:meth:`PaperCrop.draft_scale`).
    ``decode="device"`` yields :class:`Encoded` items instead (the file's bytes and the draws),
    which :func:`finish_on_device` decodes and augments a batch at a time on a GPU.
    ``photometric="device"`` yields :class:`Cropped` items: the uint8 crop, flipped, with the
    draws of the float steps, which :func:`finish_photometric` applies to a batch on a GPU
    (a worker then does only the decode and the crop, and a quarter of the bytes cross).
    """

    def __init__(self, source: ImageSource, transform: Callable[[Tensor], Tensor], seed: int,
                 decode: str = "cpu", photometric: str = "here"):
        if decode not in ("cpu", "device"):
            raise ValueError(f"decode: expected 'cpu' or 'device', got {decode!r}")
        if photometric not in ("here", "device"):
            raise ValueError(f"photometric: expected 'here' or 'device', got {photometric!r}")
        if (decode == "device" or photometric == "device") and \
                not isinstance(transform, TrainTransform):
            raise ValueError("decode or photometric on the device needs the training transform")
        self.source, self.transform, self.seed, self.decode = source, transform, seed, decode
        self.photometric = photometric

    def __len__(self) -> int:
        return len(self.source)

    def _plan(self, shape: Sequence[int], index: int, epoch: int) -> list[Any]:
        """The draws of one sample, from a generator seeded by its key."""
        assert isinstance(self.transform, TrainTransform)
        return self.transform.plan(shape, random.Random(sample_seed(self.seed, epoch, index)))

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[Tensor | None, int, str, str | None]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if self.decode == "device":
            return self._encoded(index, epoch)  # type: ignore[return-value]
        if isinstance(self.transform, TrainTransform) and isinstance(self.source, FileSource):
            return self._from_file(index, epoch)
        sample = self.source.load(index)
        if sample.image is None:
            return None, sample.label, sample.path, sample.error
        if isinstance(self.transform, TrainTransform):
            plan = self._plan(sample.image.shape, index, epoch)
            return self._finish(sample.image, plan), sample.label, sample.path, None
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: fork_rng(devices=[]) restores no other, and a loader
            # without workers must not reseed the GPU's (dropout's) generator per image
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            image = self.transform(sample.image)
        return image, sample.label, sample.path, None

    def _from_file(self, index: int, epoch: int) -> tuple[Tensor | None, int, str, str | None]:
        assert isinstance(self.transform, TrainTransform) and isinstance(self.source, FileSource)
        data, label, path, error = self.source.read(index)
        if data is None:
            return None, label, path, error
        try:
            header = jpeg_header(data)
            if header is not None:
                plan = self._plan((3, header.height, header.width), index, epoch)
                image = decode_scaled(data, self.transform.crop.draft_scale(plan[0]))
            else:
                image = decode_full(data)
                plan = self._plan(image.shape, index, epoch)
        except Exception as exc:  # corrupt, truncated, not an image
            return None, label, path, one_line(exc, 120)
        return self._finish(image, plan), label, path, None

    def _finish(self, image: Tensor, plan: list[Any]) -> "Tensor | Cropped":
        assert isinstance(self.transform, TrainTransform)
        if self.photometric == "device":
            return Cropped(self.transform.geometric(image, plan), plan)
        return self.transform.apply(image, plan)

    def _encoded(self, index: int, epoch: int) -> "Encoded":
        if isinstance(self.source, FileSource):
            data, label, path, error = self.source.read(index)
            if data is None:
                return Encoded(None, None, None, label, path, error)
            header = jpeg_header(data)
            if header is not None and header.components in (1, 3) and not header.progressive:
                plan = self._plan((3, header.height, header.width), index, epoch)
                return Encoded(torch.frombuffer(data, dtype=torch.uint8), None, plan, label, path)
            try:  # not a JPEG the device decoder takes: decoded here
                image = decode_full(data)
            except Exception as exc:
                return Encoded(None, None, None, label, path, one_line(exc, 120))
        else:
            sample = self.source.load(index)
            label, path = sample.label, sample.path
            if sample.image is None:
                return Encoded(None, None, None, label, path, sample.error)
            image = sample.image
        return Encoded(None, image, self._plan(image.shape, index, epoch), label, path)


@dataclass
class Encoded:
    """One training item for the device: JPEG bytes (``data``) or a decoded uint8 image
    (``image``), with its augmentation draws (``plan``); neither when unreadable (``error``)."""

    data: Tensor | None
    image: Tensor | None
    plan: list[Any] | None
    label: int
    path: str
    error: str | None = None


@dataclass
class Cropped:
    """One training image made by a worker up to its float steps: the uint8 crop, flipped
    where drawn, and its draws (``plan``), for :func:`finish_photometric`."""

    image: Tensor
    plan: list[Any]


@dataclass
class EncodedBatch:
    """Encoded items (their ``data`` moved into ``blob``: one tensor crosses from a worker,
    not one per image), ``sizes[i]`` the length of item i's bytes in ``blob`` (0: its
    ``image`` is decoded already), and the items that could not be read."""

    items: list[Encoded]
    bad: list[tuple[str, str]]
    blob: Tensor | None = None
    sizes: list[int] = field(default_factory=list)

    def pin_memory(self) -> "EncodedBatch":
        return self

    def datas(self) -> list[Tensor | None]:
        """Each item's JPEG bytes (a view of ``blob``), None for a decoded item."""
        parts = iter(self.blob.split([n for n in self.sizes if n]) if self.blob is not None
                     else [])
        return [next(parts) if n else None for n in self.sizes]


@dataclass
class Batch:
    images: Tensor
    labels: Tensor
    bad: list[tuple[str, str]]  # (path, reason) of the items skipped
    plans: list[list[Any]] | None = None  # uint8 crops: the draws of their float steps

    def pin_memory(self) -> "Batch":
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.bad, self.plans)


def _strict_error(path: str, err: str) -> DataError:
    return DataError(f"{path}: cannot read image ({err}); drop --strict-data to skip "
                     f"unreadable files")


class Collate:
    """Stack good items; unreadable ones are dropped and listed, or fail with ``strict``."""

    def __init__(self, strict: bool):
        self.strict = strict

    def __call__(self, items: list[Any]) -> Batch | EncodedBatch:
        if items and isinstance(items[0], Encoded):
            return self._encoded(items)
        good = [(img, label) for img, label, _, _ in items if img is not None]
        bad = [(path, err or "unreadable") for img, _, path, err in items if img is None]
        if bad and self.strict:
            raise _strict_error(*bad[0])
        if not good:
            return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), bad)
        labels = torch.tensor([g[1] for g in good], dtype=torch.long)
        if isinstance(good[0][0], Cropped):
            return Batch(torch.utils.data.default_collate([g[0].image for g in good]), labels,
                         bad, [g[0].plan for g in good])
        # default_collate stacks into shared memory in a worker: no copy on the way out
        return Batch(torch.utils.data.default_collate([g[0] for g in good]), labels, bad)

    def _encoded(self, items: list[Encoded]) -> EncodedBatch:
        bad = [(it.path, it.error or "unreadable") for it in items if it.plan is None]
        if bad and self.strict:
            raise _strict_error(*bad[0])
        good = [it for it in items if it.plan is not None]
        datas = [it.data for it in good if it.data is not None]
        return EncodedBatch([replace(it, data=None) for it in good], bad,
                            torch.cat(datas) if datas else None,
                            [0 if it.data is None else it.data.numel() for it in good])


def finish_on_device(batch: EncodedBatch, transform: TrainTransform, device: torch.device,
                     strict: bool) -> Batch:
    """Decode a batch of :class:`Encoded` items on ``device`` (one batched ``decode_jpeg``
    call) and apply each item's augmentation draws there: the same crops, interpolations,
    flips and photometric noise the CPU path applies to the same keys."""
    items, bad, datas = batch.items, list(batch.bad), batch.datas()
    jpegs = [i for i, data in enumerate(datas) if data is not None]
    images: list[Any] = [None if it.image is None else it.image.to(device, non_blocking=True)
                         for it in items]
    for i, img in zip(jpegs, decode_on_device([datas[i] for i in jpegs], device)):
        images[i] = img
    keep = []
    for it, img in zip(items, images):
        if isinstance(img, Exception):
            if strict:
                raise _strict_error(it.path, one_line(img, 120))
            bad.append((it.path, one_line(img, 120)))
        else:
            keep.append((it, img))
    if not keep:
        return Batch(torch.empty(0, device=device), torch.empty(0, dtype=torch.long), bad)
    x = transform.apply_batch([img for _, img in keep], [it.plan for it, _ in keep])
    labels = torch.tensor([it.label for it, _ in keep], dtype=torch.long)
    return Batch(x, labels, bad)


def finish_photometric(batch: Batch, transform: TrainTransform, device: torch.device) -> Batch:
    """A batch of :class:`Cropped` items (uint8) on ``device``, through the float steps of
    ``transform`` with each item's draws: what the worker would have done, done there."""
    if batch.plans is None or batch.images.numel() == 0:
        return batch
    x = batch.images.to(device, non_blocking=True)
    return Batch(transform.photometric(x, batch.plans), batch.labels, batch.bad)


class KeyedSampler(torch.utils.data.Sampler):
    """Yields ``(index, epoch)`` keys for one epoch: this rank's shard of a seeded permutation.

    Training order comes from ``DistributedSampler`` (seed + epoch, drop_last), so every world
    size sees the same global order; ``skip`` drops the first items, to resume mid-epoch.
    Evaluation (``shuffle=False``) shards ``rank::world`` with no padding or duplicates.
    """

    def __init__(self, n: int, epoch: int, seed: int, rank: int = 0, world: int = 1,
                 shuffle: bool = True, skip: int = 0):
        self.n, self.epoch, self.seed = n, epoch, seed
        self.rank, self.world, self.shuffle, self.skip = rank, world, shuffle, skip

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world))
        ds = torch.utils.data.DistributedSampler(range(self.n), num_replicas=self.world,
                                                 rank=self.rank, shuffle=True, seed=self.seed,
                                                 drop_last=True)
        ds.set_epoch(self.epoch)
        return list(ds)

    def __iter__(self):
        for index in self._indices()[self.skip:]:
            yield (index, self.epoch)

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.skip)


def steps_per_epoch(n: int, batch: int, world: int) -> int:
    """Optimizer steps per epoch: full per-rank batches of the rank's shard (drop_last)."""
    return (n // world) // batch


def _worker_init(worker_id: int) -> None:
    # SIGINT / SIGTERM to the whole process group (Ctrl-C, systemd, SLURM) are the main
    # process's to act on: it saves and then shuts its workers down. A worker killed by the
    # SIGTERM would instead fail the run in the middle of a step, with nothing saved.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    keep_freed_memory_in_worker()


def loader(dataset: Transformed, sampler: KeyedSampler, batch: int, workers: int, strict: bool,
           pin: bool, drop_last: bool) -> torch.utils.data.DataLoader:
    """A DataLoader over keyed items; change ``sampler.epoch`` / ``sampler.skip`` between epochs.

    It has its own generator, so creating an iterator never draws from the global torch RNG
    (which the model's dropout uses): that keeps a resumed run bit-identical.
    """
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, sampler=sampler, num_workers=workers,
        collate_fn=Collate(strict), pin_memory=pin, drop_last=drop_last,
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(0))


def usable_cpus() -> int:
    """The CPUs this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """DataLoader workers: one fewer than the CPUs this process may use, at least 1, at most 8."""
    return max(1, min(8, usable_cpus() - 1))


#: The most loader workers per usable CPU that ``--workers`` takes. Each worker is a process
#: with its own interpreter and torch (hundreds of MB); a loader waiting on a slow file system
#: may want a few per CPU, but thousands exhaust memory or the process table while the loader
#: starts them, and the command hangs instead of failing.
MAX_WORKERS_PER_CPU = 8


def check_workers(workers: int | None) -> None:
    """Refuse a ``--workers`` count below 0 or above :data:`MAX_WORKERS_PER_CPU` per usable CPU
    (16 at least), in one line."""
    if workers is None:
        return
    if workers < 0:
        raise InceptionError(f"--workers: expected 0 or more, got {workers}")
    cpus = usable_cpus()
    limit = max(16, MAX_WORKERS_PER_CPU * cpus)
    if workers > limit:
        raise InceptionError(f"--workers {workers}: at most {limit} here ({MAX_WORKERS_PER_CPU} "
                             f"per CPU, {cpus} CPU(s) usable); each worker is a process")


# --------------------------------------------------------------- images for an artifact's checks

def eval_source(spec: str, classes: list[str], resize: int) -> ImageSource:
    """The images to evaluate, labelled with the model's class indices (matched by name)."""
    if spec == "digits":
        source = digits(resize, "val")
        if source.classes != classes:
            raise DataError(f"digits: the embedded digits have classes 0..9, the model has "
                            f"{len(classes)} classes ({', '.join(classes[:4])}...)")
        return source
    root = Path(spec)
    if not root.is_dir():
        raise DataError(f"{root}: {'not a folder' if root.exists() else 'no such folder'} "
                        f"(give an image folder or 'digits')")
    if (root / "val").is_dir():
        root = root / "val"
    if not class_folders(root):
        return FileSource(ground_truth(root, classes), classes, str(root))
    folder = image_folder(root, allow_empty=True)
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in folder.classes if c not in index]
    if unknown:
        raise DataError(f"{root}: class folder(s) {', '.join(unknown[:5])} are not among the "
                        f"model's {len(classes)} classes ({', '.join(classes[:5])}...)")
    items = [(path, index[folder.classes[label]]) for path, label in folder.items]
    return FileSource(items, classes, str(root))


def collect_images(inputs: list[str]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted; linked folders followed, each
    folder once); missing paths are an error. An image name that is not a readable file (a
    broken link, a FIFO) is kept, so that reading it reports it as skipped, not lost."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found, seen = [], set()
            for top, dirs, files in os.walk(p, followlinks=True):
                real = os.path.realpath(top)
                if real in seen:  # a link back up the tree
                    dirs[:] = []
                    continue
                seen.add(real)
                found += [Path(top) / f for f in files if is_image(f)]
            if not found:
                raise DataError(f"{p}: no images in this folder")
            out += sorted(found)
        elif os.path.lexists(p):
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return out


@dataclass
class Samples:
    """Preprocessed images the way eval feeds them (1 center crop, normalised), with labels
    (class indices of the artifact) when the data names the artifact's classes."""

    images: Tensor
    labels: Tensor | None
    description: str
    skipped: int = 0


def preprocess_image(image: Tensor, pre: Mapping[str, Any]) -> Tensor:
    """One uint8 image as the artifact takes it: its channels, the center crop, normalised."""
    from .crops import normalize, take_crops

    channels = int(pre.get("channels", 3))
    if image.shape[0] != channels:
        if channels == 1:
            image = image.float().mean(0, keepdim=True).round().to(image.dtype)
        else:
            raise InceptionError(f"the model takes {channels}-channel images, got "
                                 f"{image.shape[0]} channels")
    crop = take_crops(image, 1, int(pre["eval_size"]), [int(s) for s in pre["eval_scales"]],
                      str(pre.get("interpolation", "bilinear")))
    return normalize(crop, pre["mean"], pre["std"])[0]


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (so sorted class folders all take part)."""
    k = min(k, n)
    if k <= 0:
        return []
    return sorted(set(torch.linspace(0, n - 1, k).round().long().tolist()))


def _random_samples(pre: Mapping[str, Any], count: int, seed: int) -> Samples:
    g = torch.Generator().manual_seed(seed)
    channels, resize = int(pre.get("channels", 3)), int(pre["resize"])
    h, w = resize, resize * 4 // 3  # landscape, so the center crop really crops
    images = torch.randint(0, 256, (count, channels, h, w), generator=g, dtype=torch.uint8)
    x = torch.stack([preprocess_image(im, pre) for im in images])
    return Samples(x, None, f"random ({count} images, seed {seed})")


def _folder_images(root: Path, classes: list[str], resize: int, split: str
                   ) -> tuple[bool, str, int, Callable[[int], Sample]]:
    """(labelled, description, count, fetch) of an image folder: the model's classes when its
    folders name them, else its images unlabelled."""
    if not root.is_dir():
        raise DataError(f"{root}: {'not a folder' if root.exists() else 'no such folder'} "
                        f"(give an image folder, 'digits' or 'random')")
    source, why = None, ""
    if split == "train" and (root / "train").is_dir():
        root = root / "train"
    else:
        try:
            source = eval_source(str(root), classes, resize)
        except DataError as exc:  # folders that are not the model's classes: unlabelled inputs
            # said where the labels count (compare, parity), not for calibration
            if split != "train" and class_folders(root / "val" if (root / "val").is_dir()
                                                  else root):
                why = ": " + one_line(exc).split(": ", 1)[-1]  # class folders that do not match
        if (root / "val").is_dir():
            root = root / "val"  # where eval_source looks
    if source is not None:
        return True, str(root), len(source), source.load
    files = collect_images([str(root)])

    def fetch(i: int) -> Sample:
        try:
            return Sample(decode_rgb(files[i]), -1, str(files[i]))
        except Exception as exc:  # an unreadable file is skipped, as eval skips it
            return Sample(None, -1, str(files[i]), str(exc)[:120])

    return False, f"{root} (unlabelled{why})", len(files), fetch


def load_samples(data: str | os.PathLike | None, preprocessing: Mapping[str, Any],
                 classes: list[str], count: int, split: str = "val", seed: int = 0) -> Samples:
    """``count`` preprocessed images from ``data``: ``None``/``random`` (deterministic random
    images), ``digits`` (the embedded set's ``split``) or an image folder (its ``val/`` part, or
    for ``split="train"`` its ``train/`` part when there is one)."""
    if count < 1:
        raise InceptionError(f"samples: expected at least 1, got {count}")
    pre = preprocessing
    if data is None or str(data) == "random":
        return _random_samples(pre, count, seed)
    spec = str(data)
    if spec == "digits":
        source = digits(int(pre["resize"]), "train" if split == "train" else "val")
        labelled = source.classes == list(classes)
        desc = f"digits {source.name.split('-')[-1]}" + ("" if labelled else " (unlabelled)")
        n, fetch = len(source), source.load
    else:
        labelled, desc, n, fetch = _folder_images(Path(spec), classes, int(pre["resize"]), split)
    if n == 0:
        raise DataError(f"{spec}: no images")
    xs, ys, skipped = [], [], 0
    spread = _spread(n, count)
    chosen = set(spread)
    # an unreadable image's place is taken by the next readable one, so ``count`` are used
    # whenever there are that many
    for i in [*spread, *(j for j in range(n) if j not in chosen)]:
        if len(xs) == count:
            break
        sample = fetch(i)
        if sample.image is None:
            skipped += 1
            continue
        xs.append(preprocess_image(sample.image, pre))
        ys.append(sample.label)
    if not xs:
        raise DataError(f"{spec}: none of the {n} images could be read")
    labels = torch.tensor(ys) if labelled else None
    unread = f", {skipped} unreadable skipped" if skipped else ""
    return Samples(torch.stack(xs), labels, f"{desc} ({len(xs)} images{unread})", skipped)


def calibration_batches(data: str | os.PathLike | None, preprocessing: Mapping[str, Any],
                        classes: list[str], count: int, batch: int = 16,
                        log: Callable[[str], Any] | None = None) -> list[Tensor]:
    """``count`` preprocessed calibration images (the training part of ``data``) in batches;
    ``log`` hears how many unreadable files were skipped, if any."""
    samples = load_samples(data, preprocessing, classes, count, split="train")
    if samples.skipped and log is not None:
        log(f"calibration: {samples.description}")
    return list(samples.images.split(max(1, batch)))
