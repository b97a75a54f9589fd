"""``inceptionctl compare A B``: two artifacts (any backends or precisions) on the same inputs.

Both run on the same preprocessed images (the first artifact's preprocessing; the two must agree
on input size, channels and classes). A is the reference everywhere: in the preprocessing, in the
tolerance rule and in the relative differences, which are taken against A's logit range (a
per-element ratio explodes where a logit is near 0 and says nothing). The verdict follows the
precisions compared:

- two fp32 artifacts: Polygraphy's semantics, an element of the logits fails only if it exceeds
  *both* tolerances, ``|a - b| > atol`` and ``|a - b| > rtol * |a|``; the pair passes when none
  fails;
- a pair with an fp16, bf16 or int8 side: the criterion export proves parity with (top-1
  agreement >= :data:`MIN_AGREEMENT` %, :func:`check_parity`), with the logit error reported, as
  element tolerances tuned for fp32 would fail every quantized model.

Nothing is raised for a failing verdict: the report says ``passed`` and the CLI exits 1.

Parity lives here too: the check every export runs (:func:`prove_parity`), an exported artifact
against the PyTorch model on the same preprocessed images, at the batch sizes of its declared
range (:func:`batch_plan`). fp32 passes when max |diff| <= 1e-4 x the reference's logit range
(which also bounds any top-1 disagreement to a near-tie); fp16 / int8 pass with >= 99% top-1
agreement; the accuracy of both (and the delta) is reported when the images are labelled.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .backend import Session, check_recipe_used, open_artifact, pad_rows
from .data import Samples, load_samples
from .errors import InceptionError
from .recipe import Recipe

EPS = 1e-12  # a logit range below this counts as this, so relative differences stay finite
FP32_RTOL = 1e-4       # parity: max |diff| allowed, relative to the reference's logit range
MIN_AGREEMENT = 99.0   # parity: top-1 agreement (%) required of fp16 / int8


# ------------------------------------------------------------------------------------ parity

def batch_plan(n: int, lo: int, opt: int, hi: int) -> list[tuple[int, int]]:
    """Chunks ``(size, padding)`` covering ``n`` samples with sizes cycling through the range's
    MIN, OPT and MAX; a tail shorter than MIN is padded up to MIN (the padding is discarded)."""
    cycle = sorted({lo, opt, hi})
    plan, done, i = [], 0, 0
    while done < n:
        size = min(cycle[i % len(cycle)], n - done)
        plan.append((size, max(0, lo - size)))
        done += size
        i += 1
    return plan


def run_batches(session: Any, x: Tensor, plan: list[tuple[int, int]]) -> Tensor:
    """Logits of ``x`` run through ``session`` chunk by chunk as ``plan`` says."""
    outs, start = [], 0
    for size, pad in plan:
        chunk = pad_rows(x[start:start + size], size + pad)
        outs.append(session.run(chunk.contiguous())[:size].float())
        start += size
    return torch.cat(outs)


@torch.inference_mode()
def torch_logits(model: torch.nn.Module, x: Tensor, chunk: int = 32) -> Tensor:
    """The PyTorch reference: fp32 logits of ``x`` in eval mode."""
    return torch.cat([model(part).float() for part in x.split(chunk)])


@dataclass
class Parity:
    """The exported artifact against the PyTorch model on the same inputs."""

    data: str
    samples: int
    batch_sizes: list[int]
    max_abs_diff: float
    mean_abs_diff: float
    logit_range: float
    relative_diff: float            # max_abs_diff / logit_range
    top1_agreement: float           # %
    criterion: str
    passed: bool
    tolerance: float | None = None  # fp32: the allowed max_abs_diff
    top1_reference: float | None = None  # % on labelled samples: PyTorch fp32
    top1_exported: float | None = None   # % on labelled samples: the export
    top1_delta: float | None = None      # exported - reference, in points

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(reference: Tensor, exported: Tensor, precision: str,
                 labels: Tensor | None = None, data: str = "", batch_sizes: Sequence[int] = ()
                 ) -> Parity:
    """Compare logits: fp32 needs max |diff| <= 1e-4 x logit range; fp16 / int8 >= 99% top-1
    agreement. Accuracies (and their delta) are filled in when ``labels`` are given."""
    ref, out = reference.double(), exported.double()
    diff = (out - ref).abs()
    span = float(ref.max() - ref.min())
    max_abs = float(diff.max())
    agree = 100.0 * int((out.argmax(1) == ref.argmax(1)).sum()) / len(ref)
    rel = max_abs / span if span > 0 else (0.0 if max_abs == 0 else math.inf)
    if precision == "fp32":
        tol = FP32_RTOL * span
        passed = max_abs <= tol
        criterion = f"max |diff| <= {FP32_RTOL:g} x logit range ({tol:.3g})"
    else:
        tol = None
        passed = agree >= MIN_AGREEMENT
        criterion = f"top-1 agreement >= {MIN_AGREEMENT:g}%"
    p = Parity(data=data, samples=len(ref), batch_sizes=sorted(set(batch_sizes)),
               max_abs_diff=max_abs, mean_abs_diff=float(diff.mean()), logit_range=span,
               relative_diff=rel, top1_agreement=agree, criterion=criterion, passed=passed,
               tolerance=tol)
    if labels is not None and len(labels) == len(ref):
        p.top1_reference = 100.0 * int((ref.argmax(1) == labels).sum()) / len(ref)
        p.top1_exported = 100.0 * int((out.argmax(1) == labels).sum()) / len(ref)
        p.top1_delta = p.top1_exported - p.top1_reference
    return p


def prove_parity(model: torch.nn.Module, session: Any, samples: Samples,
                 batch: tuple[int, int, int], precision: str, log: Callable[[str], Any]
                 ) -> Parity:
    """``session`` (an exported artifact) against ``model`` on ``samples``, batch sizes cycling
    through ``batch``'s MIN, OPT and MAX."""
    plan = batch_plan(len(samples.images), *batch)
    sizes = [s + p for s, p in plan]
    log(f"parity: {len(samples.images)} samples ({samples.description}), batch sizes "
        f"{sorted(set(sizes))}")
    exported = run_batches(session, samples.images, plan)
    reference = torch_logits(model, samples.images)
    return check_parity(reference, exported, precision, samples.labels, samples.description,
                        sizes)


# -------------------------------------------------------------------------------- compare A B

def failing_elements(a: Tensor, b: Tensor, atol: float, rtol: float) -> Tensor:
    """Mask of the elements outside tolerance, A the reference: ``|a-b| > atol`` AND
    ``|a-b| > rtol * |a|``, and every element that is not finite on either side (a NaN compares
    false with anything, so it would otherwise pass every tolerance)."""
    a64, b64 = a.double(), b.double()
    diff = (a64 - b64).abs()
    return ((diff > atol) & (diff > rtol * a64.abs())) | ~(a64.isfinite() & b64.isfinite())


@dataclass
class DiffStats:
    """Element-wise differences of two logit tensors ``[N, K]`` (A the reference)."""

    max_abs_diff: float
    mean_abs_diff: float
    logit_range: float            # max - min of A's logits
    max_rel_diff: float           # max |a-b| / A's logit range
    mean_rel_diff: float          # mean |a-b| / A's logit range
    failing: int                  # elements past both atol and rtol
    elements: int
    worst: tuple[int, int]        # (sample, class) of the largest absolute difference
    top1_agreement: float         # %
    top5_overlap: float           # % of A's top-5 classes that are in B's top-5, on average

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def diff_stats(a: Tensor, b: Tensor, atol: float, rtol: float) -> DiffStats:
    """Differences (relative ones against A's logit range), the count of elements failing both
    tolerances, and top-1 / top-5 overlap."""
    if a.shape != b.shape or a.ndim != 2:
        raise InceptionError(f"compare: logits of shape {list(a.shape)} and {list(b.shape)} "
                             f"cannot be compared (expected two equal [N, classes])")
    a64, b64 = a.double(), b.double()
    diff = (a64 - b64).abs()
    span = float(a64.max() - a64.min())
    scale = span if span > 0 else EPS
    worst = int(diff.argmax())
    k = min(5, a.shape[1])
    top_a, top_b = a64.topk(k, 1).indices, b64.topk(k, 1).indices
    overlap = (top_a[:, :, None] == top_b[:, None, :]).any(2).sum(1).double() / k
    return DiffStats(
        max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()), logit_range=span,
        max_rel_diff=float(diff.max()) / scale, mean_rel_diff=float(diff.mean()) / scale,
        failing=int(failing_elements(a, b, atol, rtol).sum()), elements=diff.numel(),
        worst=(worst // a.shape[1], worst % a.shape[1]),
        # argmax, as check_parity counts it: topk orders exact ties differently
        top1_agreement=100.0 * int((a64.argmax(1) == b64.argmax(1)).sum()) / len(a),
        top5_overlap=100.0 * float(overlap.mean()))


def verdict_precision(precision_a: str, precision_b: str) -> str:
    """The precision a pair is judged at: fp32 when both are, else the reduced side's."""
    reduced = [p for p in (precision_b, precision_a) if p != "fp32"]
    return reduced[0] if reduced else "fp32"


@dataclass
class CompareReport:
    a: str
    b: str
    backend_a: str
    backend_b: str
    precision_a: str
    precision_b: str
    data: str
    samples: int
    atol: float
    rtol: float
    stats: DiffStats
    passed: bool
    seconds: float
    criterion: str = ""           # what the verdict tested
    reference: str = "A"
    top1_a: float | None = None   # % on labelled samples
    top1_b: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "stats"}
        out.update(self.stats.to_json())
        return out


def judge(out_a: Tensor, out_b: Tensor, precision: str, stats: DiffStats, atol: float,
          rtol: float) -> tuple[bool, str]:
    """``(passed, criterion)``: Polygraphy's element rule for fp32, export's top-1 agreement
    for a reduced precision."""
    if precision == "fp32":
        return stats.failing == 0, (f"{stats.failing:,} of {stats.elements:,} logits exceed "
                                    f"both atol {atol:g} and rtol {rtol:g} x |A|")
    parity = check_parity(out_a, out_b, precision)
    return parity.passed, (f"{precision} side: {parity.criterion}, measured "
                           f"{parity.top1_agreement:.2f}%")


def _backend(session: Session) -> str:
    return str(session.info.extra.get("backend")
               or type(session).__name__.removesuffix("Session").lower())


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _check_compatible(sa: Session, sb: Session) -> list[str]:
    a, b = sa.info, sb.info
    pa, pb = a.preprocessing, b.preprocessing
    if (pa["eval_size"], a.channels) != (pb["eval_size"], b.channels):
        raise InceptionError(f"compare: {b.path} takes {b.channels}x{pb['eval_size']}x"
                             f"{pb['eval_size']} inputs, {a.path} takes {a.channels}x"
                             f"{pa['eval_size']}x{pa['eval_size']}: they cannot share inputs")
    if a.classes != b.classes:
        raise InceptionError(f"compare: {b.path} has {b.num_classes} classes "
                             f"({', '.join(b.classes[:3])}...), {a.path} has {a.num_classes} "
                             f"({', '.join(a.classes[:3])}...): the logits do not correspond")
    notes = []
    for key in ("mean", "std", "eval_scales", "interpolation"):
        if _listed(pa.get(key)) != _listed(pb.get(key)):
            notes.append(f"{key} differs ({pa.get(key)} vs {pb.get(key)}); both ran on "
                         f"{a.path}'s preprocessing")
    return notes


def _batch(session: Session, n: int) -> tuple[int, int, int]:
    lo, hi = session.info.batch_range or (1, max(1, n))
    opt = session.info.extra.get("batch_profile", (lo, hi, hi))[1]
    return lo, opt, hi


def _plan(lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    """``n`` rows in batches of ``hi`` (within ``lo..hi``): (size, padding) per batch."""
    return [(min(hi, n - i), max(0, lo - min(hi, n - i))) for i in range(0, n, hi)]


def compare(a: str | os.PathLike, b: str | os.PathLike, data: str | os.PathLike = "random",
            samples: int = 64, atol: float = 1e-4, rtol: float = 1e-3,
            backend_a: str | None = None, backend_b: str | None = None,
            recipe: Recipe | None = None, device: str = "auto",
            log: Callable[[str], Any] | None = None) -> CompareReport:
    """Run ``a`` and ``b`` on the same ``samples`` images of ``data`` and compare their logits."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if samples < 1:
        raise InceptionError(f"--samples: expected at least 1, got {samples}")
    if not (math.isfinite(atol) and math.isfinite(rtol)) or atol < 0 or rtol < 0:
        raise InceptionError(f"--atol/--rtol: expected finite non-negative tolerances, got {atol} "
                             f"and {rtol}")
    started = time.monotonic()
    extra = {"recipe": recipe} if recipe is not None else {}
    sa = open_artifact(a, backend_a, device, **extra)
    with sa:
        sb = open_artifact(b, backend_b, device, **extra)
        with sb:
            check_recipe_used([sa, sb], [a, b], recipe)
            notes = _check_compatible(sa, sb)
            inputs = load_samples(None if str(data) == "random" else data,
                                  sa.info.preprocessing, sa.info.classes, samples)
            log(f"compare: {inputs.description} through {_backend(sa)} and {_backend(sb)}")
            la, lb = _batch(sa, samples), _batch(sb, samples)
            # One batch size both accept where there is one: the largest, within both ranges;
            # else each side's own (files fixed at different sizes). A short tail is padded.
            lo, hi = max(la[0], lb[0]), min(la[2], lb[2])
            n = len(inputs.images)
            plan_a = plan_b = _plan(lo, hi, n) if lo <= hi else None
            if plan_a is None:
                plan_a, plan_b = _plan(la[0], la[2], n), _plan(lb[0], lb[2], n)
            out_a = run_batches(sa, inputs.images, plan_a)
            out_b = run_batches(sb, inputs.images, plan_b)
            stats = diff_stats(out_a, out_b, atol, rtol)
            passed, criterion = judge(out_a, out_b, verdict_precision(
                sa.info.precision, sb.info.precision), stats, atol, rtol)
            report = CompareReport(
                a=str(a), b=str(b), backend_a=_backend(sa), backend_b=_backend(sb),
                precision_a=sa.info.precision, precision_b=sb.info.precision,
                data=inputs.description, samples=len(inputs.images), atol=atol, rtol=rtol,
                stats=stats, passed=passed, seconds=time.monotonic() - started,
                criterion=criterion,
                notes=notes + ([f"{inputs.skipped} unreadable images skipped"]
                               if inputs.skipped else []))
            if inputs.labels is not None:
                y = inputs.labels
                report.top1_a = 100.0 * int((out_a.argmax(1) == y).sum()) / len(y)
                report.top1_b = 100.0 * int((out_b.argmax(1) == y).sum()) / len(y)
    return report


def render(report: CompareReport) -> Any:
    """The comparison as a rich Table: A and B, the differences, agreement and the verdict."""
    from rich.markup import escape
    from rich.table import Table

    s = report.stats
    ok = "[green]passed[/green]" if report.passed else "[red]FAILED[/red]"
    table = Table(title=f"compare ({ok})", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("A (reference)", f"{escape(report.a)}  ({report.backend_a}, {report.precision_a})")
    table.add_row("B", f"{escape(report.b)}  ({report.backend_b}, {report.precision_b})")
    table.add_row("inputs", escape(report.data))
    table.add_row("max / mean |A-B|", f"{s.max_abs_diff:.3g} / {s.mean_abs_diff:.3g}  (worst: "
                                      f"sample {s.worst[0]}, class {s.worst[1]})")
    table.add_row("relative to A's range", f"{s.max_rel_diff:.3g} / {s.mean_rel_diff:.3g}  "
                                           f"(A's logits span {s.logit_range:.3g})")
    table.add_row("top-1 agreement", f"{s.top1_agreement:.2f}%")
    table.add_row("top-5 overlap", f"{s.top5_overlap:.2f}%")
    if report.top1_a is not None:
        table.add_row("top-1 accuracy", f"A {report.top1_a:.2f}%, B {report.top1_b:.2f}%")
    table.add_row("verdict", f"{escape(report.criterion)}: {ok}")
    table.add_row("time", f"{report.seconds:.1f} s")
    for note in report.notes:
        table.add_row("note", escape(note))
    return table
