"""One code path for one process and for many: a small context over torch.distributed.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is initialised
with NCCL when CUDA is available and gloo otherwise; alone, every collective is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False
    note: str | None = None  # something about the launch the user should know (rank 0 says it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def _all_reduce(self, t: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
        """Reduce a small CPU tensor over ranks, on the device the backend needs; back on CPU."""
        if not self.active:
            return t
        dev = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
        buf = t.to(dev).clone()
        dist.all_reduce(buf, op=op)
        return buf.cpu()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a small CPU tensor over ranks (returned on CPU)."""
        return self._all_reduce(t, dist.ReduceOp.SUM)

    def all_true(self, flag: bool) -> bool:
        """True only if every rank says True (so all ranks take the same branch)."""
        if not self.active:
            return flag
        return bool(self.all_reduce_sum(torch.tensor([0.0 if flag else 1.0]))[0].item() == 0)

    def any_value(self, value: int) -> int:
        """The largest value any rank holds (e.g. a signal number, 0 for none)."""
        if not self.active:
            return value
        return int(self._all_reduce(torch.tensor([float(value)]), dist.ReduceOp.MAX).item())

    def gather_objects(self, obj: object) -> list:
        """Every rank's ``obj`` on rank 0, in rank order (an empty list elsewhere)."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world if self.is_main else []
        dist.gather_object(obj, out if self.is_main else None, dst=0)
        return out

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (batch norm's running statistics) in ``module`` on every rank.

        DDP keeps the parameters equal on every rank, but a rank's running statistics follow
        its own shard between forward passes (and a Polyak copy averages them): before the
        ranks validate together, they take rank 0's, the ones rank 0 saves.
        """
        if not self.active:
            return
        for buf in module.buffers():
            dist.broadcast(buf, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def shutdown(self) -> None:
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


SHARED_STORE_NOTE = ("torchrun restarts across machines: set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
                     "for torchrun on every node, or a restarted group may read the previous "
                     "attempt's addresses and fail to connect")


def _attempt_store(timeout: datetime.timedelta) -> tuple[dist.Store | None, str | None]:
    """(a store of this restart attempt's own, or None for the default; a note for the user).

    torchrun shares its rendezvous store with the workers (``TORCHELASTIC_USE_AGENT_STORE``),
    and the process group's keys in it outlive a restart: a restarted process may read its
    peer's address from the attempt before and fail to connect. On one machine one agent
    restarts every process with the same ``TORCHELASTIC_RESTART_COUNT``, so the keys go under
    that attempt's prefix; across machines the counts can differ, so only a note is possible.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" \
            or int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) == 0:
        return None, None
    if env.get("GROUP_WORLD_SIZE", "1") != "1":
        return None, SHARED_STORE_NOTE
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"inceptionctl/attempt_{attempt}", store), None


def init(timeout_s: float = 600.0) -> Context:
    """Join the torchrun process group when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return Context(rank, world, local_rank, initialised_here=False)
    backend = "nccl" if torch.cuda.is_available() and os.environ.get(
        "INCEPTIONCTL_DIST_BACKEND", "") != "gloo" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=timeout_s)
    store, note = _attempt_store(timeout)
    if store is None:
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                                timeout=timeout)
    return Context(rank, world, local_rank, initialised_here=True, note=note)


# What a collective raises on a rank whose peer has died: gloo's closed or reset connection,
# NCCL's communicator aborted once a peer is gone.
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
              "communicator was aborted")


def peer_lost(exc: BaseException) -> str | None:
    """One line for an error a collective raised because another process of the group went
    away (the one that failed says why itself), or None: under ``torchrun``, a user error that
    one rank finds ends the others in gloo's or NCCL's error, which would read as a crash of
    their own. The collective's own words end the line, should the cause be elsewhere."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not any(s in str(exc) for s in _PEER_LOST):
        return None
    import re

    from .errors import one_line

    # gloo's "[.../pair.cc:561] Connection closed by peer [::1]:1. This is typically ...": the
    # first sentence, without the source location
    words = re.sub(r"^\[[^\]]*\.(?:cc|cpp|cu|h|hpp):\d+\]\s*", "", one_line(exc))
    words = words.split(". ")[0].rstrip(".")[:200]
    return (f"rank {os.environ.get('RANK', '?')}: lost the other processes of the group (one "
            f"that failed says why above): {words}")
