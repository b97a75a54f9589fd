"""``inceptionctl export``: checkpoint -> ONNX (fp32, INT8 QDQ) or TensorRT engine, parity proven.

The graph is PyTorch's TorchScript-based ONNX exporter's (``torch.onnx.export(dynamo=False)``):
it needs nothing beyond torch and gives a clean, constant-folded graph (BatchNorm folded into
Conv) with a dynamic batch axis; the ``dynamo=True`` exporter needs ``onnxscript``, which is not
a dependency. The model's ``forward`` never runs the aux heads, so the graph has one input
``images`` ``[batch, C, S, S]`` (float32, S the eval crop size) and one output ``logits``
``[batch, num_classes]``. ``onnx.checker`` (full check) runs on every file written.

Parity is proven on every export, not assumed: the written file is opened through its backend
(onnxruntime or tensorrt, reached through the registry: nothing here imports them) and run next
to the PyTorch model on the same preprocessed images, at the batch sizes of the declared range.
fp32 passes when max |diff| <= 1e-4 x the reference's logit range (which also bounds any top-1
disagreement to a near-tie); fp16 / int8 pass with >= 99% top-1 agreement; the accuracy of both
(and the delta) is reported when the images are labelled. A failed check keeps the file and
raises :class:`ExportCheckFailed` (a ``CheckFailed``, exit code 1) carrying the full report.

Metadata (ONNX ``metadata_props``, all strings; JSON where structured) -- what ``eval``,
``predict``, ``compare`` and the TensorRT builder read, so the file needs nothing else:

==============================  ===========================================================
``inceptionctl.format``         ``inceptionctl.onnx``
``inceptionctl.format_version`` ``1`` (readers refuse a newer one)
``inceptionctl.version``        the inceptionctl version that wrote the file
``inceptionctl.recipe``         the resolved recipe (JSON object, YAML spellings)
``inceptionctl.classes``        class names (JSON list; index = logit)
``inceptionctl.preprocessing``  JSON: input_size, resize, mean, std, interpolation, channels,
                                eval_size, eval_scales (as in checkpoints)
``inceptionctl.precision``      ``fp32`` or ``int8``
``inceptionctl.batch``          the declared batch range ``MIN:OPT:MAX``
``inceptionctl.source``         JSON: file name, kind (checkpoint | foreign), weights (ema |
                                model), the checkpoint's meta
``inceptionctl.int8``           (INT8 only) JSON: flavour, calibration_method,
                                calibration_samples
==============================  ===========================================================

Default output files lie next to the checkpoint and take its stem: ``run/best.pt`` ->
``run/best.onnx``, ``run/best.int8.onnx``, ``run/best.fp16.engine`` (``best.engine`` for fp32).
A run folder means its best checkpoint (else last). Input files are never written to.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .backend import Backend, get_backend, open_artifact, resolve_artifact
from .errors import CheckFailed, InceptionError
from .files import atomic_path
from .recipe import Recipe, load_recipe, parse_batch_range

FORMAT = "inceptionctl.onnx"
FORMAT_VERSION = 1
KEY = "inceptionctl."
REQUIRED = ("recipe", "classes", "preprocessing", "precision", "batch")

TARGETS = ("onnx", "tensorrt")
ONNX_PRECISIONS = ("fp32", "int8")
TRT_PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
INT8_FLAVOURS = ("cpu", "tensorrt")

FP32_RTOL = 1e-4       # max |diff| allowed, relative to the reference's logit range
MIN_AGREEMENT = 99.0   # top-1 agreement (%) required of fp16 / int8
MAX_CHECK_SAMPLES = 512

Log = Callable[[str], Any]


class ExportCheckFailed(CheckFailed):
    """The export was written but its parity check failed; ``report`` has every number."""

    def __init__(self, message: str, report: "ExportReport"):
        super().__init__(message)
        self.report = report


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _choice(value: str, allowed: Sequence[str], what: str, extra: str = "") -> str:
    if value in allowed:
        return value
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise InceptionError(f"{what} '{value}': expected one of {', '.join(allowed)}{hint}{extra}")


# ---------------------------------------------------------------------------------- metadata

def metadata_props(recipe: Recipe, classes: list[str], preprocessing: Mapping[str, Any],
                   precision: str, batch: tuple[int, int, int],
                   source: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The ``metadata_props`` of an exported model (keys in the module docstring)."""
    from . import __version__

    return {
        KEY + "format": FORMAT,
        KEY + "format_version": str(FORMAT_VERSION),
        KEY + "version": __version__,
        KEY + "recipe": json.dumps(recipe.to_dict()),
        KEY + "classes": json.dumps(list(classes)),
        KEY + "preprocessing": json.dumps(dict(preprocessing)),
        KEY + "precision": precision,
        KEY + "batch": "{}:{}:{}".format(*batch),
        KEY + "source": json.dumps(dict(source or {}), default=str),
    }


def read_metadata(props: Mapping[str, str], path: str | os.PathLike) -> dict[str, Any]:
    """Our facts from an ONNX model's ``metadata_props``; one clear line when they are not there.

    Returns recipe (dict), classes (list), preprocessing (dict), precision, batch ((min, opt,
    max)), version, source (dict) and int8 (dict or None).
    """
    missing = [k for k in REQUIRED if KEY + k not in props]
    if len(missing) == len(REQUIRED):
        raise InceptionError(f"{path}: not an inceptionctl model: its ONNX metadata has none of "
                             f"{', '.join(KEY + k for k in REQUIRED)} (export a checkpoint with "
                             f"`inceptionctl export CHECKPOINT --to onnx`)")
    if missing:
        raise InceptionError(f"{path}: incomplete inceptionctl metadata: missing "
                             f"{', '.join(KEY + k for k in missing)}")
    version = props.get(KEY + "format_version", str(FORMAT_VERSION))
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise InceptionError(f"{path}: metadata format {version} is newer than this inceptionctl "
                             f"understands ({FORMAT_VERSION}); upgrade inceptionctl")

    def load(key: str, kind: type) -> Any:
        try:
            value = json.loads(props[KEY + key])
        except ValueError as exc:
            raise InceptionError(f"{path}: metadata {KEY + key} is not valid JSON ({exc})") \
                from None
        if not isinstance(value, kind):
            raise InceptionError(f"{path}: metadata {KEY + key} should be a JSON "
                                 f"{'object' if kind is dict else 'list'}, got "
                                 f"{type(value).__name__}")
        return value

    recipe, classes, pre = load("recipe", dict), load("classes", list), load("preprocessing", dict)
    lacking = [k for k in ("eval_size", "eval_scales", "mean", "std") if k not in pre]
    if lacking:
        raise InceptionError(f"{path}: metadata {KEY}preprocessing lacks {', '.join(lacking)}")
    batch = parse_batch_range(props[KEY + "batch"], lambda msg: InceptionError(
        f"{path}: metadata {KEY}batch: {msg}"))
    return {"recipe": recipe, "classes": [str(c) for c in classes], "preprocessing": pre,
            "precision": props[KEY + "precision"], "batch": batch,
            "version": props.get(KEY + "version"),
            "source": load("source", dict) if KEY + "source" in props else {},
            "int8": load("int8", dict) if KEY + "int8" in props else None}


# ----------------------------------------------------------------------------------- samples

@dataclass
class Samples:
    """Preprocessed images the way eval feeds them (1 center crop, normalised), with labels
    (class indices of the artifact) when the data names the artifact's classes."""

    images: Tensor
    labels: Tensor | None
    description: str
    skipped: int = 0


def _preprocess(image: Tensor, pre: Mapping[str, Any]) -> Tensor:
    from .crops import normalize, take_crops

    channels = int(pre.get("channels", 3))
    if image.shape[0] != channels:
        if channels == 1:
            image = image.float().mean(0, keepdim=True).round().to(image.dtype)
        else:
            raise InceptionError(f"the model takes {channels}-channel images, got "
                                 f"{image.shape[0]} channels")
    crop = take_crops(image, 1, int(pre["eval_size"]), [int(s) for s in pre["eval_scales"]])
    return normalize(crop, pre["mean"], pre["std"])[0]


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (so sorted class folders all take part)."""
    k = min(k, n)
    if k <= 0:
        return []
    return sorted(set(torch.linspace(0, n - 1, k).round().long().tolist()))


def load_samples(data: str | os.PathLike | None, preprocessing: Mapping[str, Any],
                 classes: list[str], count: int, split: str = "val", seed: int = 0) -> Samples:
    """``count`` preprocessed images from ``data``: ``None``/``random`` (deterministic random
    images), ``digits`` (the embedded set's ``split``) or an image folder (its ``val/`` part, or
    for ``split="train"`` its ``train/`` part when there is one)."""
    from .data import DataError, decode_rgb, digits
    from .evaluate import collect_images, eval_source

    if count < 1:
        raise InceptionError(f"samples: expected at least 1, got {count}")
    pre = preprocessing
    resize = int(pre["resize"])
    if data is None or str(data) == "random":
        g = torch.Generator().manual_seed(seed)
        channels = int(pre.get("channels", 3))
        h, w = resize, resize * 4 // 3  # landscape, so the center crop really crops
        images = torch.randint(0, 256, (count, channels, h, w), generator=g, dtype=torch.uint8)
        x = torch.stack([_preprocess(im, pre) for im in images])
        return Samples(x, None, f"random ({count} images, seed {seed})")

    spec = str(data)
    labelled: Any
    if spec == "digits":
        source = digits(resize, "train" if split == "train" else "val")
        labelled = source.classes == list(classes)
        desc = f"digits {source.name.split('-')[-1]}" + ("" if labelled else " (unlabelled)")
        n, fetch = len(source), source.load
    else:
        root = Path(spec)
        if not root.is_dir():
            raise DataError(f"{root}: no such folder (give an image folder, 'digits' or "
                            f"'random')")
        source = None
        if split == "train" and (root / "train").is_dir():
            root = root / "train"
        else:
            try:
                source = eval_source(str(root), classes, resize)
            except DataError:
                source = None  # folders that are not the model's classes: unlabelled inputs
            if (root / "val").is_dir():
                root = root / "val"  # where eval_source looks
        if source is not None:
            labelled, desc, n, fetch = True, str(root), len(source), source.load
        else:
            files = collect_images([str(root)])
            labelled, desc, n = False, f"{root} (unlabelled)", len(files)

            def fetch(i: int, files: list[Path] = files) -> Any:
                from .data import Sample

                try:
                    return Sample(decode_rgb(files[i]), -1, str(files[i]))
                except Exception as exc:  # an unreadable file is skipped, as eval skips it
                    return Sample(None, -1, str(files[i]), str(exc)[:120])
    if n == 0:
        raise DataError(f"{spec}: no images")
    xs, ys, skipped = [], [], 0
    for i in _spread(n, count):
        sample = fetch(i)
        if sample.image is None:
            skipped += 1
            continue
        xs.append(_preprocess(sample.image, pre))
        ys.append(sample.label)
    if not xs:
        raise DataError(f"{spec}: none of the {n} images could be read")
    labels = torch.tensor(ys) if labelled else None
    return Samples(torch.stack(xs), labels, f"{desc} ({len(xs)} images)", skipped)


def calibration_batches(data: str | os.PathLike, preprocessing: Mapping[str, Any],
                        classes: list[str], count: int, batch: int = 16) -> list[Tensor]:
    """``count`` preprocessed calibration images (the training part of ``data``) in batches."""
    samples = load_samples(data, preprocessing, classes, count, split="train")
    return list(samples.images.split(max(1, batch)))


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
        chunk = x[start:start + size]
        if pad:
            chunk = torch.cat([chunk, chunk[-1:].expand(pad, *chunk.shape[1:])])
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


def _prove(model: torch.nn.Module, session: Any, samples: Samples, batch: tuple[int, int, int],
           precision: str, log: Log) -> Parity:
    plan = batch_plan(len(samples.images), *batch)
    sizes = [s + p for s, p in plan]
    log(f"parity: {len(samples.images)} samples ({samples.description}), batch sizes "
        f"{sorted(set(sizes))}")
    exported = run_batches(session, samples.images, plan)
    reference = torch_logits(model, samples.images)
    return check_parity(reference, exported, precision, samples.labels, samples.description,
                        sizes)


# ------------------------------------------------------------------------------------ report

@dataclass
class ExportReport:
    """What an export wrote and the proof that it computes what the checkpoint computes."""

    file: str
    format: str            # onnx | tensorrt
    size_bytes: int
    precision: str
    batch: tuple[int, int, int]
    opset: int
    source: str
    parity: Parity
    seconds: float
    passed: bool
    int8: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "format": self.format, "size_bytes": self.size_bytes,
                "precision": self.precision, "batch": "{}:{}:{}".format(*self.batch),
                "opset": self.opset, "source": self.source, "seconds": self.seconds,
                "passed": self.passed, "parity": self.parity.to_json(), "int8": self.int8,
                "notes": self.notes}

    def failure(self) -> str:
        """One line with the numbers of a failed check ('' when it passed)."""
        if self.passed:
            return ""
        p = self.parity
        return (f"{self.file}: parity check failed ({p.criterion}): max |diff| "
                f"{p.max_abs_diff:.3g} ({p.relative_diff:.2e} of the logit range "
                f"{p.logit_range:.3g}), top-1 agreement {p.top1_agreement:.2f}% on {p.samples} "
                f"samples; the file is kept")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def render(report: ExportReport) -> Any:
    """The export summary as a rich Table: file, size, precision, batch range, parity, time."""
    from rich.table import Table

    p = report.parity
    ok = "[green]passed[/green]" if report.passed else "[red]FAILED[/red]"
    table = Table(title=f"export -> {report.format} ({ok})", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("file", report.file)
    table.add_row("size", _size(report.size_bytes))
    table.add_row("precision", report.precision + (
        f" ({report.int8['flavour']} flavour, {report.int8['calibration_method']}, "
        f"{report.int8['calibration_samples']} calibration images)" if report.int8 else ""))
    table.add_row("batch range", "{}:{}:{}".format(*report.batch) + f"  (opset {report.opset})")
    table.add_row("parity data", f"{p.data}; batch sizes {', '.join(map(str, p.batch_sizes))}")
    table.add_row("max |diff|", f"{p.max_abs_diff:.3g}  ({p.relative_diff:.2e} of logit range "
                                f"{p.logit_range:.3g}; mean {p.mean_abs_diff:.3g})")
    table.add_row("top-1 agreement", f"{p.top1_agreement:.2f}%")
    if p.top1_reference is not None:
        table.add_row("top-1 accuracy", f"PyTorch {p.top1_reference:.2f}% -> {report.precision} "
                                        f"{p.top1_exported:.2f}% ({p.top1_delta:+.2f} points)")
    table.add_row("check", f"{p.criterion}: {ok}")
    table.add_row("time", f"{report.seconds:.1f} s")
    for note in report.notes:
        table.add_row("note", note)
    return table


# ------------------------------------------------------------------------------------ export

def default_output(source: Path, to: str, precision: str) -> Path:
    """Next to the checkpoint, named after it: best.onnx, best.int8.onnx, best.fp16.engine."""
    tag = "" if precision == "fp32" else f".{precision}"
    return source.parent / f"{source.stem}{tag}{'.onnx' if to == 'onnx' else '.engine'}"


def _output(source: Path, out: str | os.PathLike | None, to: str, precision: str) -> Path:
    path = Path(out) if out is not None else default_output(source, to, precision)
    suffixes = (".onnx",) if to == "onnx" else (".engine", ".plan")
    if path.suffix.lower() not in suffixes:
        raise InceptionError(f"--out {path}: a {to} file must end in {' or '.join(suffixes)}")
    if path.exists() and path.is_dir():
        raise InceptionError(f"--out {path}: is a folder; give a file name")
    if path.exists() and path.resolve() == source.resolve():
        raise InceptionError(f"--out {path}: is the input artifact; inputs are never overwritten")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        raise InceptionError(f"--out {path}: cannot write into {folder} (permission denied)")
    return path


def _source(artifact: str | os.PathLike) -> Path:
    src = resolve_artifact(artifact)
    if src.suffix.lower() in (".onnx", ".engine", ".plan"):
        raise InceptionError(f"{src}: is already an exported model; export takes a run folder, "
                             f"a checkpoint or foreign weights with --recipe")
    return src


def _recipe(recipe: Recipe | str | os.PathLike | None) -> Recipe | None:
    if recipe is None or isinstance(recipe, Recipe):
        return recipe
    return load_recipe(recipe)


def _load(src: Path, recipe: Any, overrides: Any) -> tuple[torch.nn.Module, Recipe, list[str],
                                                          dict[str, Any], dict[str, Any]]:
    from .checkpoint import class_names, load_model, preprocessing

    model, resolved, info = load_model(src, recipe=_recipe(recipe), overrides=overrides)
    model = model.float().cpu().eval()
    classes = list(info.get("classes") or class_names(resolved))
    source = {"file": src.name, "kind": "checkpoint" if "meta" in info else "foreign",
              "weights": "ema" if info.get("ema") else "model", "meta": info.get("meta", {})}
    return model, resolved, classes, preprocessing(resolved), source


def write_onnx(model: torch.nn.Module, preprocessing: Mapping[str, Any],
               batch: tuple[int, int, int], opset: int, props: Mapping[str, str],
               out: str | os.PathLike, doc: str = "") -> Path:
    """Export ``model`` to ``out`` (atomically): input ``images`` with a dynamic batch axis,
    output ``logits``, ``props`` as metadata; ``onnx.checker`` full check before writing."""
    import onnx

    size, channels = int(preprocessing["eval_size"]), int(preprocessing.get("channels", 3))
    dummy = torch.zeros(batch[1], channels, size, size)
    with tempfile.TemporaryDirectory(prefix="inceptionctl-export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
                torch.onnx.export(model, (dummy,), str(raw), input_names=["images"],
                                  output_names=["logits"], opset_version=opset,
                                  dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                                  do_constant_folding=True, dynamo=False)
        except Exception as exc:
            first = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise InceptionError(f"ONNX export (opset {opset}) failed: {first}") from None
        graph = onnx.load(str(raw))
    graph.doc_string = doc
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, dict(props))
    try:
        onnx.checker.check_model(graph, full_check=True)
    except Exception as exc:
        raise InceptionError(f"the exported graph fails onnx.checker: "
                             f"{' '.join(str(exc).split())[:200]}") from None
    out = Path(out)
    try:
        with atomic_path(out) as tmp_out:
            onnx.save(graph, str(tmp_out))
    except OSError as exc:
        raise InceptionError(f"{out}: cannot write ({exc.strerror or exc})") from None
    return out


def _check_opset(opset: int) -> None:
    """The opsets torch's exporter writes and ONNX Runtime runs; checked before any work."""
    if not 9 <= opset <= 20:
        raise InceptionError(f"--opset {opset}: expected an opset from 9 to 20 (default 17)")


def _check_count(samples: int | None, batch: tuple[int, int, int], data: Any) -> int:
    if samples is not None:
        if samples < 1:
            raise InceptionError(f"--check-samples: expected at least 1, got {samples}")
        return samples
    if data is None or str(data) == "random":
        return max(16, sum(batch))  # every batch size of the range at least once
    return MAX_CHECK_SAMPLES


def _common(precision: str, precisions: Sequence[str], calib_data: Any, calib_samples: int,
            calib_method: str, to: str) -> None:
    extra = "; fp16 is built with --to tensorrt" if to == "onnx" and precision == "fp16" else ""
    _choice(precision, precisions, "--precision", extra)
    _choice(calib_method, CALIBRATION_METHODS, "--calib-method")
    if precision == "int8" and calib_data is None:
        raise InceptionError("--precision int8 needs calibration images: --calib-data PATH|digits")
    if calib_samples < 1:
        raise InceptionError(f"--calib-samples: expected at least 1, got {calib_samples}")


def _finish(report: ExportReport, log: Log) -> ExportReport:
    p = report.parity
    log(f"parity: max |diff| {p.max_abs_diff:.3g} ({p.relative_diff:.2e} of the logit range), "
        f"top-1 agreement {p.top1_agreement:.2f}%"
        + (f", top-1 {p.top1_reference:.2f}% -> {p.top1_exported:.2f}%"
           if p.top1_reference is not None else "")
        + (" -- passed" if report.passed else " -- FAILED"))
    if not report.passed:
        raise ExportCheckFailed(report.failure(), report)
    return report


def export_onnx(artifact: str | os.PathLike, out: str | os.PathLike | None = None,
                precision: str = "fp32", batch: str | None = None, opset: int | None = None,
                calib_data: str | os.PathLike | None = None, calib_samples: int = 256,
                calib_method: str = "minmax", int8_flavour: str = "cpu",
                recipe: Recipe | str | None = None, overrides: Any = None,
                check_samples: int | None = None, log: Log | None = None) -> ExportReport:
    """Export a checkpoint (or foreign weights with ``recipe``) to ONNX and prove parity.

    ``batch`` is ``MIN:OPT:MAX`` (default: the recipe's ``export.batch``), ``opset`` defaults to
    the recipe's ``export.opset``. ``precision="int8"`` quantizes statically (QDQ) on
    ``calib_samples`` images of ``calib_data`` (``digits`` or a folder: its train part) with
    ``calib_method``; ``int8_flavour`` is ``cpu`` (fastest on ONNX Runtime's CPU provider) or
    ``tensorrt`` (symmetric int8, as TensorRT needs). Parity runs on ``calib_data``'s eval part
    when given (at most ``check_samples``, default 512), else on random images. Raises
    :class:`ExportCheckFailed` (with ``.report``) when parity fails; the file is kept.
    """
    started = time.monotonic()
    log = log or _stderr
    _common(precision, ONNX_PRECISIONS, calib_data, calib_samples, calib_method, "onnx")
    _choice(int8_flavour, INT8_FLAVOURS, "--int8-flavour")
    src = _source(artifact)
    ort = get_backend("onnxruntime")
    ort.require()  # the parity check needs it: fail before the work
    model, resolved, classes, pre, source = _load(src, recipe, overrides)
    lo, opt, hi = bounds = parse_batch_range(batch or resolved.export.batch)
    opset = int(opset or resolved.export.opset)
    _check_opset(opset)
    if precision == "int8" and opset < 13:
        raise InceptionError(f"--opset {opset}: INT8 (per-channel QDQ) needs opset 13 or newer")
    path = _output(src, out, "onnx", precision)
    props = metadata_props(resolved, classes, pre, "fp32", bounds, source)
    doc = f"{resolved.name}: GoogLeNet exported by inceptionctl from {src.name}"
    check = load_samples(calib_data, pre, classes, _check_count(check_samples, bounds, calib_data))
    int8 = None
    if precision == "fp32":
        log(f"export: {src} -> {path} (fp32, opset {opset}, batch {lo}:{opt}:{hi})")
        write_onnx(model, pre, bounds, opset, props, path, doc)
    else:
        log(f"export: {src} -> {path} (int8 {int8_flavour}, opset {opset}, batch "
            f"{lo}:{opt}:{hi})")
        calib = calibration_batches(calib_data, pre, classes, calib_samples, batch=opt)
        with tempfile.TemporaryDirectory(prefix="inceptionctl-export-") as tmp:
            fp32 = write_onnx(model, pre, bounds, opset, props, Path(tmp) / "fp32.onnx", doc)
            int8_meta = {"flavour": int8_flavour, "calibration_method": calib_method,
                         "calibration_samples": sum(len(b) for b in calib)}
            settings = ort.quantize_int8(  # type: ignore[attr-defined]
                fp32, path, calib, int8_flavour, calib_method,
                metadata={KEY + "precision": "int8", KEY + "int8": json.dumps(int8_meta)},
                log=log)
        int8 = {**int8_meta, **settings}
    with ort.open(path) as session:
        parity = _prove(model, session, check, bounds, precision, log)
    notes = [f"{check.skipped} unreadable images skipped"] if check.skipped else []
    report = ExportReport(file=str(path), format="onnx", size_bytes=path.stat().st_size,
                          precision=precision, batch=bounds, opset=opset, source=str(src),
                          parity=parity, seconds=time.monotonic() - started,
                          passed=parity.passed, int8=int8, notes=notes)
    return _finish(report, log)


def _build_engine(backend: Backend) -> Callable[..., Any]:
    """The tensorrt backend's ``build_engine``: a method of the backend, or its module's."""
    fn = getattr(backend, "build_engine", None)
    if fn is None:
        module = sys.modules.get(type(backend).__module__)
        fn = getattr(module, "build_engine", None)
    if fn is None:
        raise InceptionError(f"backend '{backend.name}' cannot build engines (no build_engine)")
    return fn


def export_tensorrt(artifact: str | os.PathLike, out: str | os.PathLike | None = None,
                    precision: str = "fp32", batch: str | None = None, opset: int | None = None,
                    calib_data: str | os.PathLike | None = None, calib_samples: int = 256,
                    calib_method: str = "minmax", recipe: Recipe | str | None = None,
                    overrides: Any = None, check_samples: int | None = None,
                    device: str = "cuda", log: Log | None = None) -> ExportReport:
    """Build a TensorRT engine from a checkpoint (through an fp32 ONNX) and prove parity.

    int8 hands the builder a QDQ ONNX of the ``tensorrt`` flavour (symmetric, zero zero-points;
    TensorRT's explicit quantization), with the calibration batches too; fp16 hands it the fp32
    ONNX. The tensorrt backend must be available (else one clear BackendUnavailable line).
    """
    started = time.monotonic()
    log = log or _stderr
    _common(precision, TRT_PRECISIONS, calib_data, calib_samples, calib_method, "tensorrt")
    trt = get_backend("tensorrt")
    trt.require()
    src = _source(artifact)
    model, resolved, classes, pre, source = _load(src, recipe, overrides)
    lo, opt, hi = bounds = parse_batch_range(batch or resolved.export.batch)
    opset = int(opset or resolved.export.opset)
    _check_opset(opset)
    path = _output(src, out, "tensorrt", precision)
    props = metadata_props(resolved, classes, pre, "fp32", bounds, source)
    check = load_samples(calib_data, pre, classes, _check_count(check_samples, bounds, calib_data))
    build = _build_engine(trt)
    int8 = None
    with tempfile.TemporaryDirectory(prefix="inceptionctl-export-") as tmp:
        onnx_path = write_onnx(model, pre, bounds, opset, props, Path(tmp) / "model.onnx",
                               f"{resolved.name}: GoogLeNet exported by inceptionctl")
        calib = None
        if precision == "int8":
            calib = calibration_batches(calib_data, pre, classes, calib_samples, batch=opt)
            int8 = {"flavour": "tensorrt", "calibration_method": calib_method,
                    "calibration_samples": sum(len(b) for b in calib)}
            ort = get_backend("onnxruntime")
            ort.require()
            qdq = Path(tmp) / "model.int8.onnx"
            int8.update(ort.quantize_int8(  # type: ignore[attr-defined]
                onnx_path, qdq, calib, "tensorrt", calib_method,
                metadata={KEY + "precision": "int8", KEY + "int8": json.dumps(int8)}, log=log))
            onnx_path = qdq
        log(f"export: {src} -> {path} (TensorRT {precision}, batch {lo}:{opt}:{hi})")
        kwargs = {"device": device} if "device" in inspect.signature(build).parameters else {}
        engine = Path(build(onnx_path, path, precision, bounds, calib, log, **kwargs))
    with open_artifact(engine, backend="tensorrt", device=device) as session:
        parity = _prove(model, session, check, bounds, precision, log)
    report = ExportReport(file=str(engine), format="tensorrt", size_bytes=engine.stat().st_size,
                          precision=precision, batch=bounds, opset=opset, source=str(src),
                          parity=parity, seconds=time.monotonic() - started,
                          passed=parity.passed, int8=int8)
    return _finish(report, log)


def export(artifact: str | os.PathLike, to: str = "onnx", **options: Any) -> ExportReport:
    """``inceptionctl export ARTIFACT --to onnx|tensorrt``: dispatch with a 'did you mean'."""
    target = _choice(to, TARGETS, "--to")
    if target == "onnx":
        options.pop("device", None)
        return export_onnx(artifact, **options)
    options.pop("int8_flavour", None)
    return export_tensorrt(artifact, **options)
