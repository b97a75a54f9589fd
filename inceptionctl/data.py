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
whichever worker, world size or resume point produces it.

Images for the checks around an artifact come from here too: :func:`eval_source` (the images
``eval`` scores, labelled with a model's classes), :func:`load_samples` (preprocessed images for
parity and ``compare``) and :func:`calibration_batches` (INT8 calibration).
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset
from torchvision import io as tvio
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .errors import InceptionError, one_line
from .recipe import Recipe


# torchvision 0.29 announces that torchvision.io's image decoders will move to TorchCodec; they
# are the decoders this project is built on until then, so the notice is not the user's concern.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of "
                                          "TorchVision", category=DeprecationWarning)


class DataError(InceptionError):
    """Data that cannot be used (missing folder, no images, unreadable file with strict)."""


INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}
PAPER_INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic")

# AlexNet's PCA lighting noise: eigenvalues / eigenvectors of ImageNet's RGB covariance.
_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                        [-0.5808, -0.0045, -0.8140],
                        [-0.5836, -0.6948, 0.4203]])


# ------------------------------------------------------------------------------------ decoding

def decode_rgb(path: str | os.PathLike) -> Tensor:
    """Decode an image file to uint8 ``[3, H, W]``; raises ValueError for what cannot be decoded."""
    data = tvio.read_file(str(path))
    if data.numel() == 0:
        raise ValueError("empty file")
    try:
        img = tvio.decode_image(data, mode=tvio.ImageReadMode.RGB)
    except RuntimeError as exc:
        # Modes libjpeg/libpng decode but cannot convert (e.g. some CMYK JPEGs): PIL can.
        img = _decode_with_pil(path, exc)
    if img.ndim != 3 or img.shape[0] != 3 or img.shape[1] < 1 or img.shape[2] < 1:
        raise ValueError(f"decoded to an unexpected shape {tuple(img.shape)}")
    return img


def _decode_with_pil(path: str | os.PathLike, first: Exception) -> Tensor:
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            return TF.pil_to_tensor(im.convert("RGB"))
    except Exception:
        raise ValueError(_short_reason(first)) from None


def _short_reason(exc: Exception) -> str:
    """torchvision's decoder errors without their C++ source location, first sentence only."""
    text = one_line(exc, default="cannot decode")
    return text.split(". ")[0].rstrip(".")


# ---------------------------------------------------------------------------------- transforms

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

    def forward(self, img: Tensor) -> Tensor:
        top, left, h, w = RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))
        crop = img[..., top:top + h, left:left + w]
        mode = self.interpolations[int(torch.randint(len(self.interpolations), ()))]
        return resize_to(crop, (self.size, self.size), mode)


def resize_to(img: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize a uint8 ``[C, H, W]`` image with a named interpolation (``area`` included)."""
    if mode == "area":
        out = F.interpolate(img[None].float(), size=size, mode="area")[0]
        return out.round_().clamp_(0, 255).to(img.dtype)
    return TF.resize(img, list(size), interpolation=INTERPOLATIONS[mode], antialias=True)


class Lighting(torch.nn.Module):
    """AlexNet-style PCA lighting noise on a float image in [0, 1]."""

    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, img: Tensor) -> Tensor:
        if self.std <= 0 or img.shape[0] != 3:
            return img
        alpha = torch.randn(3) * self.std
        shift = (_EIGVEC * (alpha * _EIGVAL)).sum(dim=1)
        return (img + shift.view(3, 1, 1)).clamp_(0.0, 1.0)


def train_transform(recipe: Recipe) -> Callable[[Tensor], Tensor]:
    """uint8 image -> normalised float tensor, with the paper's augmentation."""
    t, d = recipe.train, recipe.data
    interps = PAPER_INTERPOLATIONS if t.random_interpolation else (d.interpolation,)
    steps: list[Any] = [PaperCrop(d.input_size, t.scale, t.ratio, interps)]
    if t.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(t.hflip))
    if t.color_jitter > 0:
        j = t.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4)))
    steps += [v2.ToDtype(torch.float32, scale=True), Lighting(t.lighting),
              v2.Normalize(list(d.mean), list(d.std))]
    return v2.Compose(steps)


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

    def labels(self) -> list[int]:
        return [label for _, label in self.items]


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


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMG_EXTENSIONS)


def class_folders(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def image_folder(root: Path, classes: list[str] | None = None) -> FileSource:
    """An ImageFolder tree: one sub-folder of images per class."""
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
    for label, name in enumerate(found):
        files = sorted(str(p) for p in (root / name).rglob("*") if p.is_file()
                       and _is_image(p.name))
        if not files:
            raise DataError(f"{root / name}: class folder has no images")
        items += [(f, label) for f in files]
    return FileSource(items, found, str(root))


def ground_truth(val_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """Labels of a flat ILSVRC val folder from its ground-truth file."""
    candidates = [val_dir.parent / "LOC_val_solution.csv", val_dir / "LOC_val_solution.csv",
                  val_dir.parent / "val.txt", val_dir.parent / "val_labels.txt",
                  val_dir / "val_labels.txt"]
    gt = next((p for p in candidates if p.is_file()), None)
    if gt is None:
        raise DataError(f"{val_dir}: flat val folder without a ground-truth file (looked for "
                        f"LOC_val_solution.csv, val.txt, val_labels.txt)")
    index = {c: i for i, c in enumerate(classes)}
    labels: dict[str, int] = {}
    with open(gt, newline="") as fh:
        if gt.suffix == ".csv":
            for row in csv.DictReader(fh):
                labels[row["ImageId"]] = index.get(row["PredictionString"].split()[0], -1)
        else:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise DataError(f"{gt}:{n}: expected 'FILE LABEL', got {line.strip()!r}")
                name, label = parts
                labels[Path(name).stem] = (int(label) if label.isdigit() and label not in index
                                           else index.get(label, -1))
    items = []
    for path in sorted(p for p in val_dir.iterdir() if p.is_file() and _is_image(p.name)):
        label = labels.get(path.stem)
        if label is None:
            raise DataError(f"{path}: not in the ground-truth file {gt}")
        if not 0 <= label < len(classes):
            raise DataError(f"{gt}: the label of {path.name} is not one of the training classes")
        items.append((str(path), label))
    if not items:
        raise DataError(f"{val_dir}: no images")
    return items


@dataclass
class Splits:
    train: ImageSource
    val: ImageSource
    classes: list[str]
    description: str


def open_data(spec: str, recipe: Recipe, val_split: float = 0.0,
              synthetic_count: int = 512) -> Splits:
    """Resolve ``--data`` to train and val sources."""
    if spec == "digits":
        train, val = digits(recipe.data.resize, "train"), digits(recipe.data.resize, "val")
        return Splits(train, val, train.classes, "digits (scikit-learn, 1437 train / 360 val)")
    if spec == "synthetic":
        train = synthetic(recipe, synthetic_count, seed=0)
        val = synthetic(recipe, max(8, synthetic_count // 8), seed=1)
        return Splits(train, val, train.classes, f"synthetic ({synthetic_count} random images)")
    root = Path(spec)
    if not root.exists():
        raise DataError(f"{root}: no such folder (give a folder, 'digits' or 'synthetic')")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if (root / "train").is_dir():
        train = image_folder(root / "train")
        val_dir = root / "val"
        if not val_dir.is_dir():
            if val_split <= 0:
                raise DataError(f"{root}: has train/ but no val/ (add val/ or pass --val-split)")
            return _split(train, val_split, f"{root}/train")
        if class_folders(val_dir):
            val = image_folder(val_dir, train.classes)
        else:
            val = FileSource(ground_truth(val_dir, train.classes), train.classes, str(val_dir))
        return Splits(train, val, train.classes,
                      f"{root} ({len(train)} train / {len(val)} val, {len(train.classes)} classes)")
    if val_split < 0 or val_split >= 1:
        raise DataError(f"--val-split: expected a fraction in (0, 1), got {val_split}")
    if val_split == 0:
        raise DataError(f"{root}: no train/ and val/ sub-folders; pass --val-split to split one "
                        f"ImageFolder tree")
    return _split(image_folder(root), val_split, str(root))


def _split(source: FileSource, fraction: float, name: str) -> Splits:
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise DataError(f"--val-split: expected a fraction in (0, 1), got {fraction}")
    idx = list(range(len(source)))
    labels = source.labels()
    try:
        tr, va = train_test_split(idx, test_size=fraction, random_state=0, stratify=labels)
    except ValueError:
        tr, va = train_test_split(idx, test_size=fraction, random_state=0)
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

    The random numbers of the transform are drawn from a generator seeded by the key, inside
    ``fork_rng`` so the caller's RNG is untouched: augmentation is a pure function of the key.
    """

    def __init__(self, source: ImageSource, transform: Callable[[Tensor], Tensor], seed: int):
        self.source, self.transform, self.seed = source, transform, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[Tensor | None, int, str, str | None]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        sample = self.source.load(index)
        if sample.image is None:
            return None, sample.label, sample.path, sample.error
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            image = self.transform(sample.image)
        return image, sample.label, sample.path, None


@dataclass
class Batch:
    images: Tensor
    labels: Tensor
    bad: list[tuple[str, str]]  # (path, reason) of the items skipped

    def pin_memory(self) -> "Batch":
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.bad)


class Collate:
    """Stack good items; unreadable ones are dropped and listed, or fail with ``strict``."""

    def __init__(self, strict: bool):
        self.strict = strict

    def __call__(self, items: list[tuple[Tensor | None, int, str, str | None]]) -> Batch:
        good = [(img, label) for img, label, _, _ in items if img is not None]
        bad = [(path, err or "unreadable") for img, _, path, err in items if img is None]
        if bad and self.strict:
            path, err = bad[0]
            raise DataError(f"{path}: cannot read image ({err}); drop --strict-data to skip "
                            f"unreadable files")
        if not good:
            return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), bad)
        return Batch(torch.stack([g[0] for g in good]),
                     torch.tensor([g[1] for g in good], dtype=torch.long), bad)


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
        generator=torch.Generator().manual_seed(0))


def default_workers() -> int:
    """DataLoader workers: one fewer than the CPUs this process may use, at least 1, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus - 1))



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
        raise DataError(f"{root}: no such folder (give an image folder or 'digits')")
    if (root / "val").is_dir():
        root = root / "val"
    if not class_folders(root):
        return FileSource(ground_truth(root, classes), classes, str(root))
    folder = image_folder(root)
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in folder.classes if c not in index]
    if unknown:
        raise DataError(f"{root}: class folder(s) {', '.join(unknown[:5])} are not among the "
                        f"model's {len(classes)} classes ({', '.join(classes[:5])}...)")
    items = [(path, index[folder.classes[label]]) for path, label in folder.items]
    return FileSource(items, classes, str(root))


def collect_images(inputs: list[str]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted); missing paths are an error."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file()
                           and f.name.lower().endswith(IMG_EXTENSIONS))
            if not found:
                raise DataError(f"{p}: no images in this folder")
            out += found
        elif p.is_file():
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
        raise DataError(f"{root}: no such folder (give an image folder, 'digits' or 'random')")
    source = None
    if split == "train" and (root / "train").is_dir():
        root = root / "train"
    else:
        try:
            source = eval_source(str(root), classes, resize)
        except DataError:
            source = None  # folders that are not the model's classes: unlabelled inputs
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

    return False, f"{root} (unlabelled)", len(files), fetch


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
    for i in _spread(n, count):
        sample = fetch(i)
        if sample.image is None:
            skipped += 1
            continue
        xs.append(preprocess_image(sample.image, pre))
        ys.append(sample.label)
    if not xs:
        raise DataError(f"{spec}: none of the {n} images could be read")
    labels = torch.tensor(ys) if labelled else None
    return Samples(torch.stack(xs), labels, f"{desc} ({len(xs)} images)", skipped)


def calibration_batches(data: str | os.PathLike | None, preprocessing: Mapping[str, Any],
                        classes: list[str], count: int, batch: int = 16) -> list[Tensor]:
    """``count`` preprocessed calibration images (the training part of ``data``) in batches."""
    samples = load_samples(data, preprocessing, classes, count, split="train")
    return list(samples.images.split(max(1, batch)))
