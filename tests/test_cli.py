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


# Every option that takes one of a fixed set, and the set its --help must list.
CHOICES = {
    ("train", "--precision"): ["auto", "fp32", "bf16", "fp16"],
    ("export", "--precision"): ["fp32", "fp16", "int8"],
    ("export", "--calib-method"): ["minmax", "entropy", "percentile"],
    ("export", "--int8-flavour"): ["cpu", "tensorrt"],
    ("profile", "--precision"): ["fp32", "bf16", "fp16", "int8"],
}


def _help(command):
    from typer.testing import CliRunner

    from inceptionctl.cli import app

    result = CliRunner().invoke(app, [*command.split(), "--help"], prog_name="inceptionctl",
                                env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("command", [""] + COMMANDS + ["recipes show"])
def test_help_shows_no_type_placeholders_on_options(command):
    text = _help(command)
    options = text[text.index("Options"):]  # arguments keep their type column
    assert "<bool>" not in options and "<str>" not in options, options
    assert "--help" in options


@pytest.mark.parametrize("command,option", sorted(CHOICES))
def test_help_lists_the_choices(command, option):
    rows = [ln for ln in _help(command).splitlines() if f" {option} " in ln]
    assert len(rows) == 1, rows
    assert "|".join(CHOICES[command, option]) in rows[0], rows[0]


def test_cli_choices_are_the_library_sets():
    """The parser's sets and the library's cannot drift apart."""
    from inceptionctl import cli, export, runtime

    def values(enum):
        return tuple(m.value for m in enum)

    assert values(cli.TrainPrecision) == runtime.PRECISIONS
    assert set(values(cli.ExportPrecision)) == {p for to in export.targets()
                                                for p in export.precisions(to)}
    assert values(cli.CalibMethod) == export.CALIBRATION_METHODS
    assert list(values(cli.Int8Flavour)) == export.int8_flavours()
    for key, choices in CHOICES.items():
        assert choices in ([m.value for m in e] for e in (
            cli.TrainPrecision, cli.ExportPrecision, cli.CalibMethod, cli.Int8Flavour,
            cli.TimedPrecision)), key


def test_backends_table(cli):
    result = cli("backends")
    assert result.exit_code == 0
    assert "backends" in result.stdout and "torch" in result.stdout and "yes" in result.stdout


def test_ctrl_c_outside_train_is_exit_130_without_a_traceback():
    """Only train installs a SIGINT handler; elsewhere typer's main loop ends the command."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "inceptionctl", "profile", "--recipe",
                             "googlenet-small", "--time", "--backend", "torch", "--batch", "1",
                             "--seconds", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr.readline().startswith("timing torch")  # inside the command now
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and out == "" and "Traceback" not in err, err
