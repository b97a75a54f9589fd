"""GoogLeNet built from a recipe: stem, Inception modules, auxiliary heads, classifier.

The contract is the same in eager, scripted, traced and exported forms:

* ``model(x)`` returns the main logits ``[N, num_classes]``, in training and in eval mode.
  Aux heads never run here, so export and inference see logits only.
* ``model.forward_train(x)`` returns ``(logits, [aux_logits, ...])``, one aux tensor per head in
  network order; this is what training calls (wrapped by :class:`TrainStep` under DDP).

Submodule names follow torchvision (``conv1``, ``inception3a.branch2.1``, ``aux1.fc1``, ``fc``)
inside three containers (``stem``, ``blocks``, ``aux``), so foreign weights map key for key.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .geometry import apply_pool, stage_pool_name, trace_shapes
from .recipe import InceptionWidths, ModelSpec, PoolSpec, Recipe, recipe_from_data


def make_pool(spec: PoolSpec, ceil_mode: bool) -> nn.Module:
    """A pooling layer from its spec: fixed window, or adaptive when ``output_size`` is set."""
    if spec.output_size is not None:
        size = spec.output_size
        return nn.AdaptiveMaxPool2d(size) if spec.type == "max" else nn.AdaptiveAvgPool2d(size)
    assert spec.kernel is not None
    stride = spec.stride or spec.kernel
    if spec.type == "max":
        return nn.MaxPool2d(spec.kernel, stride, spec.padding, ceil_mode=ceil_mode)
    return nn.AvgPool2d(spec.kernel, stride, spec.padding)


class LocalResponseNorm(nn.Module):
    """Cross-channel LRN with ``nn.LocalResponseNorm``'s (and Caffe's) exact semantics.

    ``x / (k + alpha / size * sum of x^2 over a window of size channels) ^ beta``, with the
    window clipped at the channel edges. Torch's own module sums the window with ``avg_pool3d``
    over a padded copy; ours has its gradient written out and runs one of three kernels, all
    giving torch's numbers:

    * in fp32 training on the CPU, on channels_last activations of at least
      :data:`COMPILED_LRN_MIN_NUMEL` elements, the formulas of the next kernel as fused loops,
      compiled by ``torch.compile`` (Inductor's C++ backend, sizes symbolic) the first time
      a process needs them: the window sum, the power and the product in one pass over memory
      where the eager kernel makes eight. The ``googlenet`` training step at batch 16 ran ~3%
      faster (2-core AMD EPYC). Where it cannot compile (no C++ compiler; one line says so),
      with torch.compile disabled, or with ``INCEPTIONCTL_COMPILED_LRN=0``, the next one runs;
    * in fp32 and fp64 on the CPU (eager), as a sliding-window sum (``unfold(...).sum``) along
      the channels of a zero-padded copy, in the tensor's own layout (channels_last included).
      Only ``size`` neighbours count, where a convolution multiplies by every channel: at
      ``googlenet``'s 56x56x192 LRN (batch 16) a window sum takes ~2 ms instead of ~9, and an
      fp32 training step runs ~3% faster;
    * otherwise as a fixed banded 1x1 convolution (weights ``alpha / size`` on the band, bias
      ``k``): on a GPU one cuDNN call; in bf16 on the CPU the convolution runs at the bf16 rate
      while torch's bf16 sum over a window is not vectorised (the banded form trained ~5%
      faster there); and traced, compiled or exported graphs get standard ops.
    """

    def __init__(self, channels: int, size: int, alpha: float, beta: float, k: float):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        band = torch.zeros(channels, channels, 1, 1)
        for c in range(channels):
            band[c, max(0, c - size // 2):min(channels, c + (size - 1) // 2 + 1)] = 1.0
        self.register_buffer("band", band, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        # Exported graphs carry ONNX's own LRN op: runtimes have a kernel for it, and the banded
        # convolution would add ~128 M multiply-adds at 224 and square x in the graph's dtype
        # (fp16 overflows there). ONNX's window is centred like torch's only for odd sizes.
        if self.size % 2 == 1 and torch.onnx.is_in_onnx_export():
            return _OnnxLRN.apply(x, self.size, self.alpha, self.beta, self.k)
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 4 \
                and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            if _use_compiled_lrn(x):
                return _CompiledLRN.apply(x, self.size, self.alpha, self.beta, self.k)
            return _SlidingLRN.apply(x, self.size, self.alpha, self.beta, self.k)
        return lrn_banded(x, self.band, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.band.shape[0]}, size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


def lrn_banded(x: Tensor, band: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    """LRN of ``x`` through the banded 1x1 convolution ``band`` (the training kernel)."""
    window = band.to(x.dtype) * (alpha / size)  # in x's dtype: exact where x is float64
    return _BandedLRN.apply(x, window, x.new_full((band.shape[0],), k), beta)


class _BandedLRN(torch.autograd.Function):
    """LRN with its gradient written out, so that forward and backward each touch the
    activation a few times instead of once per elementwise op of the formula (LRN sits on the
    stem's largest tensors, where training is bound by memory traffic).

    With ``W`` the window (``alpha / size`` on the band), ``s = k + W(x^2)`` and
    ``p = s^-beta``, ``y = x * p`` and ``dx = g * p - 2 * beta * x * W^T(g * y / s)``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, window: Tensor, bias: Tensor,  # type: ignore[override]
                beta: float) -> Tensor:
        scale = nn.functional.conv2d(x * x, window, bias)
        if beta == 0.75:  # the paper's value: s^-3/4 = rsqrt(s) * sqrt(rsqrt(s)), no pow
            p = torch.rsqrt(scale)
            p.mul_(p.sqrt())
        else:
            p = scale.pow(-beta)
        ctx.save_for_backward(x, window, scale, p)
        ctx.c = 2.0 * beta
        return x * p

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, window, scale, p = ctx.saved_tensors
        gp = g * p
        t = (gp * x).div_(scale)  # g * y / s
        summed = nn.functional.conv2d(t, window.transpose(0, 1))
        return gp.addcmul_(x, summed, value=-ctx.c), None, None, None


def _channel_last_view(x: Tensor) -> tuple[Tensor, int]:
    """``x`` as a contiguous tensor and the axis of its channels: a channels_last ``x`` as its
    NHWC view (axis 3), anything else as contiguous NCHW (axis 1)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1), 3
    return x.contiguous(), 1


def _window_sum(like: Tensor, axis: int, before: int, after: int, size: int,
                fill: Callable[[Tensor], object]) -> Tensor:
    """Sum over windows of ``size`` channels of what ``fill`` writes into a copy of ``like``'s
    shape with ``before`` and ``after`` zero channels around it (the window clipped at the
    edges, as a zero contributes nothing)."""
    shape = list(like.shape)
    channels = shape[axis]
    shape[axis] = channels + before + after
    padded = like.new_empty(shape)
    padded.narrow(axis, 0, before).zero_()
    padded.narrow(axis, before + channels, after).zero_()
    fill(padded.narrow(axis, before, channels))
    return padded.unfold(axis, size, 1).sum(-1)


class _SlidingLRN(torch.autograd.Function):
    """LRN on the CPU: the window summed by sliding along the channels, the gradient written out.

    With ``s = k + alpha / size * window(x^2)`` and ``p = s^-beta``: ``y = x * p`` and
    ``dx = g * p - 2 * beta * alpha / size * x * window'(g * x * p / s)``, where ``window'`` is
    the window reflected (the same for odd sizes). Each pass runs over the tensor in its own
    layout, and in-place where the formula allows: LRN sits on the stem's largest tensors, where
    training is bound by memory traffic.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, size: int, alpha: float, beta: float,  # type: ignore[override]
                k: float) -> Tensor:
        v, axis = _channel_last_view(x)
        zero = v.new_zeros(())
        scale = _window_sum(v, axis, size // 2, (size - 1) // 2, size,
                            lambda out: torch.addcmul(zero, v, v, value=alpha / size, out=out))
        scale.add_(k)
        if beta == 0.75:  # the paper's value: s^-3/4 = rsqrt(s * sqrt(s)), no pow
            p = scale.sqrt()
            p.mul_(scale).rsqrt_()
        else:
            p = scale.pow(-beta)
        ctx.save_for_backward(v, scale, p)
        ctx.axis, ctx.size, ctx.c = axis, size, 2.0 * beta * alpha / size
        y = v * p
        return y.permute(0, 3, 1, 2) if axis == 3 else y

    @staticmethod
    @once_differentiable  # its passes write into buffers: no graph of the gradient
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        v, scale, p = ctx.saved_tensors
        axis, size = ctx.axis, ctx.size
        gp = (g.permute(0, 2, 3, 1) if axis == 3 else g) * p

        def g_y_over_s(out: Tensor) -> None:
            torch.mul(gp, v, out=out)
            out.div_(scale)

        summed = _window_sum(v, axis, (size - 1) // 2, size // 2, size, g_y_over_s)
        dx = gp.addcmul_(v, summed, value=-ctx.c)
        return (dx.permute(0, 3, 1, 2) if axis == 3 else dx), None, None, None, None


#: The smallest activation (elements) whose LRN trains through the compiled kernel: googlenet's
#: two LRNs at batch 16 are 3.2 M and 9.6 M; small inputs (tests, digits) stay on the sliding sum.
COMPILED_LRN_MIN_NUMEL = 1 << 20

# None: not tried yet; else (forward, backward), or the reason the kernels are not used
_lrn_kernels: tuple[Callable[..., Any], Callable[..., Any]] | str | None = None


def _use_compiled_lrn(x: Tensor) -> bool:
    return x.dtype == torch.float32 and x.requires_grad and torch.is_grad_enabled() \
        and x.numel() >= COMPILED_LRN_MIN_NUMEL and not x.is_contiguous() \
        and x.is_contiguous(memory_format=torch.channels_last) \
        and not isinstance(_compiled_lrn_kernels(), str)


def _window_sum_last(t: Tensor, before: int, after: int) -> Tensor:
    """Sum over windows along the last axis of ``t``, clipped at its edges (zeros padded)."""
    channels = t.shape[-1]
    padded = nn.functional.pad(t, (before, after))
    out = padded[..., 0:channels]
    for j in range(1, before + after + 1):
        out = out + padded[..., j:j + channels]
    return out


def _lrn_forward_nhwc(v: Tensor, size: int, alpha: float, beta: float, k: float
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """(y, s, p) of LRN over the last axis of ``v``, in :class:`_SlidingLRN`'s formulas."""
    scale = _window_sum_last(v * v, size // 2, (size - 1) // 2) * (alpha / size) + k
    p = torch.rsqrt(scale * torch.sqrt(scale)) if beta == 0.75 else scale.pow(-beta)
    return v * p, scale, p


def _lrn_backward_nhwc(g: Tensor, v: Tensor, scale: Tensor, p: Tensor, size: int,
                       c: float) -> Tensor:
    gp = g * p
    return gp - c * v * _window_sum_last(gp * v / scale, (size - 1) // 2, size // 2)


def _compiled_lrn_kernels() -> tuple[Callable[..., Any], Callable[..., Any]] | str:
    """The compiled LRN passes, made once per process (Inductor compiles them at their first
    call, and again only for another window or where sizes equal at the first call, as batch 64
    and 64 channels, differ later), or why they are not used."""
    global _lrn_kernels
    if _lrn_kernels is None:
        if os.environ.get("INCEPTIONCTL_COMPILED_LRN", "1") == "0":
            _lrn_kernels = "INCEPTIONCTL_COMPILED_LRN=0"
        else:
            # its import logs "No CUDA runtime is found" where a CUDA build of torch runs on a CPU
            quiet = logging.getLogger("torch.utils.cpp_extension")
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            try:
                import torch.utils.cpp_extension  # noqa: F401

                kernels = (torch.compile(_lrn_forward_nhwc, dynamic=True, fullgraph=True),
                           torch.compile(_lrn_backward_nhwc, dynamic=True, fullgraph=True))
                # with torch.compile disabled (TORCHDYNAMO_DISABLE=1, TORCH_COMPILE_DISABLE=1)
                # these are the functions themselves, whose passes are slower than the sliding sum
                disabled = kernels[0] is _lrn_forward_nhwc or torch._dynamo.config.disable
                _lrn_kernels = "torch.compile is disabled" if disabled else kernels
            except Exception as exc:  # a Python or platform torch.compile does not support
                _give_up_compiled_lrn(exc)
            finally:
                quiet.setLevel(level)
    assert _lrn_kernels is not None
    return _lrn_kernels


def _give_up_compiled_lrn(exc: Exception) -> None:
    """Use the sliding sum from now on, and say why once (to stderr, through ``logging``)."""
    global _lrn_kernels
    _lrn_kernels = f"cannot compile: {type(exc).__name__}"
    logging.getLogger(__name__).warning(
        "note: LRN runs on its eager kernel (%s: %s); INCEPTIONCTL_COMPILED_LRN=0 skips the "
        "attempt", type(exc).__name__, (str(exc).strip().splitlines() or [""])[0][:200])


def _run_compiled(which: int, *args: Any) -> Tensor | tuple[Tensor, ...] | None:
    """Pass ``which`` (0 forward, 1 backward) of the compiled kernels, or None where they
    cannot run here (said once; the process uses the sliding sum from then on)."""
    kernels = _compiled_lrn_kernels()
    if isinstance(kernels, str):
        return None
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    try:
        # compiled in this process, not by a pool of workers that later forks would inherit;
        # a failure raised, not run eagerly (slower than the sliding sum). Sizes equal at the
        # first call (batch 64 and 64 channels) are taken as equal until a call differs, which
        # compiles once more: treating them apart from the start made the loops ~25% slower.
        with inductor_config.patch(compile_threads=1), \
                dynamo_config.patch(suppress_errors=False):
            return kernels[which](*args)
    except Exception as exc:  # no C++ compiler, or one Inductor cannot use
        _give_up_compiled_lrn(exc)
        return None


class _CompiledLRN(torch.autograd.Function):
    """:class:`_SlidingLRN`'s formulas as compiled fused passes over the NHWC view of a
    channels_last tensor; the sliding sum's passes where compiling fails. Saves what
    :class:`_SlidingLRN` saves, so either backward follows either forward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, size: int, alpha: float, beta: float,  # type: ignore[override]
                k: float) -> Tensor:
        v = x.permute(0, 2, 3, 1)
        out = _run_compiled(0, v, size, alpha, beta, k)
        if out is None:
            return _SlidingLRN.forward(ctx, x, size, alpha, beta, k)
        y, scale, p = out
        ctx.save_for_backward(v, scale, p)
        ctx.axis, ctx.size, ctx.c = 3, size, 2.0 * beta * alpha / size
        return y.permute(0, 3, 1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        v, scale, p = ctx.saved_tensors
        if ctx.axis == 3:
            # a dense NHWC view whatever the gradient's layout (one graph: a sum's is expanded)
            gv = g.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
            dx = _run_compiled(1, gv, v, scale, p, ctx.size, ctx.c)
            if dx is not None:
                return dx.permute(0, 3, 1, 2), None, None, None, None
        return _SlidingLRN.backward(ctx, g)


class _OnnxLRN(torch.autograd.Function):
    """LRN as one ONNX ``LRN`` node at export; torch's own LRN when traced (same numbers)."""

    @staticmethod
    def forward(ctx: object, x: Tensor, size: int, alpha: float, beta: float,  # type: ignore[override]
                k: float) -> Tensor:
        return nn.functional.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g: object, x: object, size: int, alpha: float, beta: float, k: float) -> object:
        return g.op("LRN", x, size_i=int(size), alpha_f=float(alpha), beta_f=float(beta),  # type: ignore[attr-defined]
                    bias_f=float(k))


class ConvBlock(nn.Module):
    """Conv, then batch norm when the recipe says so, then ReLU (every conv in the paper has one)."""

    def __init__(self, spec: ModelSpec, cin: int, cout: int, kernel: int, stride: int = 1,
                 padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=spec.conv_bias)
        self.bn: nn.Module = (nn.BatchNorm2d(cout, eps=spec.bn_eps) if spec.norm == "batchnorm"
                              else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Four branches over the same input, concatenated on channels (Table 1's six widths).

    Without batch norm, the three 1x1 convolutions that read the module's input (``#1x1``,
    ``#3x3 reduce``, ``#5x5 reduce``) run as one convolution over their concatenated weights,
    split after its ReLU: the same numbers, one wider matrix multiply instead of three narrow
    ones (some reduce to 16 channels), and one gradient for the input instead of three to add.
    A ``googlenet`` training step ran ~2.5% faster this way in fp32 and in bf16 on a 2-core
    CPU. The weights stay in their own layers, so checkpoints and torchvision names are
    unchanged, but those three layers are not called: where one of them (or its conv or ReLU)
    has a forward hook or pre-hook (``torch.nn.utils.prune``, a feature probe) or was swapped
    for another type (quantization-aware training), the module runs them one by one instead,
    as it does while traced (exported graphs keep the paper's 57
    convolutions). With batch norm each convolution keeps its own statistics, and runs alone.
    """

    __constants__ = ["fuse_1x1"]  # scripting compiles only the path the recipe takes

    def __init__(self, spec: ModelSpec, cin: int, widths: InceptionWidths):
        super().__init__()
        self.fuse_1x1 = spec.norm != "batchnorm"
        w = spec.width
        k5 = spec.branch5x5_kernel
        self.branch1 = ConvBlock(spec, cin, w(widths.n1x1), 1)
        self.branch2 = nn.Sequential(ConvBlock(spec, cin, w(widths.n3x3_reduce), 1),
                                     ConvBlock(spec, w(widths.n3x3_reduce), w(widths.n3x3), 3,
                                               padding=1))
        self.branch3 = nn.Sequential(ConvBlock(spec, cin, w(widths.n5x5_reduce), 1),
                                     ConvBlock(spec, w(widths.n5x5_reduce), w(widths.n5x5), k5,
                                               padding=k5 // 2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                     ConvBlock(spec, cin, w(widths.pool_proj), 1))
        self.reduce_widths = [w(widths.n1x1), w(widths.n3x3_reduce), w(widths.n5x5_reduce)]

    def forward(self, x: Tensor) -> Tensor:
        # exported graphs keep the 57 convolutions; a hook on a branch layer (pruning, a
        # feature probe) is honoured by running the layers themselves
        fused = self.fuse_1x1 and not torch.jit.is_tracing()
        if not torch.jit.is_scripting():
            fused = fused and self._plain_layers()
        if fused:
            b1, r3, r5 = self._reduce(x)
            return torch.cat([b1, self.branch2[1](r3), self.branch3[1](r5), self.branch4(x)], 1)
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)

    @torch.jit.unused
    def _plain_layers(self):  # eager only: a scripted module skips this check
        """Whether the layers the fused path does not call are plain: the built conv + ReLU
        types (not a quantization-aware swap, say), with no forward hook or pre-hook."""
        layers = [self.branch1, self.branch2[0], self.branch3[0]]
        return all(type(layer.conv) is nn.Conv2d and type(layer.relu) is nn.ReLU
                   and not any(m._forward_hooks or m._forward_pre_hooks for m in layer.modules())
                   for layer in layers)

    def _reduce(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The ``#1x1`` branch and the two reduce outputs, from one convolution (+ ReLU)."""
        c1, c3, c5 = self.branch1.conv, self.branch2[0].conv, self.branch3[0].conv
        weight = torch.cat([c1.weight, c3.weight, c5.weight])
        bias: Optional[Tensor] = None
        bias1, bias3, bias5 = c1.bias, c3.bias, c5.bias
        if bias1 is not None and bias3 is not None and bias5 is not None:
            bias = torch.cat([bias1, bias3, bias5])
        y = nn.functional.relu(nn.functional.conv2d(x, weight, bias), inplace=True)
        parts = y.split(self.reduce_widths, 1)
        layout = torch.contiguous_format
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            layout = torch.channels_last
        return (parts[0], parts[1].contiguous(memory_format=layout),
                parts[2].contiguous(memory_format=layout))


class AuxHead(nn.Module):
    """Auxiliary classifier: pool, 1x1 conv, FC + ReLU, dropout, linear."""

    def __init__(self, spec: ModelSpec, after: str, cin: int, map_size: int, num_classes: int):
        super().__init__()
        aux = spec.aux
        self.after = after
        self.pool = make_pool(aux.pool, ceil_mode=False)
        pooled = apply_pool(aux.pool, map_size, ceil_mode=False)
        self.conv = ConvBlock(spec, cin, spec.width(aux.conv), 1)
        self.fc1 = nn.Linear(spec.width(aux.conv) * pooled * pooled, spec.width(aux.fc))
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(aux.dropout)
        self.fc2 = nn.Linear(spec.width(aux.fc), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class GoogLeNet(nn.Module):
    """GoogLeNet / Inception v1 from a :class:`~inceptionctl.recipe.Recipe`."""

    def __init__(self, recipe: Recipe):
        super().__init__()
        self.recipe = recipe
        spec = recipe.model
        shapes = {fm.name: fm for fm in trace_shapes(spec, recipe.data.input_size)}

        stem: OrderedDict[str, nn.Module] = OrderedDict()
        channels = spec.in_channels
        lrn_index = 0
        for layer in spec.stem:
            if layer.layer == "conv":
                assert layer.out is not None
                stem[layer.name] = ConvBlock(spec, channels, spec.width(layer.out), layer.kernel,
                                             layer.stride, layer.padding)
                channels = spec.width(layer.out)
            else:
                kind = "max" if layer.layer == "maxpool" else "avg"
                stem[layer.name] = make_pool(PoolSpec(type=kind, kernel=layer.kernel,
                                                      stride=layer.stride, padding=layer.padding),
                                             spec.ceil_mode)
            if layer.name in spec.lrn.after:
                lrn_index += 1
                stem[f"lrn{lrn_index}"] = LocalResponseNorm(channels, spec.lrn.size,
                                                            spec.lrn.alpha, spec.lrn.beta,
                                                            spec.lrn.k)
        self.stem = nn.Sequential(stem)

        self.blocks = nn.ModuleDict()
        self.aux = nn.ModuleDict()
        for s, stage in enumerate(spec.stages):
            for name, widths in stage.modules.items():
                self.blocks[f"inception{name}"] = Inception(spec, channels, widths)
                channels = shapes[name].channels
                if name in spec.aux.after:
                    self.aux[f"aux{len(self.aux) + 1}"] = AuxHead(
                        spec, f"inception{name}", channels, shapes[name].size, spec.num_classes)
            if stage.pool is not None:
                self.blocks[stage_pool_name(spec, s)] = make_pool(stage.pool, spec.ceil_mode)

        self.head_pool = make_pool(spec.head.pool, ceil_mode=False)
        pooled = shapes["head_pool"].size
        self.num_features = channels * pooled * pooled
        self.dropout = nn.Dropout(spec.head.dropout)
        self.fc = nn.Linear(self.num_features, spec.num_classes)
        self._init_weights(spec.init)

    def _init_weights(self, scheme: str, root: nn.Module | None = None) -> None:
        """Initialise ``root``'s layers (default: the whole model) by the recipe's scheme."""
        for m in (self if root is None else root).modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if scheme == "xavier":
                    nn.init.xavier_uniform_(m.weight)
                else:  # torchvision's googlenet
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map after the last Inception module (before the head pool)."""
        x = self.stem(x)
        for block in self.blocks.values():
            x = block(x)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        """Logits from the last feature map: pool, flatten, dropout, linear."""
        return self.fc(self.dropout(torch.flatten(self.head_pool(x), 1)))

    def forward(self, x: Tensor) -> Tensor:
        """Main logits ``[N, num_classes]``; aux heads never run here."""
        return self.forward_head(self.forward_features(x))

    @torch.jit.export
    def forward_train(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(logits, aux_logits)``: the main head and every aux head, in network order."""
        aux_logits: list[Tensor] = []
        x = self.stem(x)
        for name, block in self.blocks.items():
            x = block(x)
            for head in self.aux.values():
                if head.after == name:
                    aux_logits.append(head(x))
        return self.forward_head(x), aux_logits

    def classifier_names(self) -> list[str]:
        """Names of the layers whose size is the class count: ``fc`` and each aux head's ``fc2``.

        Loading weights for another class count (``load_weights(reset_head=True)``) leaves
        exactly these as the model built them.
        """
        return ["fc", *(f"aux.{name}.fc2" for name in self.aux)]

    def reset_classifier(self, num_classes: int) -> None:
        """New main and aux output layers for ``num_classes``, initialised by the recipe's scheme.

        ``self.recipe`` follows (``model.num_classes``; ``data.classes`` back to '0'..'N-1'), so
        a checkpoint saved from the model and its recipe loads again.
        """
        self.recipe = recipe_from_data(self.recipe.to_dict(), self.recipe.source,
                                       {"model.num_classes": num_classes, "data.classes": None})
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(self.recipe.model.init, self.fc)
        for head in self.aux.values():
            assert isinstance(head, AuxHead)
            head.fc2 = nn.Linear(head.fc2.in_features, num_classes)
            self._init_weights(self.recipe.model.init, head.fc2)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def num_params(self, include_aux: bool = False) -> int:
        """Number of parameters; without aux heads unless asked (inference cost)."""
        return sum(p.numel() for name, p in self.named_parameters()
                   if include_aux or not name.startswith("aux."))


class TrainStep(nn.Module):
    """``forward`` that runs :meth:`GoogLeNet.forward_train`, so DDP can wrap the training pass."""

    def __init__(self, model: GoogLeNet):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self.model.forward_train(x)


def build_model(recipe: Recipe) -> GoogLeNet:
    """Return a freshly initialised GoogLeNet for ``recipe`` (aux heads included)."""
    return GoogLeNet(recipe)
