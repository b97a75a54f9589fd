"""The one checkpoint format, and loading weights into a model (ours or torchvision's).

A checkpoint is a plain dict saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``, so loading never runs code from the file::

    {"format": "inceptionctl.checkpoint", "format_version": 1, "inceptionctl_version": "0.1.0",
     "recipe": {...resolved recipe...}, "classes": [...], "preprocessing": {...},
     "state_dict": {...}, "ema_state_dict": {...} | None, "meta": {...}, "train_state": {...} | None}

``recipe``, ``classes`` and ``preprocessing`` are the facts every artifact carries, under the names
:mod:`inceptionctl.artifact` gives them. When an EMA (Polyak) copy is present, it is what inference, export and ``load_weights`` use.
Foreign weights: a torchvision ``googlenet`` state dict (``googlenet-1378be20.pth``), with or
without its aux-head keys, loads into a model built from the ``googlenet-bn`` recipe.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .artifact import check_format_version, class_names, preprocessing
from .errors import InceptionError, one_line
from .files import atomic_path, known_kind
from .recipe import Recipe, recipe_from_data

__all__ = ["FORMAT", "FORMAT_VERSION", "LoadReport", "checkpoint_recipe", "class_names",
           "is_checkpoint", "load_model", "load_weights", "load_with_facts", "preprocessing",
           "read_checkpoint", "read_weights_file", "save_checkpoint", "to_model_keys"]

FORMAT = "inceptionctl.checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, model: nn.Module, recipe: Recipe, *,
                    ema_state_dict: dict[str, torch.Tensor] | None = None,
                    meta: dict[str, Any] | None = None,
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically and return its path."""
    from . import __version__

    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "inceptionctl_version": __version__,
        "recipe": recipe.to_dict(),
        "classes": class_names(recipe),
        "preprocessing": preprocessing(recipe),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "ema_state_dict": ({k: v.detach().cpu() for k, v in ema_state_dict.items()}
                           if ema_state_dict is not None else None),
        "meta": dict(meta or {}),
        "train_state": train_state,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def read_weights_file(path: str | os.PathLike) -> Any:
    """``torch.load`` with weights only; every failure is one clear InceptionError."""
    path = Path(path)
    if not path.exists():
        raise InceptionError(f"{path}: no such file")
    if path.is_dir():
        raise InceptionError(f"{path}: is a folder, expected a weights file")
    if path.stat().st_size == 0:
        raise InceptionError(f"{path}: empty file, not a weights file")
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or a legacy pickle
        what = _looks_like(head)
        if path.suffix.lower() == ".onnx" and "ONNX" in what:  # named right, asked for wrong
            what = "it is an ONNX model: this option takes a checkpoint or a state dict (.pt)"
        raise InceptionError(f"{path}: not a PyTorch weights file ({what})")
    damaged = _damaged_member(path) if head.startswith(b"PK\x03\x04") else None
    if damaged is not None:
        raise InceptionError(f"{path}: damaged (its entry {damaged.split('/', 1)[-1]} fails "
                             f"its checksum: the file changed after it was written; use another "
                             f"copy)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to parse the file is the file's fault, not ours
        raise InceptionError(f"{path}: cannot be read as weights (only plain tensors are "
                             f"loaded, never code): {_load_reason(exc)}") from None


def _damaged_member(path: Path) -> str | None:
    """The first entry of torch.save's zip archive whose bytes fail their CRC-32 (torch.load does
    not check them, so a flipped or overwritten block would load as wrong weights); None when
    every entry checks, or when the archive itself cannot be read (torch.load then says why)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return None


def _load_reason(exc: Exception) -> str:
    """torch.load's error, short: whole sentences up to about 160 characters, and what a
    missing zip directory means (a file cut short)."""
    text = one_line(exc)
    if "failed finding central directory" in text:
        return "the archive is incomplete (cut short while written or copied?)"
    if text.startswith("Weights only load failed"):  # a pickled object: name it, not torch's advice
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        return (f"it holds a Python object ({found.group(1)})" if found
                else "it holds Python objects besides tensors")
    kept = ""
    for sentence in text.split(". "):
        if kept and len(kept) + len(sentence) > 160:
            break
        kept = f"{kept}. {sentence}" if kept else sentence
    return kept.rstrip(".")


def _looks_like(head: bytes) -> str:
    """What the first bytes of a file that is not a weights file suggest it is."""
    what = known_kind(head)
    if what is not None:
        return f"it looks like {what}"
    if head[:1] == b"\x08":  # a protobuf's first field, as an ONNX model's ir_version
        return "it looks like an ONNX model, which needs the .onnx suffix"
    try:
        head.decode("utf-8")
        return "it looks like a text file"
    except UnicodeDecodeError:
        return "its first bytes are neither a zip archive nor a pickle"


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Our checkpoint as a dict; a clear error when the file is something else."""
    obj = read_weights_file(path)
    if not is_checkpoint(obj):
        raise InceptionError(f"{path}: not an inceptionctl checkpoint (for foreign weights "
                             f"such as a torchvision state dict, name the architecture with "
                             f"--recipe)")
    check_checkpoint(obj, path)
    return obj


def check_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a checkpoint of a newer format, or one missing what every checkpoint holds (its
    recipe, its weights, its class names as a list), with one line instead of a KeyError."""
    check_format_version(obj.get("format_version", 0), FORMAT_VERSION, path, "checkpoint")
    weights = obj.get("ema_state_dict") or obj.get("state_dict")
    classes = obj.get("classes")
    problem = ("it has no recipe" if not isinstance(obj.get("recipe"), dict)
               else "it has no weights (state_dict)" if not isinstance(weights, dict)
               else "its classes are not a list of names"
               if classes is not None and not (isinstance(classes, list)
                                               and all(isinstance(c, str) for c in classes))
               else None)
    if problem is not None:
        raise InceptionError(f"{path}: a damaged inceptionctl checkpoint ({problem}); use "
                             f"another copy")


def checkpoint_recipe(ckpt: dict[str, Any], source: str, overrides: Any = None) -> Recipe:
    return recipe_from_data(ckpt["recipe"], source=f"{source} (embedded recipe)",
                            overrides=overrides)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: our checkpoint (EMA copy first) or a bare state dict."""
    if is_checkpoint(obj):
        check_checkpoint(obj, path)
        sd = obj.get("ema_state_dict") or obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        sd = obj["model"]
    else:
        sd = obj
    if not isinstance(sd, dict) or not sd or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise InceptionError(f"{path}: holds no state dict (expected a mapping of parameter "
                             f"names to tensors)")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def to_model_keys(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision's flat keys (``conv1.``, ``inception3a.``, ``aux1.``) to ours.

    Our GoogLeNet keeps torchvision's submodule names inside ``stem``/``blocks``/``aux``
    containers, so the mapping is a prefix chosen by the first name of each key.
    """
    prefixes: dict[str, str] = {}
    for container in ("stem", "blocks", "aux"):
        sub = getattr(model, container, None)
        if sub is not None:
            for name, _ in sub.named_children():
                prefixes[name] = f"{container}."
    out = {}
    for key, value in sd.items():
        head = key.split(".", 1)[0]
        out[prefixes.get(head, "") + key if head in prefixes else key] = value
    return out


@dataclass
class LoadReport:
    """What ``load_weights`` did: the keys it loaded and those it left as initialised."""

    source: str
    loaded: int = 0
    reset: list[str] = field(default_factory=list)
    aux_initialised: bool = False
    ignored_aux: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        out = []
        if self.reset:
            out.append(f"new head (re-initialised): {', '.join(self.reset)}")
        if self.aux_initialised:
            out.append("the file has no aux-head weights: aux heads left as initialised")
        if self.ignored_aux:
            out.append(f"ignored {len(self.ignored_aux)} aux-head tensors the model has no "
                       f"head for")
        return out


def _short(items: list[str], n: int = 3) -> str:
    text = ", ".join(items[:n])
    return text + (f", ... {len(items) - n} more" if len(items) > n else "")


def _is_aux(key: str) -> bool:
    return key.startswith("aux.")


def _head_test(model: nn.Module) -> Callable[[str], bool]:
    """``key -> bool``: is a state-dict key part of a classifier layer the model declares."""
    declared = getattr(model, "classifier_names", None)
    if declared is None:  # a model that declares none: torchvision's GoogLeNet names
        return lambda key: key.startswith("fc.") or (key.startswith("aux.") and ".fc2." in key)
    names = set(declared())
    return lambda key: key.rsplit(".", 1)[0] in names


def load_weights(model: nn.Module, path: str | os.PathLike, reset_head: bool = False,
                 strict: bool = True) -> LoadReport:
    """Load our checkpoint or a torchvision GoogLeNet state dict into ``model``.

    Strict by default: any missing, unexpected or shape-mismatched tensor is an error that lists
    them. Aux-head tensors are optional on both sides (they only matter for training).
    ``reset_head=True`` keeps the model's own (fresh) classifier where the file's has another
    number of classes, for fine-tuning.
    """
    path = Path(path)
    return _load_into(model, read_weights_file(path), path, reset_head, strict)


def _load_into(model: nn.Module, obj: Any, path: Path, reset_head: bool, strict: bool,
               for_training: bool = True) -> LoadReport:
    sd = to_model_keys(model, _unwrap_state_dict(obj, path))
    own = model.state_dict()
    report = LoadReport(str(path))
    is_head = _head_test(model)

    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = sorted((k for k in sd if k in own and sd[k].shape != own[k].shape),
                        key=lambda k: (_is_aux(k), k))  # the main head first in messages

    # Aux heads: optional in the file (left initialised), ignored when the model has none.
    if missing and all(_is_aux(k) for k in missing) and not any(_is_aux(k) for k in sd):
        report.aux_initialised = True
        missing = []
    report.ignored_aux = [k for k in unexpected if _is_aux(k)]
    unexpected = [k for k in unexpected if not _is_aux(k)]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]

    if reset_head:
        report.reset = sorted({k.rsplit(".", 1)[0] for k in mismatched if is_head(k)})
        mismatched = [k for k in mismatched if not is_head(k)]
    if strict and (missing or unexpected or mismatched):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_short(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_short(unexpected)})")
        if mismatched:
            shapes = [f"{k} {list(sd[k].shape)} vs model {list(own[k].shape)}" for k in mismatched]
            parts.append(f"{len(mismatched)} of another shape ({_short(shapes, 2)})")
        hint = ""
        if mismatched and all(is_head(k) for k in mismatched) and for_training:
            hint = ("; only the classifier differs: train without --strict-head "
                    "(reset_head=True) to fine-tune to another class count")
        elif mismatched and all(is_head(k) for k in mismatched) and "fc.weight" in sd:
            n = sd["fc.weight"].shape[0]  # run as they are: the recipe must have their classes
            hint = (f"; only the classifier differs: the weights have {n} classes (add --set "
                    f"model.num_classes={n} --set data.classes=null, or a recipe naming them)")
        raise InceptionError(f"{path}: weights do not fit this model: {'; '.join(parts)}{hint}")

    usable = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    for k, v in usable.items():
        if own[k].is_floating_point() != v.is_floating_point():
            raise InceptionError(f"{path}: {k} has dtype {v.dtype}, the model expects "
                                 f"{own[k].dtype}")
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    return report


def load_model(path: str | os.PathLike, recipe: Recipe | None = None,
               overrides: Any = None) -> tuple[nn.Module, Recipe, dict[str, Any]]:
    """Build and load the model an artifact describes: ``(model in eval mode, recipe, info)``.

    Our checkpoints carry their recipe; a foreign state dict needs ``recipe``.
    """
    from .model import build_model

    path = Path(path)
    obj = read_weights_file(path)
    info: dict[str, Any] = {"path": str(path)}
    if is_checkpoint(obj):  # ours speak for themselves, as our ONNX files and engines do
        check_checkpoint(obj, path)
        recipe = checkpoint_recipe(obj, str(path), overrides)
        info.update(meta=obj.get("meta", {}), classes=obj.get("classes"),
                    ema=obj.get("ema_state_dict") is not None)
    elif recipe is None:
        raise InceptionError(f"{path}: foreign weights carry no architecture; name it with "
                             f"--recipe (e.g. --recipe googlenet-bn for torchvision's googlenet)")
    model = build_model(recipe)
    info["load"] = _load_into(model, obj, path, reset_head=False, strict=True,
                              for_training=False)
    model.eval()
    return model, recipe, info


def load_with_facts(path: str | os.PathLike, recipe: Recipe | None = None, overrides: Any = None
                    ) -> tuple[nn.Module, Recipe, list[str], dict[str, Any], dict[str, Any]]:
    """The fp32 CPU model an artifact describes, with the facts an export of it carries:
    ``(model, recipe, classes, preprocessing, source)``; ``source`` names the file, its kind
    (checkpoint | foreign), the weights used (ema | model) and the checkpoint's meta."""
    path = Path(path)
    model, resolved, info = load_model(path, recipe=recipe, overrides=overrides)
    model = model.float().cpu().eval()
    classes = list(info.get("classes") or class_names(resolved))
    source = {"file": path.name, "kind": "checkpoint" if "meta" in info else "foreign",
              "weights": "ema" if info.get("ema") else "model", "meta": info.get("meta", {})}
    if recipe is not None and source["kind"] == "checkpoint":  # ours: the recipe went unused
        raise InceptionError(RECIPE_NOT_USED.format(path=path))
    return model, resolved, classes, preprocessing(resolved), source


#: A --recipe that no artifact given needed (ours carry their own recipe).
RECIPE_NOT_USED = ("{path}: carries its own recipe; --recipe is for weights and ONNX files from "
                   "elsewhere (drop it here)")
