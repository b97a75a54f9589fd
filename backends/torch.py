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
from inceptionctl.errors import InceptionError
from inceptionctl.runtime import resolve_device


class TorchSession(Session):
    switchable = ("fp32", "bf16", "fp16")

    def __init__(self, path: Path, device: str, recipe: Any = None, precision: str = "fp32",
                 compile: bool = False, channels_last: bool = True, **_: Any):
        self.device_obj = resolve_device(device)
        if precision not in ("fp32", "bf16", "fp16"):
            raise InceptionError(f"torch backend: precision {precision} (expected fp32, bf16 "
                                 f"or fp16)")
        model, resolved, info = load_model(path, recipe=recipe)
        self.model = model.to(self.device_obj)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.precision = precision
        self.forward = torch.compile(self.model) if compile else self.model
        self._copy_stream: Any = None
        self._stats: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
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
            x = normalize(sent, mean, std)
            self.check_input(x, None)
            logits = self._forward_device(x)
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

    def _forward_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":
            logits = self.forward(x)
        else:
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            with torch.autocast(self.device_obj.type, dtype=dtype):
                logits = self.forward(x)
        return logits.float()

    def set_precision(self, precision: str) -> None:
        super().set_precision(precision)
        self.precision = precision

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self.forward = None


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
