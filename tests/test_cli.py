"""The command line skeleton: version, help everywhere, recipes listing and show."""

import json
import subprocess
import sys

import pytest
import yaml

from inceptionctl import __version__, load_recipe
from inceptionctl.recipe import recipe_from_data

COMMANDS = ["recipes", "train", "eval", "predict", "export", "compare", "profile", "backends"]


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"inceptionctl {__version__}"


@pytest.mark.parametrize("command", COMMANDS + ["recipes show"])
def test_help_on_every_command(cli, command):
    result = cli(*command.split(), "--help")
    assert result.exit_code == 0 and "Usage" in result.stdout


def test_recipes_json_lists_the_family_with_counts(cli):
    result = cli("recipes", "--json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)["recipes"]}
    assert set(rows) == {"googlenet", "googlenet-bn", "googlenet-small"}
    assert rows["googlenet"]["params"] == 6_998_552
    assert rows["googlenet-bn"]["params"] == 6_624_904
    assert rows["googlenet"]["input_size"] == 224 and rows["googlenet-small"]["num_classes"] == 10


def test_recipes_table(cli):
    result = cli("recipes")
    assert result.exit_code == 0
    assert "6,998,552" in result.stdout and "6,624,904" in result.stdout
    assert "1.583 G" in result.stdout and "1.498 G" in result.stdout


def test_recipes_show_is_the_resolved_recipe(cli):
    result = cli("recipes", "show", "googlenet-small", "--set", "train.epochs=3")
    assert result.exit_code == 0
    data = yaml.safe_load(result.stdout)
    assert data["train"]["epochs"] == 3
    assert recipe_from_data(data) == load_recipe("googlenet-small", ["train.epochs=3"])
    as_json = json.loads(cli("recipes", "show", "googlenet", "--json").stdout)
    assert as_json["model"]["stages"][0]["modules"]["3a"]["5x5_reduce"] == 16


def test_console_script_and_module_entry_points():
    """`python -m inceptionctl` and the installed script, as a user runs them: one error line."""
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    for argv in ([sys.executable, "-m", "inceptionctl"], [str(bin_dir / "inceptionctl")]):
        ok = subprocess.run(argv + ["--version"], capture_output=True, text=True)
        assert ok.returncode == 0 and __version__ in ok.stdout
        bad = subprocess.run(argv + ["recipes", "show", "googlenet", "--set", "model.x=1"],
                             capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stdout == ""
        assert bad.stderr.strip().count("\n") == 0 and "unknown key 'x'" in bad.stderr
