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
from .errors import InceptionError


class _Group(typer.core.TyperGroup):
    """Turns every InceptionError raised by a command into one line and its exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InceptionError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(cls=_Group, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Train, evaluate, export and profile GoogLeNet / Inception v1.")
recipes_app = typer.Typer(cls=_Group, invoke_without_command=True,
                          pretty_exceptions_enable=False,
                          help="List the shipped recipes, or show one resolved.")
app.add_typer(recipes_app, name="recipes")

# Wide enough for the tables when stdout is a file or a pipe, the terminal's width otherwise.
console = Console(width=None if sys.stdout.isatty() else 160)

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

def _not_yet(command: str) -> None:
    raise InceptionError(f"'inceptionctl {command}' is not implemented yet")


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
        console.print(f"run folder: {result.run}  best top-1 {result.best_top1:.2f}% "
                  f"(epoch {result.best_epoch})  {result.epochs} epochs  {result.seconds:.1f}s")


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


@app.command("eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def eval_(ctx: typer.Context) -> None:
    """Evaluate artifacts with 1, 10 or 144 crops (not implemented yet)."""
    _not_yet("eval")


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def predict(ctx: typer.Context) -> None:
    """Classify images (not implemented yet)."""
    _not_yet("predict")


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def export(ctx: typer.Context) -> None:
    """Export to ONNX or TensorRT with proof of parity (not implemented yet)."""
    _not_yet("export")


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def compare(ctx: typer.Context) -> None:
    """Compare two artifacts on the same inputs (not implemented yet)."""
    _not_yet("compare")


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def profile(ctx: typer.Context) -> None:
    """Table 1 and measured speed (not implemented yet)."""
    _not_yet("profile")


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def backends(ctx: typer.Context) -> None:
    """List inference backends and whether they can run here (not implemented yet)."""
    _not_yet("backends")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
