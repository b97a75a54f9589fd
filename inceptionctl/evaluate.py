"""``inceptionctl eval`` and ``predict``: the paper's test protocol on any backend.

Each image is decoded and cropped (1, 10 or 144 crops, :mod:`inceptionctl.crops`) in DataLoader
workers; the crops of consecutive images are streamed to every model's backend session in full
batches; softmax probabilities are averaged over the crops of an image and over the models (the
paper's ensemble). Under torchrun the images are sharded without padding and the per-image
predictions are gathered on rank 0, so the result does not depend on the world size.
"""

from __future__ import annotations

import dataclasses

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from . import __version__
from . import distributed as dist_utils
from .backend import (Session, check_recipe_used, open_artifact, run_in_range,
                      submit_in_range)
from .crops import normalize, take_crops
from .data import (Collate, DataError, ImageSource, KeyedSampler, collect_images, decode_rgb,
                   check_workers, default_workers, eval_source, usable_cpus)
from .errors import InceptionError, one_line
from .recipe import Recipe
from .runtime import choose_session_precision


class CropSet(Dataset):
    """Item ``(index, _)`` -> uint8 crops of every requested count, concatenated, with its label."""

    def __init__(self, source: ImageSource, counts: list[int], size: int, scales: list[int],
                 interpolation: str = "bilinear"):
        self.source, self.counts, self.size, self.scales = source, counts, size, scales
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[Any, int, str, str | None]:
        index = key[0] if isinstance(key, tuple) else key
        sample = self.source.load(index)
        if sample.image is None:
            return None, sample.label, sample.path, sample.error
        crops = torch.cat([take_crops(sample.image, c, self.size, self.scales,
                                      self.interpolation) for c in self.counts])
        return (crops, index), sample.label, sample.path, None


@dataclass
class CropBatch:
    crops: torch.Tensor    # uint8 [total, C, S, S]
    images: torch.Tensor   # dataset index of each image in the batch
    labels: torch.Tensor
    bad: list[tuple[str, str]]


class CropCollate(Collate):
    def __call__(self, items: list) -> CropBatch:  # type: ignore[override]
        bad = [(path, err or "unreadable") for it, _, path, err in items if it is None]
        if bad and self.strict:
            path, err = bad[0]
            raise DataError(f"{path}: cannot read image ({err}); drop --strict-data to skip "
                            f"unreadable files")
        good = [(it, label) for it, label, _, _ in items if it is not None]
        if not good:
            return CropBatch(torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long),
                             torch.empty(0, dtype=torch.long), bad)
        return CropBatch(torch.cat([g[0][0] for g in good]),
                         torch.tensor([g[0][1] for g in good]),
                         torch.tensor([g[1] for g in good]), bad)


# ------------------------------------------------------------------------------------ running

def stream_batches(crops: Iterator[tuple[torch.Tensor, torch.Tensor]], size: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Regroup (crops, tags) pieces into full batches of ``size`` (the last may be short)."""
    pend_c: list[torch.Tensor] = []
    pend_t: list[torch.Tensor] = []
    count = 0
    for c, t in crops:
        pend_c.append(c)
        pend_t.append(t)
        count += len(c)
        if count >= size:
            allc, allt = torch.cat(pend_c), torch.cat(pend_t)
            full = (count // size) * size
            for i in range(0, full, size):
                yield allc[i:i + size], allt[i:i + size]
            pend_c, pend_t, count = [allc[full:]], [allt[full:]], count - full
    if count:
        yield torch.cat(pend_c), torch.cat(pend_t)


@dataclass
class Row:
    """One line of the paper's Table 3: models, crops, cost and accuracy."""

    models: int
    crops: int
    cost: int
    top1: float
    top5: float
    delta_top1: float = 0.0
    delta_top5: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"models": self.models, "crops": self.crops, "cost": self.cost,
                "top1": self.top1, "top5": self.top5, "top1_error": 100.0 - self.top1,
                "top5_error": 100.0 - self.top5, "delta_top1": self.delta_top1,
                "delta_top5": self.delta_top5}


@dataclass
class EvalReport:
    artifacts: list[str]
    backend: str
    versions: dict[str, str]
    device: str
    classes: list[str]
    images: int
    skipped: int
    crops: list[int]
    rows: list[Row]
    main: Row
    per_class: list[dict[str, Any]]
    confusion: list[list[int]]
    seconds: float
    images_per_s: float
    crops_per_s: float
    skipped_paths: list[str] = field(default_factory=list)
    precisions: list[dict[str, Any]] = field(default_factory=list)  # per model: choice, rates
    batch_size: int = 0  # the batch the forward passes ran at (crops per call)

    def to_json(self) -> dict[str, Any]:
        return {"artifacts": self.artifacts, "backend": self.backend, "versions": self.versions,
                "device": self.device, "precisions": self.precisions, "images": self.images, "skipped": self.skipped,
                "crops": self.crops, "models": len(self.artifacts),
                # top1/top5, per_class and confusion: this row (every model, the most crops)
                "main_row": {"models": self.main.models, "crops": self.main.crops},
                "top1": self.main.top1,
                "top5": self.main.top5, "top1_error": 100.0 - self.main.top1,
                "top5_error": 100.0 - self.main.top5,
                "table": [r.to_json() for r in self.rows], "per_class": self.per_class,
                "classes": self.classes, "confusion": self.confusion,
                "seconds": self.seconds, "images_per_s": self.images_per_s,
                "crops_per_s": self.crops_per_s, "batch_size": self.batch_size,
                "skipped_paths": self.skipped_paths}


@dataclass
class EvalOptions:
    artifacts: list[str]
    data: str = "digits"
    crops: list[int] | None = None  # None: the recipe's eval.crops (the first artifact's)
    backend: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    limit: int | None = None
    strict_data: bool = False
    workers: int | None = None
    recipe: Recipe | None = None
    precision: str = "auto"  # auto: measured per machine (torch backend); else as given
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))


def _open_all(opts: EvalOptions) -> list[Session]:
    sessions: list[Session] = []
    try:
        for path in opts.artifacts:
            extra = {"recipe": opts.recipe} if opts.recipe is not None else {}
            sessions.append(open_artifact(path, opts.backend, opts.device, **extra))
        check_recipe_used(sessions, opts.artifacts, opts.recipe)
    except BaseException:
        for s in sessions:
            s.close()
        raise
    first = sessions[0].info
    for s in sessions[1:]:
        if s.info.classes != first.classes:
            for s2 in sessions:
                s2.close()
            raise InceptionError(f"{s.info.path}: its {s.info.num_classes} classes differ from "
                                 f"{first.path}'s {first.num_classes}; an ensemble must share "
                                 f"its classes")
        a, b = s.info.preprocessing, first.preprocessing
        if (a["eval_size"], a["eval_scales"]) != (b["eval_size"], b["eval_scales"]):
            for s2 in sessions:
                s2.close()
            raise InceptionError(f"{s.info.path}: crop size / scales differ from {first.path}'s "
                                 f"({a['eval_size']} {a['eval_scales']} vs {b['eval_size']} "
                                 f"{b['eval_scales']})")
    return sessions


def evaluate(opts: EvalOptions) -> EvalReport | None:
    """Evaluate the artifacts (an ensemble when several); rank 0 gets the report, others None."""
    for c in opts.crops or []:
        if c not in (1, 10, 144):
            raise InceptionError(f"--crops: {c} is not one of 1, 10, 144")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise InceptionError(f"--batch-size: expected at least 1, got {opts.batch_size}")
    if opts.limit is not None and opts.limit < 1:
        raise InceptionError(f"--limit: expected at least 1, got {opts.limit}")
    check_workers(opts.workers)
    ctx = dist_utils.init()
    try:
        sessions = _open_all(opts)
        try:
            if opts.crops is None:
                recipe_eval = sessions[0].info.recipe.get("eval", {})
                opts = dataclasses.replace(opts, crops=[int(recipe_eval.get("crops", 1))])
            return _evaluate(opts, sessions, ctx)
        finally:
            for s in sessions:
                s.close()
    finally:
        ctx.shutdown()


def _evaluate(opts: EvalOptions, sessions: list[Session], ctx: dist_utils.Context
              ) -> EvalReport | None:
    info = sessions[0].info
    pre = info.preprocessing
    size, scales = int(pre["eval_size"]), [int(s) for s in pre["eval_scales"]]
    if 144 in opts.crops and len(scales) != 4:
        raise InceptionError(f"{info.path}: 144 crops need 4 scales, the artifact has "
                             f"{len(scales)} ({scales})")
    source = eval_source(opts.data, info.classes, int(pre["resize"]))
    n_total = len(source) if opts.limit is None else min(opts.limit, len(source))
    if n_total == 0:
        raise DataError(f"{opts.data}: no images to evaluate")
    counts = list(dict.fromkeys(opts.crops))
    batch = _ensemble_batch(opts, sessions)
    for session in sessions:
        choose_session_precision(session, opts.precision, batch, opts.log if ctx.is_main else None,
                                 ctx)
    dataset = CropSet(source, counts, size, scales, str(pre.get("interpolation", "bilinear")))
    sampler = KeyedSampler(n_total, 0, 0, ctx.rank, ctx.world, shuffle=False)
    workers = eval_workers(counts) if opts.workers is None else opts.workers
    images_per_load = max(1, min(64, math.ceil(batch / sum(counts))))
    loader = DataLoader(dataset, batch_size=images_per_load, sampler=sampler,
                        num_workers=workers, collate_fn=CropCollate(opts.strict_data),
                        prefetch_factor=4 if workers else None,
                        persistent_workers=False)
    sums = _run(opts, sessions, loader, counts, n_total, batch, ctx)
    # Rows (models x crops): model 0 alone for each crop count, then the ensemble when several.
    configs = [(1, i) for i in range(len(counts))]
    if len(sessions) > 1:
        configs += [(len(sessions), i) for i in range(len(counts))]
    gathered = ctx.gather_objects(sums.top5(configs))
    if not ctx.is_main:
        return None
    return _report(opts, sessions, gathered, configs, counts, n_total, batch)


def eval_workers(counts: list[int]) -> int:
    """DataLoader workers for eval. With 10 or 144 crops per image the forward passes outweigh
    decoding and cropping by 10-100x, so on a machine of 2 CPUs or fewer a worker only takes a
    core from them: the crops are made in-process. Measured (``make bench``, P4's sweep, 144
    crops of googlenet-bn on a 2-core AMD EPYC): 0 workers 62.3 crops/s, 1 worker 58.6, 2 workers
    59.5. Elsewhere, and for 1 crop, :func:`~inceptionctl.data.default_workers`."""
    if min(counts) >= 10 and usable_cpus() <= 2:
        return 0
    return default_workers()


def _ensemble_batch(opts: EvalOptions, sessions: list[Session]) -> int:
    """The batch size: ``--batch-size`` or the recipe's, within every member's batch range."""
    batch = opts.batch_size or int(sessions[0].info.recipe.get("eval", {}).get("batch_size", 64))
    lows = [s.info.batch_range[0] for s in sessions if s.info.batch_range]
    highs = [s.info.batch_range[1] for s in sessions if s.info.batch_range]
    if lows and max(lows) > min(highs):
        raise InceptionError("the artifacts' batch ranges do not overlap "
                             f"({', '.join(f'{s.info.path}: {s.info.batch_range}' for s in sessions)})")
    if highs:
        fitted = max(max(lows), min(batch, min(highs)))
        if opts.batch_size is not None and fitted != batch and opts.log is not None:
            ranges = ", ".join(f"{s.info.path} {s.info.batch_range[0]}:{s.info.batch_range[1]}"
                               for s in sessions if s.info.batch_range)
            opts.log(f"--batch-size {batch}: running batches of {fitted} (the batch range of "
                     f"{ranges})")
        batch = fitted
    return batch


@dataclass
class _Sums:
    """Running sums of softmax probabilities per (image, crop count): model 0, and all models;
    the label of each image seen, the unreadable ones, and the work done."""

    first: torch.Tensor
    all: torch.Tensor
    labels: torch.Tensor
    counts: int
    bad: list[tuple[str, str]] = field(default_factory=list)
    crops: int = 0
    seconds: float = 0.0

    def top5(self, configs: list[tuple[int, int]]) -> dict[str, Any]:
        """This process's share for rank 0: per image and row (models, count index), the
        top-5 predictions, with the labels, unreadable files, crops and time."""
        valid = (self.labels >= 0).nonzero().flatten()
        n_total = len(self.labels)
        k = min(5, self.first.shape[1])
        tops = []
        for models, i in configs:
            sums = (self.first if models == 1 else self.all).view(n_total, self.counts, -1)[:, i]
            tops.append(sums[valid].topk(k, dim=1).indices)
        return {"labels": self.labels[valid], "tops": tops, "bad": self.bad,
                "crops": self.crops, "seconds": self.seconds}


def _run(opts: EvalOptions, sessions: list[Session], loader: DataLoader, counts: list[int],
         n_total: int, batch: int, ctx: dist_utils.Context) -> _Sums:
    """Stream the crops through every session in full batches, summing softmax per image."""
    n_counts, n_classes = len(counts), sessions[0].info.num_classes
    sums = _Sums(torch.zeros(n_total * n_counts, n_classes),
                 torch.zeros(n_total * n_counts, n_classes),
                 torch.full((n_total,), -1, dtype=torch.long), n_counts)
    # Tag of each crop of one image: its count's index (the crops of count c come together).
    crop_slot = torch.cat([torch.full((c,), i, dtype=torch.long) for i, c in enumerate(counts)])
    means = [torch.tensor(s.info.preprocessing["mean"]) for s in sessions]
    stds = [torch.tensor(s.info.preprocessing["std"]) for s in sessions]

    def pieces() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in loader:
            sums.bad.extend(b.bad)
            if not len(b.images):
                continue
            sums.labels[b.images] = b.labels
            tags = (b.images[:, None] * n_counts + crop_slot[None, :]).reshape(-1)
            yield b.crops, tags

    def collect(pending: list[tuple[int, Callable[[], torch.Tensor], torch.Tensor]]) -> None:
        for m, logits, tags in pending:
            out = logits().float()
            if not bool(torch.isfinite(out).all()):  # NaN would score as a wrong answer
                raise InceptionError(f"{sessions[m].info.path}: its output is not finite (NaN or "
                                     f"inf): damaged weights, or a precision too narrow for them")
            probs = torch.softmax(out, dim=1)
            if m == 0:
                sums.first.index_add_(0, tags, probs)
            sums.all.index_add_(0, tags, probs)
            sums.crops += len(tags)

    started = time.monotonic()
    log_at = started
    # One batch in flight: a session that computes asynchronously (CUDA) works on batch i while
    # batch i+1 is regrouped and sent; the sums see every batch in the same order either way.
    pending: list[tuple[int, Callable[[], torch.Tensor], torch.Tensor]] = []
    for chunk, tags in stream_batches(pieces(), batch):
        submitted = [(m, submit_in_range(session, chunk, means[m], stds[m]), tags)
                     for m, session in enumerate(sessions)]
        collect(pending)
        pending = submitted
        if ctx.is_main and time.monotonic() - log_at > 10:
            rate = sums.crops / (time.monotonic() - started)
            opts.log(f"eval: {sums.crops:,} crops, {rate:,.0f} crops/s")
            log_at = time.monotonic()
    collect(pending)
    sums.seconds = time.monotonic() - started
    return sums


def _report(opts: EvalOptions, sessions: list[Session], gathered: list[dict[str, Any]],
            configs: list[tuple[int, int]], counts: list[int], n_total: int,
            batch: int = 0) -> EvalReport:
    """Rank 0: the table rows, per-class accuracy and confusion from every rank's top-5s."""
    classes = sessions[0].info.classes
    all_labels = torch.cat([g["labels"] for g in gathered])
    all_tops = [torch.cat([g["tops"][j] for g in gathered]) for j in range(len(configs))]
    all_bad = [b for g in gathered for b in g["bad"]]
    total_crops = sum(g["crops"] for g in gathered)
    seconds = max(g["seconds"] for g in gathered)
    n = len(all_labels)
    if n == 0:
        raise DataError(f"{opts.data}: none of the {n_total} images could be read")

    rows = []
    for (models, i), top in zip(configs, all_tops):
        hit = top.eq(all_labels[:, None])
        rows.append(Row(models, counts[i], models * counts[i],
                        100.0 * int(hit[:, 0].sum()) / n, 100.0 * int(hit.any(dim=1).sum()) / n))
    base = rows[0]
    for r in rows:
        r.delta_top1, r.delta_top5 = r.top1 - base.top1, r.top5 - base.top5
    main_index = max(range(len(rows)), key=lambda j: (rows[j].models, rows[j].crops))
    pred = all_tops[main_index][:, 0]
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    confusion.index_put_((all_labels, pred), torch.ones_like(pred), accumulate=True)
    per_class = []
    for c, name in enumerate(classes):
        count = int(confusion[c].sum())
        if count:
            per_class.append({"class": name, "images": count,
                              "top1": 100.0 * int(confusion[c, c]) / count})
    av = sessions[0]
    versions = {"inceptionctl": __version__, "torch": torch.__version__}
    for s in sessions:
        versions.update(s.info.extra.get("versions", {}))
    # an ensemble across backends names each (torch/onnxruntime), as its precisions do
    backend = "/".join(dict.fromkeys(_backend_name(s) for s in sessions))
    return EvalReport(
        artifacts=[s.info.path for s in sessions], backend=backend, versions=versions,
        device=av.device, classes=classes, images=n, skipped=len(all_bad), crops=counts,
        rows=rows, main=rows[main_index], per_class=per_class, confusion=confusion.tolist(),
        seconds=seconds, images_per_s=n / max(seconds, 1e-9),
        crops_per_s=total_crops / max(seconds, 1e-9),
        skipped_paths=[f"{p} ({r})" for p, r in all_bad],
        precisions=[dict(s.info.extra.get("precision_choice") or
                         {"precision": s.info.precision, "source": "artifact"}) for s in sessions],
        batch_size=batch)


def _backend_name(session: Session) -> str:
    return session.info.extra.get("backend", type(session).__name__.replace("Session", "").lower())


# ------------------------------------------------------------------------------------ predict

@dataclass
class Prediction:
    path: str
    topk: list[tuple[str, int, float]]  # (class name, index, probability)


def predict(inputs: list[str], weights: str, crops: int = 1, topk: int = 5,
            backend: str | None = None, device: str = "auto", strict: bool = False,
            recipe: Recipe | None = None, precision: str = "auto",
            log: Callable[[str], None] | None = None
            ) -> tuple[list[Prediction], list[tuple[str, str]], Session]:
    """Top-k classes of each input image; unreadable images are listed (or fatal with strict)."""
    if crops not in (1, 10, 144):
        raise InceptionError(f"--crops: {crops} is not one of 1, 10, 144")
    if topk < 1:
        raise InceptionError(f"--topk: expected at least 1, got {topk}")
    paths = collect_images(inputs)
    extra = {"recipe": recipe} if recipe is not None else {}
    session = open_artifact(weights, backend, device, **extra)
    with session:
        check_recipe_used([session], [weights], recipe)
        choose_session_precision(session, precision, crops, log)
        pre = session.info.preprocessing
        size, scales = int(pre["eval_size"]), [int(s) for s in pre["eval_scales"]]
        mean, std = torch.tensor(pre["mean"]), torch.tensor(pre["std"])
        interpolation = str(pre.get("interpolation", "bilinear"))
        k = min(topk, session.info.num_classes)
        results, bad = [], []
        for path in paths:
            try:
                image = decode_rgb(path)
            except Exception as exc:
                reason = one_line(exc, default="unreadable")
                if strict:
                    raise DataError(f"{path}: cannot read image ({reason})") from None
                bad.append((str(path), reason))
                continue
            x = normalize(take_crops(image, crops, size, scales, interpolation), mean, std)
            logits = run_in_range(session, x)
            if not bool(torch.isfinite(logits).all()):
                raise InceptionError(f"{weights}: its output for {path} is not finite (NaN or "
                                     f"inf): damaged weights, or a precision too narrow for them")
            probs = torch.softmax(logits, 1).mean(0)
            p, idx = probs.topk(k)
            results.append(Prediction(str(path), [(session.info.classes[i], int(i), float(v))
                                                  for v, i in zip(p.tolist(), idx.tolist())]))
        return results, bad, session


# ----------------------------------------------------------------------------------- rendering

def skipped_note(report: EvalReport) -> str | None:
    """The stderr line naming the first unreadable images, or None when every image was read."""
    if not report.skipped:
        return None
    shown = "; ".join(report.skipped_paths[:3])
    return (f"skipped {report.skipped} unreadable image(s): {shown}"
            + (" ..." if report.skipped > 3 else ""))


def plot_confusion(report: EvalReport, path: Path) -> Path:
    """The confusion matrix of the main row as a PNG, titled with its models, crops and top-1."""
    from .plots import confusion_png

    return confusion_png(report.confusion, report.classes, path,
                         f"{report.main.models} model(s), {report.main.crops} crop(s): "
                         f"top-1 {report.main.top1:.2f}%")


def render(report: EvalReport, plot: Path | None = None) -> list[Any]:
    """Table 3 for this run as a rich Table, then the throughput line (naming the plot file)."""
    from rich.table import Table

    precisions = "/".join(dict.fromkeys(str(p.get("precision")) for p in report.precisions))
    where = ", ".join(x for x in (report.device, precisions) if x)
    table = Table(title=f"eval: {report.images} images, backend {report.backend} ({where})")
    for col in ("models", "crops", "cost", "top-1", "top-5", "top-1 err", "top-5 err",
                "Δ top-1", "Δ top-5"):
        table.add_column(col, justify="right")
    for r in report.rows:
        table.add_row(str(r.models), str(r.crops), str(r.cost), f"{r.top1:.2f}%", f"{r.top5:.2f}%",
                      f"{100 - r.top1:.2f}%", f"{100 - r.top5:.2f}%",
                      f"{r.delta_top1:+.2f}" if r is not report.rows[0] else "base",
                      f"{r.delta_top5:+.2f}" if r is not report.rows[0] else "base")
    if len(report.classes) <= 5:  # then every class is in the top 5
        table.caption = f"top-5 is 100% by definition with {len(report.classes)} classes"
    speed = (f"{report.images_per_s:,.1f} images/s, {report.crops_per_s:,.0f} crops/s "
             f"({report.seconds:.1f}s)" + (f"; confusion matrix: {plot}" if plot else ""))
    return [table, speed]


def predictions_to_json(results: list[Prediction], bad: list[tuple[str, str]], weights: str,
                        crops: int, precision: dict[str, Any] | None = None) -> dict[str, Any]:
    """``predict --json``: the weights, crops, precision, each image's top-k and the skipped
    images."""
    return {"weights": weights, "crops": crops, "precision": precision,
            "predictions": [{"path": r.path, "topk": [
                {"class": c, "index": i, "probability": p} for c, i, p in r.topk]}
                for r in results],
            "skipped": [{"path": p, "reason": why} for p, why in bad]}


def render_predictions(results: list[Prediction], crops: int) -> Any:
    """The predictions as a rich Table: one row per image, its top-k classes with probabilities."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"predict ({crops} crop{'s' if crops > 1 else ''})")
    table.add_column("image")
    for j in range(len(results[0].topk)):
        table.add_column(f"#{j + 1}")
    for r in results:
        table.add_row(escape(r.path), *[escape(f"{c} {p:.1%}") for c, _, p in r.topk])
    return table
