"""``inceptionctl train``: the paper's training loop, on one device or many (torchrun / DDP).

loss = main + aux.loss_weight * sum(aux heads); SGD with momentum; a per-step learning-rate
schedule (the paper's 4% every 8 epochs, or cosine / poly, with warm-up); a Polyak (EMA) copy of
the weights that validation, ``best`` and export use. Checkpoints carry everything needed to
continue bit-exactly: weights, EMA, optimizer, schedule, grad scaler, epoch/step, the position
in the data order and the RNG states.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from . import distributed as dist_utils
from .checkpoint import checkpoint_recipe, load_weights, read_checkpoint, \
    save_checkpoint
from .data import (KeyedSampler, Transformed, default_workers, eval_transform, loader,
                   open_data, steps_per_epoch, train_transform)
from .errors import CheckFailed, InceptionError
from .files import write_text_atomic
from .model import GoogLeNet, TrainStep, build_model
from .recipe import Recipe, recipe_from_data  # noqa: F401
from .runtime import autocast, resolve_device, resolve_precision


class Interrupted(InceptionError):
    """SIGINT / SIGTERM: the run saved its state and stops with 130 / 143."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainOptions:
    recipe: Recipe
    overrides: list[str] = field(default_factory=list)  # re-applied to a resumed run's recipe
    data: str = "digits"
    out: Path | None = None
    runs_dir: Path = Path("runs")
    weights: Path | None = None
    reset_head: bool = False
    resume: str | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    channels_last: bool = True
    workers: int | None = None
    val_split: float = 0.0
    strict_data: bool = False
    tensorboard: bool = False
    max_nonfinite: int = 5
    max_steps: int | None = None
    synthetic_count: int = 512
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))
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

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- learning rate

class Schedule:
    """Learning-rate factor per optimizer step (a LambdaLR lambda; plain attributes only)."""

    def __init__(self, recipe: Recipe, steps_per_epoch: int):
        t = recipe.train
        self.kind, self.steps_per_epoch = t.schedule, max(1, steps_per_epoch)
        self.total = max(1, t.epochs * self.steps_per_epoch)
        self.warmup = int(round(t.warmup_epochs * self.steps_per_epoch))
        self.step_epochs, self.gamma, self.power = t.step_epochs, t.gamma, t.poly_power

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "step":  # the paper: x gamma every step_epochs epochs
            return self.gamma ** ((step // self.steps_per_epoch) // self.step_epochs)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return (1.0 - progress) ** self.power


# ------------------------------------------------------------------------------ averaging

def ema_update(decay: float) -> Callable[..., None]:
    """Polyak / EMA averaging for ``AveragedModel``, with the usual warm-up of the decay.

    After ``n`` updates the decay is ``min(decay, (1 + n) / (10 + n))``, so the average does not
    drag the random initialisation along for the first thousands of steps of a short run.
    """

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor],
               n_averaged: torch.Tensor) -> None:
        n = float(n_averaged.item())
        d = min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        else:  # integer buffers (num_batches_tracked): follow the model
            for e, p in zip(ema_params, params):
                e.copy_(p)

    return update


# ------------------------------------------------------------------------------- precision

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
        return out
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = opts.runs_dir / f"{recipe.name}-{stamp}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = Path(f"{base}-{n}")
    return out


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

    def update(self, step: int, loss: float, lr: float, ips: float) -> None:
        if not self.enabled:
            return
        info = f"loss {loss:.4f}  lr {lr:.4g}  {ips:,.0f} img/s"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif step == self.total or time.monotonic() - self._last_line >= 10.0 or step == 1:
            left = (self.total - step) * (time.monotonic() - self._started) / max(1, step)
            self.log(f"epoch {self.epoch + 1}/{self.epochs} step {step}/{self.total}  {info}"
                     f"  eta {left:.0f}s")
            self._last_line = time.monotonic()

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

def _check_classes(recipe: Recipe, classes: list[str], data: str) -> Recipe:
    """The data's classes must be the model's; folder data names them in the recipe."""
    if len(classes) != recipe.model.num_classes:
        also = " --set data.classes=null" if recipe.data.classes is not None else ""
        raise InceptionError(f"{data}: {len(classes)} classes, but the recipe's model has "
                             f"{recipe.model.num_classes} (use --set model.num_classes="
                             f"{len(classes)}{also}, with --reset-head when starting from "
                             f"--weights)")
    if recipe.data.classes is None:
        return recipe_from_data({**recipe.to_dict(), "data": {**recipe.to_dict()["data"],
                                                             "classes": list(classes)}},
                                source=recipe.source)
    if list(recipe.data.classes) != list(classes):
        raise InceptionError(f"{data}: class names differ from the recipe's data.classes "
                             f"(first data class '{classes[0]}', recipe '{recipe.data.classes[0]}')")
    return recipe


def train(opts: TrainOptions) -> TrainResult:
    """Train ``opts.recipe`` on ``opts.data``; return the run's summary (rank 0's view)."""
    ctx = dist_utils.init()
    try:
        return _train(opts, ctx)
    finally:
        ctx.shutdown()


def _train(opts: TrainOptions, ctx: dist_utils.Context) -> TrainResult:
    log = opts.log if ctx.is_main else (lambda msg: None)
    recipe = opts.recipe
    resume_path = _find_resume(opts, recipe.name)
    ckpt = None
    if resume_path is not None:
        ckpt = read_checkpoint(resume_path)
        if not ckpt.get("train_state"):
            raise InceptionError(f"{resume_path}: holds no training state (a 'best' checkpoint "
                                 f"or an export); resume from the run's last.pt")
        # The run's own recipe; only train.epochs may change (to extend a run).
        other = [o for o in opts.overrides if not o.split("=", 1)[0].strip() == "train.epochs"]
        if other:
            raise InceptionError(f"--resume {resume_path.parent}: a resumed run keeps its recipe; "
                                 f"only train.epochs can change (not {other[0]})")
        recipe = checkpoint_recipe(ckpt, str(resume_path), opts.overrides or None)
        saved_data = ckpt.get("meta", {}).get("data")
        if saved_data is not None and opts.data != saved_data:
            raise InceptionError(f"--resume {resume_path.parent}: the run trains on "
                                 f"'{saved_data}', not '{opts.data}' (pass --data {saved_data})")
        if opts.out is not None and Path(opts.out).resolve() != resume_path.parent.resolve():
            raise InceptionError(f"--resume {resume_path.parent}: the run continues in its own "
                                 f"folder, not --out {opts.out}")
    elif opts.resume == "auto":
        log("resume auto: no earlier run found, starting a new one")
    t = recipe.train

    device = resolve_device(opts.device, ctx.local_rank)
    precision = resolve_precision(opts.precision, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed)

    splits = open_data(opts.data, recipe, opts.val_split, opts.synthetic_count)
    recipe = _check_classes(recipe, splits.classes, opts.data)
    if len(splits.train) < t.batch_size * ctx.world:
        raise InceptionError(f"{opts.data}: {len(splits.train)} training images, fewer than one "
                             f"batch ({t.batch_size} x {ctx.world} processes)")

    out = resume_path.parent if resume_path is not None else _new_run_folder(opts, recipe)
    if opts.workers is not None and opts.workers < 0:
        raise InceptionError(f"--workers: expected 0 or more, got {opts.workers}")
    workers = default_workers() if opts.workers is None else opts.workers
    if ctx.world > 1 and opts.workers is None:
        workers = max(1, workers // ctx.world)
    pin = device.type == "cuda"

    train_set = Transformed(splits.train, train_transform(recipe), t.seed)
    val_set = Transformed(splits.val, eval_transform(recipe), t.seed)
    train_sampler = KeyedSampler(len(train_set), 0, t.seed, ctx.rank, ctx.world, shuffle=True)
    val_sampler = KeyedSampler(len(val_set), 0, t.seed, ctx.rank, ctx.world, shuffle=False)
    train_loader = loader(train_set, train_sampler, t.batch_size, workers, opts.strict_data,
                          pin, drop_last=True)
    val_loader = loader(val_set, val_sampler, recipe.eval.batch_size, min(workers, 2),
                        opts.strict_data, pin, drop_last=False)
    per_epoch = steps_per_epoch(len(train_set), t.batch_size, ctx.world)

    model: GoogLeNet = build_model(recipe)
    if opts.weights is not None and ckpt is None:
        from .backend import resolve_artifact

        report = load_weights(model, resolve_artifact(opts.weights), reset_head=opts.reset_head)
        log(f"weights: {report.loaded} tensors from {opts.weights}")
        for note in report.notes():
            log(f"weights: {note}")
    memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    ema = (AveragedModel(model, multi_avg_fn=ema_update(t.ema_decay), use_buffers=True)
           if t.ema_decay is not None else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                                nesterov=t.nesterov and t.momentum > 0,
                                weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(recipe, per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)

    epoch, step_in_epoch, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []
    best_top1, best_epoch, skipped_nonfinite = -1.0, -1, 0
    if ckpt is not None:
        state = ckpt["train_state"]
        if state.get("world_size", 1) != ctx.world and state["step_in_epoch"]:
            raise InceptionError(f"{resume_path}: saved mid-epoch by {state['world_size']} "
                                 f"process(es); resume it with the same number ({ctx.world} now)")
        model.load_state_dict(ckpt["state_dict"])
        if ema is not None and ckpt.get("ema_state_dict") is not None:
            ema.module.load_state_dict(ckpt["ema_state_dict"])
            ema.n_averaged.copy_(state["ema_n_averaged"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        history, best_top1, best_epoch = list(state["history"]), state["best_top1"], state["best_epoch"]
        skipped_nonfinite = state["skipped_nonfinite"]
        set_rng_state(state["rng"])
        log(f"resuming {resume_path} at epoch {epoch + 1}, step {step_in_epoch} "
            f"(global step {global_step})")

    step_module: nn.Module = TrainStep(model)
    if ctx.world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None)
    if opts.compile:
        step_module = torch.compile(step_module)
    eval_model = lambda: ema.module if ema is not None else model  # noqa: E731

    writer = None
    if opts.tensorboard and ctx.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise InceptionError("--tensorboard: the tensorboard package is not installed "
                                 "(pip install tensorboard)") from None
        writer = SummaryWriter(str(out / "tensorboard"))

    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is None or opts.overrides:  # a resumed run's recipe.yaml changes only with epochs
            write_text_atomic(out / "recipe.yaml", recipe.to_yaml())
        log(f"run folder: {out}")
        log(f"training {recipe.name} ({model.num_params():,} params) on {splits.description}; "
            f"{device} {precision}, {ctx.world} process(es), batch {t.batch_size} x {ctx.world}, "
            f"{per_epoch} steps/epoch, {t.epochs} epochs, {workers} loader workers")

    progress = Progress(ctx.is_main, sys.stderr.isatty() if opts.progress is None else opts.progress,
                        opts.log)
    stop_reason: str | None = None
    consecutive_bad = 0
    skipped_images = 0
    started = time.monotonic()

    def save(kind: str) -> Path:
        state = {
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(), "history": history,
            "best_top1": best_top1, "best_epoch": best_epoch,
            "skipped_nonfinite": skipped_nonfinite, "world_size": ctx.world,
            "ema_n_averaged": ema.n_averaged.detach().cpu() if ema is not None else None,
        }
        meta = {"epoch": epoch, "global_step": global_step, "data": opts.data,
                "precision": precision, "history": history[-1:] if history else []}
        path = out / f"{kind}.pt"
        if ctx.is_main:
            save_checkpoint(path, model, recipe,
                            ema_state_dict=ema.module.state_dict() if ema is not None else None,
                            meta=meta, train_state=state if kind == "last" else None)
        return path

    if opts.max_steps is not None and global_step >= opts.max_steps:
        stop_reason = "max_steps"
    with StopFlag() as stop:
        while epoch < t.epochs and stop_reason is None:
            train_sampler.epoch, train_sampler.skip = epoch, step_in_epoch * t.batch_size
            model.train()
            progress.start(epoch, t.epochs, per_epoch, step_in_epoch)
            epoch_start, seen, loss_sum, loss_n = time.monotonic(), 0, 0.0, 0
            epoch_bad: list[tuple[str, str]] = []
            for batch in train_loader:
                epoch_bad += batch.bad
                if batch.images.numel() == 0:
                    step_in_epoch += 1
                    continue
                x = batch.images.to(device, non_blocking=True, memory_format=memory_format)
                y = batch.labels.to(device, non_blocking=True)
                with autocast(device, precision):
                    logits, aux = step_module(x)
                    loss = criterion(logits, y)
                    for a in aux:
                        loss = loss + recipe.model.aux.loss_weight * criterion(a, y)
                finite = ctx.all_true(bool(torch.isfinite(loss.detach()).item()))
                if not finite:
                    optimizer.zero_grad(set_to_none=True)
                    skipped_nonfinite += 1
                    consecutive_bad += 1
                    log(f"non-finite loss at step {global_step + 1} (epoch {epoch + 1}, step "
                        f"{step_in_epoch + 1}): step skipped")
                    if consecutive_bad >= opts.max_nonfinite:
                        progress.stop()
                        last = out / "last.pt"
                        raise CheckFailed(
                            f"loss not finite for {consecutive_bad} steps in a row, the last at "
                            f"step {global_step + 1} (epoch {epoch + 1}, step {step_in_epoch + 1}); "
                            f"stopped without saving"
                            + (f"; the last good checkpoint {last} is intact" if last.exists()
                               else "") + " (lower train.lr?)")
                    step_in_epoch += 1
                    global_step += 1
                    scheduler.step()
                    continue
                consecutive_bad = 0
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                step_in_epoch += 1
                global_step += 1
                seen += len(y) * ctx.world
                loss_sum += loss.item()
                loss_n += 1
                ips = seen / max(1e-9, time.monotonic() - epoch_start)
                progress.update(step_in_epoch, loss.item(), scheduler.get_last_lr()[0], ips)
                if writer is not None:
                    writer.add_scalar("train/loss", loss.item(), global_step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], global_step)
                signum = ctx.any_value(stop.signum or 0)
                if signum:
                    stop_reason = "signal"
                    stop.signum = signum
                    break
                if opts.max_steps is not None and global_step >= opts.max_steps:
                    stop_reason = "max_steps"
                    break
            progress.stop()
            bad_total = ctx.all_reduce_sum(torch.tensor([float(len(epoch_bad))]))[0].item()
            skipped_images += int(bad_total)
            if bad_total and ctx.is_main:
                shown = "; ".join(f"{p} ({r})" for p, r in epoch_bad[:3])
                log(f"epoch {epoch + 1}: skipped {int(bad_total)} unreadable image(s): {shown}"
                    + (" ..." if len(epoch_bad) > 3 else ""))
            if stop_reason is not None and step_in_epoch < per_epoch:
                break  # mid-epoch stop: save the position, no validation
            # fp32, so the accuracy recorded (and `best`) is what eval and fp32 exports reproduce
            metrics = validate(eval_model(), val_loader, device, "fp32", opts.channels_last, ctx)
            record = {"epoch": epoch + 1, "step": global_step,
                      "train_loss": loss_sum / max(1, loss_n), "val_top1": metrics["top1"],
                      "val_top5": metrics["top5"], "val_loss": metrics["loss"],
                      "lr": scheduler.get_last_lr()[0],
                      "img_per_s": seen / max(1e-9, time.monotonic() - epoch_start),
                      "seconds": time.monotonic() - epoch_start,
                      "weights": "ema" if ema is not None else "model"}
            history.append(record)
            epoch += 1
            step_in_epoch = 0
            improved = metrics["top1"] > best_top1
            if improved:
                best_top1, best_epoch = metrics["top1"], epoch
            if ctx.is_main:
                log(f"epoch {epoch}/{t.epochs}: train loss {record['train_loss']:.4f}  val top-1 "
                    f"{metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
                    f"{record['img_per_s']:,.0f} img/s  {record['seconds']:.1f}s"
                    + ("  (best)" if improved else ""))
                if writer is not None:
                    writer.add_scalar("val/top1", metrics["top1"], global_step)
                    writer.add_scalar("val/top5", metrics["top5"], global_step)
                write_text_atomic(out / "metrics.jsonl",
                                  "".join(json.dumps(r) + "\n" for r in history))
                if improved:
                    save("best")
            save("last")
        if stop_reason is not None and step_in_epoch:
            save("last")
        ctx.barrier()

    if writer is not None:
        writer.close()
    seconds = time.monotonic() - started
    if stop_reason == "signal":
        code = 130 if stop.signum == signal.SIGINT else 143
        raise Interrupted(f"interrupted at epoch {epoch + 1}, step {step_in_epoch}: saved "
                          f"{out / 'last.pt'}; resume with: inceptionctl train --resume {out}",
                          code)
    last = history[-1] if history else {"val_top1": None, "val_top5": None}
    result = TrainResult(run=str(out), epochs=epoch,
                         best_top1=best_top1 if history else None,
                         best_epoch=best_epoch if history else None,
                         last_top1=last["val_top1"], last_top5=last["val_top5"], seconds=seconds,
                         steps=global_step, skipped_nonfinite=skipped_nonfinite,
                         skipped_images=skipped_images, history=history)
    if ctx.is_main:
        state = "stopped at --max-steps" if stop_reason == "max_steps" else "done"
        best = (f"best val top-1 {best_top1:.2f}% (epoch {best_epoch})" if history
                else "no validation yet (stopped inside the first epoch)")
        log(f"{state}: {epoch} epoch(s), {global_step} steps in {seconds:.1f}s; {best}; "
            f"run folder {out}")
    return result


# ----------------------------------------------------------------------------------- rendering

def render(result: TrainResult) -> str:
    """The one-line summary ``train`` prints: run folder, best top-1 and its epoch, time."""
    best = (f"best top-1 {result.best_top1:.2f}% (epoch {result.best_epoch})"
            if result.best_top1 is not None else "no validation yet")
    return f"run folder: {result.run}  {best}  {result.epochs} epochs  {result.seconds:.1f}s"
