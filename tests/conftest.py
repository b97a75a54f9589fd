import errno
import os
import queue
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from inceptionctl.cli import app
from inceptionctl.recipe import available_recipes


_cache_homes: list[str | None] = []  # the user's XDG_CACHE_HOME, then the suite's own


def pytest_configure(config):
    # measured defaults (--precision auto) cache their decision in the user's cache folder: the
    # suite neither reads a stale one nor leaves one behind (subprocesses inherit this)
    _cache_homes[:] = [os.environ.get("XDG_CACHE_HOME"),
                       tempfile.mkdtemp(prefix="inceptionctl-test-cache-")]
    os.environ["XDG_CACHE_HOME"] = _cache_homes[1]


def pytest_unconfigure(config):
    import shutil

    user, ours = _cache_homes
    shutil.rmtree(ours, ignore_errors=True)
    if user is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = user


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _quiet_machine(request, monkeypatch):
    """In-process timing decisions see a quiet machine: how busy the CPUs are (other tests
    beside this one, a CI neighbour) would otherwise decide whether a probe is cached and what
    its line says. Tests of that behaviour feed their own tick counts, or are marked
    ``real_load`` to read the machine's."""
    if "real_load" not in request.keywords:
        from inceptionctl import runtime

        monkeypatch.setattr(runtime, "cpu_ticks", lambda: None)
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


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nothing can be created in: mode 0500, and where that does not stop this user
    (root writes anywhere) the calls that create files and folders refuse inside it with
    EACCES, as the kernel does for a user who may not write there."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.MonkeyPatch.context() as mp:
        if os.access(locked, os.W_OK):
            _refuse_writes_under(mp, locked.resolve())
        yield locked
    locked.chmod(0o700)


def _refuse_writes_under(mp: pytest.MonkeyPatch, root: Path) -> None:
    def under(path, itself: bool) -> bool:
        if isinstance(path, int):  # a file descriptor
            return False
        p = Path(os.fsdecode(path)).resolve()
        return (itself and p == root) or p.parent.is_relative_to(root)

    def refused(path):
        return PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))

    real_access, real_open, real_mkdir = os.access, os.open, os.mkdir

    def access(path, mode, *args, **kw):
        if mode & os.W_OK and under(path, itself=True):
            return False
        return real_access(path, mode, *args, **kw)

    def open_(path, flags, *args, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path, itself=False):
            raise refused(path)
        return real_open(path, flags, *args, **kw)

    def mkdir(path, *args, **kw):
        if under(path, itself=False) and not os.path.lexists(path):
            raise refused(path)
        return real_mkdir(path, *args, **kw)

    mp.setattr(os, "access", access)
    mp.setattr(os, "open", open_)
    mp.setattr(os, "mkdir", mkdir)


def _train_tiny(root: Path, epochs: int):
    """The tiny recipe trained ``epochs`` epochs on the digits in fp32, its run in ROOT/run."""
    from inceptionctl.recipe import load_recipe
    from inceptionctl.train import TrainOptions, train

    recipe_path = root / "tiny.yaml"
    recipe_path.write_text(TINY_TRAIN.lstrip("\n"))
    return train(TrainOptions(device="cpu", recipe=load_recipe(recipe_path,
                                                               [f"train.epochs={epochs}"]),
                              data="digits", out=root / "run", runs_dir=root / "runs",
                              precision="fp32", workers=0, log=lambda m: None, progress=False))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny recipe trained for one epoch on the digits, once per session: (run, result).

    Shared read-only: a test that writes into a run copies it first (see ``tiny_run_copy``).
    """
    root = tmp_path_factory.mktemp("tiny")
    return root / "run", _train_tiny(root, epochs=1)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The tiny recipe trained 4 epochs on the embedded digits (~95% top-1), once per session:
    the run folder, shared read-only (export and compare write their files elsewhere)."""
    result = _train_tiny(tmp_path_factory.mktemp("trained"), epochs=4)
    assert result.best_top1 > 85.0
    return Path(result.run)


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


def lively(model: nn.Module) -> nn.Module:
    """Weights that give O(1) logits (fresh inits shrink activations to ~1e-12 with depth),
    with non-trivial BatchNorm statistics, so parity and BN folding are really exercised."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                if mod.bias is not None:
                    mod.bias.uniform_(-0.1, 0.1)
            elif isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
    return model


# --------------------------------------------------------------------------- subprocesses

class Child:
    """A command in a subprocess of its own session (as a terminal starts a job), its output
    read by threads so waiting for a line has a deadline; on leaving the ``with`` block the
    whole process group is killed if it is still running.

    ``sigint_default`` puts SIGINT at its default disposition in the child, whatever the test
    runner's is (a job started in the background inherits SIGINT ignored).
    """

    def __init__(self, args: list, *, env: dict | None = None, cwd: Path | None = None,
                 sigint_default: bool = False):
        preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if sigint_default \
            else None
        self.proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                                     start_new_session=True, preexec_fn=preexec)
        self._out: list[str] = []
        self._err: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self._out,
                                                                   None), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self._err,
                                                                   self._lines), daemon=True)]
        for r in self._readers:
            r.start()

    @staticmethod
    def _read(stream, into: list, lines: queue.Queue | None) -> None:
        for line in stream:
            into.append(line)
            if lines is not None:
                lines.put(line)
        if lines is not None:
            lines.put(None)  # end of output

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def kill(self) -> None:
        """SIGKILL to the whole group (torchrun's workers too) if the child still runs."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=60)
        for r in self._readers:
            r.join(timeout=10)

    def wait_for(self, text: str, timeout: float) -> str:
        """The first stderr line (not yet consumed) containing ``text``; fails with what the
        child said when it ends or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} within {timeout}s; stderr:\n"
                                     f"{self.stderr[-3000:]}") from None
            if line is None:
                raise AssertionError(f"the child ended (exit {self.proc.wait()}) before a line "
                                     f"with {text!r}; stderr:\n{self.stderr[-3000:]}")
            if text in line:
                return line

    def signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        """The exit code; fails (the child is then killed on exit) when it runs past ``timeout``."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s; stderr:\n"
                                 f"{self.stderr[-3000:]}") from None
        for r in self._readers:
            r.join(timeout=10)
        return code

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)


def run_child(args: list, timeout: float, **kw) -> subprocess.CompletedProcess:
    """Run a command to its end as :class:`Child` does (own session, killed with its group on
    any failure); ``timeout`` fails the test instead of hanging it."""
    with Child(args, **kw) as child:
        code = child.wait(timeout)
        return subprocess.CompletedProcess(child.proc.args, code, child.stdout, child.stderr)


def cli_command(*args) -> list[str]:
    """``python -m inceptionctl ARGS`` with this interpreter."""
    return [sys.executable, "-m", "inceptionctl", *map(str, args)]
