"""eval and predict: averaging, ensembles, the Table 3 report, bad inputs, distributed eval."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from inceptionctl import load_recipe
from inceptionctl import evaluate as ev
from inceptionctl.backend import ArtifactInfo, Session
from inceptionctl.crops import take_crops
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

FAKE_SIZE, FAKE_SCALES = 8, [10, 11, 12, 13]


def fake_logits(table: torch.Tensor, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A table row picked by the image's index (encoded in its constant green level), plus a
    fixed linear function of the crop's red channel: every crop of an image, each place and
    each mirror, has logits of its own."""
    index = (x[:, 1].mean(dim=(1, 2)) * 255 / 20).round().long()
    return table[index] + x[:, 0].flatten(1) @ weights.T


class FakeSession(Session):
    """:func:`fake_logits` of a table and of weights drawn from ``seed``, on the crops it is
    given (mean 0, std 1: pixel values in [0, 1])."""

    def __init__(self, table, path, seed=0):
        self.table = table
        self.weights = 0.15 * torch.randn(table.shape[1], FAKE_SIZE * FAKE_SIZE,
                                          generator=torch.Generator().manual_seed(seed))
        self.info = ArtifactInfo(path=path, kind="checkpoint", recipe={"eval": {"batch_size": 7}},
                                 classes=["a", "b", "c"], extra={"backend": "fake"},
                                 preprocessing={"eval_size": FAKE_SIZE, "eval_scales": FAKE_SCALES,
                                                "resize": FAKE_SCALES[0], "mean": [0.0] * 3,
                                                "std": [1.0] * 3, "channels": 3})
        self.calls = []

    def run(self, batch):
        self.calls.append(len(batch))
        return fake_logits(self.table, self.weights, batch)


def _pattern_folder(root, labels):
    """Image i (16 x 12) in the folder of its class: green a constant 20 * i, red a pattern
    that differs between its corners and from its mirror image. Returns the images in the
    dataset's order (class folder, then file name)."""
    images = {}
    y, x = torch.meshgrid(torch.arange(12), torch.arange(16), indexing="ij")
    for i, label in enumerate(labels):
        red = (16 * x + 60 * (y % 3) + 40 * i) % 256
        image = torch.stack([red, torch.full_like(red, 20 * i), 255 - red]).to(torch.uint8)
        d = root / label
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(d / f"img{i:02d}.png")
        images[(label, i)] = image
    return [images[k] for k in sorted(images)]


def _capture_sums(monkeypatch) -> list:
    """The per-image sums of softmax probabilities each evaluate() adds up (``_Sums``)."""
    seen = []
    real = ev._run
    monkeypatch.setattr(ev, "_run", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    return seen


def _mean_softmax(session: FakeSession, image: torch.Tensor, count: int) -> torch.Tensor:
    """By hand: the image's crops, each crop's softmax, their mean."""
    crops = take_crops(image, count, FAKE_SIZE, FAKE_SCALES).float() / 255
    return torch.softmax(fake_logits(session.table, session.weights, crops), dim=1).mean(0)


def test_softmax_averaging_over_crops_then_models(tmp_path, monkeypatch):
    # 4 images, true classes a, b, c, a (the dataset index order is a/img00, a/img03, b/img01,
    # c/img02, so green level encodes the file number, not the dataset index).
    images = _pattern_folder(tmp_path / "data", ["a", "b", "c", "a"])
    big = 4.0
    # model A: right on img00, img01; wrong (says b) on img02 and img03
    table_a = torch.tensor([[big, 0, 0], [0, big, 0], [0, big, 0], [0, big, 0]])
    # model B: confidently right on img02 and img03, unsure elsewhere
    table_b = torch.tensor([[0.0, 0.5, 0], [0, 0.5, 0], [0, 0, 3 * big], [3 * big, 0, 0]])
    sessions = {"A": FakeSession(table_a, "A", seed=1), "B": FakeSession(table_b, "B", seed=2)}
    monkeypatch.setattr(ev, "open_artifact", lambda path, *a, **k: sessions[path])
    sums = _capture_sums(monkeypatch)
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

    # Every image's probabilities, by hand: per model the mean over its crops of each crop's
    # softmax, then the mean over the models.
    a, b = sessions["A"], sessions["B"]
    want_a = torch.stack([torch.stack([_mean_softmax(a, im, c) for c in (1, 10)])
                          for im in images])
    want_b = torch.stack([torch.stack([_mean_softmax(b, im, c) for c in (1, 10)])
                          for im in images])
    per_crop = torch.tensor([1.0, 10.0])[None, :, None]
    got_first = sums[0].first.view(4, 2, 3) / per_crop
    got_all = sums[0].all.view(4, 2, 3) / (2 * per_crop)
    assert torch.allclose(got_first, want_a, atol=1e-6, rtol=0), (got_first, want_a)
    assert torch.allclose(got_all, (want_a + want_b) / 2, atol=1e-6, rtol=0)

    # The data tells the orders apart: averaging logits over crops (or over the models),
    # taking the crops in another place or without their mirrors, all give other numbers.
    def other(session, image, count, how):
        crops = take_crops(image, count, FAKE_SIZE, FAKE_SCALES).float() / 255
        if how == "unmirrored":
            crops = torch.cat([crops[:5], crops[:5]])
        elif how == "shifted":
            crops = take_crops(image, 10, FAKE_SIZE, FAKE_SCALES)[:count].float() / 255
        logits = fake_logits(session.table, session.weights, crops)
        if how == "logits":
            return torch.softmax(logits.mean(0), dim=0)
        return torch.softmax(logits, dim=1).mean(0)

    for how, count in (("logits", 10), ("unmirrored", 10), ("shifted", 1)):
        alt = torch.stack([other(a, im, count, how) for im in images])
        assert (alt - want_a[:, (1, 10).index(count)]).abs().max() > 1e-3, how
    crops = [take_crops(im, 10, FAKE_SIZE, FAKE_SCALES).float() / 255 for im in images]
    logits_first = torch.stack([torch.softmax((fake_logits(a.table, a.weights, c) +
                                               fake_logits(b.table, b.weights, c)) / 2,
                                              dim=1).mean(0) for c in crops])
    assert (logits_first - (want_a + want_b)[:, 1] / 2).abs().max() > 1e-3


def test_an_ensemble_of_one_run_twice_is_that_run(tiny_run, monkeypatch):
    """Two copies of one model: every row of the table, every image's top-5 and probabilities
    equal the model alone (the ensemble averages, it does not sum or re-weight)."""
    run, _ = tiny_run
    sums = _capture_sums(monkeypatch)
    alone = evaluate(EvalOptions([str(run)], data="digits", crops=[1, 10], workers=0, limit=120))
    twice = evaluate(EvalOptions([str(run), str(run)], data="digits", crops=[1, 10], workers=0,
                                 limit=120))
    assert [(r.models, r.crops, r.cost) for r in twice.rows] == \
        [(1, 1, 1), (1, 10, 10), (2, 1, 2), (2, 10, 20)]
    for single, pair in zip(alone.rows, twice.rows[2:]):
        assert (pair.top1, pair.top5, pair.delta_top1, pair.delta_top5) == \
            (single.top1, single.top5, single.delta_top1, single.delta_top5), pair
    assert [r.to_json() for r in twice.rows[:2]] == [r.to_json() for r in alone.rows]
    assert 0.0 < alone.main.top1 < 100.0  # a model with errors: the comparisons can fail
    assert (twice.confusion, twice.per_class) == (alone.confusion, alone.per_class)
    one, two = sums
    assert torch.equal(one.labels, two.labels) and torch.equal(one.first, two.first)
    assert torch.allclose(two.all / 2, one.first, atol=1e-6, rtol=0)
    pair_tops = two.top5([(2, 0), (2, 1)])["tops"]  # per image, 1 then 10 crops
    for pair, single in zip(pair_tops, one.top5([(1, 0), (1, 1)])["tops"]):
        assert torch.equal(pair, single)


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
    # the top-level accuracy, per-class figures and confusion are the main row's, named
    assert data["main_row"] == {"models": 2, "crops": 10}
    main = data["table"][-1]
    assert (data["top1"], data["top5"]) == (main["top1"], main["top5"])
    assert sum(row[i] for i, row in enumerate(data["confusion"])) == round(main["top1"] * 40 / 100)


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
        message = "no images in its class folders"
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
        message = "not a PyTorch weights file (it looks like a text file)"
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
    said = [ln for ln in only_bad.stderr.splitlines() if not ln.startswith("precision auto")]
    assert only_bad.exit_code == 2  # the one image given: one line with its path and reason
    assert len(said) == 1, only_bad.stderr
    assert said[0].startswith(f"error: {tmp_path / 'broken.jpg'}: cannot read image (")
    two_bad = cli("predict", tmp_path / "broken.jpg", tmp_path / "broken.jpg", "--weights", run)
    assert two_bad.exit_code == 2
    assert two_bad.stderr.strip().splitlines()[-1] == \
        "error: none of the 2 input image(s) could be read"
    missing = cli("predict", tmp_path / "nope.png", "--weights", run)
    assert missing.exit_code == 2 and "no such file or folder" in missing.stderr


def test_predict_ten_crops_is_the_mean_softmax_of_the_crops(tiny_run, cli, tmp_path):
    """predict --crops 10: each class's probability is the mean over take_crops' 10 crops of
    the softmax of the checkpoint's model, computed here."""
    from inceptionctl import build_model
    from inceptionctl.checkpoint import read_checkpoint
    from inceptionctl.recipe import recipe_from_data

    run, _ = tiny_run
    g = torch.Generator().manual_seed(5)
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
              for h, w in ((19, 27), (31, 20), (18, 18))]
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / f"p{i}.png")
    out = cli("predict", tmp_path, "--weights", run, "--crops", "10", "--topk", "10",
              "--precision", "fp32", "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["crops"] == 10 and len(data["predictions"]) == 3

    ckpt = read_checkpoint(run / "best.pt")
    recipe = recipe_from_data(ckpt["recipe"])
    model = build_model(recipe)
    model.load_state_dict(ckpt["ema_state_dict"] or ckpt["state_dict"])
    model.eval()
    mean = torch.tensor(recipe.data.mean).view(3, 1, 1)
    std = torch.tensor(recipe.data.std).view(3, 1, 1)
    for image, got in zip(images, data["predictions"]):
        crops = take_crops(image, 10, recipe.eval.size, recipe.eval.scales)
        with torch.no_grad():
            logits = model((crops.float() / 255 - mean) / std)
        want = torch.softmax(logits, dim=1).mean(0)
        probs = {t["index"]: t["probability"] for t in got["topk"]}
        assert sorted(probs) == list(range(10))
        assert [t["index"] for t in got["topk"]] == want.argsort(descending=True).tolist()
        assert torch.allclose(torch.tensor([probs[i] for i in range(10)]), want, atol=1e-6,
                              rtol=0), (got["path"], probs, want)
        # what a different averaging would give is far from it: the check can fail
        assert (torch.softmax(logits.mean(0), dim=0) - want).abs().max() > 1e-5  # 10x the tolerance
        assert (torch.softmax(logits[4], dim=0) - want).abs().max() > 1e-5  # 10x the tolerance


def test_backends_listing(cli):
    out = cli("backends", "--json")
    assert out.exit_code == 0
    rows = {r["name"]: r for r in json.loads(out.stdout)["backends"]}
    assert rows["torch"]["available"] and rows["torch"]["version"] == torch.__version__


@pytest.mark.slow
def test_default_model_144_crops_not_worse_than_one(default_run):
    """The shipped default, trained as `inceptionctl train` trains it: 144 crops vs 1 crop, on
    100 images (the crops' geometry is proven in test_crops; this is about accuracy)."""
    run, trained, _ = default_run
    # in the precision it was trained (and validated) in
    full = evaluate(EvalOptions([str(run)], data="digits", crops=[1],
                                precision=trained["precision"]))
    assert full.main.top1 == pytest.approx(trained["best_top1"])  # same weights, same number
    report = evaluate(EvalOptions([str(run)], data="digits", crops=[1, 144], limit=100,
                                  precision=trained["precision"]))
    one, many = report.rows
    assert report.images == 100
    # 100 images: one image is 1 point; allow three images of noise
    assert many.top1 >= one.top1 - 3.0, (one.top1, many.top1)


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


def test_top5_of_five_classes_or_fewer_is_said_to_be_trivial(tmp_path, monkeypatch):
    _pattern_folder(tmp_path / "data", ["a", "b", "c"])
    session = FakeSession(torch.zeros(3, 3), "A")
    monkeypatch.setattr(ev, "open_artifact", lambda path, *a, **k: session)
    report = evaluate(EvalOptions(["A"], data=str(tmp_path / "data"), crops=[1], workers=0))
    table, _ = ev.render(report)
    assert report.main.top5 == 100.0
    assert table.caption == "top-5 is 100% by definition with 3 classes"


def test_eval_scores_the_classes_that_have_images_and_names_a_folder_without_any(tmp_path,
                                                                                  tiny_run, cli):
    """An empty class folder beside others used to fail the whole set ("class folder has no
    images", a training-set rule); an empty or non-image flat folder was called a "flat val
    folder without a ground-truth file"."""
    from PIL import Image

    run = tiny_run[0]
    data = tmp_path / "val"
    (data / "0").mkdir(parents=True)
    (data / "7").mkdir()
    for i in range(2):
        Image.new("RGB", (20, 20), (i * 90,) * 3).save(data / "7" / f"{i}.png")
    out = cli("eval", run, "--data", data, "--workers", "0", "--json")
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["images"] == 2
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "notes.txt").write_text("hi")
    out = cli("eval", run, "--data", flat, "--workers", "0")
    assert out.exit_code == 2 and out.stderr.strip().splitlines()[-1] == (
        f"error: {flat}: no images in this folder (expected <class>/<image> folders, or images "
        f"beside a ground-truth file)")


def test_plot_takes_its_format_from_the_suffix_and_refuses_another(tmp_path, tiny_run, cli):
    """A PNG used to be written into cm.txt; .svg and .pdf were PNGs too."""
    run = tiny_run[0]
    bad = cli("eval", run, "--limit", "3", "--workers", "0", "--plot", tmp_path / "cm.txt")
    assert bad.exit_code == 2 and bad.stderr.strip().splitlines()[-1] == (
        f"error: --plot {tmp_path / 'cm.txt'}: give a file ending in .png, .svg, .pdf")
    assert not (tmp_path / "cm.txt").exists()
    for name, head in (("cm.svg", b"<?xml"), ("cm.pdf", b"%PDF"), ("cm.PNG", b"\x89PNG")):
        out = cli("eval", run, "--limit", "3", "--workers", "0", "--plot", tmp_path / name)
        assert out.exit_code == 0, out.stderr
        assert (tmp_path / name).read_bytes().startswith(head), name
