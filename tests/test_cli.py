"""The command line skeleton: version, help everywhere, recipes listing and show."""

import json
import re
import signal
import sys

import pytest
import yaml

from inceptionctl import __version__, load_recipe
from inceptionctl.errors import InceptionError
from inceptionctl.recipe import recipe_from_data

from .conftest import Child, run_child

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
        ok = run_child(argv + ["--version"], timeout=120)
        assert ok.returncode == 0 and __version__ in ok.stdout
        bad = run_child(argv + ["recipes", "show", "googlenet", "--set", "model.x=1"],
                        timeout=120)
        assert bad.returncode == 2 and bad.stdout == ""
        assert bad.stderr.strip().count("\n") == 0 and "unknown key 'x'" in bad.stderr


# Every option that takes one of a fixed set, and the set its --help must list.
CHOICES = {
    ("train", "--precision"): ["auto", "fp32", "bf16", "fp16"],
    ("export", "--precision"): ["fp32", "fp16", "int8"],
    ("export", "--calib-method"): ["minmax", "entropy", "percentile"],
    ("export", "--int8-flavour"): ["cpu", "tensorrt"],
    ("eval", "--precision"): ["auto", "fp32", "bf16", "fp16"],
    ("predict", "--precision"): ["auto", "fp32", "bf16", "fp16"],
    ("profile", "--precision"): ["auto", "fp32", "bf16", "fp16", "int8"],
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


DEVICE_COMMANDS = ["train", "eval", "predict", "export", "compare", "profile"]


def _params(name):
    import typer

    from inceptionctl.cli import app

    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[name].params}


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_device_defaults_to_auto_on_every_command(command):
    """A user with a GPU gets it without asking, whichever command they run."""
    assert _params(command)["device"].default == "auto"


def test_every_command_with_a_device_is_listed():
    import typer

    from inceptionctl.cli import app

    group = typer.main.get_command(app)
    having = {n for n, c in group.commands.items() if any(p.name == "device" for p in c.params)}
    assert having == set(DEVICE_COMMANDS)


def test_auto_resolves_to_the_cpu_here_and_to_the_first_gpu_for_an_engine_builder(monkeypatch):
    import torch

    from inceptionctl.runtime import cuda_index, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert cuda_index("auto") == 0 and cuda_index("cuda:1") == 1


def test_a_bare_cuda_names_this_process_gpu_with_its_index(monkeypatch):
    """torch.cuda.set_device refuses torch.device('cuda'): every CUDA device we resolve carries
    an index, the local rank's for a bare ``cuda`` (as for ``auto``)."""
    import torch

    from inceptionctl.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1", local_rank=0) == torch.device("cuda", 1)
    with pytest.raises(InceptionError, match="only 2 CUDA"):
        resolve_device("cuda:2")


def _eval_child(tmp_path) -> Child:
    """``inceptionctl eval`` of a 144-crop run as a terminal starts it, saying 'ready' on stderr
    once the crops stream (so the signal lands inside the command, not in the imports)."""
    from inceptionctl.checkpoint import save_checkpoint
    from inceptionctl.model import build_model

    recipe = load_recipe("googlenet-small")
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model(recipe), recipe)
    script = ("import sys\n"
              "from inceptionctl import evaluate\n"
              "run = evaluate._run\n"
              "def announced(*a, **k):\n"
              "    print('ready', file=sys.stderr, flush=True)\n"
              "    return run(*a, **k)\n"
              "evaluate._run = announced\n"
              "from inceptionctl.cli import main\n"
              "sys.argv = ['inceptionctl'] + sys.argv[1:]\n"
              "main()\n")
    return Child([sys.executable, "-c", script, "eval", ckpt, "--crops", "144", "--workers", "0",
                  "--precision", "fp32"], sigint_default=True)


def test_ctrl_c_on_eval_is_one_line_and_exit_130(tmp_path):
    """SIGINT to the process group, as a terminal sends it: one line, 130, whatever typer does."""
    with _eval_child(tmp_path) as child:
        child.wait_for("ready", timeout=120)
        child.signal_group(signal.SIGINT)
        code = child.wait(timeout=120)
    err = child.stderr
    assert code == 130, err
    assert child.stdout == "", child.stdout
    assert err.strip().splitlines() == ["ready", "interrupted (exit 130)"], err


def test_the_console_script_keeps_freed_memory(monkeypatch, capsys):
    """`inceptionctl` (not the library) makes the process-wide allocator choice, once."""
    from inceptionctl import cli as cli_module
    from inceptionctl import host

    calls = []
    monkeypatch.setattr(host, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(sys, "argv", ["inceptionctl", "recipes", "--json"])
    with pytest.raises(SystemExit) as exit_:
        cli_module.main()
    assert exit_.value.code in (0, None) and calls == [1]
    assert '"recipes"' in capsys.readouterr().out


def test_an_allocation_that_fails_is_one_line(cli, monkeypatch):
    """A batch no machine holds ends in one line naming the size, not torch's traceback (the
    allocator's error is raised here, not provoked: a host that overcommits would grant it)."""
    from inceptionctl import speed

    def refuse(opts):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 1228800000000 bytes.")

    monkeypatch.setattr(speed, "timed_profile", refuse)
    r = cli("profile", "--recipe", "googlenet-small", "--time", "--backend", "torch",
            "--batch", "100000000", "--iters", "1")
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "error: out of memory: tried to allocate 1,228.8 GB; use a smaller batch or fewer "
        "samples, or free memory")
    assert "Traceback" not in r.stderr


def test_out_of_memory_names_only_allocation_failures():
    from inceptionctl.cli import out_of_memory

    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert out_of_memory(MemoryError()).startswith("out of memory; use a smaller batch")
    cuda = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert out_of_memory(cuda).startswith("out of memory; ")


def test_recipes_json_before_show_and_unicode_text(cli):
    out = cli("recipes", "--json", "show", "googlenet-small")
    assert out.exit_code == 0 and json.loads(out.stdout)["name"] == "googlenet-small"
    out = cli("recipes", "show", "googlenet-small", "--set", "description=héllo ü")
    assert out.exit_code == 0 and "description: héllo ü\n" in out.stdout


def test_exponents_without_a_dot_are_numbers(cli, write_recipe):
    """YAML 1.1 reads 1e-3 as a string: a float key takes it as the number it is."""
    from inceptionctl import load_recipe

    assert load_recipe("googlenet-small", ["train.lr=1e-3"]).train.lr == 0.001
    text = load_recipe("googlenet-small").to_yaml()
    path = write_recipe(re.sub(r"\n  weight_decay: [^\n]*", "\n  weight_decay: 1e-4",
                               re.sub(r"\n  lr: [^\n]*", "\n  lr: 5E-2", text)))
    assert "lr: 5E-2" in path.read_text() and "weight_decay: 1e-4" in path.read_text()
    recipe = load_recipe(str(path))
    assert (recipe.train.lr, recipe.train.weight_decay) == (0.05, 1e-4)
    out = cli("recipes", "show", "googlenet-small", "--set", "train.epochs=1e2")
    assert out.exit_code == 2 and "train.epochs: expected an integer, got '1e2'" in out.stderr


def test_paths_and_sizes_named_as_given(cli, tmp_path):
    a_file = tmp_path / "a.png"
    a_file.write_bytes(b"x")
    out = cli("profile", "--recipe", "googlenet-small", "--time", "--plot", a_file / "x.png")
    assert out.exit_code == 2
    assert out.stderr.strip() == f"error: {a_file / 'x.png'}: {a_file} is not a folder"
    out = cli("profile", "--recipe", "googlenet-small", "--time", "--backend", "onnxruntime",
              "--precision", "int8", "--calib-data", a_file)
    assert out.exit_code == 2 and out.stderr.strip() == (
        f"error: --calib-data {a_file}: not a folder (expected a folder of images or 'digits')")
    out = cli("profile", "--input-size", "0")
    assert out.exit_code == 2
    assert out.stderr.strip() == "error: --input-size 0: expected a positive integer"
    out = cli("profile", "--input-size", "20")
    assert out.exit_code == 2 and out.stderr.startswith("error: --input-size 20: data.input_size:")


def test_batch_and_crop_lists_are_strict_and_once_each(cli):
    for bad in ("1,,2", "1,8,"):
        out = cli("profile", "--recipe", "googlenet-small", "--time", "--batch", bad)
        assert out.exit_code == 2 and out.stderr.strip() == (
            f"error: --batch {bad}: expected a list of positive integers such as 1,8,32")
    out = cli("profile", "--recipe", "googlenet-small", "--time", "--backend", "torch",
              "--precision", "fp32", "--batch", "2,2", "--iters", "1", "--warmup", "0", "--json")
    assert out.exit_code == 0, out.stderr
    assert [r["batch"] for r in json.loads(out.stdout)["speed"]["rows"]] == [2]
