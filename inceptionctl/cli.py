"""The ``inceptionctl`` command line: parse, call one library function per command, render.

Results go to stdout (a rich table, or one JSON document with ``--json``); progress and logs go
to stderr. A user error ends in one line on stderr and exit code 2; a failed check in exit 1.
Each command module owns its renderer; this module only parses options and dispatches.

Ctrl-C ends every command with one line and exit 130. ``train`` catches SIGINT / SIGTERM itself
(it saves, then ends with 130 / 143); any other command is ended here, in ``_Group.invoke`` and
``main``, rather than left to typer, whose handling (a bare exit, a traceback, "Aborted!") has
changed from one version to the next.
"""

from __future__ import annotations

import difflib
import errno
import json
import math
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence

import typer
from rich.console import Console

from . import __version__
from .errors import InceptionError, one_line, say
from .files import check_output_file, nearest_folder_above, strict_json
from .plots import plot_format


class _NoFlagMetavars:
    """A flag takes no value, so its help row shows none (typer would print ``<bool>``)."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Group(_NoFlagMetavars, typer.core.TyperGroup):
    """Turns every InceptionError raised by a command into one line and its exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InceptionError as exc:
            # under torchrun every rank stops on a signal alike: rank 0 says it once
            if exc.exit_code not in (130, 143) or os.environ.get("RANK", "0") == "0":
                say(f"error: {one_line(exc)}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _interrupted()
            raise typer.Exit(INTERRUPTED) from None
        except OSError as exc:  # what no check caught: a folder we may not read, a link loop
            say(f"error: {os_error(exc)}")
            raise typer.Exit(2 if exc.errno in _USER_ERRNOS else 1) from None
        except (MemoryError, RuntimeError) as exc:
            from .distributed import peer_lost

            line = out_of_memory(exc) or peer_lost(exc)
            if line is None:
                raise
            say(f"error: {line}")
            raise typer.Exit(1) from None


INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C

# an operating-system error about a path the user gave (exit 2); any other (a full disk, an I/O
# error) is the machine's (exit 1)
_USER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                          errno.ELOOP, errno.ENAMETOOLONG, errno.EROFS})


def os_error(exc: OSError) -> str:
    """``PATH: reason`` for an operating-system error (``Permission denied``, ``Too many levels
    of symbolic links``), or its message where it names no path."""
    name = exc.filename
    if name is None or not exc.strerror:
        return one_line(exc)
    return f"{os.fsdecode(name) if isinstance(name, (str, bytes)) else name}: {exc.strerror}"


def out_of_memory(exc: BaseException) -> str | None:
    """One line for an allocation that failed (torch's CPU or CUDA allocator, Python's), or
    None for any other error: a huge ``--batch`` or ``--samples`` ends here, not in a
    traceback."""
    import re

    text = str(exc)
    if not isinstance(exc, MemoryError) and not re.search(
            r"can't allocate memory|out of memory|bad_alloc|DefaultCPUAllocator", text):
        return None
    asked = re.search(r"tried to allocate (\d+) bytes", text)
    size = f": tried to allocate {int(asked.group(1)) / 1e9:,.1f} GB" if asked else ""
    return f"out of memory{size}; use a smaller batch or fewer samples, or free memory"


def _interrupted() -> None:
    """The one line a Ctrl-C leaves on stderr."""
    say(f"interrupted (exit {INTERRUPTED})")


class _Command(_NoFlagMetavars, typer.core.TyperCommand):
    """A command whose flags show no metavar in ``--help``."""


def _usage_error(exc: Any) -> None:
    """Click usage errors as one line too, with where to look."""
    where = f" (see '{exc.ctx.command_path} --help')" if getattr(exc, "ctx", None) else ""
    say(f"error: {exc.format_message()}{where}")


try:  # typer prints usage errors in a rich panel; keep the one-line rule for them too
    import typer.rich_utils as _rich_utils

    _rich_utils.rich_format_error = _usage_error
except (ImportError, AttributeError):  # pragma: no cover - typer without rich support
    pass


app = typer.Typer(cls=_Group, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Train, evaluate, export and profile GoogLeNet / Inception v1.")
recipes_app = typer.Typer(cls=_Group, invoke_without_command=True,
                          pretty_exceptions_enable=False,
                          help="List the shipped recipes, or show one resolved.")
app.add_typer(recipes_app, name="recipes")

# Wide enough for the tables when stdout is a file or a pipe, the terminal's width otherwise.
console = Console(width=None if sys.stdout.isatty() else 200)


# ----------------------------------------------------------------------------- fixed choices

class TrainPrecision(str, Enum):
    """``train``, ``eval`` and ``predict --precision``: fp32 or autocast bf16 / fp16; auto
    measures the candidates on this machine and picks the fastest."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class ExportPrecision(str, Enum):
    """``export --precision``: the union over targets; export checks the one it builds."""

    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class TimedPrecision(str, Enum):
    """``profile --precision``: each item of the list (auto: what eval / train would choose)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    int8 = "int8"


class CalibMethod(str, Enum):
    """``export --calib-method``: how INT8 calibration picks each activation's range."""

    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class Int8Flavour(str, Enum):
    """``export --int8-flavour``: u8 activations for ONNX Runtime's CPU, or symmetric s8."""

    cpu = "cpu"
    tensorrt = "tensorrt"


def _expected(option: str, value: Any, allowed: Sequence[str]) -> InceptionError:
    """``--opt VALUE: expected a, b or c``, with a 'did you mean' when one is close."""
    listed = ", ".join(allowed[:-1]) + " or " + allowed[-1] if len(allowed) > 1 else allowed[0]
    close = difflib.get_close_matches(str(value), allowed, n=1)
    return InceptionError(f"{option} {value}: expected {listed}"
                          + (f" (did you mean '{close[0]}'?)" if close else ""))


def _export_target(value: str) -> str:
    """``--to``: onnx or a registered engine builder, asked of the registry when parsed."""
    from .export import targets

    allowed = targets()
    if value not in allowed:
        raise _expected("--to", value, allowed)
    return value


def _one_of(option: str, choices: type[Enum]) -> Callable[[Any], Any]:
    """A parser giving the member a value names; anything else is one error line."""

    def parse(value: Any) -> Any:
        if isinstance(value, choices):
            return value
        try:
            return choices(value)
        except ValueError:
            raise _expected(option, value, [str(c.value) for c in choices]) from None

    return parse


def _list_of(option: str, choices: type[Enum]) -> Callable[[Any], str]:
    """A parser for a comma-separated list whose every item is one of ``choices``."""

    def parse(value: Any) -> str:
        items = [item.strip() for item in str(value).split(",") if item.strip()]
        if not items:  # an empty list would time nothing and say nothing
            raise _expected(option, repr(str(value)), [str(c.value) for c in choices])
        for item in items:
            _one_of(option, choices)(item)
        return str(value)

    return parse


# --------------------------------------------------------------------------- shared options

SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", help="Override a recipe key (repeatable), e.g. model.num_classes=10.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", metavar="auto|cpu|cuda[:N]", help="Device: auto (the GPU when there is one), "
                                                  "cpu, cuda or cuda:N.")]
RecipeOpt = Annotated[str, typer.Option(
    "--recipe", "-r", metavar="NAME|PATH", help="Recipe: a shipped name or a YAML file.")]
ForeignRecipeOpt = Annotated[Optional[str], typer.Option(
    "--recipe", metavar="NAME|PATH", help="Recipe naming what a foreign artifact lacks: the "
                                          "architecture of weights, the preprocessing and "
                                          "classes of an ONNX (a name, a YAML or a run's "
                                          "recipe.yaml).")]
BackendOpt = Annotated[Optional[str], typer.Option(
    "--backend", metavar="NAME", help="Force a backend (default: by artifact).")]
BackendsOpt = Annotated[str, typer.Option(
    "--backend", metavar="all|NAME[,NAME...]", help="Backends to time: all, or a list such as "
                                                    "torch,onnxruntime.")]
TrainPrecisionOpt = Annotated[TrainPrecision, typer.Option(
    "--precision", parser=_one_of("--precision", TrainPrecision),
    help="fp32 or autocast bf16 / fp16; auto measures them on this machine and picks the "
         "fastest (the choice is cached).")]
InferPrecisionOpt = Annotated[TrainPrecision, typer.Option(
    "--precision", parser=_one_of("--precision", TrainPrecision),
    help="Torch backend: fp32 or autocast bf16 / fp16; auto measures them here and picks the "
         "fastest. ONNX and engines run in their own precision.")]
ExportPrecisionOpt = Annotated[ExportPrecision, typer.Option(
    "--precision", parser=_one_of("--precision", ExportPrecision),
    help="fp32, fp16 or int8 (onnx and tensorrt).")]
TimedPrecisionsOpt = Annotated[str, typer.Option(
    "--precision", metavar="auto|fp32|bf16|fp16|int8[,...]",
    parser=_list_of("--precision", TimedPrecision),
    help="Precisions to time, e.g. fp32,int8; auto: the torch backend's measured choice.")]


def emit_json(data: Any) -> None:
    """``--json``: strict JSON on stdout (a NaN or an infinity is written as null)."""
    sys.stdout.write(json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def _show(*parts: Any) -> None:
    """Print a renderer's output (a table, a line, or several) to stdout. A line is printed as
    it is: it names the user's paths, where ``[...]`` is text, not rich markup."""
    for part in parts:
        console.print(part, markup=not isinstance(part, str))


def _version(value: bool) -> None:
    if value:
        print(f"inceptionctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Train, evaluate, export and profile GoogLeNet / Inception v1."""


# ---------------------------------------------------------------------------------------- recipes

@recipes_app.callback()
def recipes_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the shipped recipes: name, description, parameters, multiply-adds, input size."""
    if ctx.invoked_subcommand is not None:
        return
    from .catalog import recipe_rows, render_recipes

    rows = recipe_rows()
    if as_json:
        emit_json({"recipes": rows})
    else:
        _show(render_recipes(rows))


@recipes_app.command("show", cls=_Command)
def recipes_show(ctx: typer.Context,
                 name: Annotated[str, typer.Argument(help="Recipe name or path to a YAML file.")],
                 set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Print a recipe resolved: defaults filled in and overrides applied (a checkpoint's or an
    exported ONNX's: the recipe it carries)."""
    from .recipe import load_recipe

    if Path(name).suffix in (".pt", ".pth", ".ckpt") and Path(name).is_file():
        recipe = _recipe_or_artifact(name, set_)
    elif Path(name).suffix == ".onnx" and Path(name).is_file():
        from .artifact import read_onnx_metadata
        from .recipe import recipe_from_data

        recipe = recipe_from_data(read_onnx_metadata(name)["recipe"],
                                  f"{name} (embedded recipe)", set_)
    else:
        recipe = load_recipe(name, set_)
    # `recipes --json show NAME` asks for JSON as much as `recipes show NAME --json` does
    if as_json or (ctx.parent is not None and ctx.parent.params.get("as_json")):
        emit_json(recipe.to_dict())
    else:
        sys.stdout.write(f"# {recipe.name} (from {recipe.source})\n{recipe.to_yaml()}")


# --------------------------------------------------------------------------------------- commands

DEFAULT_RECIPE = "googlenet-small"


@app.command(cls=_Command)
def train(
    ctx: typer.Context,
    recipe: RecipeOpt = DEFAULT_RECIPE,
    data: Annotated[str, typer.Option(metavar="PATH|digits|synthetic",
                                      help="Folder (ImageFolder or ILSVRC layout), 'digits' "
                                           "(embedded) or 'synthetic'.")] = "digits",
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<recipe>-<time>).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Start from these weights (a run, our "
                                                         "checkpoint, torchvision's file, or "
                                                         "torchvision:googlenet).")] = None,
    reset_head: Annotated[bool, typer.Option(
        "--reset-head/--strict-head",
        help="When --weights has another class count: new classifier(s) for the data's classes "
             "(the default), or refuse (--strict-head).")] = True,
    resume: Annotated[Optional[str], typer.Option(metavar="auto|PATH",
                                                  help="'auto' or a run folder / last.pt.")] = None,
    device: DeviceOpt = "auto",
    precision: TrainPrecisionOpt = TrainPrecision.auto,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the training step.")] = False,
    channels_last: Annotated[bool, typer.Option(help="channels_last memory format.")] = True,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers (default: CPUs - 1).")] = None,
    decode: Annotated[str, typer.Option(metavar="cpu|gpu",
                                        help="Where training JPEGs are decoded and augmented: "
                                             "in the loader workers (cpu), or batched on the "
                                             "CUDA device (gpu; workers only read files).")] = "cpu",
    val_split: Annotated[float, typer.Option(help="Hold out this fraction of a single folder.")] = 0.0,
    strict_data: Annotated[bool, typer.Option(help="Fail at the first unreadable image.")] = False,
    tensorboard: Annotated[bool, typer.Option(help="Log to TensorBoard in the run folder.")] = False,
    max_nonfinite: Annotated[int, typer.Option(help="Stop after this many non-finite losses "
                                                    "in a row.")] = 5,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop (and save) after this many "
                                                          "optimizer steps.")] = None,
    save_every: Annotated[Optional[str], typer.Option(
        metavar="N|Nm", parser=_save_every,
        help="Also write last.pt inside an epoch: every N optimizer steps, or every N minutes "
             "(e.g. 30m).")] = None,
    nproc: Annotated[Optional[int], typer.Option(help="Launch this many processes on this "
                                                      "machine with torchrun.")] = None,
    max_restarts: Annotated[Optional[int], typer.Option(
        help="With --nproc: torchrun restarts the processes this many times when one dies; "
             "each restart continues from last.pt (needs --resume).")] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a recipe (default: googlenet-small on the embedded digits)."""
    if nproc is not None and nproc < 1:
        raise InceptionError(f"--nproc: expected at least 1, got {nproc}")
    if max_restarts is not None:
        _check_restarts(max_restarts, nproc, resume)
    from .recipe import load_recipe
    from .train import SaveEvery, TrainOptions, render, train as run_training

    if max_nonfinite < 1:
        raise InceptionError(f"--max-nonfinite: expected at least 1, got {max_nonfinite}")
    if max_steps is not None and max_steps < 1:
        raise InceptionError(f"--max-steps: expected at least 1, got {max_steps}")
    resolved = load_recipe(recipe, set_)
    if out is not None:  # before the precision probe and the data, as every mistake here
        _check_out(out)
    if nproc is not None and (nproc > 1 or max_restarts is not None) \
            and "WORLD_SIZE" not in os.environ:
        # the mistakes every process would make, said once, before any process starts
        _check_paths(data, weights, resume, out)
        from .runtime import resolve_device

        resolve_device(device)
        raise typer.Exit(_launch_torchrun(nproc, max_restarts))
    result = run_training(TrainOptions(
        recipe=resolved, overrides=list(set_ or []), data=data, out=out,
        recipe_given=getattr(ctx.get_parameter_source("recipe"), "name", "DEFAULT") != "DEFAULT",
        weights=weights, strict_head=not reset_head, resume=resume, device=device,
        precision=precision.value, compile=compile_, channels_last=channels_last,
        workers=workers, decode=decode, val_split=val_split, strict_data=strict_data,
        tensorboard=tensorboard, max_nonfinite=max_nonfinite, max_steps=max_steps,
        save_every=SaveEvery.parse(save_every) if save_every is not None else None))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if as_json:
        emit_json(result.to_json())
    else:
        _show(render(result))


def _save_every(value: Any) -> str:
    """``--save-every``: checked while parsing (before torchrun starts anything)."""
    from .train import SaveEvery

    SaveEvery.parse(value)
    return str(value)


def _check_restarts(max_restarts: int, nproc: Optional[int], resume: Optional[str]) -> None:
    """``--max-restarts`` is torchrun's: it needs --nproc, and --resume to find the run again."""
    if max_restarts < 0:
        raise InceptionError(f"--max-restarts: expected 0 or more, got {max_restarts}")
    if "WORLD_SIZE" in os.environ:
        raise InceptionError("--max-restarts: this process already runs under torchrun; give "
                             "torchrun its own --max-restarts")
    if nproc is None:
        raise InceptionError("--max-restarts: restarts are torchrun's; add --nproc N (1 or "
                             "more) to launch it")
    if resume is None:
        raise InceptionError("--max-restarts: a restarted process must continue the run; add "
                             "--resume auto (with --out RUN)")


def _check_paths(data: str, weights: Optional[Path], resume: Optional[str],
                 out: Optional[Path] = None) -> None:
    """``--data``, ``--weights`` and ``--resume PATH`` exist, and ``--out`` can be a run folder
    (checked again, fully, by train)."""
    from .data import data_root

    if out is not None:
        _check_out(out, writable=True)
    if data not in ("digits", "synthetic"):
        data_root(data)
    if weights is not None and not str(weights).startswith("torchvision:") \
            and not weights.exists():
        raise InceptionError(f"--weights {weights}: no such file or run folder")
    if resume not in (None, "auto"):
        path = Path(str(resume))
        if not path.exists():
            raise InceptionError(f"--resume {resume}: no checkpoint there (expected a run folder "
                                 f"with last.pt, or a checkpoint file)")
        checkpoint = path / "last.pt" if path.is_dir() else path
        if checkpoint.is_file():  # cut short, damaged, not ours: said once, not by every rank
            from .checkpoint import read_checkpoint

            read_checkpoint(checkpoint)


def _check_out(out: Path, writable: bool = False) -> None:
    """``--out`` can hold a run: not a file, no file above it (and, with ``writable``, a folder
    this user can write in: under torchrun, every rank would otherwise fail apart)."""
    if out.exists() and not out.is_dir():
        raise InceptionError(f"--out {out}: is a file; give a folder for the run")
    above = nearest_folder_above(out, f"--out {out}")
    nearest = out if out.exists() else above
    if writable and nearest is not None and not os.access(nearest, os.W_OK):
        raise InceptionError(f"--out {out}: {nearest} cannot be written to")


def _stop_with_parent() -> None:
    """In torchrun's process, before it starts: SIGTERM it when this process dies, even of a
    SIGKILL, so that its ranks save and stop instead of training on unattended (Linux; a no-op
    elsewhere)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _launch_torchrun(nproc: int, max_restarts: Optional[int] = None) -> int:
    """Re-run this command under torchrun with ``nproc`` processes (and ``max_restarts``
    restarts), through :mod:`inceptionctl.launch` (a failed process is one line, with its
    exit code, instead of torchrun's traceback); return that exit code."""
    import subprocess

    args = list(sys.argv[1:])
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--nproc", "--max-restarts"):
            skip = True
            continue
        if a.startswith(("--nproc=", "--max-restarts=")):
            continue
        cleaned.append(a)
    restarts = [f"--max-restarts={max_restarts}"] if max_restarts is not None else []
    cmd = [sys.executable, "-m", "inceptionctl.launch", "--standalone",
           f"--nproc-per-node={nproc}", *restarts, "-m", "inceptionctl", *cleaned]
    print("launching: " + " ".join(cmd), file=sys.stderr, flush=True)
    # torchrun and its processes get a process group of their own, and SIGINT / SIGTERM sent to
    # this process (Ctrl-C, `kill PID`, systemd, SLURM) go to that whole group, as Ctrl-C reaches
    # a group at a terminal: every rank saves and stops, none is left running on its own
    child = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_stop_with_parent)

    def forward(signum: int, frame: Any) -> None:
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread (a test runner's): the default stays
            pass
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    from .launch import exit_code

    return exit_code(code) if code < 0 else code  # killed by signal N: 128 + N, as a shell says


def _parse_crops(text: str) -> list[int]:
    try:
        values = list(dict.fromkeys(int(v) for v in text.split(",")))
    except ValueError:
        raise InceptionError(f"--crops {text}: expected 1, 10, 144 or a list such as 1,10,144") from None
    if not values or any(v not in (1, 10, 144) for v in values):
        raise InceptionError(f"--crops {text}: each count must be 1, 10 or 144")
    return values


def _foreign_recipe(recipe: Optional[str], set_: Optional[list[str]]):
    if recipe is None:
        if set_:
            raise InceptionError("--set needs --recipe here (artifacts carry their own recipe)")
        return None
    from .recipe import load_recipe

    return load_recipe(recipe, set_)


@app.command("eval", cls=_Command)
def eval_(
    artifacts: Annotated[list[str], typer.Argument(help="Run folders, checkpoints, .onnx files, "
                                                        "engines or torchvision:googlenet; "
                                                        "several = an ensemble.")],
    data: Annotated[str, typer.Option(metavar="PATH|digits",
                                      help="Image folder (class folders, or ILSVRC val + "
                                           "ground truth) or 'digits' (the default).")] = "",
    crops: Annotated[Optional[str], typer.Option(
        metavar="1|10|144[,...]", help="1, 10, 144 or a list like 1,10,144 (default: the "
                                       "recipe's eval.crops).")] = None,
    backend: BackendOpt = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[Optional[int], typer.Option(help="Crops per forward pass.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate the first N images only.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers.")] = None,
    strict_data: Annotated[bool, typer.Option(help="Fail at the first unreadable image.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Write the confusion matrix as a PNG, SVG or PDF (by the file's suffix).")] = None,
    precision: InferPrecisionOpt = TrainPrecision.auto,
    recipe: ForeignRecipeOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate with the paper's 1 / 10 / 144-crop protocol; several artifacts form an ensemble."""
    from .evaluate import EvalOptions, evaluate, plot_confusion, render, skipped_note

    if plot is not None:
        check_output_file(plot)
        plot_format(plot)
    try:
        report = evaluate(EvalOptions(artifacts=artifacts, data=data or "digits",
                                      crops=_parse_crops(crops) if crops is not None else None,
                                      backend=backend, device=device, batch_size=batch_size,
                                      limit=limit, strict_data=strict_data, workers=workers,
                                      recipe=_foreign_recipe(recipe, set_),
                                      precision=precision.value))
    except InceptionError as exc:
        if data or not one_line(exc).startswith("digits: "):
            raise
        raise InceptionError(f"{one_line(exc)}; without --data, eval reads the embedded digits: "
                             f"give --data with the images to evaluate on") from None
    if report is None:  # not rank 0
        return
    if plot is not None:
        plot_confusion(report, plot)
    note = skipped_note(report)
    if note:
        print(note, file=sys.stderr)
    if as_json:
        emit_json(report.to_json())
    else:
        _show(*render(report, plot))


@app.command(cls=_Command)
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Image files or folders.")],
    weights: Annotated[str, typer.Option("--weights", "-w", metavar="ARTIFACT",
                                         help="Artifact to predict with.")],
    crops: Annotated[int, typer.Option(help="1, 10 or 144 crops per image.")] = 1,
    topk: Annotated[int, typer.Option(help="How many classes to show.")] = 5,
    backend: BackendOpt = None,
    device: DeviceOpt = "auto",
    strict_data: Annotated[bool, typer.Option(help="Fail at the first unreadable image.")] = False,
    precision: InferPrecisionOpt = TrainPrecision.auto,
    recipe: ForeignRecipeOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Classify images: the top-k classes with their probabilities."""
    from .evaluate import predict as run_predict, predictions_to_json, render_predictions

    results, bad, session = run_predict(inputs, weights, crops, topk, backend, device,
                                        strict_data, _foreign_recipe(recipe, set_),
                                        precision=precision.value,
                                        log=lambda m: print(m, file=sys.stderr, flush=True))
    if not results and len(bad) == 1:  # the one image given: its reason is the error
        path, reason = bad[0]
        raise InceptionError(f"{path}: cannot read image ({reason})")
    for path, reason in bad:
        print(f"skipped {path}: cannot read image ({reason})", file=sys.stderr)
    if not results:
        raise InceptionError(f"none of the {len(bad)} input image(s) could be read")
    if as_json:
        emit_json(predictions_to_json(results, bad, session.info.path, crops, dict(
            session.info.extra.get("precision_choice") or
            {"precision": session.info.precision, "source": "artifact"})))
    else:
        _show(render_predictions(results, crops))


@app.command("backends", cls=_Command)
def backends_(as_json: JsonOpt = False) -> None:
    """List inference backends: package and version, devices, available or why not."""
    from .catalog import backend_rows, render_backends

    rows = backend_rows()
    if as_json:
        emit_json({"backends": rows})
    else:
        _show(render_backends(rows))


def _check_export_options(to: str, precision: str, **given: Any) -> None:
    """An option this export would ignore is a mistake worth one line: the engine options on
    an ONNX export, calibration on one that does not calibrate, the ONNX INT8 flavour on an
    engine (its builder quantizes in its own)."""
    named = {k: v for k, v in given.items() if v is not None and v is not False}
    flag = {k: "--" + k.replace("_", "-") for k in named}
    if to == "onnx":
        for key in ("timing_cache", "tf32", "verbose"):
            if key in named:
                raise InceptionError(f"{flag[key]}: an engine option (--to tensorrt); this "
                                     f"export writes an ONNX file")
    elif "int8_flavour" in named:
        raise InceptionError(f"--int8-flavour: the INT8 ONNX's flavour (--to onnx); the {to} "
                             f"builder quantizes in its own")
    if precision != "int8":
        for key in ("calib_samples", "calib_method", "int8_flavour"):
            if key in named:
                raise InceptionError(f"{flag[key]}: only an INT8 export calibrates (add "
                                     f"--precision int8); --calib-data also picks the parity "
                                     f"images of any export")


@app.command(cls=_Command)
def export(
    artifact: Annotated[str, typer.Argument(help="Run folder, checkpoint, foreign weights "
                                                 "(with --recipe), or our .onnx (engines).")],
    to: Annotated[str, typer.Option(metavar="TARGET", parser=_export_target,
                                    help="onnx, or a backend that builds engines "
                                         "(tensorrt; see `inceptionctl backends`).")] = "onnx",
    precision: ExportPrecisionOpt = ExportPrecision.fp32,
    batch: Annotated[Optional[str], typer.Option(metavar="MIN:OPT:MAX",
                                                 help="Batch range (default: the recipe's "
                                                      "export.batch).")] = None,
    calib_data: Annotated[Optional[str], typer.Option(metavar="PATH|digits",
                                                      help="Calibration / parity images: "
                                                           "'digits' or a folder.")] = None,
    calib_samples: Annotated[Optional[int], typer.Option(
        help="Calibration images for INT8 (default 256).")] = None,
    check_samples: Annotated[Optional[int], typer.Option(
        help="Parity images (default: 512 of --calib-data, or random ones covering every "
             "batch size).")] = None,
    calib_method: Annotated[Optional[CalibMethod], typer.Option(
        parser=_one_of("--calib-method", CalibMethod),
        help="How INT8 calibration sets each range (default minmax).")] = None,
    int8_flavour: Annotated[Optional[Int8Flavour], typer.Option(
        parser=_one_of("--int8-flavour", Int8Flavour),
        help="INT8 ONNX: cpu (fastest on ONNX Runtime CPU, the default) or tensorrt "
             "(symmetric).")] = None,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (default: the recipe's).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output file (default: beside the "
                                                     "checkpoint).")] = None,
    device: DeviceOpt = "auto",
    timing_cache: Annotated[Optional[Path], typer.Option(
        help="Engines: a timing cache file, read and updated (rebuilds go faster).")] = None,
    tf32: Annotated[bool, typer.Option(help="Engines: allow TF32 in an fp32 engine.")] = False,
    verbose: Annotated[bool, typer.Option(help="Engines: show the builder's own log.")] = False,
    recipe: ForeignRecipeOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export to ONNX (fp32 / fp16 / INT8) or an engine, with parity proven on every export."""
    from .export import ExportCheckFailed, export as run_export, render

    _check_export_options(to, precision.value, calib_samples=calib_samples,
                          calib_method=calib_method, int8_flavour=int8_flavour,
                          timing_cache=timing_cache, tf32=tf32, verbose=verbose)
    options: dict[str, Any] = dict(out=out, precision=precision.value, batch=batch,
                                   calib_data=calib_data,
                                   calib_samples=256 if calib_samples is None else calib_samples,
                                   calib_method=(calib_method or CalibMethod.minmax).value,
                                   check_samples=check_samples,
                                   int8_flavour=(int8_flavour or Int8Flavour.cpu).value,
                                   opset=opset, device=device,
                                   recipe=_foreign_recipe(recipe, set_),
                                   engine_options={"timing_cache": timing_cache, "tf32": tf32,
                                                   "verbose": verbose})
    try:
        report = run_export(artifact, to=to, **options)
    except ExportCheckFailed as failed:
        if as_json:
            emit_json(failed.report.to_json())
        else:
            _show(render(failed.report))
        raise
    if as_json:
        emit_json(report.to_json())
    else:
        _show(render(report))


@app.command(cls=_Command)
def compare(
    a: Annotated[str, typer.Argument(help="First artifact (the reference).")],
    b: Annotated[str, typer.Argument(help="Second artifact.")],
    data: Annotated[str, typer.Option(metavar="random|digits|PATH",
                                      help="random, digits or an image folder.")] = "random",
    samples: Annotated[int, typer.Option(help="How many images.")] = 64,
    atol: Annotated[float, typer.Option(help="Absolute tolerance (fp32 pairs).")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Relative tolerance, times |A| (fp32 pairs; an "
                                             "element fails only past both).")] = 1e-3,
    backend_a: Annotated[Optional[str], typer.Option(metavar="NAME",
                                                     help="Force A's backend.")] = None,
    backend_b: Annotated[Optional[str], typer.Option(metavar="NAME",
                                                     help="Force B's backend.")] = None,
    device: DeviceOpt = "auto",
    recipe: ForeignRecipeOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run two artifacts on the same inputs; report differences, agreement and a verdict.

    A is the reference. Two fp32 artifacts pass when no logit exceeds both --atol and --rtol;
    a pair with an fp16 or int8 side passes with >= 99% top-1 agreement, as export's parity.
    """
    from .compare import compare as run_compare, render

    report = run_compare(a, b, data=data, samples=samples, atol=atol, rtol=rtol,
                         backend_a=backend_a, backend_b=backend_b,
                         recipe=_foreign_recipe(recipe, set_), device=device)
    if as_json:
        emit_json(report.to_json())
    else:
        _show(render(report))
    if not report.passed:
        raise typer.Exit(1)


@app.command(cls=_Command)
def profile(
    recipe: RecipeOpt = "googlenet",
    input_size: Annotated[Optional[int], typer.Option(help="Square input side (default: the "
                                                           "recipe's).")] = None,
    paper: Annotated[bool, typer.Option(help="Put the paper's Table 1 cells beside ours.")] = False,
    time_: Annotated[bool, typer.Option("--time", help="Also time the backends.")] = False,
    backend: BackendsOpt = "all",
    precision: TimedPrecisionsOpt = "fp32",
    batch: Annotated[str, typer.Option(metavar="N[,N...]",
                                       help="Batch sizes, e.g. 1,8,32.")] = "1,8,32",
    device: DeviceOpt = "auto",
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 3,
    iters: Annotated[Optional[int], typer.Option(help="Timed runs (default 10).")] = None,
    seconds: Annotated[Optional[float], typer.Option(help="Time for this long instead of "
                                                          "--iters.")] = None,
    train_: Annotated[bool, typer.Option("--train", help="Also time the training step.")] = False,
    calib_data: Annotated[Optional[str], typer.Option(
        metavar="PATH|digits", help="INT8 calibration images (default: the embedded "
                                    "digits).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Throughput-vs-batch plot, PNG, SVG or PDF by the suffix (with --time).")] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Table 1 of the paper counted from the built model; with --time, speed per backend.

    --recipe may also name an artifact (run folder or checkpoint): its embedded recipe is counted.
    """
    from .profile import render_table1, table1

    resolved = _recipe_or_artifact(recipe, set_, input_size)
    prof = table1(resolved, input_size)
    speed = None
    if time_:
        from .speed import plot as speed_plot, timed_profile

        options = _speed_options(recipe, resolved, backend, precision, batch, device, warmup,
                                 iters, seconds, train_)
        if plot is not None:
            check_output_file(plot)
            plot_format(plot)
        if calib_data not in (None, "digits") and not Path(str(calib_data)).is_dir():
            what = "not a folder" if Path(str(calib_data)).exists() else "no such folder"
            raise InceptionError(f"--calib-data {calib_data}: {what} (expected a folder of "
                                 f"images or 'digits')")
        options.calib_data = calib_data
        speed = timed_profile(options)
        if plot is not None:
            speed_plot(speed, plot)
    elif plot is not None or calib_data is not None:
        raise InceptionError(f"{'--plot' if plot is not None else '--calib-data'} is for the "
                             f"timed profile: add --time")
    if as_json:
        data = prof.to_json(paper=paper)
        if speed is not None:
            data["speed"] = speed.to_json()
        emit_json(data)
    else:
        _show(render_table1(prof, paper=paper))
        if speed is not None:
            from .speed import render as render_speed

            _show(render_speed(speed))
    if speed is not None and not any(r.available for r in speed.rows):
        # the table (or JSON) says why for each backend; the exit status says nothing ran
        raise InceptionError(f"--time: nothing could be timed here ({speed.rows[0].backend}: "
                             f"{one_line(InceptionError(speed.rows[0].reason))})")


def _speed_options(recipe: str, resolved: Any, backend: str, precision: str, batch: str,
                   device: str, warmup: int, iters: Optional[int], seconds: Optional[float],
                   train_: bool) -> Any:
    """``profile --time``'s options checked and turned into a SpeedOptions."""
    from .backend import backend_names
    from .speed import SpeedOptions

    if iters is not None and iters < 1:
        raise InceptionError(f"--iters: expected at least 1, got {iters}")
    if warmup < 0:
        raise InceptionError(f"--warmup: expected 0 or more, got {warmup}")
    # a backend or precision named twice is timed once, as a batch is
    names = backend_names() if backend == "all" else \
        list(dict.fromkeys(b.strip() for b in backend.split(",")))
    precisions = list(dict.fromkeys(p.strip() for p in precision.split(",") if p.strip()))
    try:  # every item a number (1,,2 is a typo, not 1,2); a batch named twice is timed once
        batches = list(dict.fromkeys(int(b) for b in batch.split(",")))
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise InceptionError(f"--batch {batch}: expected a list of positive integers such "
                             f"as 1,8,32")
    if seconds is not None and not 0 < seconds < math.inf:  # nan too
        raise InceptionError(f"--seconds: expected a positive duration, got {seconds}")
    known = backend_names()
    for name in names:
        if name not in known:
            from .backend import get_backend

            get_backend(name)  # raises: unknown backend, with a "did you mean"
    artifact = Path(recipe) if Path(recipe).suffix in (".pt", ".pth") or Path(recipe).is_dir() else None
    if artifact is not None:
        from .artifact import resolve_artifact

        artifact = resolve_artifact(artifact)
    return SpeedOptions(
        recipe=resolved, artifact=artifact, backends=names, precisions=precisions,
        batches=batches, device=device, warmup=warmup,
        iters=(iters or 10) if seconds is None else iters,
        seconds=seconds, train=train_,
        log=lambda m: print(m, file=sys.stderr, flush=True))


def _recipe_or_artifact(name: str, set_: Optional[list[str]], input_size: Optional[int] = None):
    """A recipe by name / YAML path, or the recipe an artifact (run folder, checkpoint) carries,
    at ``input_size`` when one is given."""
    from .checkpoint import checkpoint_recipe, read_checkpoint
    from .recipe import at_input_size, load_recipe

    path = Path(name)
    if path.suffix == ".onnx":
        raise InceptionError(f"{name}: profile counts a recipe or a checkpoint; for an exported "
                             f"model give the checkpoint it came from (or time it with "
                             f"`profile --time --backend onnxruntime`)")
    if path.is_dir() or path.suffix in (".pt", ".pth", ".ckpt"):
        from .artifact import resolve_artifact

        ckpt_path = resolve_artifact(path)
        resolved = checkpoint_recipe(read_checkpoint(ckpt_path), str(ckpt_path), set_)
    else:
        resolved = load_recipe(name, set_)
    if input_size is None:
        return resolved
    if input_size < 1:
        raise InceptionError(f"--input-size {input_size}: expected a positive integer")
    try:
        return at_input_size(resolved, input_size)
    except InceptionError as exc:  # the size the recipe cannot take, named as it was given
        raise InceptionError(f"--input-size {input_size}: "
                             f"{one_line(exc).split(': ', 1)[-1]}") from None


def main() -> None:
    """The console script (``inceptionctl``) and ``python -m inceptionctl``."""
    from .host import keep_freed_memory

    keep_freed_memory()  # a process-wide choice: the executable's, not the library's
    try:
        app()
    except KeyboardInterrupt:  # a Ctrl-C while parsing or importing, before a command runs
        _interrupted()
        sys.exit(INTERRUPTED)
