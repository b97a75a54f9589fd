"""The PyTorch backend: our checkpoints (and foreign state dicts with a recipe), eager or compiled."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from inceptionctl.artifact import CHECKPOINT_SUFFIXES, Kind, class_names, preprocessing
from inceptionctl.backend import ArtifactInfo, Availability, Backend, Session
from inceptionctl.checkpoint import load_model
from inceptionctl.crops import normalize
from inceptionctl.errors import InceptionError, one_line
from inceptionctl.runtime import resolve_device


def _check_device_precision(precision: str, device: torch.device) -> None:
    """fp16 autocast is a CUDA precision: on a CPU, PyTorch runs it as a slow emulation that
    no deployment would choose (and ``predict`` / ``eval`` refuse)."""
    if precision == "fp16" and device.type == "cpu":
        raise InceptionError("torch backend: fp16 needs a CUDA device; on CPU use bf16 or fp32")


class TorchSession(Session):
    switchable = ("fp32", "bf16", "fp16")

    def __init__(self, path: Path, device: str, recipe: Any = None, precision: str = "fp32",
                 compile: bool = False, channels_last: bool = True, cuda_graphs: bool = True,
                 **_: Any):
        self.device_obj = resolve_device(device)
        if precision not in ("fp32", "bf16", "fp16"):
            raise InceptionError(f"torch backend: precision {precision} (expected fp32, bf16 "
                                 f"or fp16)")
        _check_device_precision(precision, self.device_obj)
        model, resolved, info = load_model(path, recipe=recipe)
        self.model = model.to(self.device_obj)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.precision = precision
        self.forward = torch.compile(self.model) if compile else self.model
        self._copy_stream: Any = None
        self._stats: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        # On CUDA each forward pass is replayed from a graph captured for its input: at eval's
        # batch sizes the eager pass is bound by the host launching some 200 kernels (and
        # autocast's casts), not by the GPU. torch.compile brings its own.
        self.graphs = (_Graphs(self.device_obj) if cuda_graphs and not compile
                       and self.device_obj.type == "cuda" else None)
        self.device = str(self.device_obj)
        self.info = ArtifactInfo(
            path=str(path), kind=(Kind.CHECKPOINT if "meta" in info else Kind.FOREIGN).value,
            recipe=resolved.to_dict(), classes=info.get("classes") or class_names(resolved),
            preprocessing=preprocessing(resolved), precision=precision,
            extra={"weights": "ema" if info.get("ema") else "model",
                   "meta": info.get("meta", {}), "recipe_used": "meta" not in info})

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        self.check_input(batch, None)
        return self._forward(batch.to(self.device_obj, non_blocking=True))

    @torch.inference_mode()
    def run_crops(self, crops: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
        if self.device_obj.type == "cpu" or crops.dtype != torch.uint8:
            return super().run_crops(crops, mean, std)
        return self.submit_crops(crops, mean, std)()  # uint8 over the bus, normalised there

    def submit_crops(self, crops: torch.Tensor, mean: Any, std: Any
                     ) -> Callable[[], torch.Tensor]:
        if self.device_obj.type == "cpu" or crops.dtype != torch.uint8:
            return super().submit_crops(crops, mean, std)
        # The copy runs on a side stream, so it overlaps the forward pass of the batch before;
        # the forward is queued behind it and its logits come back through pinned memory.
        # Nothing here waits for the GPU: the crops are staged in pinned memory (from pageable
        # memory the copy would hold this thread for its whole transfer) and mean and std are
        # sent once (a blocking copy of them would wait for the forward pass queued before).
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device_obj)
        if crops.device.type == "cpu" and not (crops.is_pinned() and crops.is_contiguous()):
            # PyTorch's pinned-memory cache reuses this block only once the copy below is done
            crops = torch.empty(crops.shape, dtype=crops.dtype, pin_memory=True).copy_(crops)
        mean, std = self._device_stats(mean, std)
        compute = torch.cuda.current_stream(self.device_obj)
        with torch.cuda.stream(self._copy_stream):
            sent = crops.to(self.device_obj, non_blocking=True)
        compute.wait_stream(self._copy_stream)
        sent.record_stream(compute)
        with torch.inference_mode():
            self.check_input(sent, None, dtype=torch.uint8)
            logits = self._forward_device(sent, (mean, std))
            host = torch.empty(logits.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(logits, non_blocking=True)
        done = torch.cuda.Event()
        done.record(compute)

        def result() -> torch.Tensor:
            done.synchronize()
            return host

        return result

    def _device_stats(self, mean: Any, std: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean`` and ``std`` as float32 tensors on the device, made once per value: the same
        values as a list, a float32 tensor or an array of any shape are one entry."""
        key = tuple(tuple(torch.as_tensor(v, dtype=torch.float32).reshape(-1).tolist())
                    for v in (mean, std))
        if key not in self._stats:
            self._stats[key] = tuple(torch.tensor(v, dtype=torch.float32, device=self.device_obj)
                                     for v in key)  # type: ignore[assignment]
        return self._stats[key]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_device(x).cpu()

    def _forward_device(self, x: torch.Tensor,
                        stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (float32, on the device) of ``x``: a float batch, or uint8 crops normalised
        by ``stats`` (mean and std on the device) first."""
        precision = self.precision

        def forward(x: torch.Tensor) -> torch.Tensor:
            if stats is not None:
                x = normalize(x, *stats)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if precision == "fp32":
                return self.forward(x).float()
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            # no cast cache: each weight is used once a pass, and a graph may not keep one
            with torch.autocast(self.device_obj.type, dtype=dtype, cache_enabled=False):
                return self.forward(x).float()

        if self.graphs is None:
            return forward(x)
        key = (tuple(x.shape), x.dtype, precision,
               None if stats is None else tuple(t.data_ptr() for t in stats))
        return self.graphs(key, x, forward)

    def release_graphs(self) -> None:
        """Drop the captured CUDA graphs and their memory: the next pass of each shape captures
        again. ``profile`` calls it before a row, so that the row's peak memory counts what the
        graph holds (a replay allocates nothing)."""
        if self.graphs is not None:
            self.graphs = _Graphs(self.device_obj, self.graphs.limit)

    def set_precision(self, precision: str) -> None:
        super().set_precision(precision)
        _check_device_precision(precision, self.device_obj)
        self.precision = precision

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self.forward = None
        self.graphs = None


class _Graphs:
    """Forward passes replayed from CUDA graphs (``torch.cuda.CUDAGraph``), one captured per
    key (input shape, dtype, precision, normalisation), at most ``limit`` of them; other inputs,
    and every input once a capture has failed, run eagerly. A replay reads its input from a
    static buffer and writes its output to another, so each call copies the input in and
    returns a copy of the output: what it returns is never overwritten by a later call. The
    graphs share one memory pool: their replays run one at a time, on the caller's stream, so
    one graph's temporaries are dead whenever another runs, and the session holds about one
    eager pass's memory, not one per batch size."""

    def __init__(self, device: torch.device, limit: int = 8):
        self.device, self.limit = device, limit
        self.captured: dict[tuple, tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self.failed: str | None = None  # why capturing failed, once it has
        self.pool: Any = None

    def __call__(self, key: tuple, x: torch.Tensor,
                 fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        entry = self.captured.get(key)
        if entry is None:
            if self.failed is not None or len(self.captured) >= self.limit:
                return fn(x)
            entry = self._capture(x, fn)
            if entry is None:
                return fn(x)
            self.captured[key] = entry
        graph, static_in, static_out = entry
        with torch.cuda.device(self.device):  # replay() runs on the current device's stream
            static_in.copy_(x)
            graph.replay()
            return static_out.clone()

    def _capture(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
                 ) -> tuple[Any, torch.Tensor, torch.Tensor] | None:
        """A graph of ``fn`` on a static copy of ``x``, or None (and :attr:`failed` says why)
        when ``fn`` cannot be captured."""
        with torch.cuda.device(self.device):  # the session's device, not the process's current
            static_in = torch.empty_like(x)
            static_in.copy_(x)
            # a few eager passes on a side stream first (cuDNN's algorithm choice, lazy setup),
            # as PyTorch's CUDA graph notes do; an error here is the input's or the memory's
            compute = torch.cuda.current_stream()
            side = torch.cuda.Stream()
            side.wait_stream(compute)
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn(static_in)
            compute.wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            try:
                # the outer context puts the caller's stream back even when ending a failed
                # capture raises before the inner one can
                with torch.cuda.stream(side), torch.cuda.graph(graph, pool=self.pool,
                                                               stream=side):
                    static_out = fn(static_in)
            except RuntimeError as e:  # an op that cannot be captured: eager from now on
                self.failed = one_line(e)
                torch.cuda.synchronize()
                return None
        return graph, static_in, static_out


class TorchBackend(Backend):
    name = "torch"
    package = "torch"
    install_hint = "pip install torch"
    suffixes = CHECKPOINT_SUFFIXES
    rank = 0
    precisions = ("fp32", "bf16", "fp16")  # autocast; times the checkpoint itself

    def availability(self) -> Availability:
        devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return Availability(True, "", torch.__version__, tuple(devices))

    def open(self, path: Path, device: str = "cpu", **options: Any) -> Session:
        return TorchSession(path, device, **options)
