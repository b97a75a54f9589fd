import os
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from inceptionctl.cli import app
from inceptionctl.recipe import available_recipes


def pytest_configure(config):
    # measured defaults (--precision auto) cache their decision in the user's cache folder: the
    # suite neither reads a stale one nor leaves one behind (subprocesses inherit this)
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="inceptionctl-test-cache-")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def cli():
    """Run the CLI in-process: cli("recipes", "show", "x") -> result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args], prog_name="inceptionctl")

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


TINY_TRAIN = """
name: tiny
description: a tiny GoogLeNet for tests
model:
  num_classes: 10
  width_multiplier: 0.125
  stem:
    - {name: conv1, layer: conv, out: 64, kernel: 3, padding: 1}
    - {name: pool1, layer: maxpool, kernel: 2, stride: 2}
  stages:
    - modules:
        3a: {1x1: 64, 3x3_reduce: 96, 3x3: 128, 5x5_reduce: 16, 5x5: 32, pool_proj: 32}
      pool: {type: max, kernel: 2, stride: 2}
    - modules:
        4a: {1x1: 192, 3x3_reduce: 96, 3x3: 208, 5x5_reduce: 16, 5x5: 48, pool_proj: 64}
  aux: {after: [3a], pool: {type: avg, output_size: 2}, conv: 64, fc: 64, dropout: 0.5}
  head: {pool: {type: avg, output_size: 1}, dropout: 0.2}
data:
  input_size: 16
  resize: 18
  mean: [0.5, 0.5, 0.5]
  std: [0.5, 0.5, 0.5]
train:
  epochs: 2
  batch_size: 32
  lr: 0.05
  schedule: cosine
  warmup_epochs: 0.5
  ema_decay: 0.9
  scale: [0.5, 1.0]
  hflip: 0.0
eval:
  size: 16
  scales: [18, 20]
  batch_size: 128
"""


@pytest.fixture
def tiny_recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_TRAIN.lstrip("\n"))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny recipe trained for one epoch on the digits, once per session: (run, result).

    Shared read-only: a test that writes into a run copies it first (see ``tiny_run_copy``).
    """
    from inceptionctl.recipe import load_recipe
    from inceptionctl.train import TrainOptions, train

    root = tmp_path_factory.mktemp("tiny")
    recipe_path = root / "tiny.yaml"
    recipe_path.write_text(TINY_TRAIN.lstrip("\n"))
    result = train(TrainOptions(device="cpu", recipe=load_recipe(recipe_path, ["train.epochs=1"]),
                                data="digits", out=root / "run", precision="fp32", workers=0,
                                log=lambda m: None, progress=False))
    return root / "run", result


@pytest.fixture(scope="module")
def tiny_run_copy(tiny_run, tmp_path_factory):
    """A module's own copy of the shared tiny run, for tests that resume or write into it."""
    import shutil

    return Path(shutil.copytree(tiny_run[0], tmp_path_factory.mktemp("tiny-copy") / "run"))


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """`inceptionctl train` with no arguments, run once as a user runs it: (run, report, seconds)."""
    import json
    import subprocess
    import sys
    import time

    cwd = tmp_path_factory.mktemp("default")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "inceptionctl", "train", "--json"],
                            capture_output=True, text=True, cwd=cwd, timeout=900)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert "run folder: " in result.stderr
    return cwd / report["run"], report, seconds
