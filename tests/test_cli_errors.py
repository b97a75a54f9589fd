"""User mistakes found by trying the CLI as a user: each is one `error:` line, never a traceback."""

import errno
import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from PIL import Image

from .conftest import TINY_TRAIN, cli_command, run_child



@pytest.fixture(scope="module")
def run(tiny_run_copy):
    """The session's tiny run, copied: some tests here resume it in place."""
    return tiny_run_copy


def _one_error_line(result, text):
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert result.exit_code == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr


@pytest.mark.parametrize("args,text", [
    (["eval", "x", "--bogus"], "No such option: --bogus (see 'inceptionctl eval --help')"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["eval"], "Missing argument"),
    (["train", "--nproc", "0"], "--nproc: expected at least 1, got 0"),
    (["train", "--workers", "-1", "--data", "synthetic"], "--workers: expected 0 or more"),
    (["recipes", "show", "googlenet-small", "--set", "train.hflip=1.5"],
     "train.hflip: expected a probability in [0, 1], got 1.5"),
    (["profile", "--recipe", "googlenet-small", "--time", "--batch", ""], "--batch : expected"),
    (["profile", "--recipe", "googlenet-small", "--time", "--seconds", "0"], "--seconds"),
    (["profile", "--recipe", "googlenet-small", "--time", "--seconds", "nan"], "--seconds"),
    (["profile", "--recipe", "googlenet-small", "--time", "--precision", ""],
     "--precision '': expected auto, fp32, bf16, fp16 or int8"),
    (["profile", "--recipe", "googlenet-small", "--time", "--backend", "onnxrt"],
     "unknown backend 'onnxrt' (did you mean 'onnxruntime'?)"),
    (["profile", "--recipe", "model.onnx"], "profile counts a recipe or a checkpoint"),
])
def test_one_line_errors(cli, args, text):
    _one_error_line(cli(*args), text)


@pytest.mark.parametrize("command", [["train", "--data", "synthetic", "--max-steps", "1",
                                      "--out", "RUN"], ["eval", "digits", "--limit", "4"]])
def test_more_workers_than_a_machine_can_start_are_refused(cli, tmp_path, command):
    """Thousands of workers would hang the command while the loader starts them: one over the
    limit is refused (where the check is missing, that one starts harmlessly and the test
    fails), and the limit itself is taken."""
    from inceptionctl.data import MAX_WORKERS_PER_CPU, check_workers, usable_cpus

    limit = max(16, MAX_WORKERS_PER_CPU * usable_cpus())
    command = [str(tmp_path / "r") if arg == "RUN" else arg for arg in command]
    _one_error_line(cli(*command, "--workers", limit + 1),
                    f"--workers {limit + 1}: at most {limit} here")
    check_workers(limit)


def test_a_timed_profile_that_timed_nothing_fails(cli):
    """Each row says why its backend could not run; when none ran, that is an error (exit 2,
    the first reason in one line after the table), not a table of reasons and exit 0."""
    out = cli("profile", "--recipe", "googlenet-small", "--time", "--backend", "torch",
              "--precision", "fp16", "--device", "cpu", "--batch", "1")
    assert out.exit_code == 2, out.output
    assert "unavailable (1)" in out.stdout
    assert out.stderr.strip().splitlines()[-1] == (
        "error: --time: nothing could be timed here (torch: torch backend: fp16 needs a CUDA "
        "device; on CPU use bf16 or fp32)")
    timed = cli("profile", "--recipe", "googlenet-small", "--time", "--backend", "torch",
                "--precision", "fp32,fp16", "--device", "cpu", "--batch", "1", "--iters", "1",
                "--warmup", "0")
    assert timed.exit_code == 0, timed.output  # one row ran: the other's reason is a note


def test_output_paths(cli, run, tmp_path):
    folder = tmp_path / "adir.png"
    folder.mkdir(parents=True)
    _one_error_line(cli("eval", run, "--limit", "5", "--workers", "0", "--plot", folder),
                    "is a folder; give a file name")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    _one_error_line(cli("train", "--data", "synthetic", "--out", plain), "is a file; give a folder")
    assert plain.read_text() == "x"
    _one_error_line(cli("export", run, "--opset", "3", "--out", tmp_path / "x.onnx"),
                    "--opset 3: expected an opset from 9 to 20")
    _one_error_line(cli("export", run, "--opset", "0", "--out", tmp_path / "x.onnx"),
                    "--opset 0: expected an opset from 9 to 20")
    _one_error_line(cli("export", run, "--device", "tpu", "--out", tmp_path / "x.onnx"),
                    "--device tpu")
    assert not (tmp_path / "x.onnx").exists()
    png = tmp_path / "cm.png"
    assert cli("eval", run, "--limit", "5", "--workers", "0", "--plot", png).exit_code == 0
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(png.stat().st_mode) == 0o666 & ~mask


def test_unwritable_outputs_are_one_line(cli, run, tmp_path, read_only_folder):
    """A folder the user may not write into (as root too: the writes are refused there): each
    command that writes ends with one line naming the file, exit 2, and leaves nothing behind."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_TRAIN.lstrip("\n"))
    cases = [
        (["train", "--recipe", recipe, "--data", "synthetic", "--max-steps", "1", "--workers",
          "0", "--device", "cpu", "--precision", "fp32", "--out", read_only_folder / "run"],
         f"{read_only_folder / 'run'}: cannot create the run folder (Permission denied)"),
        (["train", "--recipe", recipe, "--data", "synthetic", "--max-steps", "1", "--workers",
          "0", "--device", "cpu", "--precision", "fp32", "--out", read_only_folder],
         f"{read_only_folder / 'recipe.yaml'}: cannot write (Permission denied)"),
        (["eval", run, "--limit", "5", "--workers", "0", "--plot", read_only_folder / "cm.png"],
         f"{read_only_folder / 'cm.png'}: cannot write (Permission denied)"),
        (["export", run, "--out", read_only_folder / "m.onnx"],
         f"--out {read_only_folder / 'm.onnx'}: cannot write into {read_only_folder} "
         f"(permission denied)"),
    ]
    for args, text in cases:
        result = cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and lines[-1] == f"error: {text}", (args, result.stderr)
        assert "Traceback" not in result.stderr and result.exception is not None
    assert not list(read_only_folder.iterdir())


def test_a_write_refused_after_the_checks_is_one_line(cli, run, tmp_path, monkeypatch):
    """The write itself fails (a folder made read-only while the command ran, a full disk):
    the atomic write names its target in one line, exit 2, and leaves no temporary file."""
    import errno

    import inceptionctl.files as files

    def refused(*args, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    out = tmp_path / "out"
    monkeypatch.setattr(files.os, "replace", refused)
    for args, target in [(["export", run, "--out", out / "m.onnx"], out / "m.onnx"),
                         (["eval", run, "--limit", "5", "--workers", "0", "--plot",
                           out / "cm.png"], out / "cm.png")]:
        result = cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2, (args, result.stderr)
        assert lines[-1] == f"error: {target}: cannot write (Permission denied)", result.stderr
        assert "Traceback" not in result.stderr
    assert not list(out.iterdir())


def test_val_split_range(cli, tmp_path):
    for c in ("a", "b"):
        (tmp_path / "tree" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "tree" / c / "x.png")
    _one_error_line(cli("train", "--data", tmp_path / "tree", "--val-split", "-0.1"),
                    "--val-split: expected a fraction in (0, 1), got -0.1")


def test_resume_keeps_its_run(cli, run, tmp_path):
    _one_error_line(cli("train", "--resume", run, "--set", "train.lr=0.1"),
                    "only train.epochs can change (not train.lr=0.1: the run has train.lr=0.05)")
    _one_error_line(cli("train", "--resume", run, "--data", "synthetic"),
                    "the run trains on 'digits', not 'synthetic'")
    _one_error_line(cli("train", "--resume", run, "--out", tmp_path / "elsewhere"),
                    "continues in its own folder")
    before = (run / "recipe.yaml").read_text()
    # the run's own values again (a restarted command line) are no change
    done = cli("train", "--resume", run, "--workers", "0", "--max-steps", "1", "--json",
               "--set", "train.lr=0.05", "--set", "train.batch_size=32")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["steps"] == 44  # already past --max-steps: no extra step
    assert (run / "recipe.yaml").read_text() == before


def test_train_json_before_any_validation(cli, tmp_path):
    out = cli("train", "--data", "synthetic", "--max-steps", "1", "--workers", "0",
              "--set", "model.num_classes=10", "--out", tmp_path / "r", "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)  # strict JSON: no NaN
    assert data["best_top1"] is None and data["last_top1"] is None
    assert "no validation yet" in out.stderr


def test_ensemble_of_different_batch_ranges(cli, run, tmp_path):
    onnx = tmp_path / "m.onnx"
    assert cli("export", run, "--out", onnx, "--batch", "1:8:16").exit_code == 0
    out = cli("eval", run, onnx, "--limit", "30", "--crops", "10", "--workers", "0", "--json")
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["images"] == 30
    assert json.loads(out.stdout)["backend"] == "torch/onnxruntime"  # each of its backends


def test_a_file_exported_for_one_batch_size_runs_every_eval_and_predict(cli, run, tmp_path):
    """export --batch 3:3:3 fixes the batch: eval's short last batch (10 images x 10 crops in
    batches of 3) and predict's 1 and 10 crops are padded to 3, the padding's logits dropped, so
    the results equal the checkpoint's."""
    onnx = tmp_path / "fixed.onnx"
    assert cli("export", run, "--out", onnx, "--batch", "3:3:3").exit_code == 0
    reports = [cli("eval", a, "--limit", "10", "--crops", "1,10", "--workers", "0", "--precision",
                   "fp32", "--json") for a in (run, onnx)]
    for r in reports:
        assert r.exit_code == 0, r.stderr
    ours, fixed = (json.loads(r.stdout) for r in reports)
    assert fixed["batch_size"] == 3 and fixed["images"] == 10
    assert [row["top1"] for row in fixed["table"]] == [row["top1"] for row in ours["table"]]
    image = tmp_path / "one.png"
    pixels = torch.Generator().manual_seed(0)  # crops that differ, so their mean tells
    Image.fromarray(torch.randint(0, 256, (40, 56, 3), generator=pixels, dtype=torch.uint8)
                    .numpy()).save(image)
    # compare: with the checkpoint, and with a file fixed at another size (no size in common:
    # each side runs its own batches, padded)
    four = tmp_path / "fixed4.onnx"
    assert cli("export", run, "--out", four, "--batch", "4:4:4").exit_code == 0
    for a, b in ((run, onnx), (onnx, four)):
        done = cli("compare", a, b, "--samples", "5", "--json")
        assert done.exit_code == 0, done.stderr
        assert json.loads(done.stdout)["passed"] and json.loads(done.stdout)["samples"] == 5
    for crops in ("1", "10"):
        got = [json.loads(cli("predict", image, "--weights", a, "--crops", crops, "--precision",
                              "fp32", "--json").stdout) for a in (run, onnx)]
        (a,), (b,) = (g["predictions"] for g in got)
        assert [t["class"] for t in a["topk"]] == [t["class"] for t in b["topk"]]
        for x, y in zip(a["topk"], b["topk"]):
            assert abs(x["probability"] - y["probability"]) < 2e-5, (a, b)


def test_recipes_show_reads_the_recipe_a_checkpoint_or_an_export_carries(cli, run, tmp_path):
    onnx = tmp_path / "m.onnx"
    assert cli("export", run, "--out", onnx).exit_code == 0
    want = (run / "recipe.yaml").read_text()
    for artifact in (run / "best.pt", onnx):
        shown = cli("recipes", "show", artifact)
        assert shown.exit_code == 0, shown.stderr
        head, body = shown.stdout.split("\n", 1)
        assert head.endswith(f"(from {artifact} (embedded recipe))") and body == want
    changed = cli("recipes", "show", onnx, "--set", "train.epochs=7", "--json")
    assert json.loads(changed.stdout)["train"]["epochs"] == 7


def test_eval_without_data_of_a_model_of_other_classes_says_to_give_data(cli, tmp_path):
    """No --data: eval reads the embedded digits; a model of 2 classes cannot be scored on
    them, and the line says --data is the way (given --data digits, just the mismatch)."""
    from inceptionctl import build_model, load_recipe
    from inceptionctl.checkpoint import save_checkpoint

    recipe = load_recipe("googlenet-small", ["model.num_classes=2", "data.classes=null"])
    ckpt = save_checkpoint(tmp_path / "two.pt", build_model(recipe), recipe)
    plain = "digits: the embedded digits have classes 0..9, the model has 2 classes (0, 1...)"
    _one_error_line(cli("eval", ckpt, "--limit", "4"), plain + "; without --data, eval reads "
                    "the embedded digits: give --data with the images to evaluate on")
    given = cli("eval", ckpt, "--limit", "4", "--data", "digits")
    _one_error_line(given, plain)
    assert "without --data" not in given.stderr


def test_strict_data_in_a_worker_is_one_line(run, tmp_path):
    for c in ("3", "7"):
        (tmp_path / "d" / c).mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(tmp_path / "d" / c / "ok.png")
    (tmp_path / "d" / "3" / "bad.png").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "inceptionctl", "eval", str(run), "--data",
                             str(tmp_path / "d"), "--strict-data", "--workers", "1",
                             "--precision", "fp32"],  # auto would say its choice first
                            capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "bad.png: cannot read image" in lines[0]


@pytest.mark.parametrize("args,text", [
    (["train", "--precision", "fp61"], "--precision fp61: expected auto, fp32, bf16 or fp16 "
                                       "(did you mean 'fp16'?)"),
    (["export", "x.pt", "--precision", "int4"], "--precision int4: expected fp32, fp16 or int8 "
                                                "(did you mean 'int8'?)"),
    (["export", "x.pt", "--calib-method", "minmaxx"],
     "--calib-method minmaxx: expected minmax, entropy or percentile (did you mean 'minmax'?)"),
    (["export", "x.pt", "--int8-flavour", "gpu"], "--int8-flavour gpu: expected cpu or tensorrt"),
    (["profile", "--precision", "fp32,fp64"], "--precision fp64: expected auto, fp32, bf16, fp16 or "
                                              "int8"),
])
def test_choice_typos_are_caught_by_the_parser(cli, args, text):
    """A fixed set is checked while parsing: before any file is opened, with a 'did you mean'."""
    _one_error_line(cli(*args), text)


@pytest.mark.parametrize("args,text", [
    (["--tf32"], "--tf32: an engine option (--to tensorrt); this export writes an ONNX file"),
    (["--timing-cache", "t.cache"], "--timing-cache: an engine option (--to tensorrt)"),
    (["--verbose", "--precision", "int8", "--calib-data", "digits"], "--verbose: an engine "),
    (["--calib-method", "entropy"], "--calib-method: only an INT8 export calibrates (add "
                                    "--precision int8)"),
    (["--calib-samples", "64", "--precision", "fp16"], "--calib-samples: only an INT8 export"),
    (["--calib-samples", "0"], "--calib-samples: only an INT8 export"),  # 0 is given too
    (["--int8-flavour", "tensorrt"], "--int8-flavour: only an INT8 export calibrates"),
    (["--to", "tensorrt", "--precision", "int8", "--calib-data", "digits", "--int8-flavour",
      "cpu"], "--int8-flavour: the INT8 ONNX's flavour (--to onnx); the tensorrt builder "
              "quantizes in its own"),
])
def test_an_export_option_the_export_would_ignore_is_refused(cli, run, tmp_path, args, text):
    """Engine options on an ONNX export, calibration options without INT8: refused before any
    work, and nothing written."""
    out = tmp_path / "m.onnx"
    _one_error_line(cli("export", run, "--out", out, *args), text)
    assert list(tmp_path.iterdir()) == []


def test_the_options_of_an_int8_onnx_export_are_taken(cli, trained, tmp_path):
    # the 4-epoch run: the 1-epoch one's logits nearly tie, so 1% of its top-1s flip under INT8
    out = tmp_path / "m.int8.onnx"
    done = cli("export", trained, "--out", out, "--precision", "int8", "--calib-data", "digits",
               "--calib-samples", "32", "--calib-method", "entropy", "--int8-flavour", "cpu",
               "--json")
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert out.is_file() and report["precision"] == "int8"
    int8 = report["int8"]
    assert (int8["flavour"], int8["calibration_method"], int8["calibration_samples"]) == \
        ("cpu", "entropy", 32)


# ---------------------------------------------------------------- hints name commands that parse

def _message_strings():
    """Every string the package and its plugins can show a user (docstrings left out): each
    as ``(where, text)``, an f-string's fields written as ``X``."""
    import ast
    from pathlib import Path

    import inceptionctl

    root = Path(inceptionctl.__file__).parent
    files = sorted(root.glob("*.py")) + sorted((root.parent / "backends").glob("*.py"))
    found = []
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr)
                      and isinstance(n.body[0].value, ast.Constant)}
        inner = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if id(node) in docstrings or id(node) in inner:
                continue
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            elif isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "X"
                               for v in node.values)
            else:
                continue
            found.append((f"{path.name}:{node.lineno}", text))
    return found


def _hint_commands():
    """``(where, argv)`` of every command line a message suggests: ``inceptionctl CMD ...`` with
    CMD a command, or anything quoted in backticks after ``inceptionctl`` (so a command that does
    not exist is checked too), up to a backtick, a closing bracket, a semicolon or the end."""
    import re
    import shlex

    import typer

    from inceptionctl.cli import app

    names = "|".join(typer.main.get_command(app).commands)
    pattern = re.compile(rf"`inceptionctl ([^`]*)`|inceptionctl ((?:{names})\b[^`);\n]*)")
    return [(where, shlex.split((m.group(1) or m.group(2)).strip().rstrip(".,")))
            for where, text in _message_strings() for m in pattern.finditer(text)]


def _parse(argv):
    """Parse ``argv`` as the CLI would, without running anything: an unknown command or option,
    a missing argument or a bad choice raises."""
    import typer

    from inceptionctl.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("inceptionctl", list(argv))
    with ctx:
        while getattr(ctx.command, "commands", None):
            # a group keeps the subcommand's words as its "protected" args (renamed in click 8.2)
            rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])),
                    *ctx.args]
            if not rest:
                break
            name, command, rest = ctx.command.resolve_command(ctx, rest)
            ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def test_the_hints_are_found():
    """The scan sees the hints it must check (so an empty scan cannot pass)."""
    wheres = {w.split(":")[0] for w, _ in _hint_commands()}
    assert {"tensorrt.py", "train.py"} <= wheres
    assert any(argv[:1] == ["export"] for _, argv in _hint_commands())


def _export_refusal(ctx):
    """What export itself refuses past the parser: an engine as input, an ONNX as input to
    anything but an engine build, a precision its target does not build."""
    from inceptionctl.export import precisions

    if ctx.info_name != "export":
        return None
    artifact, to = str(ctx.params["artifact"]), ctx.params["to"]
    if artifact.lower().endswith((".engine", ".plan")) or (
            artifact.lower().endswith(".onnx") and to == "onnx"):
        return f"export --to {to} takes a run folder or checkpoint, not {artifact}"
    wanted = ctx.params["precision"].value
    if wanted not in precisions(to):
        return f"--to {to} builds {', '.join(precisions(to))}, not {wanted}"
    return None


def test_every_hinted_command_line_parses():
    bad = []
    for where, argv in _hint_commands():
        try:
            why = _export_refusal(_parse(argv))
        except Exception as exc:  # noqa: BLE001 - every kind of refusal is a wrong hint
            why = str(exc)
        if why:
            bad.append(f"{where}: inceptionctl {' '.join(argv)} -> {why}")
    assert not bad, "\n".join(bad)


def test_every_option_a_message_names_exists():
    """``--name`` in any message is an option of some command (or --help / --version)."""
    import re

    import typer

    from inceptionctl.cli import app

    group = typer.main.get_command(app)
    known = {"--help", "--version"}
    stack = [group]
    while stack:
        command = stack.pop()
        known |= {o for p in command.params for o in getattr(p, "opts", []) + getattr(
            p, "secondary_opts", []) if o.startswith("--")}
        stack += list(getattr(command, "commands", {}).values())
    argv_piece = re.compile(r"--[\w-]+(=X)?")  # an argument handed to torchrun, not a message
    bad = [f"{where}: {opt} in {text!r}" for where, text in _message_strings()
           if not argv_piece.fullmatch(text)
           for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text) if opt not in known]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("argv", [["export", "RUN", "--check-samples-x", "3"],
                                  ["export", "MODEL.onnx", "--to", "onnx", "--precision", "bf16"],
                                  ["frobnicate"], ["export"]])
def test_the_parser_check_refuses_what_the_cli_refuses(argv):
    with pytest.raises(Exception):
        _parse(argv)


@pytest.mark.parametrize("raw,expected", [
    ("operator(), /__w/vision/vision/torchvision/csrc/io/image/cpu/decode_png.cpp:79, Out of "
     "bound read in decode_png", "Out of bound read in decode_png"),
    ("decode_jpeg, /src/decode_jpeg.cpp:123, Not a JPEG file", "Not a JPEG file"),
    ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions",
     "Got invalid dimensions"),
    ("a, b:3, plain text with commas is kept", "a, b:3, plain text with commas is kept"),
])
def test_one_line_drops_library_locations(raw, expected):
    from inceptionctl.errors import one_line

    assert one_line(RuntimeError(raw)) == expected


def test_one_line_drops_a_terminals_colours():
    from inceptionctl.errors import one_line

    assert one_line(RuntimeError("you have \x1b[1mtwo options\x1b[0m. (1)")) == \
        "you have two options. (1)"


@pytest.mark.parametrize("code,exit_code", [(errno.EACCES, 2), (errno.ELOOP, 2),
                                            (errno.ENOSPC, 1)])
def test_an_os_error_no_check_caught_is_one_line(cli, run, tmp_path, monkeypatch, code,
                                                 exit_code):
    """A folder the user may not read (or a loop of links) is the user's to fix: one line
    naming the path, exit 2; a full disk or an I/O error is the machine's: one line, exit 1.
    Never a traceback."""
    import inceptionctl.filelist as filelist

    data = tmp_path / "data"
    (data / "0").mkdir(parents=True)
    scandir = os.scandir

    def refused(path):
        if os.fspath(path) == str(data / "0"):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(filelist.os, "scandir", refused)
    out = cli("eval", run, "--data", data, "--limit", "4", "--workers", "0")
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.exit_code == exit_code, out.stderr
    assert lines == [f"error: {data / '0'}: {os.strerror(code)}"]


def test_a_loop_of_links_is_no_image(tmp_path):
    from inceptionctl.filelist import scan_class

    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "c.jpg").write_bytes(b"x")
    assert scan_class(str(tmp_path))[0] == ["c.jpg"]


def test_an_empty_onnx_file_says_so(cli, tmp_path):
    empty = tmp_path / "model.onnx"
    empty.write_bytes(b"")
    _one_error_line(cli("eval", empty), f"{empty}: empty file, not an ONNX model")


def test_recipe_is_refused_for_artifacts_that_carry_theirs(cli, run, tmp_path):
    """--recipe names what weights and ONNX from elsewhere lack: ours, checkpoint or ONNX alike,
    refuse it instead of one using it and the other ignoring it."""
    onnx = tmp_path / "m.onnx"
    assert cli("export", run, "--out", onnx).exit_code == 0
    img = tmp_path / "x.png"
    Image.new("RGB", (20, 20)).save(img)
    for artifact in (run, onnx):
        out = cli("predict", img, "--weights", artifact, "--recipe", "googlenet-small")
        assert out.exit_code == 2, out.stdout
        assert out.stderr.strip().endswith("carries its own recipe; --recipe is for weights and "
                                           "ONNX files from elsewhere (drop it here)")
    # beside weights from elsewhere, which need it, ours keep their own: compare and ensembles
    import torch

    ckpt = torch.load(run / "best.pt", weights_only=True)
    bare = tmp_path / "bare.pth"
    torch.save(ckpt.get("ema_state_dict") or ckpt["state_dict"], bare)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((run / "recipe.yaml").read_text())
    out = cli("compare", bare, onnx, "--recipe", recipe, "--samples", "4", "--json")
    assert out.exit_code == 0, out.stderr
    out = cli("eval", bare, run, "--recipe", recipe, "--limit", "4", "--workers", "0")
    assert out.exit_code == 0, out.stderr


def test_train_says_an_out_under_a_file_before_the_probe(cli, tmp_path, monkeypatch):
    """It used to fail only after the precision probe had run."""
    from inceptionctl import runtime, train

    for module in (runtime, train):
        monkeypatch.setattr(module, "choose_precision",
                            lambda *a, **k: pytest.fail("the precision probe ran first"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = cli("train", "--out", afile / "sub")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: --out {afile / 'sub'}: {afile} is "
                                                  f"not a folder"]


def test_train_strict_data_with_workers_exits_at_once(tmp_path):
    """The loader's workers ignore SIGTERM (the main process acts on it): an error with their
    iterator alive must still end the process, not leave its exit waiting on them."""
    for split, n in (("train", 8), ("val", 2)):
        for c in ("a", "b"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 40), (i * 20, 0, 0)).save(
                    tmp_path / "d" / split / c / f"{i}.png")
    (tmp_path / "d" / "train" / "a" / "bad.png").write_bytes(b"not an image")
    done = run_child(cli_command("train", "--data", tmp_path / "d", "--strict-data",
                                 "--workers", "1", "--out", tmp_path / "r",
                                 "--precision", "fp32", "--set", "train.batch_size=4"),
                     timeout=120)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "bad.png: cannot read image" in last


@pytest.mark.parametrize("args,text", [
    (["--set", "model.in_channels=1", "--set", "data.mean=[0.5]", "--set", "data.std=[0.5]"],
     "digits: images load as RGB (3 channels), but model.in_channels is 1; set "
     "model.in_channels=3 (only --data synthetic makes 1-channel images)"),
    (["--val-split", "0.2"], "--val-split 0.2: digits has its own val split"),
])
def test_train_refuses_data_the_recipe_cannot_take(cli, tmp_path, args, text):
    _one_error_line(cli("train", "--workers", "0", "--out", tmp_path / "r", *args), text)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_val_split_beside_a_val_folder_is_refused(tmp_path):
    from inceptionctl import load_recipe
    from inceptionctl.data import DataError, open_data

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / c / "0.png")
    recipe = load_recipe("googlenet-small")
    assert len(open_data(str(tmp_path), recipe).val) == 2
    with pytest.raises(DataError, match=r"--val-split 0.2: .* has its own val/"):
        open_data(str(tmp_path), recipe, val_split=0.2)


def test_paths_with_square_brackets_are_printed_as_given(cli, run, tmp_path):
    """A path is text: rich would read "[x]" as a style (dropping it) and "[/red]" as a closing
    tag (a MarkupError after the work was done)."""
    folder = tmp_path / "[/red]"
    folder.mkdir(parents=True)
    onnx = folder / "m [x].onnx"
    out = cli("export", run, "--out", onnx)
    assert out.exit_code == 0, out.output
    assert str(onnx) in out.stdout.replace("\n", "")
    out = cli("compare", run, onnx, "--samples", "4")
    assert out.exit_code == 0, out.output
    assert str(onnx) in out.stdout
    out = cli("eval", run, "--limit", "4", "--workers", "0", "--precision", "fp32", "--plot",
              folder / "cm [x].png")
    assert out.exit_code == 0, out.output
    assert str(folder / "cm [x].png") in out.stdout.replace("\n", "")
