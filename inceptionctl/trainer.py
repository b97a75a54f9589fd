"""One training step as the paper trains: the loss, the optimizer (the paper's SGD, or AdamW or
RMSprop), the learning-rate schedule, the Polyak copy.

``train`` runs :class:`Trainer` over its data; ``profile --time --train`` and the benchmarks time
the same :meth:`Trainer.step`, so all three pay for the same work. A step never waits for the
host: its loss and its non-finite flag stay on the device until the caller reads them (``train``
does once per log interval), and a step whose gradients are not finite changes no weights there
and then, on the device.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from .model import GoogLeNet, TrainStep
from .recipe import Recipe
from .runtime import autocast


# ---------------------------------------------------------------------------------- the loss

def compute_loss(logits: Tensor, aux: list[Tensor], labels: Tensor, recipe: Recipe) -> Tensor:
    """The paper's training loss: CE(main) + ``model.aux.loss_weight`` x CE(each aux head).

    Every term uses the recipe's ``train.label_smoothing``.
    """
    smoothing = recipe.train.label_smoothing
    loss = nn.functional.cross_entropy(logits, labels, label_smoothing=smoothing)
    for a in aux:
        loss = loss + recipe.model.aux.loss_weight * nn.functional.cross_entropy(
            a, labels, label_smoothing=smoothing)
    return loss


# ------------------------------------------------------------------------------ learning rate

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


# ---------------------------------------------------------------------------------- averaging

def ema_decay_per_update(decay: float, world_size: int, batch_size: int,
                         ema_steps: int = 1) -> float:
    """The decay of one EMA update when ``world_size`` processes of ``batch_size`` images each
    step together and the average is updated every ``ema_steps`` steps.

    The recipe's ``train.ema_decay`` is per step of one process, i.e. per ``batch_size`` images.
    As in torchvision's reference (alpha scaled by ``world_size * batch_size * ema_steps /
    epochs``), the weight of each update, alpha = 1 - decay, grows with the images an update
    covers, so ``--nproc N`` averages over the same span of data as one process; alpha is capped
    at 1 (the copy then just follows the weights).
    """
    images = world_size * batch_size * ema_steps
    if images == batch_size:  # the recipe's own span: its decay, to the bit
        return decay
    return 1.0 - min(1.0, (1.0 - decay) * images / batch_size)


class Polyak:
    """The Polyak (EMA) copy of the weights that validation, ``best`` and export use.

    After ``n`` updates the decay is ``min(decay, (1 + n) / (10 + n))``, so the average does not
    drag the random initialisation along for the first thousands of steps of a short run; the
    first update copies the weights. ``n`` lives on the device, so an update never waits for the
    host, and an update with ``ok`` false (a skipped step) leaves the copy and ``n`` as they were.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model)
        self.decay = decay
        device = next(model.parameters()).device
        self.n_averaged = torch.zeros((), dtype=torch.long, device=device)

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    @torch.no_grad()
    def update(self, model: nn.Module, ok: Tensor) -> None:
        ema = [*self.module.parameters(), *self.module.buffers()]
        now = [t.detach() for t in (*model.parameters(), *model.buffers())]
        n = self.n_averaged.double()
        d = torch.clamp((1.0 + n) / (10.0 + n), max=self.decay)
        # weight 1 on the first update copies the weights; 0 on a skipped step keeps the copy
        w = torch.where(n == 0, 1.0, 1.0 - d) * ok
        floats = [i for i, e in enumerate(ema) if torch.is_floating_point(e)]
        if floats:
            weights = {e.dtype: w.to(e.dtype) for e in (ema[i] for i in floats)}
            torch._foreach_lerp_([ema[i] for i in floats], [now[i] for i in floats],
                                 [weights[ema[i].dtype] for i in floats])
        for e, p in zip(ema, now):
            if not torch.is_floating_point(e):  # num_batches_tracked: follows the model
                e.copy_(torch.where(ok, p, e))
        self.n_averaged += ok.long()


# -------------------------------------------------------------------------------- optimizers

OPTIMIZER_EPS = {"adamw": 1e-8, "rmsprop": 1.0}  # rmsprop: Inception-v2/v3's epsilon


def make_optimizer(params: Any, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """The recipe's ``train.optimizer`` with its hyper-parameters.

    ``sgd``: momentum (Nesterov when asked) and L2 weight decay, the paper's. ``adamw``: betas,
    eps and decoupled weight decay. ``rmsprop``: as the Inception-v2/v3 papers train, decay
    (``train.rmsprop_decay``) 0.9, eps 1.0 and momentum 0.9 by default. Their per-parameter
    state lives on the device (``capturable`` on CUDA), so skipping a step never waits for
    the host.

    SGD and AdamW are PyTorch's fused implementations on a CPU or a GPU (one kernel for every
    parameter, and a step that skips itself when handed ``found_inf``, as under GradScaler).
    SGD's momentum buffers start at zero rather than at the first gradient, which is the same
    first step (``buf = momentum * 0 + grad``, no dampening) and leaves nothing uninitialised
    when that step is skipped.
    """
    t = recipe.train
    fused = device.type in ("cpu", "cuda")
    if t.optimizer == "sgd":
        sgd = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum,
                              nesterov=t.nesterov and t.momentum > 0,
                              weight_decay=t.weight_decay, fused=fused)
        _momentum_from_zero(sgd)
        return sgd
    eps = t.eps if t.eps is not None else OPTIMIZER_EPS[t.optimizer]
    capturable = device.type == "cuda"
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, betas=(t.betas[0], t.betas[1]), eps=eps,
                                 weight_decay=t.weight_decay, capturable=capturable,
                                 fused=fused)
    return torch.optim.RMSprop(params, lr=t.lr, alpha=t.rmsprop_decay, eps=eps,
                               momentum=t.momentum, weight_decay=t.weight_decay,
                               capturable=capturable)


def _momentum_from_zero(optimizer: torch.optim.Optimizer) -> None:
    """SGD's momentum buffers that do not exist yet, made as zeros (see :func:`make_optimizer`)."""
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group["momentum"] > 0:
            for p in group["params"]:
                optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p))


# --------------------------------------------------------------------------------- the step

class Trainer:
    """The recipe's optimizer, schedule, grad scaler and Polyak copy around one model.

    :meth:`step` is one training step as ``train`` runs it; ``world_size`` > 1 wraps the forward
    pass in DDP (the process group must exist) and scales the EMA decay to the global batch.
    """

    def __init__(self, model: GoogLeNet, recipe: Recipe, device: torch.device, precision: str, *,
                 steps_per_epoch: int = 1, world_size: int = 1, ema: bool = True,
                 compile: bool = False, channels_last: bool = True):
        t = recipe.train
        self.model, self.recipe, self.device, self.precision = model, recipe, device, precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.ema = (Polyak(model, ema_decay_per_update(t.ema_decay, world_size, t.batch_size))
                    if ema and t.ema_decay is not None else None)
        self.optimizer = make_optimizer(model.parameters(), recipe, device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           Schedule(recipe, steps_per_epoch))
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        step_module: nn.Module = TrainStep(model)
        if world_size > 1:
            step_module = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[device.index] if device.type == "cuda" else None)
        if compile:
            step_module = torch.compile(step_module)
        self.step_module = step_module
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]

    @property
    def eval_model(self) -> nn.Module:
        """What validation and ``best`` measure: the Polyak copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        """The learning rate the next step runs at."""
        return self.scheduler.get_last_lr()[0]

    @property
    def last_step_lr(self) -> float:
        """The learning rate the last step ran at (the first step's before any), from the
        schedule's position."""
        s = self.scheduler
        return s.base_lrs[0] * s.lr_lambdas[0](max(0, s.last_epoch - 1))

    def step(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Train on ``batch`` (``.images``, ``.labels``); return (loss, not finite) on the device.

        A step whose loss or gradients are not finite changes no parameters, no optimizer state
        and no Polyak copy; the schedule advances all the same, as it counts steps.
        """
        x = batch.images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        y = batch.labels.to(self.device, non_blocking=True)
        with autocast(self.device, self.precision):
            logits, aux = self.step_module(x)
            loss = compute_loss(logits, aux, y, self.recipe)
        self.scaler.scale(loss).backward()
        bad = ~torch.isfinite(loss.detach())
        if self.scaler.is_enabled():  # fp16: the scaler skips overflowing steps itself
            self.scaler.unscale_(self.optimizer)
            ok = ~self._nonfinite_grads()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            found = self._nonfinite_grads()
            if getattr(self.optimizer, "_step_supports_amp_scaling", False):  # fused
                self.optimizer.found_inf, self.optimizer.grad_scale = found.float(), None
                try:
                    self.optimizer.step()
                finally:
                    del self.optimizer.found_inf, self.optimizer.grad_scale
            else:
                self._step_unless(found)
            bad = bad | found
            ok = ~found
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, ok)
        return loss.detach(), bad

    def _float_buffers(self) -> list[Tensor]:
        modules = [self.model] + ([self.ema.module] if self.ema is not None else [])
        return [b for m in modules for b in m.buffers() if torch.is_floating_point(b)]

    @torch.no_grad()
    def buffer_snapshot(self) -> list[Tensor]:
        """Copies of the model's and the Polyak copy's float buffers (batch norm's running
        statistics), for :meth:`repair_buffers` after steps that may not have been finite."""
        return [b.detach().clone() for b in self._float_buffers()]

    @torch.no_grad()
    def repair_buffers(self, snapshot: list[Tensor]) -> int:
        """Put back, from ``snapshot``, every float buffer that is no longer finite; return how
        many. A skipped step changes no parameter, but its forward pass has already run batch
        norm, whose running statistics then hold its inf or NaN (and the Polyak copy takes them
        in): the running statistics are the one thing :meth:`step` cannot undo on the device
        alone. ``train`` takes a snapshot at the start of each log interval and repairs when
        the interval had a skipped step."""
        restored = 0
        for buf, saved in zip(self._float_buffers(), snapshot):
            if not bool(torch.isfinite(buf).all()):
                buf.copy_(saved)
                restored += 1
        return restored

    def _nonfinite_grads(self) -> Tensor:
        """True (a 0-d tensor on the device) when any gradient holds an inf or a NaN.

        Under DDP the gradients are already averaged, so every process decides alike.
        """
        found = torch.zeros(1, device=self.device)
        grads = [p.grad for p in self._params if p.grad is not None]
        if grads:  # the check GradScaler uses, with a scale of exactly 1
            torch._amp_foreach_non_finite_check_and_unscale_(
                grads, found, torch.ones(1, device=self.device))
        return found[0] > 0

    @torch.no_grad()
    def _step_unless(self, found: Tensor) -> None:
        """``optimizer.step()``, undone on the device when ``found`` (non-finite gradients)."""
        state = self.optimizer.state
        before = [p.clone() for p in self._params]
        # every tensor of the optimizer's state (momentum, averages, step counts) goes back; one
        # the skipped step would create starts from zero: the same next step as none
        old_state = [{k: v.clone() for k, v in state.get(p, {}).items()
                      if isinstance(v, torch.Tensor)} for p in self._params]
        self.optimizer.step()
        for p, old, saved in zip(self._params, before, old_state):
            p.copy_(torch.where(found, old, p))
            for key, value in state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    prior = saved.get(key)
                    value.copy_(torch.where(found.to(value.device),
                                            prior if prior is not None else torch.zeros_like(value),
                                            value))

    @torch.no_grad()
    def _load_optimizer(self, saved: dict[str, Any]) -> None:
        """The optimizer's saved state, made fit for how this machine steps it.

        A run saved by the unfused optimizer, on another device or in the other memory format
        resumes all the same: each group keeps this optimizer's ``fused`` and ``capturable``
        (the saved ones would pick another code path), a state tensor shaped like its parameter
        takes the parameter's layout (the fused kernels need equal strides), a step count
        moves to the device where the fused or capturable step reads it, and SGD's momentum
        buffers that the run had not made yet start at zero, as in :func:`make_optimizer`.
        """
        flags = [{k: g.get(k) for k in ("fused", "capturable") if k in g}
                 for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(saved)
        for group, keep in zip(self.optimizer.param_groups, flags):
            group.update(keep)
            on_device = bool(group.get("fused") or group.get("capturable"))
            for p in group["params"]:
                st = self.optimizer.state[p]
                for key, value in st.items():
                    if not isinstance(value, Tensor):
                        continue
                    if value.shape == p.shape and value.stride() != p.stride():
                        st[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
                    elif key == "step" and on_device and value.device != p.device:
                        st[key] = value.to(p.device, torch.float32)
        _momentum_from_zero(self.optimizer)

    def state_dict(self) -> dict[str, Any]:
        """The optimizer, schedule, scaler and Polyak count: ``train_state`` keys of ``last.pt``."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema_n_averaged": (self.ema.n_averaged.detach().cpu()
                                   if self.ema is not None else None)}

    def load_state_dict(self, state: dict[str, Any], epoch: int | None = None,
                        step_in_epoch: int = 0) -> None:
        """Resume from :meth:`state_dict`'s ``state`` under this trainer's own schedule.

        The schedule is this run's (its epochs may have grown, and ``--nproc`` may have changed
        the steps per epoch at an epoch's end): the saved one gives only its position. Where
        the steps per epoch differ, the position is ``epoch`` x this run's steps per epoch +
        ``step_in_epoch``. The learning rate of the next step is this schedule's at that
        position (unchanged, to the bit, for a resume with the same settings).
        """
        self._load_optimizer(state["optimizer"])
        saved = dict(state["scheduler"])
        before = (saved.get("lr_lambdas") or [None])[0]
        # LambdaLR saves each lambda object's attributes (total steps, steps per epoch): never
        # put the old ones back
        saved["lr_lambdas"] = [None] * len(self.scheduler.lr_lambdas)
        self.scheduler.load_state_dict(saved)
        schedule = self.scheduler.lr_lambdas[0]
        per_epoch = before.get("steps_per_epoch") if isinstance(before, dict) else None
        if epoch is not None and per_epoch not in (None, schedule.steps_per_epoch):
            self.scheduler.last_epoch = epoch * schedule.steps_per_epoch + step_in_epoch
        for group, base, rate in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                     self.scheduler.lr_lambdas):
            group["lr"] = base * rate(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema_n_averaged") is not None:
            self.ema.n_averaged.copy_(state["ema_n_averaged"])
