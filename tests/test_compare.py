"""compare: two artifacts on the same inputs, with Polygraphy's atol/rtol semantics."""

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from inceptionctl import InceptionError, build_model
from inceptionctl.checkpoint import save_checkpoint
from inceptionctl.compare import (compare, diff_stats, failing_elements, judge, render,
                                  verdict_precision)
from inceptionctl.export import export_onnx

from .test_export import QUIET, lively, tiny


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A tiny checkpoint, its ONNX export, and a copy with the classifier perturbed."""
    tmp = tmp_path_factory.mktemp("compare")
    recipe = tiny(tmp)
    model = lively(build_model(recipe)).eval()
    ckpt = save_checkpoint(tmp / "m.pt", model, recipe)
    onnx_path = Path(export_onnx(ckpt, batch="1:4:8", **QUIET).file)
    with torch.no_grad():
        model.fc.weight.add_(0.05 * torch.randn_like(model.fc.weight))
    perturbed = save_checkpoint(tmp / "perturbed.pt", model, recipe)
    return {"ckpt": ckpt, "onnx": onnx_path, "perturbed": perturbed, "dir": tmp}


# ------------------------------------------------------------------------- the tolerance rule

def test_an_element_fails_only_if_it_exceeds_both_atol_and_rtol_of_a():
    a = torch.tensor([[1.0, 100.0, 0.0, 1.0, 1e-6]])  # the reference
    b = torch.tensor([[1.0 + 5e-4,    # |d| 5e-4 > atol, but <= rtol*|a| = 1e-3: passes
                       100.05,        # |d| 0.05 > atol, but <= rtol*|a| = 0.1: passes
                       5e-5,          # |d| 5e-5 <= atol (rel is huge): passes
                       1.01,          # |d| 0.01 > atol and > rtol*|a| = 1e-3: FAILS
                       2e-4]])        # |d| ~2e-4 > atol and > rtol*|a| ~ 1e-9: FAILS
    mask = failing_elements(a, b, atol=1e-4, rtol=1e-3)
    assert mask.tolist() == [[False, False, False, True, True]]
    # A is the reference: with the roles swapped, rtol scales by the other side's values.
    assert failing_elements(b, a, atol=0.0, rtol=1e6).tolist() == [[False] * 5]
    assert failing_elements(a, b, atol=0.02, rtol=0.0).tolist() == \
        [[False, True, False, False, False]]
    assert not failing_elements(a, b, atol=1.0, rtol=0.0).any()  # atol alone covers all
    # rtol alone covers every element but the one whose reference is 0 (rtol * 0 = 0).
    assert failing_elements(a, b, atol=0.0, rtol=1e6).tolist() == \
        [[False, False, True, False, False]]


def test_an_element_that_is_not_finite_always_fails():
    a = torch.tensor([[1.0, 2.0, float("nan"), float("inf"), 3.0]])
    b = torch.tensor([[float("nan"), float("inf"), float("nan"), float("inf"), 3.0]])
    # a NaN compares false with every tolerance: without the finiteness rule all would pass
    assert failing_elements(a, b, atol=1e9, rtol=1e9).tolist() == [[True] * 4 + [False]]


def test_diff_stats_on_hand_made_logits():
    a = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0],
                      [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    b = a.clone()
    b[1, 0] = 10.0  # sample 1: top-1 changes to class 0; class 2 drops out of the top-5
    s = diff_stats(a, b, atol=1e-4, rtol=1e-3)
    assert s.max_abs_diff == 10.0 and s.worst == (1, 0) and s.failing == 1
    assert s.elements == 14 and s.top1_agreement == 50.0
    assert s.top5_overlap == pytest.approx(100.0 * (5 + 4) / 10)
    assert s.mean_abs_diff == pytest.approx(10.0 / 14)
    # Relative to A's logit range (6 - -1 = 7), not to the 0 the worst element sits on.
    assert s.logit_range == 7.0
    assert s.max_rel_diff == pytest.approx(10.0 / 7) and s.mean_rel_diff == pytest.approx(10 / 98)
    same = diff_stats(a, a, 0.0, 0.0)
    assert (same.max_abs_diff, same.failing, same.top1_agreement, same.top5_overlap) == \
        (0.0, 0, 100.0, 100.0)
    with pytest.raises(InceptionError, match="cannot be compared"):
        diff_stats(a, b[:, :3], 1e-4, 1e-3)


def test_the_verdict_follows_the_precision():
    assert verdict_precision("fp32", "fp32") == "fp32"
    assert verdict_precision("fp32", "int8") == "int8"
    assert verdict_precision("fp16", "fp32") == "fp16"
    a = torch.tensor([[4.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    noisy = a + 0.3  # every element past fp32's tolerances, every top-1 the same
    stats = diff_stats(a, noisy, 1e-4, 1e-3)
    assert judge(a, noisy, "fp32", stats, 1e-4, 1e-3)[0] is False
    passed, criterion = judge(a, noisy, "int8", stats, 1e-4, 1e-3)
    assert passed and "top-1 agreement >= 99%" in criterion
    flipped = a.flip(1)
    assert judge(a, flipped, "int8", diff_stats(a, flipped, 1e-4, 1e-3), 1e-4, 1e-3)[0] is False


def test_the_table_and_the_verdict_count_one_top1_agreement_on_exact_ties():
    """INT8 logits tie exactly; topk and argmax order a tie differently, so both the table's
    agreement and the verdict's must come from one rule (argmax, the first of the tied)."""
    a = torch.zeros(4, 10)
    a[:, 3] = 1.0
    b = a.clone()
    b[:, 7] = 1.0  # classes 3 and 7 tie in b: argmax keeps 3, topk puts 7 first
    assert int(b.topk(5, 1).indices[0, 0]) == 7  # the case this test is about
    stats = diff_stats(a, b, 1e-4, 1e-3)
    passed, criterion = judge(a, b, "int8", stats, 1e-4, 1e-3)
    assert stats.top1_agreement == 100.0
    assert passed and criterion.endswith("measured 100.00%")


# ----------------------------------------------------------------------------- on artifacts

def test_identical_artifacts_pass(artifacts):
    report = compare(artifacts["ckpt"], artifacts["ckpt"], samples=10, log=QUIET["log"])
    assert report.passed and report.stats.max_abs_diff == 0.0
    assert report.stats.top1_agreement == 100.0 and report.stats.top5_overlap == 100.0
    assert report.samples == 10 and report.data.startswith("random")


def test_checkpoint_against_its_onnx_export_passes(artifacts):
    report = compare(artifacts["onnx"], artifacts["ckpt"], data="digits", samples=30,
                     log=QUIET["log"])
    assert report.passed and report.stats.failing == 0
    assert (report.backend_a, report.backend_b) == ("onnxruntime", "torch")
    assert report.stats.top1_agreement == 100.0
    assert report.top1_a == report.top1_b is not None  # digits are labelled for 10 classes
    assert report.samples == 30  # 8 + 8 + 8 + 6 (padded to the ONNX's minimum of 1)


def test_a_perturbed_artifact_fails_with_the_numbers(artifacts):
    report = compare(artifacts["perturbed"], artifacts["onnx"], samples=16, log=QUIET["log"])
    assert not report.passed
    s = report.stats
    assert s.failing > 0 and s.max_abs_diff > 1e-2 and s.elements == 160
    data = json.loads(json.dumps(report.to_json()))
    assert data["passed"] is False and data["failing"] == s.failing
    for key in ("max_abs_diff", "mean_abs_diff", "max_rel_diff", "mean_rel_diff",
                "top1_agreement", "top5_overlap", "atol", "rtol", "samples"):
        assert key in data
    console = Console(record=True, width=120)
    console.print(render(report))
    text = console.export_text()
    assert "FAILED" in text and f"{s.failing:,} of 160 logits exceed both" in text
    assert "A (reference)" in text and "relative to A's range" in text
    # Loose enough tolerances accept the same difference.
    loose = compare(artifacts["perturbed"], artifacts["onnx"], samples=16, atol=10.0,
                    log=QUIET["log"])
    assert loose.passed and loose.stats.max_abs_diff == pytest.approx(s.max_abs_diff)


def test_artifacts_that_cannot_share_inputs_are_one_clear_error(artifacts, tmp_path):
    other = tiny(tmp_path, ["model.num_classes=5"])
    five = save_checkpoint(tmp_path / "five.pt", build_model(other), other)
    with pytest.raises(InceptionError, match="has 5 classes.*has 10.*do not correspond"):
        compare(artifacts["ckpt"], five, log=QUIET["log"])
    bigger = tiny(tmp_path, ["data.input_size=32", "data.resize=36", "eval.size=32",
                             "eval.scales=[36, 40]"])
    big = save_checkpoint(tmp_path / "big.pt", build_model(bigger), bigger)
    with pytest.raises(InceptionError, match="takes 3x32x32 inputs.*3x16x16.*cannot share"):
        compare(artifacts["ckpt"], big, log=QUIET["log"])


@pytest.mark.parametrize("kwargs, message", [
    ({"samples": 0}, "--samples: expected at least 1"),
    ({"atol": -1.0}, "non-negative tolerances"),
    ({"rtol": float("nan")}, "finite non-negative tolerances, got 0.0001 and nan"),
    ({"atol": float("inf")}, "finite non-negative tolerances"),
    ({"data": "/no/such/folder"}, "no such folder"),
    ({"data": __file__}, "test_compare.py: not a folder"),
])
def test_bad_arguments(artifacts, kwargs, message):
    with pytest.raises(InceptionError, match=message):
        compare(artifacts["ckpt"], artifacts["onnx"], log=QUIET["log"], **kwargs)


def test_the_cli_exits_1_on_a_failed_comparison_and_0_on_a_passed_one(artifacts, cli):
    failed = cli("compare", artifacts["perturbed"], artifacts["onnx"], "--samples", "16")
    assert failed.exit_code == 1, failed.output
    assert "FAILED" in failed.stdout and "Traceback" not in failed.output
    passed = cli("compare", artifacts["ckpt"], artifacts["onnx"], "--samples", "16")
    assert passed.exit_code == 0, passed.output
    # the same difference within loose tolerances passes
    loose = cli("compare", artifacts["perturbed"], artifacts["onnx"], "--samples", "16",
                "--atol", "10")
    assert loose.exit_code == 0, loose.output


def test_a_model_that_outputs_nan_fails_and_its_json_stays_json(artifacts, cli):
    broken = torch.load(artifacts["ckpt"], weights_only=True)
    for key in ("state_dict", "ema_state_dict"):
        if broken.get(key) is not None:
            broken[key]["fc.weight"].fill_(float("nan"))
    path = artifacts["dir"] / "nan.pt"
    torch.save(broken, path)
    out = cli("compare", artifacts["ckpt"], path, "--samples", "8", "--json")
    assert out.exit_code == 1, out.output
    data = json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert data["passed"] is False and data["failing"] == data["elements"]
    assert data["max_abs_diff"] is None  # NaN, written as null
    # predict with such weights: one line naming them and the image, not "nan%" and exit 0
    from PIL import Image

    image = artifacts["dir"] / "one.png"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(image)
    told = cli("predict", image, "--weights", path, "--precision", "fp32")
    lines = told.stderr.strip().splitlines()
    assert told.exit_code == 2 and len(lines) == 1, told.output
    assert lines[0] == (f"error: {path}: its output for {image} is not finite (NaN or inf): "
                        f"damaged weights, or a precision too narrow for them")
    told = cli("eval", path, "--limit", "4", "--precision", "fp32", "--workers", "0")
    assert told.exit_code == 2 and told.stderr.strip().splitlines()[-1] == (
        f"error: {path}: its output is not finite (NaN or inf): damaged weights, or a precision "
        f"too narrow for them"), told.output


# ------------------------------------------------------------------- through the command line

@pytest.fixture(scope="module")
def run_and_int8(trained, tmp_path_factory):
    """A trained run, its INT8 export made by the CLI, and two perturbed copies of its weights
    (a nudge that fp32 tolerances catch, and noise that changes most top-1 answers)."""
    from typer.testing import CliRunner

    from inceptionctl.checkpoint import load_with_facts
    from inceptionctl.cli import app

    tmp = tmp_path_factory.mktemp("cli-compare")
    run = trained
    int8 = tmp / "best.int8.onnx"
    made = CliRunner().invoke(app, ["export", str(run), "--precision", "int8", "--calib-data",
                                    "digits", "--calib-samples", "64", "--out", str(int8)])
    assert made.exit_code == 0, made.stderr
    copies = {}
    for name, scale in (("nudged", 0.01), ("scrambled", 3.0)):
        model, resolved, *_ = load_with_facts(run / "best.pt")
        torch.manual_seed(1)
        with torch.no_grad():
            model.fc.weight.add_(scale * model.fc.weight.std() * torch.randn_like(model.fc.weight))
        copies[name] = save_checkpoint(tmp / f"{name}.pt", model, resolved)
    return run, int8, copies


@pytest.mark.slow
def test_a_run_against_its_int8_export_passes_through_the_cli(run_and_int8, cli):
    run, int8, _ = run_and_int8
    out = cli("compare", run, int8, "--data", "digits", "--samples", "64", "--json")
    assert out.exit_code == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["passed"] is True and data["reference"] == "A"
    assert (data["precision_a"], data["precision_b"]) == ("fp32", "int8")
    assert "top-1 agreement >= 99%" in data["criterion"] and data["top1_agreement"] >= 99.0
    assert data["failing"] > 0  # fp32's element tolerances would have failed it
    # The logit error, against A's range: a fraction, not 1e10 from a logit near 0.
    assert 0 < data["max_rel_diff"] < 0.5
    assert data["max_rel_diff"] == pytest.approx(data["max_abs_diff"] / data["logit_range"])
    table = cli("compare", run, int8, "--data", "digits", "--samples", "64")
    assert table.exit_code == 0 and "passed" in table.stdout and "A (reference)" in table.stdout


@pytest.mark.slow
def test_a_perturbed_copy_fails_through_the_cli(run_and_int8, cli):
    run, int8, copies = run_and_int8
    fp32 = cli("compare", run, copies["nudged"], "--data", "digits", "--samples", "64", "--json")
    assert fp32.exit_code == 1, fp32.stderr
    data = json.loads(fp32.stdout)
    assert data["passed"] is False and data["failing"] > 0 and "atol" in data["criterion"]
    reduced = cli("compare", copies["scrambled"], int8, "--data", "digits", "--samples", "64",
                  "--json")
    assert reduced.exit_code == 1, reduced.stderr
    data = json.loads(reduced.stdout)
    assert data["passed"] is False and data["top1_agreement"] < 99.0
    assert "top-1 agreement >= 99%" in data["criterion"]
