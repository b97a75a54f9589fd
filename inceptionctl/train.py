"""``inceptionctl train``: the paper's training loop, on one device or many (torchrun / DDP).

loss = main + aux.loss_weight * sum(aux heads); SGD with momentum; a per-step learning-rate
schedule (the paper's 4% every 8 epochs, or cosine / poly, with warm-up); a Polyak (EMA) copy of
the weights that validation, ``best`` and export use. Checkpoints carry everything needed to
continue bit-exactly: weights, EMA, optimizer, schedule, grad scaler, epoch/step, the position
in the data order and the RNG states (:class:`TrainState`).

One step is :class:`inceptionctl.trainer.Trainer`'s; this module runs it over the data: set up,
train an epoch, validate and save, sum up. The host reads the steps' losses, the signals and the
non-finite guard once per ``log_every`` steps, in one all-reduce.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import random
import re
import signal
import socket
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import distributed as dist_utils
from .checkpoint import checkpoint_recipe, load_weights, read_checkpoint, \
    save_checkpoint
from .data import (Batch, DataError, KeyedSampler, Transformed, check_workers, default_workers,
                   eval_transform, finish_on_device, finish_photometric, listing_digest, loader,
                   open_data, steps_per_epoch, train_transform)
from .errors import CheckFailed, InceptionError, OutputError, say
from .filelist import FileLists
from .files import strict_json, write_text_atomic
from .model import GoogLeNet, build_model
from .recipe import Recipe, parse_overrides, recipe_from_data  # noqa: F401
from .runtime import (PrecisionChoice, autocast, candidates, choose_precision, probe_key,
                      resolve_device, resolve_precision, time_rate)
from .trainer import Trainer


class Interrupted(InceptionError):
    """SIGINT / SIGTERM: the run saved its state and stops with 130 / 143."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainOptions:
    recipe: Recipe
    overrides: list[str] = field(default_factory=list)  # re-applied to a resumed run's recipe
    # whether the user named the recipe (a resumed run of another recipe is then refused);
    # the command line's default recipe is not a choice
    recipe_given: bool = True
    data: str = "digits"
    out: Path | None = None
    runs_dir: Path = Path("runs")
    weights: Path | None = None
    strict_head: bool = False  # refuse --weights whose classifier has another class count
    resume: str | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    channels_last: bool = True
    workers: int | None = None
    decode: str = "cpu"  # cpu: workers decode and augment; gpu: workers read, the GPU decodes
    val_split: float = 0.0
    strict_data: bool = False
    tensorboard: bool = False
    max_nonfinite: int = 5
    max_steps: int | None = None
    synthetic_count: int = 512
    log_every: int = 10  # steps between host syncs: loss, progress, signals, the non-finite guard
    save_every: "SaveEvery | None" = None  # also write last.pt inside an epoch
    log: Callable[[str], None] = field(default=say)
    progress: bool | None = None  # None: a live bar when stderr is a terminal


@dataclass
class TrainResult:
    run: str
    epochs: int
    best_top1: float | None  # None until a validation ran
    best_epoch: int | None
    last_top1: float | None
    last_top5: float | None
    seconds: float
    steps: int
    skipped_nonfinite: int
    skipped_images: int
    history: list[dict[str, Any]]
    precision: str = "fp32"  # what the run trained (and validated) in
    precision_choice: dict[str, Any] = field(default_factory=dict)  # auto's measured rates
    new_steps: int | None = None  # the steps this command took in ``seconds`` (steps: the run's)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainState:
    """Where a run stands: what ``last.pt`` holds as ``train_state`` and what ``--resume`` reads.

    The weights and their Polyak copy sit beside it in the checkpoint (``state_dict``,
    ``ema_state_dict``); the optimizer, schedule, scaler and Polyak count come from
    :meth:`Trainer.state_dict` when the state is saved.
    """

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps taken in the current epoch (its position in the data order)
    global_step: int = 0
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    best_top1: float = -1.0
    best_epoch: int = -1
    skipped_nonfinite: int = 0
    world_size: int = 1
    ema_n_averaged: torch.Tensor | None = None
    # the current epoch's training loss so far, so a mid-epoch resume records the same mean
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "TrainState":
        # runs saved before world_size was recorded were single-process runs
        optional = {"world_size": 1, "ema_n_averaged": None, "epoch_loss_sum": 0.0,
                    "epoch_loss_steps": 0}
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in state and f.name not in optional:
                raise InceptionError(f"training state without '{f.name}': not a last.pt this "
                                     f"inceptionctl wrote")
            values[f.name] = state.get(f.name, optional.get(f.name))
        values["history"] = list(values["history"])
        return cls(**values)


# ------------------------------------------------------------------------ mid-epoch saves

@dataclass(frozen=True)
class SaveEvery:
    """``--save-every``: write ``last.pt`` every ``steps`` optimizer steps, or every
    ``minutes`` (checked at the host syncs, i.e. every ``log_every`` steps)."""

    steps: int | None = None
    minutes: float | None = None

    @classmethod
    def parse(cls, text: str) -> "SaveEvery":
        """``N`` (optimizer steps) or ``Nm`` (minutes); anything else is one InceptionError."""
        value = str(text).strip()
        match = re.fullmatch(r"(\d+)|(\d+(?:\.\d*)?|\.\d+)m", value)
        number = float(match.group(1) or match.group(2)) if match else 0.0
        if number <= 0:
            raise InceptionError(f"--save-every {text}: expected a positive number of optimizer "
                                 f"steps (e.g. 500) or of minutes (e.g. 30m)")
        return cls(steps=int(number)) if match.group(1) else cls(minutes=number)

    def __str__(self) -> str:
        return f"{self.steps} steps" if self.steps else f"{self.minutes:g} minutes"


class _SaveClock:
    """When the loop writes ``last.pt`` inside an epoch (``--save-every``)."""

    def __init__(self, every: SaveEvery | None):
        self.every = every
        self.last = time.monotonic()

    def at_step(self, global_step: int) -> bool:
        """Every rank alike: a step-count save is due (the loop syncs the host for it)."""
        return bool(self.every and self.every.steps and global_step % self.every.steps == 0)

    def on_time(self) -> bool:
        """A time save is due; only rank 0 writes, so its clock alone decides."""
        return bool(self.every and self.every.minutes
                    and time.monotonic() - self.last >= 60.0 * self.every.minutes)

    def saved(self) -> None:
        self.last = time.monotonic()


# ------------------------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as plain values (weights-only loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "gauss": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# ---------------------------------------------------------------------------------- signals

class StopFlag:
    """SIGINT / SIGTERM set a flag; the loop finishes the step, saves and stops."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------- run folder

def _new_run_folder(opts: TrainOptions, recipe: Recipe) -> Path:
    if opts.out is not None:
        out = Path(opts.out)
        if out.exists() and not out.is_dir():
            raise InceptionError(f"--out {out}: is a file; give a folder for the run")
        if (out / "last.pt").exists():
            raise InceptionError(f"{out}: already holds a run (last.pt); continue it with "
                                 f"--resume {out}, or choose another --out")
        # a run's other files, without its last.pt: a new run would replace them
        theirs = [name for name in ("best.pt", "metrics.jsonl") if (out / name).exists()]
        if theirs:
            raise InceptionError(f"--out {out}: holds {' and '.join(theirs)}, which a new run "
                                 f"would replace; choose another --out")
        return out
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = opts.runs_dir / f"{recipe.name}-{stamp}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = Path(f"{base}-{n}")
    return out


def _check_recipe_file(out: Path, recipe: Recipe) -> None:
    """A new run writes its resolved recipe to ``out/recipe.yaml``: a file there with other
    text is not this run's (the user's own recipe, say) and is never replaced. The same text
    is this command's earlier try that stopped before its first checkpoint: it may go on."""
    mine = out / "recipe.yaml"
    if mine.is_file() and mine.read_text(encoding="utf-8", errors="replace") != recipe.to_yaml():
        raise InceptionError(f"--out {out}: holds a recipe.yaml that is not this run's "
                             f"(training would replace it); choose another --out")


def _find_resume(opts: TrainOptions, recipe_name: str) -> Path | None:
    """--resume auto: --out's last.pt, else the newest run of this recipe; PATH: that run."""
    if opts.resume is None:
        return None
    if opts.resume != "auto":
        path = Path(opts.resume)
        if path.is_dir():
            path = path / "last.pt"
        if not path.is_file():
            raise InceptionError(f"--resume {opts.resume}: no checkpoint there (expected a run "
                                 f"folder with last.pt, or a checkpoint file)")
        return path
    if opts.out is not None:
        last = Path(opts.out) / "last.pt"
        return last if last.is_file() else None
    runs = sorted(opts.runs_dir.glob(f"{recipe_name}-*/last.pt"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


# ----------------------------------------------------------------------------------- progress

class Progress:
    """A rich bar per epoch on a terminal; plain periodic lines otherwise. Rank 0 only."""

    def __init__(self, enabled: bool, live: bool, log: Callable[[str], None]):
        self.enabled, self.live, self.log = enabled, live, log
        self._bar: Any = None
        self._task: Any = None
        self._last_line = 0.0
        self._lines = 0

    def start(self, epoch: int, epochs: int, total: int, done: int) -> None:
        if not self.enabled:
            return
        self.epoch, self.epochs, self.total = epoch, epochs, total
        if self.live:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)

            self._bar = Bar(TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeElapsedColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=False)
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=done, info="")
        self._started = self._last_line = time.monotonic()
        self._lines = 0

    def update(self, step: int, loss: float, lr: float, ips: float) -> None:
        if not self.enabled:
            return
        info = f"loss {loss:.4f}  lr {lr:.4g}  {ips:,.0f} img/s"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif step == self.total or time.monotonic() - self._last_line >= 10.0 or not self._lines:
            left = (self.total - step) * (time.monotonic() - self._started) / max(1, step)
            self.log(f"epoch {self.epoch + 1}/{self.epochs} step {step}/{self.total}  {info}"
                     f"  eta {left:.0f}s")
            self._last_line = time.monotonic()
            self._lines += 1

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# ----------------------------------------------------------------------------------- evaluate

@torch.no_grad()
def validate(model: nn.Module, data: torch.utils.data.DataLoader, device: torch.device,
             precision: str, channels_last: bool, ctx: dist_utils.Context) -> dict[str, float]:
    """Exact top-1 / top-5 / loss over this rank's shard, summed over ranks."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)  # correct1, correct5, count, loss, bad
    for batch in data:
        sums[4] += len(batch.bad)
        if batch.images.numel() == 0:
            continue
        x = batch.images.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch.labels.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        sums[0] += hit[:, :1].sum().item()
        sums[1] += hit.any(dim=1).sum().item()
        sums[2] += len(y)
        sums[3] += nn.functional.cross_entropy(logits, y, reduction="sum").item()
    model.train(was_training)
    sums = ctx.all_reduce_sum(sums)
    n = max(1.0, sums[2].item())
    return {"top1": 100.0 * sums[0].item() / n, "top5": 100.0 * sums[1].item() / n,
            "loss": sums[3].item() / n, "images": int(sums[2].item()), "bad": int(sums[4].item())}


# ------------------------------------------------------------------------------------- train

def _follow_classes(recipe: Recipe, classes: list[str], data: str, fixed: bool,
                    log: Callable[[str], None]) -> Recipe:
    """The recipe whose model has the data's classes (count and names).

    A new run takes them from the data, as torchvision's reference script does, and says so
    when the recipe named others; a resumed run (``fixed``) keeps its own and must match.
    """
    if len(classes) == recipe.model.num_classes and recipe.data.classes is not None \
            and list(recipe.data.classes) == list(classes):
        return recipe
    if fixed:
        if len(classes) != recipe.model.num_classes:
            raise InceptionError(f"{data}: {len(classes)} classes, but the resumed run's model "
                                 f"has {recipe.model.num_classes}")
        if recipe.data.classes is not None:
            raise InceptionError(f"{data}: class names differ from the resumed run's "
                                 f"(first data class '{classes[0]}', run "
                                 f"'{recipe.data.classes[0]}')")
    elif len(classes) != recipe.model.num_classes or recipe.data.classes is not None:
        shown = ", ".join(classes[:5]) + (f", ... {len(classes) - 5} more"
                                          if len(classes) > 5 else "")
        log(f"classes: {len(classes)} from {data} ({shown}); the recipe's model had "
            f"{recipe.model.num_classes}")
    return recipe_from_data(recipe.to_dict(), recipe.source,
                            {"model.num_classes": len(classes), "data.classes": list(classes)})


def train(opts: TrainOptions) -> TrainResult:
    """Train ``opts.recipe`` on ``opts.data``; return the run's summary (rank 0's view)."""
    ctx = dist_utils.init()
    try:
        return _train(opts, ctx)
    finally:
        ctx.shutdown()


# ---------------------------------------------------------------------------------- the setup

@dataclass
class _Run:
    """The facts of one run that every piece of the loop reads."""

    opts: TrainOptions
    ctx: dist_utils.Context
    recipe: Recipe
    out: Path
    device: torch.device
    precision: str
    per_epoch: int
    log: Callable[[str], None]
    writer: Any = None  # a tensorboard SummaryWriter on rank 0 with --tensorboard
    precision_choice: dict[str, Any] = field(default_factory=dict)  # how --precision was decided
    listing: dict[str, Any] = field(default_factory=dict)  # which images: see listing_digest


@dataclass
class _Loaders:
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    sampler: KeyedSampler  # the training order: its epoch and skip place a resumed run
    per_epoch: int
    workers: int
    # what the device does to each training batch: --decode gpu's decode and augmentation, or
    # the colour steps of uint8 crops
    finish: Callable[[Any], Batch] | None = None

    def close(self) -> None:
        """Stop the persistent workers now. A run that ends in an error keeps its iterators
        alive in the traceback, and the workers ignore SIGTERM (the main process acts on it),
        so without this the interpreter's exit would wait for them forever."""
        for dl in (self.train, self.val):
            it = getattr(dl, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
            dl._iterator = None


def _open_resume(opts: TrainOptions, log: Callable[[str], None]
                 ) -> tuple[Recipe, dict[str, Any] | None, Path | None]:
    """The recipe to train, and the checkpoint and path of the run to continue (or None)."""
    recipe = opts.recipe
    resume_path = _find_resume(opts, recipe.name)
    if resume_path is None:
        if opts.resume == "auto":
            log("resume auto: no earlier run found, starting a new one")
        return recipe, None, None
    ckpt = read_checkpoint(resume_path)
    if not ckpt.get("train_state"):
        raise InceptionError(f"{resume_path}: holds no training state (a 'best' checkpoint "
                             f"or an export); resume from the run's last.pt")
    if resume_path.name != "last.pt":
        # the run goes on in the checkpoint's folder, writing last.pt, best.pt and metrics.jsonl
        # there: never beside a file that is not the run's own last.pt
        raise InceptionError(f"--resume {resume_path}: a run continues in the folder of its "
                             f"last.pt, and this file is not one; copy it to a run folder as "
                             f"last.pt and resume that folder")
    # The run's own recipe; only train.epochs may change (to extend a run). An override that
    # repeats the run's value is no change: a restarted command line (torchrun --max-restarts,
    # a requeued job) carries the --set options that started the run.
    saved = checkpoint_recipe(ckpt, str(resume_path), None).to_dict()
    for (key, _), override in zip(parse_overrides(opts.overrides), opts.overrides):
        if key != "train.epochs" and \
                checkpoint_recipe(ckpt, str(resume_path), [override]).to_dict() != saved:
            value: Any = saved
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            raise InceptionError(f"--resume {resume_path.parent}: a resumed run keeps its "
                                 f"recipe; only train.epochs can change (not {override}: the "
                                 f"run has {key}={value})")
    recipe = checkpoint_recipe(ckpt, str(resume_path), opts.overrides or None)
    done = int(ckpt["train_state"].get("epoch", 0))
    if recipe.train.epochs < done:
        raise InceptionError(f"--resume {resume_path.parent}: the run has trained {done} "
                             f"epochs; train.epochs={recipe.train.epochs} would end it before "
                             f"where it is (give {done} or more)")
    if opts.recipe_given and opts.recipe.name != recipe.name:
        raise InceptionError(f"--resume {resume_path.parent}: the run trains recipe "
                             f"'{recipe.name}', not --recipe {opts.recipe.name} (a resumed run "
                             f"keeps its recipe; leave --recipe out)")
    if opts.weights is not None:
        if opts.resume != "auto":
            raise InceptionError(f"--resume {resume_path.parent}: a resumed run continues from "
                                 f"its own weights; --weights starts a new run (give one or "
                                 f"the other)")
        # --resume auto found the run (a restarted or requeued command line): it continues
        log(f"resume auto: continuing {resume_path.parent}; --weights is for a new run and is "
            f"not used")
    meta = ckpt.get("meta", {})
    saved_data = meta.get("data")
    # the same folder however it is written (./cd/, an absolute path, from another folder)
    saved_folder = meta.get("data_folder") or _data_folder(saved_data)
    if saved_data is not None and opts.data != saved_data and \
            (saved_folder is None or _data_folder(opts.data) != saved_folder):
        shown = saved_folder or saved_data
        raise InceptionError(f"--resume {resume_path.parent}: the run trains on "
                             f"'{shown}', not '{opts.data}' (pass --data {shown})")
    saved_split = meta.get("val_split")
    if saved_split is not None and float(opts.val_split) != float(saved_split):
        # another split would put validation images into training (and change the epoch)
        raise InceptionError(f"--resume {resume_path.parent}: the run splits its data with "
                             f"--val-split {saved_split:g}, not {opts.val_split:g} (pass "
                             f"--val-split {saved_split:g})")
    if opts.out is not None and Path(opts.out).resolve() != resume_path.parent.resolve():
        raise InceptionError(f"--resume {resume_path.parent}: the run continues in its own "
                             f"folder, not --out {opts.out}")
    return recipe, ckpt, resume_path


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def photometric_where(decode: str, device: torch.device) -> str:
    """Where the training images' float steps run: on an accelerator the workers stop at the
    uint8 crop and the colour steps run on the device, a batch in a few kernels (a worker then
    makes more images and sends a quarter of the bytes); on the CPU they stay in the workers,
    which run beside the training process. ``--decode gpu`` does every step there."""
    return "device" if device.type != "cpu" and decode == "cpu" else "here"


def _loaders(opts: TrainOptions, recipe: Recipe, splits: Any, ctx: dist_utils.Context,
             device: torch.device) -> _Loaders:
    """This rank's training and validation loaders; the workers are split between ranks."""
    t = recipe.train
    check_workers(opts.workers)
    workers = default_workers() if opts.workers is None else opts.workers
    if ctx.world > 1 and opts.workers is None:
        workers = max(1, workers // ctx.world)
    pin = device.type == "cuda"
    transform = train_transform(recipe)
    on_device = opts.decode == "gpu"
    photometric = photometric_where(opts.decode, device)
    train_set = Transformed(splits.train, transform, t.seed,
                            decode="device" if on_device else "cpu", photometric=photometric)
    val_set = Transformed(splits.val, eval_transform(recipe), t.seed)
    train_sampler = KeyedSampler(len(train_set), 0, t.seed, ctx.rank, ctx.world, shuffle=True)
    val_sampler = KeyedSampler(len(val_set), 0, t.seed, ctx.rank, ctx.world, shuffle=False)
    return _Loaders(
        train=loader(train_set, train_sampler, t.batch_size, workers, opts.strict_data, pin,
                     drop_last=True),
        val=loader(val_set, val_sampler, recipe.eval.batch_size, min(workers, 2),
                   opts.strict_data, pin, drop_last=False),
        sampler=train_sampler, per_epoch=steps_per_epoch(len(train_set), t.batch_size, ctx.world),
        workers=workers,
        finish=(lambda batch: finish_on_device(batch, transform, device, opts.strict_data))
        if on_device else (lambda batch: finish_photometric(batch, transform, device))
        if photometric == "device" else None)


def _build_model(opts: TrainOptions, recipe: Recipe, ckpt: dict[str, Any] | None,
                 device: torch.device, log: Callable[[str], None]) -> GoogLeNet:
    """The model on ``device``: freshly initialised, from ``--weights``, or the resumed run's."""
    model: GoogLeNet = build_model(recipe)
    if opts.weights is not None and ckpt is None:
        from .artifact import resolve_artifact

        report = load_weights(model, resolve_artifact(opts.weights),
                              reset_head=not opts.strict_head)
        log(f"weights: {report.loaded} tensors from {opts.weights}")
        for note in report.notes():
            log(f"weights: {note}")
    memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
    return model


def _choose_precision(opts: TrainOptions, recipe: Recipe, model: GoogLeNet, device: torch.device,
                      ctx: dist_utils.Context, ckpt: dict[str, Any] | None) -> PrecisionChoice:
    """``--precision`` as given; ``auto`` measured on this machine (rank 0 measures, every rank
    follows), except that a resumed run keeps the precision it was saved in."""
    if opts.precision == "auto" and ckpt is not None:
        saved = (ckpt.get("meta") or {}).get("precision")
        if saved in candidates(device):
            return PrecisionChoice(saved, "resume")
    t = recipe.train
    key = probe_key(device, "train", recipe.name, t.batch_size, recipe.data.input_size)
    choice = None
    if ctx.is_main:
        choice = choose_precision(opts.precision, device, key=key, probe=lambda p: _probe_train(
            model, recipe, device, p, opts.channels_last))
    return ctx.broadcast_object(choice) if ctx.active else choice


def _probe_train(model: GoogLeNet, recipe: Recipe, device: torch.device, precision: str,
                 channels_last: bool) -> float:
    """Training images/s of a throwaway copy of ``model`` in ``precision``: forward, backward
    and the optimizer step at the recipe's batch and input size. The run's RNGs are untouched."""
    import copy

    from .data import Batch

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        trainer = Trainer(copy.deepcopy(model), recipe, device, precision, ema=False,
                          channels_last=channels_last)
        b, s = recipe.train.batch_size, recipe.data.input_size
        batch = Batch(torch.rand(b, recipe.model.in_channels, s, s),
                      torch.randint(0, recipe.model.num_classes, (b,)), [])
        return time_rate(lambda: trainer.step(batch), b, device)


def _restore(trainer: Trainer, ckpt: dict[str, Any], resume_path: Path,
             ctx: dist_utils.Context, log: Callable[[str], None]) -> TrainState:
    """The resumed run's state, with the trainer, the Polyak copy and the RNGs put back."""
    try:
        state = TrainState.from_dict(ckpt["train_state"])
    except InceptionError as exc:
        raise InceptionError(f"{resume_path}: {exc}") from None
    if state.world_size != ctx.world and state.step_in_epoch:
        raise InceptionError(f"{resume_path}: saved mid-epoch by {state.world_size} "
                             f"process(es); resume it with the same number ({ctx.world} now)")
    if trainer.ema is not None and ckpt.get("ema_state_dict") is not None:
        trainer.ema.module.load_state_dict(ckpt["ema_state_dict"])
    trainer.load_state_dict(state.to_dict(), state.epoch, state.step_in_epoch)
    set_rng_state(state.rng)
    log(f"resuming {resume_path} at epoch {state.epoch + 1}, step {state.step_in_epoch} "
        f"(global step {state.global_step})")
    return state


def _same_start(ctx: dist_utils.Context, state: TrainState) -> None:
    """Every process starts where rank 0 does: a machine that cannot see the run's last.pt
    would otherwise train on from step 0 beside the others."""
    if not ctx.active:
        return
    first = ctx.broadcast_object(state.global_step)
    if not ctx.all_true(first == state.global_step):
        who = (f"rank {ctx.rank} starts at step {state.global_step}, rank 0 at step {first}"
               if first != state.global_step else
               f"another rank does not start at step {first} as rank 0 does")
        raise InceptionError(f"{who}: every machine must see the same run folder, with its "
                             f"last.pt (a shared file system)")


def _tensorboard(opts: TrainOptions, ctx: dist_utils.Context, out: Path) -> Any:
    if not (opts.tensorboard and ctx.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InceptionError("--tensorboard: the tensorboard package is not installed "
                             "(pip install tensorboard)") from None
    return SummaryWriter(str(out / "tensorboard"))


def _announce(run: _Run, model: GoogLeNet, splits: Any, loaders: _Loaders,
              resumed: bool) -> None:
    """Create the run folder, write its recipe and say what is about to happen (rank 0)."""
    if not run.ctx.is_main:
        return
    t, out = run.recipe.train, run.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(out, exc, "cannot create the run folder") from None
    if not resumed or run.opts.overrides:  # a resumed run's recipe.yaml changes only with epochs
        write_text_atomic(out / "recipe.yaml", run.recipe.to_yaml())
    run.log(f"run folder: {out}")
    run.log(f"training {run.recipe.name} ({model.num_params():,} params) on {splits.description}; "
            f"{run.device} {run.precision}, {run.ctx.world} process(es), batch {t.batch_size} x "
            f"{run.ctx.world}, {run.per_epoch} steps/epoch, {t.epochs} epochs, "
            f"{loaders.workers} loader workers"
            + ("; JPEGs decoded and augmented on the GPU" if run.opts.decode == "gpu" else
               "; colour steps on the GPU"
               if photometric_where(run.opts.decode, run.device) == "device" else ""))
    if run.opts.save_every is not None:
        run.log(f"saving {out / 'last.pt'} every {run.opts.save_every} and at each epoch's end")


# ------------------------------------------------------------------------------- host syncs

@dataclass
class _Epoch:
    """What one epoch's steps add up to, as read at the host syncs."""

    started: float
    seen: int = 0  # images trained on, all ranks
    bad_images: list[tuple[str, str]] = field(default_factory=list)
    lr: float | None = None  # the rate the epoch's last step ran at

    def images_per_s(self) -> float:
        return self.seen / max(1e-9, time.monotonic() - self.started)


class _Interval:
    """The steps since the last host sync: their losses and non-finite flags wait on the device.

    :meth:`sync` reads them, with the stop signals of every rank, in one all-reduce; the
    non-finite guard and the log see each step there, in order.
    """

    def __init__(self, log_every: int):
        self.log_every = max(1, log_every)
        self.losses: list[torch.Tensor] = []
        self.bad: list[torch.Tensor] = []
        self.steps: list[tuple[int, int, int, int, float]] = []  # global, epoch, in epoch, n, lr
        self.consecutive_bad = 0
        self.trainer: Any = None
        self.snapshot: list[torch.Tensor] = []

    def begin(self, trainer: Any) -> None:
        """The interval's first step is next: keep the buffers a skipped step could spoil."""
        self.trainer, self.snapshot = trainer, trainer.buffer_snapshot()

    def add(self, loss: torch.Tensor, bad: torch.Tensor, state: TrainState, images: int,
            lr: float) -> None:
        self.losses.append(loss.float())
        self.bad.append(bad)
        self.steps.append((state.global_step, state.epoch, state.step_in_epoch, images, lr))

    def due(self) -> bool:
        return len(self.steps) >= self.log_every

    def _reduce(self, run: _Run, signum: int | None) -> tuple[int, list[float], list[float]]:
        """(the signal any rank got or 0, per step the mean loss, per step the ranks not finite)."""
        device = self.losses[0].device if self.losses else torch.device("cpu")
        signals = torch.tensor([float(signum == signal.SIGINT), float(signum == signal.SIGTERM)],
                               dtype=torch.float64, device=device)
        parts = [signals]
        if self.steps:
            parts += [torch.stack(self.losses).double(), torch.stack(self.bad).double()]
        values = run.ctx.all_reduce_sum(torch.cat(parts)).tolist()
        k = len(self.steps)
        sig = signal.SIGTERM if values[1] else signal.SIGINT if values[0] else 0
        return int(sig), [v / run.ctx.world for v in values[2:2 + k]], values[2 + k:]

    def sync(self, run: _Run, state: TrainState, epoch: _Epoch, signum: int | None,
             progress: Progress) -> int:
        """Account the pending steps; return the signal any rank got (0: none).

        Raises CheckFailed, without saving, when the loss was not finite for
        ``--max-nonfinite`` steps in a row.
        """
        sig, losses, bad = self._reduce(run, signum)
        last_loss = None
        for (step, ep, in_epoch, images, lr), loss, b in zip(self.steps, losses, bad):
            if b:
                state.skipped_nonfinite += 1
                self.consecutive_bad += 1
                run.log(f"non-finite loss at step {step} (epoch {ep + 1}, step {in_epoch}): "
                        f"step skipped")
                if self.consecutive_bad >= run.opts.max_nonfinite:
                    progress.stop()
                    raise _nonfinite_error(run, self.consecutive_bad, step, ep, in_epoch)
                continue
            self.consecutive_bad = 0
            epoch.seen += images * run.ctx.world
            state.epoch_loss_sum += loss
            state.epoch_loss_steps += 1
            last_loss = loss
            if run.writer is not None:
                run.writer.add_scalar("train/loss", loss, step)
                run.writer.add_scalar("train/lr", lr, step)
        if any(bad) and self.trainer is not None:
            restored = self.trainer.repair_buffers(self.snapshot)
            if restored:
                run.log(f"restored {restored} batch-norm running statistics that the skipped "
                        f"step(s) left not finite (as they were {len(self.steps)} steps before)")
        if last_loss is not None:
            progress.update(state.step_in_epoch, last_loss, self.steps[-1][4],
                            epoch.images_per_s())
        self.losses, self.bad, self.steps = [], [], []
        return sig


def _nonfinite_error(run: _Run, count: int, step: int, epoch: int, in_epoch: int) -> CheckFailed:
    last = run.out / "last.pt"
    return CheckFailed(f"loss not finite for {count} steps in a row, the last at step {step} "
                       f"(epoch {epoch + 1}, step {in_epoch}); stopped without saving"
                       + (f"; the last good checkpoint {last} is intact" if last.exists()
                          else "") + " (lower train.lr?)")


# ---------------------------------------------------------------------------------- the loop

def _die_at_step(ctx: dist_utils.Context) -> int | None:
    """Tests of elastic restarts: ``INCEPTIONCTL_TEST_SIGKILL_AT=RANK:STEP`` makes that rank
    SIGKILL itself after that global step, on torchrun's first attempt only."""
    spec = os.environ.get("INCEPTIONCTL_TEST_SIGKILL_AT")
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    rank, step = (int(v) for v in spec.split(":"))
    return step if rank == ctx.rank else None


def _train_epoch(run: _Run, trainer: Trainer, state: TrainState, loaders: _Loaders,
                 interval: _Interval, stop: StopFlag, progress: Progress, clock: _SaveClock
                 ) -> tuple[str | None, _Epoch]:
    """Train to the end of the epoch, a signal or --max-steps; return (why it stopped, totals).

    ``--save-every`` writes ``last.pt`` between steps, right after a host sync, so it holds the
    same state as a stop there would (position, running loss, RNGs).
    """
    t, max_steps = run.recipe.train, run.opts.max_steps
    die_at = _die_at_step(run.ctx)
    loaders.sampler.epoch, loaders.sampler.skip = state.epoch, state.step_in_epoch * t.batch_size
    trainer.model.train()
    progress.start(state.epoch, t.epochs, run.per_epoch, state.step_in_epoch)
    epoch, stop_reason = _Epoch(time.monotonic()), None
    for batch in loaders.train:
        if loaders.finish is not None:
            batch = loaders.finish(batch)
        epoch.bad_images += batch.bad
        if batch.images.numel() == 0:
            state.step_in_epoch += 1
            continue
        epoch.lr = trainer.lr  # the rate this step runs at (the scheduler moves on after it)
        if not interval.steps:  # what a skipped step of this interval would have to undo
            interval.begin(trainer)
        loss, bad = trainer.step(batch)
        state.step_in_epoch += 1
        state.global_step += 1
        interval.add(loss, bad, state, len(batch.labels), epoch.lr)
        at_max = max_steps is not None and state.global_step >= max_steps
        at_save = clock.at_step(state.global_step)
        # alone, a signal needs no one's agreement: act on it after this step
        if interval.due() or at_max or at_save or (run.ctx.world == 1 and stop.signum):
            signum = interval.sync(run, state, epoch, stop.signum, progress)
            if signum:
                stop.signum, stop_reason = signum, "signal"
                break
        if at_max:
            stop_reason = "max_steps"
            break
        # the epoch's end saves anyway; elsewhere a save needs the steps synced just now
        if state.step_in_epoch < run.per_epoch and not interval.steps \
                and (at_save or clock.on_time()):
            _save(run, "last", trainer, state)
            clock.saved()
        if state.global_step == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
    if interval.steps:  # the epoch's last steps
        signum = interval.sync(run, state, epoch, stop.signum, progress)
        if signum and stop_reason is None:
            stop.signum, stop_reason = signum, "signal"
    progress.stop()
    return stop_reason, epoch


def _report_bad_images(run: _Run, epoch: int, bad: list[tuple[str, str]]) -> int:
    """Say which images of the epoch could not be read; return how many, over all ranks."""
    total = int(run.ctx.all_reduce_sum(torch.tensor([float(len(bad))]))[0].item())
    if total and run.ctx.is_main:
        shown = "; ".join(f"{p} ({r})" for p, r in bad[:3])
        run.log(f"epoch {epoch + 1}: skipped {total} unreadable image(s): {shown}"
                + (" ..." if len(bad) > 3 else ""))
    return total


def _end_of_epoch(run: _Run, trainer: Trainer, state: TrainState, epoch: _Epoch,
                  val: torch.utils.data.DataLoader) -> None:
    """Validate, record the epoch in metrics.jsonl, and save ``best`` (if it is) and ``last``."""
    t = run.recipe.train
    # fp32, so the accuracy recorded (and `best`) is what eval and fp32 exports reproduce; on
    # every rank with the weights rank 0 saves
    run.ctx.broadcast_buffers(trainer.eval_model)
    metrics = validate(trainer.eval_model, val, run.device, "fp32", run.opts.channels_last,
                       run.ctx)
    seconds = time.monotonic() - epoch.started
    record = {"epoch": state.epoch + 1, "step": state.global_step,
              "train_loss": state.epoch_loss_sum / max(1, state.epoch_loss_steps),
              "val_top1": metrics["top1"],
              "val_top5": metrics["top5"], "val_loss": metrics["loss"],
              "lr": epoch.lr if epoch.lr is not None else trainer.last_step_lr,
              "img_per_s": epoch.seen / max(1e-9, seconds), "seconds": seconds,
              "weights": "ema" if trainer.ema is not None else "model",
              "val_unreadable": metrics["bad"]}
    if metrics["bad"] and run.ctx.is_main:
        run.log(f"epoch {state.epoch + 1}: validation skipped {metrics['bad']} unreadable "
                f"image(s); val_top1 counts the {metrics['images']} it read")
    state.history.append(record)
    state.epoch += 1
    state.step_in_epoch = 0
    state.epoch_loss_sum, state.epoch_loss_steps = 0.0, 0
    improved = metrics["top1"] > state.best_top1
    if improved:
        state.best_top1, state.best_epoch = metrics["top1"], state.epoch
    if run.ctx.is_main:
        run.log(f"epoch {state.epoch}/{t.epochs}: train loss {record['train_loss']:.4f}  val "
                f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
                f"{record['img_per_s']:,.0f} img/s  {record['seconds']:.1f}s"
                + ("  (best)" if improved else ""))
        if run.writer is not None:
            run.writer.add_scalar("val/top1", metrics["top1"], state.global_step)
            run.writer.add_scalar("val/top5", metrics["top5"], state.global_step)
        write_text_atomic(run.out / "metrics.jsonl",
                          "".join(json.dumps(strict_json(r), allow_nan=False) + "\n"
                                  for r in state.history))
        if improved:
            _save(run, "best", trainer, state)
    _save(run, "last", trainer, state)


def _save(run: _Run, kind: str, trainer: Trainer, state: TrainState) -> Path:
    """Write ``best.pt`` (weights) or ``last.pt`` (weights and the TrainState) on rank 0."""
    path = run.out / f"{kind}.pt"
    if not run.ctx.is_main:
        return path
    meta = {"epoch": state.epoch, "global_step": state.global_step, "data": run.opts.data,
            "data_folder": _data_folder(run.opts.data), "val_split": run.opts.val_split,
            "precision": run.precision, "precision_choice": run.precision_choice,
            "data_listing": run.listing, "history": state.history[-1:] if state.history else []}
    train_state = None
    if kind == "last":
        train_state = dataclasses.replace(state, **trainer.state_dict(), rng=rng_state(),
                                          world_size=run.ctx.world).to_dict()
    save_checkpoint(path, trainer.model, run.recipe,
                    ema_state_dict=trainer.ema.state_dict() if trainer.ema is not None else None,
                    meta=meta, train_state=train_state)
    return path


def _data_folder(data: str | None) -> str | None:
    """``--data`` as the absolute folder it names (None for ``digits``, ``synthetic``, or a
    path that is not a folder here)."""
    if data is None or data in ("digits", "synthetic") or not Path(data).is_dir():
        return None
    return str(Path(data).resolve())


def resume_command(out: Path, data: str, world: int, val_split: float = 0.0) -> str:
    """The command that resumes the run in ``out``: the same data and split, and mid-epoch the
    same number of processes (a resume checks them)."""
    import shlex

    extra = [*(["--data", data] if data != TrainOptions.data else []),
             *(["--val-split", f"{val_split:g}"] if val_split else []),
             *(["--nproc", str(world)] if world > 1 else [])]
    return f"inceptionctl train --resume {shlex.join([str(out), *extra])}"


def _summary(run: _Run, state: TrainState, stop_reason: str | None, signum: int | None,
             seconds: float, skipped_images: int, steps_now: int | None = None) -> TrainResult:
    """The run's result and its closing line; a signal ends it as Interrupted (130 / 143)."""
    out, history = run.out, state.history
    if stop_reason == "signal":
        code = 130 if signum == signal.SIGINT else 143
        again = resume_command(out, run.opts.data, run.ctx.world, run.opts.val_split)
        raise Interrupted(f"interrupted at epoch {state.epoch + 1}, step {state.step_in_epoch}: "
                          f"saved {out / 'last.pt'}; resume with: {again}", code)
    last = history[-1] if history else {"val_top1": None, "val_top5": None}
    result = TrainResult(run=str(out), epochs=state.epoch,
                         best_top1=state.best_top1 if history else None,
                         best_epoch=state.best_epoch if history else None,
                         last_top1=last["val_top1"], last_top5=last["val_top5"], seconds=seconds,
                         steps=state.global_step, new_steps=steps_now,
                         skipped_nonfinite=state.skipped_nonfinite,
                         skipped_images=skipped_images, history=history,
                         precision=run.precision, precision_choice=run.precision_choice)
    if run.ctx.is_main:
        done = "stopped at --max-steps" if stop_reason == "max_steps" else "done"
        best = (f"best val top-1 {state.best_top1:.2f}% (epoch {state.best_epoch})" if history
                else "no validation yet (stopped inside the first epoch)")
        now = state.global_step if steps_now is None else steps_now
        steps = (f"{now} steps in {seconds:.1f}s" if now == state.global_step else
                 f"{now} steps in {seconds:.1f}s ({state.global_step} in all)")
        run.log(f"{done}: {state.epoch} epoch(s), {steps}; {best}; run folder {out}")
    return result


def _setup(opts: TrainOptions, ctx: dist_utils.Context
           ) -> tuple[_Run, Trainer, TrainState, _Loaders]:
    """Everything the loop needs: the run's facts, the trainer, its state and the loaders."""
    log = opts.log if ctx.is_main else (lambda msg: None)
    recipe, ckpt, resume_path = _open_resume(opts, log)
    device = resolve_device(opts.device, ctx.local_rank)
    resolve_precision(opts.precision, device)  # a wrong --precision fails before any work
    _check_decode(opts.decode, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    _seed_everything(recipe.train.seed)
    out = resume_path.parent if resume_path is not None else _new_run_folder(opts, recipe)
    if resume_path is not None and not os.access(out, os.W_OK):  # said now, not after an epoch
        raise InceptionError(f"--resume {out}: cannot write in the run folder (read-only)")
    lists = FileLists(out)  # the data folders' listings, kept in the run folder
    splits = open_data(opts.data, recipe, opts.val_split, opts.synthetic_count, lists)
    listing = {"train": listing_digest(splits.train), "val": listing_digest(splits.val)}
    if ckpt is not None and resume_path is not None:
        _check_same_images(resume_path.parent, opts.data, ckpt.get("meta", {}), listing)
    recipe = _follow_classes(recipe, splits.classes, opts.data, fixed=ckpt is not None,
                             log=log)
    if resume_path is None:
        _check_recipe_file(out, recipe)
    t = recipe.train
    if len(splits.train) < t.batch_size * ctx.world:
        raise InceptionError(f"{opts.data}: {len(splits.train)} training images, fewer than one "
                             f"batch ({t.batch_size} x {ctx.world} processes): lower it with "
                             f"--set train.batch_size=N")
    if ctx.note is not None:
        log(ctx.note)
    if ctx.active:  # every process says where it stands, on every machine
        opts.log(f"rank {ctx.rank} of {ctx.world} (local rank {ctx.local_rank} on "
                 f"{socket.gethostname()}); run folder {out}")
    loaders = _loaders(opts, recipe, splits, ctx, device)
    model = _build_model(opts, recipe, ckpt, device, log)
    choice = _choose_precision(opts, recipe, model, device, ctx, ckpt)
    precision = choice.precision
    if choice.automatic:
        log(choice.describe())
    trainer = Trainer(model, recipe, device, precision, steps_per_epoch=loaders.per_epoch,
                      world_size=ctx.world, compile=opts.compile,
                      channels_last=opts.channels_last)
    state = (_restore(trainer, ckpt, resume_path, ctx, log)
             if ckpt is not None and resume_path is not None else TrainState(world_size=ctx.world))
    _same_start(ctx, state)
    run = _Run(opts, ctx, recipe, out, device, precision, loaders.per_epoch, log,
               writer=_tensorboard(opts, ctx, out), precision_choice=choice.to_json(),
               listing=listing)
    _announce(run, model, splits, loaders, resumed=ckpt is not None)
    if ctx.is_main:
        lists.save()
    return run, trainer, state, loaders


def _check_same_images(run: Path, data: str, meta: dict[str, Any],
                       listing: dict[str, Any]) -> None:
    """A resumed run trains and validates on the images it started with: its --val-split and
    its place in the epoch follow from the list. Added, removed or renamed files (the listing is
    read again when a class folder changed) are one line, not a quietly different run."""
    saved = meta.get("data_listing")
    if not saved or saved == listing:  # runs saved before the listing was kept: not checked
        return
    def count(digest: dict[str, Any] | None) -> str:
        return "-" if not digest else f"{digest['images']:,}"
    pairs = [(count(saved.get(side)), count(listing.get(side))) for side in ("train", "val")]
    sides = ", ".join(f"{side} {a} -> {b}" for side, (a, b) in zip(("train", "val"), pairs))
    same = "; as many, so files renamed or replaced" if all(a == b for a, b in pairs) else ""
    raise InceptionError(f"--resume {run}: the images in {data} changed since the run started "
                         f"({sides} images{same}): a resumed run needs the images it started "
                         f"with, as its validation split and its place in the epoch follow from "
                         f"them; put them back, or start a new run")


def _check_decode(decode: str, device: torch.device) -> None:
    if decode not in ("cpu", "gpu"):
        raise InceptionError(f"--decode: expected cpu or gpu, got {decode!r}")
    if decode == "gpu" and device.type != "cuda":
        where = ("there is no CUDA device here" if not torch.cuda.is_available()
                 else f"this run is on {device}")
        raise InceptionError(f"--decode gpu: JPEGs are decoded on a CUDA device, and {where}; "
                             f"use --decode cpu")


def _train(opts: TrainOptions, ctx: dist_utils.Context) -> TrainResult:
    run, trainer, state, loaders = _setup(opts, ctx)
    t, max_steps = run.recipe.train, opts.max_steps
    progress = Progress(ctx.is_main, sys.stderr.isatty() if opts.progress is None else opts.progress,
                        opts.log)
    interval = _Interval(opts.log_every)
    started, skipped_images, first_step = time.monotonic(), 0, state.global_step
    stop_reason = "max_steps" if max_steps is not None and state.global_step >= max_steps else None
    clock = _SaveClock(opts.save_every)
    try:
        with StopFlag() as stop:
            while state.epoch < t.epochs and stop_reason is None:
                stop_reason, epoch = _train_epoch(run, trainer, state, loaders, interval, stop,
                                                  progress, clock)
                bad = _report_bad_images(run, state.epoch, epoch.bad_images)
                skipped_images += bad
                if bad and epoch.seen == 0 and stop_reason is None:
                    raise DataError(f"{opts.data}: none of the training images could be read in "
                                    f"epoch {state.epoch + 1} ({bad} unreadable; the first: "
                                    f"{epoch.bad_images[0][0] if epoch.bad_images else '?'})")
                if stop_reason is not None and state.step_in_epoch < run.per_epoch:
                    break  # mid-epoch stop: save the position, no validation
                _end_of_epoch(run, trainer, state, epoch, loaders.val)
                clock.saved()
            if stop_reason is not None and state.step_in_epoch:
                _save(run, "last", trainer, state)
            ctx.barrier()
    finally:
        loaders.close()
    if run.writer is not None:
        run.writer.close()
    return _summary(run, state, stop_reason, stop.signum, time.monotonic() - started,
                    skipped_images, state.global_step - first_step)


# ----------------------------------------------------------------------------------- rendering

def render(result: TrainResult) -> str:
    """The one-line summary ``train`` prints: run folder, best top-1 and its epoch, time."""
    best = (f"best top-1 {result.best_top1:.2f}% (epoch {result.best_epoch})"
            if result.best_top1 is not None else "no validation yet")
    return f"run folder: {result.run}  {best}  {result.epochs} epochs  {result.seconds:.1f}s"
