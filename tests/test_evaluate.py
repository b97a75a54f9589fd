"""eval and predict: averaging, ensembles, the Table 3 report, bad inputs, distributed eval."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from inceptionctl import load_recipe
from inceptionctl import evaluate as ev
from inceptionctl.backend import ArtifactInfo, Session
from inceptionctl.evaluate import EvalOptions, evaluate, stream_batches

from .conftest import TINY_TRAIN



def test_eval_reproduces_training_accuracy(tiny_run, cli):
    run, result = tiny_run
    # the run was trained (and validated) in fp32: eval in fp32 gives the same numbers
    report = evaluate(EvalOptions([str(run)], data="digits", crops=[1], workers=0,
                                  precision="fp32"))
    assert report.images == 360 and report.skipped == 0
    assert report.main.top1 == pytest.approx(result.best_top1, abs=1e-9)
    assert report.main.top5 == pytest.approx(result.history[-1]["val_top5"], abs=1e-9)
    out = cli("eval", run, "--json", "--workers", "0", "--precision", "fp32")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["top1"] == pytest.approx(result.best_top1) and data["images"] == 360
    assert data["backend"] == "torch" and len(data["confusion"]) == 10
    assert sum(map(sum, data["confusion"])) == 360
    assert {c["class"] for c in data["per_class"]} == {str(i) for i in range(10)}


def test_stream_batches_makes_full_batches():
    pieces = [(torch.arange(n), torch.arange(n) + 100) for n in (3, 7, 1, 9, 2)]
    out = list(stream_batches(iter(pieces), 5))
    assert [len(c) for c, _ in out] == [5, 5, 5, 5, 2]
    assert torch.equal(torch.cat([c for c, _ in out]), torch.cat([p for p, _ in pieces]))
    assert torch.equal(torch.cat([t for _, t in out]), torch.cat([t for _, t in pieces]))


# ------------------------------------------------------------- known outputs, ensembles

class FakeSession(Session):
    """Logits from a table, keyed by the image's encoded index (its constant grey level)."""

    def __init__(self, table, path):
        self.table = table
        self.info = ArtifactInfo(path=path, kind="checkpoint", recipe={"eval": {"batch_size": 7}},
                                 classes=["a", "b", "c"], extra={"backend": "fake"},
                                 preprocessing={"eval_size": 8, "eval_scales": [8, 9, 10, 11],
                                                "resize": 8, "mean": [0.0] * 3,
                                                "std": [1.0] * 3, "channels": 3})
        self.calls = []

    def run(self, batch):
        self.calls.append(len(batch))
        index = (batch[:, 0].mean(dim=(1, 2)) * 255 / 20).round().long()
        return self.table[index]


def _grey_folder(root, labels):
    """Image i is a constant grey of level 20*i, in the folder of its class."""
    for i, label in enumerate(labels):
        d = root / label
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 10), (20 * i,) * 3).save(d / f"img{i:02d}.png")
    return root


def test_softmax_averaging_over_models(tmp_path, monkeypatch):
    # 4 images, true classes a, b, c, a (sorted by file name inside class folders: img00, img03
    # in a/, img01 in b/, img02 in c/; the dataset index order is a/img00, a/img03, b/img01,
    # c/img02, so grey level encodes the file number, not the dataset index).
    _grey_folder(tmp_path / "data", ["a", "b", "c", "a"])
    big = 4.0
    # model A: right on img00, img01; wrong (says c) on img02 -> 'b'? and img03 -> 'b'
    table_a = torch.tensor([[big, 0, 0], [0, big, 0], [0, big, 0], [0, big, 0]])
    # model B: confidently right on img02 and img03, unsure elsewhere
    table_b = torch.tensor([[0.0, 0.5, 0], [0, 0.5, 0], [0, 0, 3 * big], [3 * big, 0, 0]])
    sessions = {"A": FakeSession(table_a, "A"), "B": FakeSession(table_b, "B")}
    monkeypatch.setattr(ev, "open_artifact", lambda path, *a, **k: sessions[path])
    report = evaluate(EvalOptions(["A", "B"], data=str(tmp_path / "data"), crops=[1, 10],
                                  workers=0))
    rows = {(r.models, r.crops): r for r in report.rows}
    assert rows[(1, 1)].top1 == pytest.approx(50.0)   # A alone: img00, img01 right
    # ensemble: mean of softmaxes; B's large logits win on img02, img03; A wins img00, img01
    assert rows[(2, 1)].top1 == pytest.approx(100.0)
    assert rows[(2, 10)].top1 == pytest.approx(100.0) and rows[(2, 10)].cost == 20
    assert rows[(2, 1)].delta_top1 == pytest.approx(50.0)
    assert report.main is rows[(2, 10)]
    assert report.confusion == [[2, 0, 0], [0, 1, 0], [0, 0, 1]]
    # the backend saw full batches of 7 crops, the last one short: 4 x 11 crops = 44 = 6 x 7 + 2
    assert sessions["A"].calls == [7] * 6 + [2]


def test_eval_table3_through_cli(tiny_run, cli):
    run, _ = tiny_run
    out = cli("eval", run, run, "--crops", "1,10", "--workers", "0", "--limit", "40")
    assert out.exit_code == 0, out.stderr
    for text in ("models", "crops", "cost", "base", "top-1 err"):
        assert text in out.stdout
    data = json.loads(cli("eval", run, run, "--crops", "1,10", "--workers", "0", "--limit",
                          "40", "--json").stdout)
    assert [(r["models"], r["crops"], r["cost"]) for r in data["table"]] == \
        [(1, 1, 1), (1, 10, 10), (2, 1, 2), (2, 10, 20)]
    assert data["images"] == 40


def test_confusion_plot(tiny_run, cli, tmp_path):
    run, _ = tiny_run
    png = tmp_path / "cm.png"
    out = cli("eval", run, "--workers", "0", "--limit", "50", "--plot", png)
    assert out.exit_code == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case", ["corrupt", "strict", "empty", "unknown class", "missing",
                                  "not an artifact", "bad crops", "144 without 4 scales",
                                  "classes differ", "unknown backend"])
def test_eval_bad_inputs(tiny_run, cli, tmp_path, case):
    run, _ = tiny_run
    data = tmp_path / "data"
    for label in ("3", "7"):
        (data / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (i * 40,) * 3).save(data / label / f"{i}.png")
    args = [run, "--data", data, "--workers", "0"]
    if case == "corrupt":
        (data / "3" / "bad.png").write_bytes(b"\x89PNG garbage")
        out = cli("eval", *args, "--json")
        assert out.exit_code == 0, out.stderr
        assert json.loads(out.stdout)["skipped"] == 1 and json.loads(out.stdout)["images"] == 6
        assert "skipped 1 unreadable image(s)" in out.stderr and "bad.png" in out.stderr
        return
    if case == "strict":
        (data / "3" / "bad.png").write_bytes(b"")
        args.append("--strict-data")
        message = "bad.png: cannot read image"
    elif case == "empty":
        args[2] = tmp_path / "nothing"
        (tmp_path / "nothing" / "3").mkdir(parents=True)
        message = "class folder has no images"
    elif case == "unknown class":
        (data / "cat").mkdir()
        Image.new("RGB", (20, 20)).save(data / "cat" / "x.png")
        message = "class folder(s) cat are not among the model's 10 classes"
    elif case == "missing":
        args[2] = tmp_path / "nope"
        message = "no such folder"
    elif case == "not an artifact":
        bogus = tmp_path / "model.pt"
        bogus.write_bytes(b"hello")
        args[0] = bogus
        message = "cannot be read as weights"
    elif case == "bad crops":
        args += ["--crops", "1,12"]
        message = "each count must be 1, 10 or 144"
    elif case == "144 without 4 scales":
        args += ["--crops", "144"]
        message = "144 crops need 4 scales"
    elif case == "classes differ":
        from inceptionctl import build_model
        from inceptionctl.checkpoint import save_checkpoint

        other = load_recipe("googlenet-small", {"model.num_classes": 3, "data.classes": None})
        save_checkpoint(tmp_path / "three.pt", build_model(other), other)
        args.insert(1, tmp_path / "three.pt")
        message = "an ensemble must share its classes"
    elif case == "unknown backend":
        args += ["--backend", "onnxrt"]
        message = "unknown backend 'onnxrt'"
    out = cli("eval", *args)
    assert out.exit_code == 2, (case, out.stdout, out.stderr)
    assert message in out.stderr and "Traceback" not in out.stderr


def test_predict(tiny_run, cli, tmp_path):
    run, _ = tiny_run
    from inceptionctl.data import digits

    val = digits(18, "val")
    for i in range(3):
        Image.fromarray(val.images[i].permute(1, 2, 0).numpy()).save(tmp_path / f"d{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    out = cli("predict", tmp_path, "--weights", run, "--topk", "3", "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert [Path(p["path"]).name for p in data["predictions"]] == ["d0.png", "d1.png", "d2.png"]
    for p in data["predictions"]:
        probs = [t["probability"] for t in p["topk"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and probs[0] <= 1.0
    assert data["skipped"][0]["path"].endswith("broken.jpg")
    assert "skipped" in out.stderr
    table = cli("predict", tmp_path / "d0.png", "--weights", run, "--crops", "10")
    assert table.exit_code == 0 and "d0.png" in table.stdout
    only_bad = cli("predict", tmp_path / "broken.jpg", "--weights", run)
    assert only_bad.exit_code == 2 and "none of the 1 input image(s) could be read" in only_bad.stderr
    missing = cli("predict", tmp_path / "nope.png", "--weights", run)
    assert missing.exit_code == 2 and "no such file or folder" in missing.stderr


def test_backends_listing(cli):
    out = cli("backends", "--json")
    assert out.exit_code == 0
    rows = {r["name"]: r for r in json.loads(out.stdout)["backends"]}
    assert rows["torch"]["available"] and rows["torch"]["version"] == torch.__version__


@pytest.mark.slow
def test_distributed_eval_equals_single_process(tiny_run, tmp_path):
    run, _ = tiny_run
    env = dict(os.environ, INCEPTIONCTL_DIST_BACKEND="gloo", OMP_NUM_THREADS="1")
    args = ["-m", "inceptionctl", "eval", str(run), "--crops", "1,10", "--workers", "0",
            "--limit", "101", "--precision", "fp32", "--json"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node=2", *args], capture_output=True, text=True, env=env,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)  # rank 1 prints nothing
    assert a["images"] == b["images"] == 101
    assert a["table"] == b["table"] and a["confusion"] == b["confusion"]


@pytest.mark.slow
def test_default_model_144_crops_not_worse_than_one(default_run):
    """The shipped default, trained as `inceptionctl train` trains it: 144 crops vs 1 crop."""
    run, trained, _ = default_run
    report = evaluate(EvalOptions([str(run)], data="digits", crops=[1, 144],
                                  precision=trained["precision"]))  # as it was validated
    one, many = report.rows
    assert one.top1 == pytest.approx(trained["best_top1"])  # same weights, same number
    # 360 images: one image is 0.28 points; allow three images of noise
    assert many.top1 >= one.top1 - 0.84, (one.top1, many.top1)


def test_eval_crops_default_to_the_recipes(tmp_path, cli):
    """eval.crops is eval's default; --crops overrides it."""
    from inceptionctl import build_model
    from inceptionctl.checkpoint import save_checkpoint

    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(TINY_TRAIN.lstrip("\n"))
    recipe = load_recipe(recipe_path, ["eval.crops=10"])
    ckpt = save_checkpoint(tmp_path / "ten.pt", build_model(recipe).eval(), recipe)
    default = cli("eval", ckpt, "--limit", "20", "--workers", "0", "--json")
    assert default.exit_code == 0, default.stderr
    assert json.loads(default.stdout)["crops"] == [10]
    asked = cli("eval", ckpt, "--limit", "20", "--workers", "0", "--crops", "1", "--json")
    assert asked.exit_code == 0 and json.loads(asked.stdout)["crops"] == [1]


def test_eval_and_predict_resize_with_the_recipes_interpolation(tmp_path, monkeypatch):
    """data.interpolation reaches eval's and predict's crops, as it reaches training's."""
    from inceptionctl import build_model
    from inceptionctl.checkpoint import save_checkpoint

    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(TINY_TRAIN.lstrip("\n"))
    recipe = load_recipe(recipe_path, ["data.interpolation=bicubic"])
    ckpt = save_checkpoint(tmp_path / "c.pt", build_model(recipe).eval(), recipe)
    seen = []
    real = ev.take_crops
    monkeypatch.setattr(ev, "take_crops", lambda *a: seen.append(a[4]) or real(*a))
    evaluate(EvalOptions([str(ckpt)], data="digits", limit=4, workers=0))
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    ev.predict([str(tmp_path / "a.png")], str(ckpt), device="cpu")
    assert seen == ["bicubic"] * 5
