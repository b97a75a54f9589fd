"""compare: two artifacts on the same inputs, with Polygraphy's atol/rtol semantics."""

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from inceptionctl import InceptionError, build_model
from inceptionctl.checkpoint import save_checkpoint
from inceptionctl.compare import compare, diff_stats, failing_elements, render
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

def test_an_element_fails_only_if_it_exceeds_both_atol_and_rtol():
    b = torch.tensor([[1.0, 100.0, 0.0, 1.0, 1e-6]])
    a = torch.tensor([[1.0 + 5e-4,    # |d| 5e-4 > atol, but <= rtol*|b| = 1e-3: passes
                       100.05,        # |d| 0.05 > atol, but <= rtol*|b| = 0.1: passes
                       5e-5,          # |d| 5e-5 <= atol (rel is huge): passes
                       1.01,          # |d| 0.01 > atol and > rtol*|b| = 1e-3: FAILS
                       2e-4]])        # |d| ~2e-4 > atol and > rtol*|b| ~ 1e-9: FAILS
    mask = failing_elements(a, b, atol=1e-4, rtol=1e-3)
    assert mask.tolist() == [[False, False, False, True, True]]
    assert failing_elements(a, b, atol=0.02, rtol=0.0).tolist() == \
        [[False, True, False, False, False]]
    assert not failing_elements(a, b, atol=1.0, rtol=0.0).any()  # atol alone covers all
    # rtol alone covers every element but the one whose reference is 0 (rtol * 0 = 0).
    assert failing_elements(a, b, atol=0.0, rtol=1e6).tolist() == \
        [[False, False, True, False, False]]


def test_diff_stats_on_hand_made_logits():
    b = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0],
                      [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    a = b.clone()
    a[1, 0] = 10.0  # sample 1: top-1 changes to class 0; class 2 drops out of the top-5
    s = diff_stats(a, b, atol=1e-4, rtol=1e-3)
    assert s.max_abs_diff == 10.0 and s.worst == (1, 0) and s.failing == 1
    assert s.elements == 14 and s.top1_agreement == 50.0
    assert s.top5_overlap == pytest.approx(100.0 * (5 + 4) / 10)
    assert s.mean_abs_diff == pytest.approx(10.0 / 14)
    assert s.max_rel_diff == pytest.approx(10.0 / 1e-12)  # |b| = 0 counts as 1e-12
    same = diff_stats(b, b, 0.0, 0.0)
    assert (same.max_abs_diff, same.failing, same.top1_agreement, same.top5_overlap) == \
        (0.0, 0, 100.0, 100.0)
    with pytest.raises(InceptionError, match="cannot be compared"):
        diff_stats(a, b[:, :3], 1e-4, 1e-3)


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
    ({"data": "/no/such/folder"}, "no such folder"),
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
