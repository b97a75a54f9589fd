import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from inceptionctl.cli import app
from inceptionctl.recipe import available_recipes


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def cli():
    """Run the CLI in-process: cli("recipes", "show", "x") -> result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return run


@pytest.fixture
def write_recipe(tmp_path):
    """Write YAML text (dedented) to a file and return its path."""

    def write(text: str, name: str = "r.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


SHIPPED = available_recipes()
