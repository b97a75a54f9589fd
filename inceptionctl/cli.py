"""The ``inceptionctl`` command line: parse, call one library function per command, render.

Results go to stdout (a rich table, or one JSON document with ``--json``); progress and logs go
to stderr. A user error ends in one line on stderr and exit code 2; a failed check in exit 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import InceptionError, one_line


class _Group(typer.core.TyperGroup):
    """Turns every InceptionError raised by a command into one line and its exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InceptionError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
            raise typer.Exit(exc.exit_code) from None


def _usage_error(exc: Any) -> None:
    """Click usage errors as one line too, with where to look."""
    where = f" (see '{exc.ctx.command_path} --help')" if getattr(exc, "ctx", None) else ""
    print(f"error: {exc.format_message()}{where}", file=sys.stderr, flush=True)


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

SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", help="Override a recipe key (repeatable), e.g. model.num_classes=10.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


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
    from .profile import count_cost
    from .recipe import available_recipes, load_recipe

    rows = []
    for name in available_recipes():
        recipe = load_recipe(name)
        cost = count_cost(recipe)
        rows.append({"name": name, "description": recipe.description, "params": cost.params,
                     "params_with_aux": cost.params_with_aux, "macs": cost.macs,
                     "input_size": recipe.data.input_size,
                     "num_classes": recipe.model.num_classes})
    if as_json:
        emit_json({"recipes": rows})
        return
    table = Table(title="recipes")
    for col, justify in (("name", "left"), ("description", "left"), ("params", "right"),
                         ("aux params", "right"), ("mult-adds", "right"), ("input", "right"),
                         ("classes", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r["name"], r["description"], f"{r['params']:,}",
                      f"{r['params_with_aux'] - r['params']:,}", f"{r['macs'] / 1e9:.3f} G",
                      f"{r['input_size']}x{r['input_size']}", str(r["num_classes"]))
    console.print(table)


@recipes_app.command("show")
def recipes_show(name: Annotated[str, typer.Argument(help="Recipe name or path to a YAML file.")],
                 set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Print a recipe resolved: defaults filled in and overrides applied."""
    from .recipe import load_recipe

    recipe = load_recipe(name, set_)
    if as_json:
        emit_json(recipe.to_dict())
    else:
        sys.stdout.write(f"# {recipe.name} (from {recipe.source})\n{recipe.to_yaml()}")


# ------------------------------------------------------------------------- commands still to come

DEFAULT_RECIPE = "googlenet-small"


@app.command()
def train(
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Recipe name or YAML path.")] = DEFAULT_RECIPE,
    data: Annotated[str, typer.Option(help="Folder (ImageFolder or ILSVRC layout), 'digits' "
                                           "(embedded) or 'synthetic'.")] = "digits",
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<recipe>-<time>).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Start from these weights (our "
                                                         "checkpoint or torchvision's).")] = None,
    reset_head: Annotated[bool, typer.Option(help="New classifier(s) when --weights has "
                                                  "another class count.")] = False,
    resume: Annotated[Optional[str], typer.Option(help="'auto' or a run folder / last.pt.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16 (autocast).")] = "auto",
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the training step.")] = False,
    channels_last: Annotated[bool, typer.Option(help="channels_last memory format.")] = True,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers (default: CPUs - 1).")] = None,
    val_split: Annotated[float, typer.Option(help="Hold out this fraction of a single folder.")] = 0.0,
    strict_data: Annotated[bool, typer.Option(help="Fail at the first unreadable image.")] = False,
    tensorboard: Annotated[bool, typer.Option(help="Log to TensorBoard in the run folder.")] = False,
    max_nonfinite: Annotated[int, typer.Option(help="Stop after this many non-finite losses "
                                                    "in a row.")] = 5,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop (and save) after this many "
                                                          "optimizer steps.")] = None,
    nproc: Annotated[Optional[int], typer.Option(help="Launch this many processes on this "
                                                      "machine with torchrun.")] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a recipe (default: googlenet-small on the embedded digits)."""
    if nproc is not None and nproc < 1:
        raise InceptionError(f"--nproc: expected at least 1, got {nproc}")
    if nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_launch_torchrun(nproc))
    from .recipe import load_recipe
    from .train import TrainOptions, train as run_training

    if max_nonfinite < 1:
        raise InceptionError(f"--max-nonfinite: expected at least 1, got {max_nonfinite}")
    if max_steps is not None and max_steps < 1:
        raise InceptionError(f"--max-steps: expected at least 1, got {max_steps}")
    opts = TrainOptions(recipe=load_recipe(recipe, set_), overrides=list(set_ or []), data=data, out=out, weights=weights,
                        reset_head=reset_head, resume=resume, device=device,
                        precision=precision, compile=compile_, channels_last=channels_last,
                        workers=workers, val_split=val_split, strict_data=strict_data,
                        tensorboard=tensorboard, max_nonfinite=max_nonfinite,
                        max_steps=max_steps)
    result = run_training(opts)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if as_json:
        emit_json(result.to_json())
    else:
        best = (f"best top-1 {result.best_top1:.2f}% (epoch {result.best_epoch})"
                if result.best_top1 is not None else "no validation yet")
        console.print(f"run folder: {result.run}  {best}  {result.epochs} epochs  "
                      f"{result.seconds:.1f}s")


def _launch_torchrun(nproc: int) -> int:
    """Re-run this command under torchrun with ``nproc`` processes; return its exit code."""
    import subprocess

    args = list(sys.argv[1:])
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "inceptionctl", *cleaned]
    print("launching: " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd)


def _parse_crops(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
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


@app.command("eval")
def eval_(
    artifacts: Annotated[list[str], typer.Argument(help="Run folders, checkpoints, .onnx files or "
                                                        "engines; several = an ensemble.")],
    data: Annotated[str, typer.Option(help="Image folder (class folders, or ILSVRC val + "
                                           "ground truth) or 'digits'.")] = "digits",
    crops: Annotated[str, typer.Option(help="1, 10, 144 or a list like 1,10,144.")] = "1",
    backend: Annotated[Optional[str], typer.Option(help="Force a backend (default: by artifact).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    batch_size: Annotated[Optional[int], typer.Option(help="Crops per forward pass.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate the first N images only.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers.")] = None,
    strict_data: Annotated[bool, typer.Option(help="Fail at the first unreadable image.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Write the confusion matrix as a PNG.")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="Architecture of foreign weights.")] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate with the paper's 1 / 10 / 144-crop protocol; several artifacts form an ensemble."""
    from .evaluate import EvalOptions, evaluate

    report = evaluate(EvalOptions(artifacts=artifacts, data=data, crops=_parse_crops(crops),
                                  backend=backend, device=device, batch_size=batch_size,
                                  limit=limit, strict_data=strict_data, workers=workers,
                                  recipe=_foreign_recipe(recipe, set_)))
    if report is None:  # not rank 0
        return
    if plot is not None:
        from .plots import confusion_png

        confusion_png(report.confusion, report.classes, plot,
                      f"{report.main.models} model(s), {report.main.crops} crop(s): "
                      f"top-1 {report.main.top1:.2f}%")
    if report.skipped:
        shown = "; ".join(report.skipped_paths[:3])
        print(f"skipped {report.skipped} unreadable image(s): {shown}"
              + (" ..." if report.skipped > 3 else ""), file=sys.stderr)
    if as_json:
        emit_json(report.to_json())
        return
    table = Table(title=f"eval: {report.images} images, backend {report.backend} ({report.device})")
    for col in ("models", "crops", "cost", "top-1", "top-5", "top-1 err", "top-5 err",
                "Δ top-1", "Δ top-5"):
        table.add_column(col, justify="right")
    for r in report.rows:
        table.add_row(str(r.models), str(r.crops), str(r.cost), f"{r.top1:.2f}%", f"{r.top5:.2f}%",
                      f"{100 - r.top1:.2f}%", f"{100 - r.top5:.2f}%",
                      f"{r.delta_top1:+.2f}" if r is not report.rows[0] else "base",
                      f"{r.delta_top5:+.2f}" if r is not report.rows[0] else "base")
    console.print(table)
    console.print(f"{report.images_per_s:,.1f} images/s, {report.crops_per_s:,.0f} crops/s "
                  f"({report.seconds:.1f}s)" + (f"; confusion matrix: {plot}" if plot else ""))


@app.command()
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Image files or folders.")],
    weights: Annotated[str, typer.Option("--weights", "-w", help="Artifact to predict with.")],
    crops: Annotated[int, typer.Option(help="1, 10 or 144 crops per image.")] = 1,
    topk: Annotated[int, typer.Option(help="How many classes to show.")] = 5,
    backend: Annotated[Optional[str], typer.Option(help="Force a backend.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    strict_data: Annotated[bool, typer.Option(help="Fail at the first unreadable image.")] = False,
    recipe: Annotated[Optional[str], typer.Option(help="Architecture of foreign weights.")] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Classify images: the top-k classes with their probabilities."""
    from .evaluate import predict as run_predict

    results, bad, session = run_predict(inputs, weights, crops, topk, backend, device,
                                        strict_data, _foreign_recipe(recipe, set_))
    for path, reason in bad:
        print(f"skipped {path}: cannot read image ({reason})", file=sys.stderr)
    if not results:
        raise InceptionError(f"none of the {len(bad)} input image(s) could be read")
    if as_json:
        emit_json({"weights": session.info.path, "crops": crops,
                   "predictions": [{"path": r.path, "topk": [
                       {"class": c, "index": i, "probability": p} for c, i, p in r.topk]}
                       for r in results],
                   "skipped": [{"path": p, "reason": why} for p, why in bad]})
        return
    table = Table(title=f"predict ({crops} crop{'s' if crops > 1 else ''})")
    table.add_column("image")
    for j in range(len(results[0].topk)):
        table.add_column(f"#{j + 1}")
    from rich.markup import escape

    for r in results:
        table.add_row(escape(r.path), *[escape(f"{c} {p:.1%}") for c, _, p in r.topk])
    console.print(table)


@app.command("backends")
def backends_(as_json: JsonOpt = False) -> None:
    """List inference backends: package and version, devices, available or why not."""
    from .backend import backend_names, get_backend

    rows = []
    for name in backend_names():
        try:
            b = get_backend(name)
            av = b.availability()
            rows.append({"name": name, "package": b.package, "version": av.version,
                         "devices": list(av.devices), "available": av.available,
                         "reason": av.reason, "install": b.install_hint,
                         "opens": list(b.suffixes)})
        except InceptionError as exc:
            rows.append({"name": name, "package": None, "version": None, "devices": [],
                         "available": False, "reason": str(exc), "install": "", "opens": []})
    if as_json:
        emit_json({"backends": rows})
        return
    table = Table(title="backends")
    for col in ("name", "package", "version", "devices", "available", "opens", "install"):
        table.add_column(col)
    from rich.markup import escape

    for r in rows:
        table.add_row(r["name"], r["package"] or "-", r["version"] or "-",
                      ", ".join(r["devices"]) or "-",
                      "yes" if r["available"] else escape(f"no: {r['reason']}"),
                      " ".join(r["opens"]), "" if r["available"] else escape(r["install"]))
    console.print(table)


@app.command()
def export(
    artifact: Annotated[str, typer.Argument(help="Run folder, checkpoint, or foreign weights "
                                                 "(with --recipe).")],
    to: Annotated[str, typer.Option(help="onnx or tensorrt.")] = "onnx",
    precision: Annotated[str, typer.Option(help="fp32 or int8 (onnx); fp32, fp16 or int8 "
                                                "(tensorrt).")] = "fp32",
    batch: Annotated[Optional[str], typer.Option(help="Batch range MIN:OPT:MAX (default: the "
                                                      "recipe's export.batch).")] = None,
    calib_data: Annotated[Optional[str], typer.Option(help="Calibration / parity images: "
                                                           "'digits' or a folder.")] = None,
    calib_samples: Annotated[int, typer.Option(help="Calibration images for INT8.")] = 256,
    calib_method: Annotated[str, typer.Option(help="minmax, entropy or percentile.")] = "minmax",
    int8_flavour: Annotated[str, typer.Option(help="cpu (fastest on ONNX Runtime CPU) or "
                                                   "tensorrt (symmetric).")] = "cpu",
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (default: the recipe's).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output file (default: beside the "
                                                     "checkpoint).")] = None,
    device: Annotated[str, typer.Option(help="Device for TensorRT builds and parity.")] = "cuda",
    recipe: Annotated[Optional[str], typer.Option(help="Architecture of foreign weights.")] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export to ONNX (fp32 / INT8) or a TensorRT engine, with parity proven on every export."""
    from .export import ExportCheckFailed, export as run_export, render

    options: dict[str, Any] = dict(out=out, precision=precision, batch=batch,
                                   calib_data=calib_data, calib_samples=calib_samples,
                                   calib_method=calib_method, int8_flavour=int8_flavour,
                                   opset=opset, device=device, recipe=_foreign_recipe(recipe, set_))
    try:
        report = run_export(artifact, to=to, **options)
    except ExportCheckFailed as failed:
        if as_json:
            emit_json(failed.report.to_json())
        else:
            console.print(render(failed.report))
        raise
    if as_json:
        emit_json(report.to_json())
    else:
        console.print(render(report))


@app.command()
def compare(
    a: Annotated[str, typer.Argument(help="First artifact (the reference).")],
    b: Annotated[str, typer.Argument(help="Second artifact.")],
    data: Annotated[str, typer.Option(help="random, digits or an image folder.")] = "random",
    samples: Annotated[int, typer.Option(help="How many images.")] = 64,
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Relative tolerance (an element fails only "
                                             "past both).")] = 1e-3,
    backend_a: Annotated[Optional[str], typer.Option(help="Force A's backend.")] = None,
    backend_b: Annotated[Optional[str], typer.Option(help="Force B's backend.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    recipe: Annotated[Optional[str], typer.Option(help="Architecture of foreign weights.")] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run two artifacts on the same inputs; report differences, agreement and a verdict."""
    from .compare import compare as run_compare, render

    report = run_compare(a, b, data=data, samples=samples, atol=atol, rtol=rtol,
                         backend_a=backend_a, backend_b=backend_b,
                         recipe=_foreign_recipe(recipe, set_), device=device)
    if as_json:
        emit_json(report.to_json())
    else:
        console.print(render(report))
    if not report.passed:
        raise typer.Exit(1)


@app.command()
def profile(
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Recipe name, YAML path or an "
                                                               "artifact (checkpoint / run folder).")] = "googlenet",
    input_size: Annotated[Optional[int], typer.Option(help="Square input side (default: the "
                                                           "recipe's).")] = None,
    paper: Annotated[bool, typer.Option(help="Put the paper's Table 1 cells beside ours.")] = False,
    time_: Annotated[bool, typer.Option("--time", help="Also time the backends.")] = False,
    backend: Annotated[str, typer.Option(help="all, or a list: torch,onnxruntime,tensorrt.")] = "all",
    precision: Annotated[str, typer.Option(help="List of fp32, bf16, fp16, int8.")] = "fp32",
    batch: Annotated[str, typer.Option(help="Batch sizes, e.g. 1,8,32.")] = "1,8,32",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 3,
    iters: Annotated[Optional[int], typer.Option(help="Timed runs (default 10).")] = None,
    seconds: Annotated[Optional[float], typer.Option(help="Time for this long instead of "
                                                          "--iters.")] = None,
    train_: Annotated[bool, typer.Option("--train", help="Also time the training step.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Throughput-vs-batch PNG (with --time).")] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Table 1 of the paper counted from the built model; with --time, speed per backend."""
    from .profile import render_table1, table1

    resolved = _recipe_or_artifact(recipe, set_)
    if input_size is not None:
        from .recipe import recipe_from_data

        resolved = recipe_from_data(resolved.to_dict(), resolved.source,
                                    {"data.input_size": input_size})
    prof = table1(resolved, input_size)
    speed = None
    if time_:
        from .backend import backend_names
        from .speed import SpeedOptions, timed_profile

        if iters is not None and iters < 1:
            raise InceptionError(f"--iters: expected at least 1, got {iters}")
        if warmup < 0:
            raise InceptionError(f"--warmup: expected 0 or more, got {warmup}")
        names = backend_names() if backend == "all" else [b.strip() for b in backend.split(",")]
        precisions = [p.strip() for p in precision.split(",") if p.strip()]
        for p in precisions:
            if p not in ("fp32", "bf16", "fp16", "int8"):
                raise InceptionError(f"--precision {p}: expected fp32, bf16, fp16 or int8")
        try:
            batches = [int(b) for b in batch.split(",") if b.strip()]
        except ValueError:
            batches = []
        if not batches or min(batches) < 1:
            raise InceptionError(f"--batch {batch}: expected a list of positive integers such "
                                 f"as 1,8,32")
        if seconds is not None and seconds <= 0:
            raise InceptionError(f"--seconds: expected a positive duration, got {seconds}")
        known = backend_names()
        for name in names:
            if name not in known:
                from .backend import get_backend

                get_backend(name)  # raises: unknown backend, with a "did you mean"
        artifact = Path(recipe) if Path(recipe).suffix in (".pt", ".pth") or Path(recipe).is_dir() else None
        if artifact is not None:
            from .backend import resolve_artifact

            artifact = resolve_artifact(artifact)
        speed = timed_profile(SpeedOptions(
            recipe=resolved, artifact=artifact, backends=names, precisions=precisions,
            batches=batches, device=device, warmup=warmup,
            iters=(iters or 10) if seconds is None else iters,
            seconds=seconds, train=train_,
            log=lambda m: print(m, file=sys.stderr, flush=True)))
        if plot is not None:
            from .speed import plot as speed_plot

            speed_plot(speed, plot)
    elif plot is not None:
        raise InceptionError("--plot draws the timed profile: add --time")
    if as_json:
        data = prof.to_json(paper=paper)
        if speed is not None:
            data["speed"] = speed.to_json()
        emit_json(data)
        return
    console.print(render_table1(prof, paper=paper))
    if speed is not None:
        from .speed import render as render_speed

        console.print(render_speed(speed))


def _recipe_or_artifact(name: str, set_: Optional[list[str]]):
    """A recipe by name / YAML path, or the recipe an artifact (run folder, checkpoint) carries."""
    from .checkpoint import checkpoint_recipe, read_checkpoint
    from .recipe import load_recipe

    path = Path(name)
    if path.suffix == ".onnx":
        raise InceptionError(f"{name}: profile counts a recipe or a checkpoint; for an exported "
                             f"model give the checkpoint it came from (or time it with "
                             f"`profile --time --backend onnxruntime`)")
    if path.is_dir() or path.suffix in (".pt", ".pth", ".ckpt"):
        from .backend import resolve_artifact

        ckpt_path = resolve_artifact(path)
        return checkpoint_recipe(read_checkpoint(ckpt_path), str(ckpt_path), set_)
    return load_recipe(name, set_)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
