"""The ``inceptionctl`` command line: parse, call one library function per command, render.

Results go to stdout (a rich table, or one JSON document with ``--json``); progress and logs go
to stderr. A user error ends in one line on stderr and exit code 2; a failed check in exit 1.
"""

from __future__ import annotations

import json
import sys
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
out = Console(width=None if sys.stdout.isatty() else 160)

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
    out.print(table)


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


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def train(ctx: typer.Context) -> None:
    """Train a recipe (not implemented yet)."""
    _not_yet("train")


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
