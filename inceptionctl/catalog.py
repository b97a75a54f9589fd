"""``inceptionctl recipes`` and ``inceptionctl backends``: what this install offers, as rows and tables.

The two listings live together here rather than beside what they list: ``recipe.py`` sits below
the commands and must not import ``profile`` (which counts each recipe's cost), and ``backend.py``
is the interface every plugin imports, so it stays free of tables and rich.
"""

from __future__ import annotations

from typing import Any

from .errors import InceptionError


def recipe_rows() -> list[dict[str, Any]]:
    """One row per shipped recipe: name, description, parameters (with aux), mult-adds, input."""
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
    return rows


def backend_rows() -> list[dict[str, Any]]:
    """One row per registered backend: package, version, devices, and why not when unavailable."""
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
    return rows


# ----------------------------------------------------------------------------------- rendering

def render_recipes(rows: list[dict[str, Any]]) -> Any:
    """The recipes as a rich Table: parameters, aux parameters, G mult-adds, input, classes."""
    from rich.table import Table

    table = Table(title="recipes")
    for col, justify in (("name", "left"), ("description", "left"), ("params", "right"),
                         ("aux params", "right"), ("mult-adds", "right"), ("input", "right"),
                         ("classes", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r["name"], r["description"], f"{r['params']:,}",
                      f"{r['params_with_aux'] - r['params']:,}", f"{r['macs'] / 1e9:.3f} G",
                      f"{r['input_size']}x{r['input_size']}", str(r["num_classes"]))
    return table


def render_backends(rows: list[dict[str, Any]]) -> Any:
    """The backends as a rich Table; an unavailable one says why and how to install it."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="backends")
    for col in ("name", "package", "version", "devices", "available", "opens", "install"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["package"] or "-", r["version"] or "-",
                      ", ".join(r["devices"]) or "-",
                      "yes" if r["available"] else escape(f"no: {r['reason']}"),
                      " ".join(r["opens"]), "" if r["available"] else escape(r["install"]))
    return table
