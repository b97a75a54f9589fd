"""A wheel built from the checkout, installed in a fresh virtual environment elsewhere, works."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a build reads from the checkout; the build itself runs on a copy, so it leaves no build/
# or *.egg-info behind in the tree under test
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "inceptionctl", "recipes", "backends")
TIMEOUT = 600


def _run(args, **kw):
    kw.setdefault("timeout", TIMEOUT)  # run() kills the child when it expires
    return subprocess.run([str(a) for a in args], **kw)


@pytest.mark.slow
def test_wheel_in_fresh_venv_lists_and_loads_every_recipe(tmp_path):
    src = tmp_path / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif (ROOT / name).is_file():
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    # never reach a package index: everything the test needs is already installed here
    pip_env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "-q", "-w", dist, src], check=True, cwd=tmp_path, env=pip_env)
    (wheel,) = dist.glob("inceptionctl-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # this pip installs into it (pip --python)
    py = env_dir / "bin" / "python"
    # The heavy dependencies (torch, ...) come from this environment's site-packages through a
    # .pth file, so the test does not reinstall them; inceptionctl itself only from the wheel.
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel],
         check=True, env=pip_env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run([str(py), "-c", "import inceptionctl; print(inceptionctl.__file__)"],
                           capture_output=True, text=True, check=True, cwd=elsewhere, env=env)
    assert where.stdout.strip().startswith(site)

    listed = _run([str(py), "-m", "inceptionctl", "recipes", "--json"],
                            capture_output=True, text=True, cwd=elsewhere, env=env)
    assert listed.returncode == 0, listed.stderr
    names = [r["name"] for r in json.loads(listed.stdout)["recipes"]]
    assert names == ["googlenet", "googlenet-bn", "googlenet-small"]

    script = ("import inceptionctl as ic\n"
              "for n in ic.available_recipes():\n"
              "    m = ic.build_model(ic.load_recipe(n))\n"
              "    print(n, m.num_params())\n"
              "import inceptionctl.backends\n")
    loaded = _run([str(py), "-c", script], capture_output=True, text=True,
                            cwd=elsewhere, env=env)
    assert loaded.returncode == 0, loaded.stderr
    assert "googlenet 6998552" in loaded.stdout and "googlenet-bn 6624904" in loaded.stdout
    script_bin = env_dir / "bin" / "inceptionctl"
    shown = _run([str(script_bin), "recipes", "show", "googlenet-small"],
                           capture_output=True, text=True, cwd=elsewhere, env=env)
    assert shown.returncode == 0 and "name: googlenet-small" in shown.stdout
