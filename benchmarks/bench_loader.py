"""P6: training-loader images/s per worker, ours against torchvision's reference recipe.

Both sides read the same JPEGs: ``COUNT`` 500x375 photos-like images (smooth colour fields,
shapes with edges, texture and sensor-like noise; quality 90, about ImageNet's 110 KB on
average), generated once into the user cache folder (``$XDG_CACHE_HOME/inceptionctl/``, keyed
by the count and a version) as an ImageFolder tree of a few classes.

* ours: ``inceptionctl``'s training dataset with the ``googlenet`` recipe's augmentation (the
  paper's crop of 8%-100% of the area at aspect 3/4-4/3, one of four interpolations, flip,
  colour jitter, PCA lighting), keyed items through ``inceptionctl.data.loader``. The goal's
  row loads as ``train`` does for a GPU: the workers decode, crop and flip, and ship uint8
  crops with their draws; colour, lighting and normalisation run on the GPU, a batch at a time
  (``finish_photometric``; ``benchmarks/gpu_check.sh`` times that there). With every step in
  the worker, as ``train`` on a CPU loads, is the row beside it;
* reference: torchvision's ``references/classification`` ``ClassificationPresetTrain`` (as
  it stands there: ``RandomResizedCrop(224, bilinear, antialias)``, ``RandomHorizontalFlip``,
  ``PILToTensor``, ``ToDtype(float32, scale=True)``, ``Normalize``; transforms v2) over
  ``torchvision.datasets.ImageFolder`` with its PIL loader.

Each is timed in one DataLoader worker (startup excluded) and in the main process
(``num_workers=0``, one thread), the best of a few interleaved rounds, both by the clock and
per CPU second of the process doing the work (the worker): the goal is the ratio of the latter,
which a machine busy with other work distorts far less. From the per-worker rate: the workers a
GPU consuming ``--gpu-rate`` images/s needs.

    python benchmarks/bench_loader.py [--count 2000] [--images 800] [--gpu-rate 3000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Goal  # noqa: E402

VERSION = 1
CLASSES = 8
SIZE = (500, 375)  # ImageNet's most common size


# --------------------------------------------------------------------------------- the images

def synthetic_photo(index: int, size: tuple[int, int] = SIZE):
    """A deterministic photo-like RGB image (PIL): several octaves of smooth colour, a few
    sharp-edged shapes, fine texture and per-pixel noise, so it compresses as photos do."""
    from PIL import Image, ImageDraw

    w, h = size
    rng = np.random.default_rng(index)
    img = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((3, 90), (10, 50), (40, 30), (150, 80), (250, 30)):
        small = rng.normal(0, 1, (max(2, cells * h // w), cells, 3))
        small = ((small - small.min()) / (np.ptp(small) + 1e-6) * 255).astype(np.uint8)
        up = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
        img += (up / 255 - 0.5) * amp
    img += rng.uniform(60, 190, 3)
    shapes = Image.new("L", (w, h))
    draw = ImageDraw.Draw(shapes)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))]
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape(box, fill=int(rng.integers(1, 256)))
    img += (np.asarray(shapes, np.float32)[..., None] / 255 - 0.5) * rng.normal(0, 60, 3)
    noise = rng.uniform(12, 32)
    img += rng.normal(0, noise, (h, w, 1)) + rng.normal(0, noise / 3, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _write(args: tuple[Path, int]) -> int:
    folder, index = args
    path = folder / f"c{index % CLASSES}" / f"img{index:06d}.jpg"
    synthetic_photo(index).save(path, "JPEG", quality=90)
    return path.stat().st_size


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "inceptionctl"


def generate(count: int, root: Path | None = None, processes: int | None = None) -> Path:
    """The folder of ``count`` generated JPEGs (``<folder>/c<k>/img<i>.jpg``), made once."""
    folder = (root or cache_root()) / f"bench-jpegs-v{VERSION}-{count}"
    done = folder / "done.json"
    if done.is_file():
        return folder
    for k in range(CLASSES):
        (folder / f"c{k}").mkdir(parents=True, exist_ok=True)
    jobs = [(folder, i) for i in range(count)]
    processes = processes or min(16, len(os.sched_getaffinity(0)))
    if processes > 1 and count >= 32:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(processes) as pool:
            sizes = pool.map(_write, jobs, chunksize=8)
    else:
        sizes = [_write(job) for job in jobs]
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps({"count": count, "mean_bytes": float(np.mean(sizes))}))
    os.replace(tmp, done)
    return folder


def mean_kb(folder: Path) -> float:
    return json.loads((folder / "done.json").read_text())["mean_bytes"] / 1000


# -------------------------------------------------------------------------------- the loaders

def reference_loader(folder: Path, batch: int, workers: int) -> torch.utils.data.DataLoader:
    """torchvision's reference training preset over ImageFolder (PIL loader)."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import InterpolationMode, v2

    preset = v2.Compose([
        v2.RandomResizedCrop(224, interpolation=InterpolationMode.BILINEAR, antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        v2.ToPureTensor(),
    ])
    dataset = ImageFolder(str(folder), transform=preset)
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True,
                                       num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0,
                                       generator=torch.Generator().manual_seed(0))


def ours_loader(folder: Path, batch: int, workers: int, decode: str = "cpu", pin: bool = False,
                photometric: str = "here") -> torch.utils.data.DataLoader:
    """inceptionctl's training items (the googlenet recipe), as ``train`` loads them; with
    ``decode="gpu"`` the items are encoded, for ``finish_on_device`` with the loader's
    ``dataset.transform``; with ``photometric="device"`` (``train`` on a GPU) they are uint8
    crops, for ``finish_photometric``."""
    from inceptionctl import load_recipe
    from inceptionctl.data import KeyedSampler, Transformed, image_folder, loader, \
        train_transform

    recipe = load_recipe("googlenet")
    source = image_folder(folder)
    dataset = Transformed(source, train_transform(recipe), recipe.train.seed,
                          decode="device" if decode == "gpu" else "cpu", photometric=photometric)
    sampler = KeyedSampler(len(dataset), 0, recipe.train.seed)
    return loader(dataset, sampler, batch, workers, strict=False, pin=pin, drop_last=True)


def _cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of processes (Linux /proc); None where that cannot be read."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def loader_rates(make, images: int, batch: int, finish=None, skip: int = 0
                 ) -> tuple[float, float | None]:
    """(images/s by the clock, images per CPU second of the processes making them) of a loader
    over about ``images`` images, from its first batch on (so a worker's start is not counted);
    ``finish`` is applied to each batch (the device path).

    The second counts the CPU time of the workers (of this process with none): on a shared
    machine it is the rate a worker has with a core to itself, which the clock is not.
    With several workers, each makes its first batch at once: ``skip`` batches more (the
    number of workers) go by before the clock starts, so that none of it counts.
    """
    data = make()
    seen, started, waited, cpu0, pids = 0, None, 0, None, []

    def cpu() -> float | None:
        return _cpu_seconds(pids) if pids else time.process_time()

    while True:
        batches = iter(data)
        pids = [w.pid for w in getattr(batches, "_workers", [])]
        for item in batches:
            if finish is not None:
                item = finish(item)
            if started is None:  # the clock starts when the first batches are there
                waited += 1
                if waited > skip:
                    started, cpu0 = time.perf_counter(), cpu()
                continue
            seen += batch
            if seen >= images:
                break
        if seen >= images:
            break
    seconds, cpu1 = time.perf_counter() - started, cpu()
    del batches, data
    used = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return seen / seconds, (seen / used if used else None)


def images_per_s(make, images: int, batch: int, finish=None, skip: int = 0) -> float:
    """Images/s by the clock of :func:`loader_rates`."""
    return loader_rates(make, images, batch, finish, skip)[0]


def _one_thread(fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def ours_for_gpu(folder: Path, batch: int, workers: int) -> torch.utils.data.DataLoader:
    """Ours as ``train`` loads for a GPU: the workers stop at the uint8 crop."""
    return ours_loader(folder, batch, workers, photometric="device")


def measure(count: int = 2000, images: int = 800, batch: int = 32, gpu_rate: float = 3000.0,
            rounds: int = 2, root: Path | None = None) -> Goal:
    """The goal: ours / reference images per worker-CPU-second in one worker, ours as
    ``train`` loads for a GPU (the clock's rates, which a busy machine distorts, ours with
    every step in the worker as on a CPU, and both in-process, are in the details)."""
    folder = generate(count, root)
    best: dict[str, float] = {}
    variants = (("ours", ours_loader, (1, 0)), ("ours for a GPU", ours_for_gpu, (1,)),
                ("reference", reference_loader, (1, 0)))
    for _ in range(rounds):  # interleaved, the best of each: a busy machine only slows
        for name, make, worker_counts in variants:
            for workers in worker_counts:
                # two batches more before the clock starts: a fresh process is still growing
                wall, cpu = _one_thread(lambda: loader_rates(
                    lambda: make(folder, batch, workers), images, batch, skip=2))
                key = f"{name} {'1 worker' if workers else 'in-process'}"
                best[f"{key} img/s"] = max(best.get(f"{key} img/s", 0.0), wall)
                if cpu is not None:
                    best[f"{key} img/cpu-s"] = max(best.get(f"{key} img/cpu-s", 0.0), cpu)
    per_cpu = all(f"{name} 1 worker img/cpu-s" in best for name, _, _ in variants)
    unit = "img/cpu-s" if per_cpu else "img/s"
    ours, ref = best[f"ours for a GPU 1 worker {unit}"], best[f"reference 1 worker {unit}"]
    details: dict = dict(best)
    details.update({
        "1 worker ratio (clock)": best["ours for a GPU 1 worker img/s"]
        / best["reference 1 worker img/s"],
        "1 worker ratio, every step in the worker (train on a CPU)":
            best[f"ours 1 worker {unit}"] / ref,
        "in-process ratio (clock)": best["ours in-process img/s"]
        / best["reference in-process img/s"],
        f"workers for {gpu_rate:g} img/s (ours)": math.ceil(gpu_rate / ours),
        f"workers for {gpu_rate:g} img/s (reference)": math.ceil(gpu_rate / ref),
        "JPEG KB": mean_kb(folder), "images": count})
    return Goal("P6 train loader img/s per worker vs torchvision reference", ours / ref, 1.0,
                details=details, note=f"per worker: {unit}; ours: the paper's augmentation as "
                                      f"train on a GPU loads it (the workers decode, crop and "
                                      f"flip; colour and normalisation run on the GPU); "
                                      f"reference: ClassificationPresetTrain")


def main(argv: list[str] | None = None) -> int:
    from common import report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000, help="JPEGs generated (once, cached)")
    ap.add_argument("--images", type=int, default=800, help="images timed per measurement")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gpu-rate", type=float, default=3000.0,
                    help="images/s one GPU consumes (googlenet on an H100: about 3000)")
    ap.add_argument("--out", type=Path, default=Path("bench-loader.json"))
    args = ap.parse_args(argv)
    goal = measure(args.count, args.images, args.batch, args.gpu_rate, args.rounds)
    return report([goal], args.out)


if __name__ == "__main__":
    raise SystemExit(main())
