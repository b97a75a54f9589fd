"""The timed profile: every JSON field on tiny settings, unavailable backends as rows."""

import json

import pytest

from inceptionctl import load_recipe
from inceptionctl.speed import SpeedOptions, percentile, timed_profile

ROW_FIELDS = {"backend", "precision", "batch", "mode", "available", "reason", "latency_ms",
              "images_per_s", "gflops", "peak_fraction", "peak_memory_mib", "iterations"}


def test_percentile_matches_numpy():
    import numpy as np

    values = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 7.0]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_timed_profile_tiny(tiny_recipe):
    recipe = load_recipe(tiny_recipe)
    report = timed_profile(SpeedOptions(recipe=recipe, backends=["torch", "tensorrt"],
                                        precisions=["fp32", "bf16"], batches=[1, 4], warmup=1,
                                        iters=2, train=True))
    data = json.loads(json.dumps(report.to_json()))
    assert data["schema"] == "inceptionctl.speed/1"
    assert {"device", "cpu", "gpu", "threads", "versions"} <= set(data["machine"])
    assert data["macs_per_image"] > 0 and data["peaks"]["cpu/fp32"] > 0
    rows = data["rows"]
    for r in rows:
        assert set(r) == ROW_FIELDS
    timed = [r for r in rows if r["available"]]
    assert {(r["backend"], r["precision"], r["batch"], r["mode"]) for r in timed} == {
        ("torch", p, b, m) for p in ("fp32", "bf16") for b in (1, 4)
        for m in ("inference", "train")}
    for r in timed:
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and r["iterations"] == 2
        assert r["images_per_s"] == pytest.approx(1000.0 * r["batch"] / lat["p50"])
        assert r["gflops"] > 0 and 0 < r["peak_fraction"] and r["peak_memory_mib"] > 0
    try:
        import tensorrt  # noqa: F401
        have_trt = True
    except ImportError:
        have_trt = False
    if not have_trt:
        (trt,) = [r for r in rows if r["backend"] == "tensorrt"]
        assert not trt["available"] and "tensorrt not installed" in trt["reason"]


def test_profile_time_cli(cli, tiny_recipe, tmp_path):
    png = tmp_path / "speed.png"
    out = cli("profile", "--recipe", tiny_recipe, "--time", "--backend", "torch", "--batch", "2",
              "--iters", "1", "--warmup", "0", "--plot", png, "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["speed"]["rows"][0]["batch"] == 2 and data["totals"]["params"] > 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    bad = cli("profile", "--recipe", tiny_recipe, "--time", "--batch", "x")
    assert bad.exit_code == 2 and "--batch x" in bad.stderr
    noplot = cli("profile", "--recipe", tiny_recipe, "--plot", png)
    assert noplot.exit_code == 2 and "add --time" in noplot.stderr
