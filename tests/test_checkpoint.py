"""The checkpoint format, safe loading, strict key checks, reset_head, atomic writes."""

import pickle

import pytest
import torch

import inceptionctl.recipe as recipe_module
from inceptionctl import InceptionError, RecipeError, build_model, load_recipe, load_weights
from inceptionctl.checkpoint import load_model, read_checkpoint, save_checkpoint
from inceptionctl.recipe import KeyChange


@pytest.fixture
def small():
    recipe = load_recipe("googlenet-small")
    return recipe, build_model(recipe).eval()


def _x(recipe, n=2):
    s = recipe.data.input_size
    return torch.randn(n, 3, s, s)


def test_round_trip_carries_recipe_classes_preprocessing(tmp_path, small):
    recipe, model = small
    path = save_checkpoint(tmp_path / "ckpt.pt", model, recipe, meta={"epoch": 3})
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["format"] == "inceptionctl.checkpoint" and raw["meta"] == {"epoch": 3}
    ckpt = read_checkpoint(path)
    assert ckpt["classes"] == [str(i) for i in range(10)]
    assert ckpt["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert ckpt["preprocessing"]["input_size"] == 32
    loaded, loaded_recipe, info = load_model(path)
    assert loaded_recipe == recipe and not info["ema"]
    x = _x(recipe)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_ema_weights_are_what_loads(tmp_path, small):
    recipe, model = small
    ema = {k: (v + 1 if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = save_checkpoint(tmp_path / "c.pt", model, recipe, ema_state_dict=ema)
    other = build_model(recipe)
    load_weights(other, path)
    assert torch.equal(other.fc.weight, ema["fc.weight"])


def test_interrupted_save_keeps_previous(tmp_path, small, monkeypatch):
    recipe, model = small
    path = save_checkpoint(tmp_path / "last.pt", model, recipe, meta={"epoch": 1})
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, recipe, meta={"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert read_checkpoint(path)["meta"] == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("free, reason", [(1 << 20, "No space left on device"),
                                           (10 << 30, "the write failed: [enforce fail")])
def test_a_save_that_torch_fails_to_write_is_one_line(tmp_path, small, monkeypatch, free,
                                                       reason):
    """torch.save on a full disk raises a RuntimeError from its zip writer, not an OSError: it
    ends as the one-line write error naming the file (a full disk said as such), the previous
    checkpoint kept and no temp file left."""
    import os

    from inceptionctl.errors import OutputError

    recipe, model = small
    path = save_checkpoint(tmp_path / "last.pt", model, recipe, meta={"epoch": 1})
    before = path.read_bytes()

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 part of a file")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 163072 "
                           "vs 163000")

    class Stat:
        f_bavail, f_frsize = free // 4096, 4096

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(os, "statvfs", lambda p: Stat())
    with pytest.raises(OutputError) as err:
        save_checkpoint(path, model, recipe, meta={"epoch": 2})
    monkeypatch.undo()
    assert str(err.value).startswith(f"{path}: cannot write ({reason}")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_wrong_architecture_lists_keys(tmp_path):
    paper = build_model(load_recipe("googlenet"))
    path = tmp_path / "paper.pth"
    torch.save(paper.state_dict(), path)
    bn = build_model(load_recipe("googlenet-bn"))
    with pytest.raises(InceptionError) as info:
        load_weights(bn, path)
    text = str(info.value)
    assert text.startswith(f"{path}: weights do not fit this model:")
    assert "missing (stem.conv1.bn.weight" in text and "unexpected (stem.conv1.conv.bias" in text
    assert "of another shape" in text and "\n" not in text


def test_other_class_count_needs_reset_head(tmp_path, small):
    recipe, model = small
    path = save_checkpoint(tmp_path / "ten.pt", model, recipe)
    five = build_model(load_recipe("googlenet-small", {"model.num_classes": 5,
                                                        "data.classes": None}))
    fresh_fc = five.fc.weight.detach().clone()
    with pytest.raises(InceptionError, match=r"fc.weight \[10, 256\] vs model \[5, 256\].*"
                                             r"without --strict-head"):
        load_weights(five, path)
    report = load_weights(five, path, reset_head=True)
    assert report.reset == ["aux.aux1.fc2", "aux.aux2.fc2", "fc"]
    assert torch.equal(five.fc.weight, fresh_fc)  # the new head stays as initialised
    assert torch.equal(five.stem.conv1.conv.weight, model.stem.conv1.conv.weight)


def test_model_without_aux_heads_ignores_aux_tensors(tmp_path, small):
    recipe, model = small
    path = save_checkpoint(tmp_path / "c.pt", model, recipe)
    no_aux = build_model(load_recipe("googlenet-small", {"model.aux.after": []}))
    report = load_weights(no_aux, path)
    assert len(report.ignored_aux) > 0 and not list(no_aux.aux.children())


@pytest.mark.parametrize("content,message", [
    (b"", "empty file"),
    (b"this is not a weights file at all", r"not a PyTorch weights file \(it looks like a text "
                                           r"file\)"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), r"not a PyTorch weights file \(it looks like a PNG image\)"),
    (b"\x08\x07\x12\x07pytorch" + bytes(16), "it looks like an ONNX model, which needs the .onnx"),
    (b"\x80\x02not really a pickle", "cannot be read as weights"),
    (b"PK\x03\x04 a zip cut short", "cannot be read as weights"),
])
def test_unreadable_files(tmp_path, small, content, message):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(InceptionError, match=message):
        load_weights(small[1], path)


def test_an_onnx_file_given_as_weights_is_named_so(tmp_path, small):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(16))
    with pytest.raises(InceptionError, match=r"m.onnx: not a PyTorch weights file \(it is an "
                                             r"ONNX model: this option takes a checkpoint"):
        load_weights(small[1], path)


@pytest.mark.parametrize("edit,problem", [
    (lambda c: c.pop("recipe"), "it has no recipe"),
    (lambda c: (c.pop("state_dict"), c.pop("ema_state_dict", None)), r"it has no weights"),
    (lambda c: c.update(classes=5), "its classes are not a list of names"),
    (lambda c: c.update(format_version=99), "checkpoint format 99 is newer than this"),
])
def test_a_damaged_checkpoint_is_one_line_wherever_it_is_read(tmp_path, small, edit, problem):
    recipe, model = small
    raw = torch.load(save_checkpoint(tmp_path / "c.pt", model, recipe), weights_only=True)
    edit(raw)
    path = tmp_path / "edited.pt"
    torch.save(raw, path)
    for read in (read_checkpoint, load_model, lambda p: load_weights(model, p)):
        with pytest.raises(InceptionError, match=rf"edited.pt: .*{problem}"):
            read(path)


def test_truncated_checkpoint(tmp_path, small):
    recipe, model = small
    path = save_checkpoint(tmp_path / "c.pt", model, recipe)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InceptionError, match=r"cannot be read as weights \(only plain tensors "
                       r"are loaded, never code\): the archive is incomplete \(cut short while "
                       r"written or copied\?\)$"):
        load_weights(model, cut)


class _Exploit:
    marker = ""  # where unpickling would write, were it ever to run code

    def __reduce__(self):
        return (open, (self.marker, "w"))


# the hostile file is pickled with protocol 4, which torch's safe unpickler warns about
@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")
def test_a_checkpoint_damaged_after_it_was_written_is_refused(tmp_path, small):
    """torch.load does not check the archive's CRCs: bytes overwritten inside a tensor loaded as
    wrong weights without a word."""
    import zipfile

    recipe, model = small
    path = save_checkpoint(tmp_path / "last.pt", model, recipe)
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)  # the largest tensor
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data = bytearray(path.read_bytes())
    data[start + 100:start + 108] = bytes(b ^ 0xFF for b in data[start + 100:start + 108])
    path.write_bytes(bytes(data))
    with pytest.raises(InceptionError) as err:
        read_checkpoint(path)
    name = info.filename.split("/", 1)[1]
    assert str(err.value) == (f"{path}: damaged (its entry {name} fails its checksum: the file "
                              f"changed after it was written; use another copy)")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")  # evil2.pkl's
def test_loading_never_runs_code(tmp_path, small, monkeypatch):
    marker = tmp_path / "inceptionctl-pwned"
    monkeypatch.setattr(_Exploit, "marker", str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": _Exploit()}, path, pickle_protocol=2)
    with pytest.raises(InceptionError, match="never code") as err:
        load_weights(small[1], path)
    assert not marker.exists()
    # the object named in one line, not torch's advice to load it anyway
    assert str(err.value).endswith("never code): it holds a Python object (io.open)")
    path2 = tmp_path / "evil2.pkl"
    path2.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(InceptionError):
        load_weights(small[1], path2)
    assert not marker.exists()


def test_missing_file_and_foreign_without_recipe(tmp_path, small):
    with pytest.raises(InceptionError, match="no such file"):
        load_weights(small[1], tmp_path / "nope.pth")
    path = tmp_path / "sd.pth"
    torch.save(small[1].state_dict(), path)
    with pytest.raises(InceptionError, match="name it with --recipe"):
        load_model(path)
    model, _, _ = load_model(path, recipe=small[0])  # our own bare state dict loads too
    with pytest.raises(InceptionError, match="not an inceptionctl checkpoint"):
        read_checkpoint(path)


def test_checkpoint_whose_recipe_uses_an_old_key_loads(tmp_path, small, monkeypatch, capsys):
    recipe, model = small
    path = save_checkpoint(tmp_path / "old.pt", model, recipe)
    raw = torch.load(path, weights_only=True)
    raw["recipe"]["train"]["polyak_decay"] = raw["recipe"]["train"].pop("ema_decay")
    raw["recipe"]["eval"]["tta"] = True
    torch.save(raw, path)  # as an older inceptionctl would have written it
    with pytest.raises(RecipeError, match="unknown key 'polyak_decay'"):
        load_model(path)  # without the migration table the old spelling is refused

    monkeypatch.setattr(recipe_module, "KEY_CHANGES", (
        KeyChange("train.polyak_decay", "train.ema_decay", since="0.2.0"),
        KeyChange("eval.tta", None, since="0.2.0", why="nothing read it")))
    monkeypatch.setattr(recipe_module, "_NOTED", set())
    loaded, loaded_recipe, _info = load_model(path)
    assert loaded_recipe == recipe and loaded_recipe.train.ema_decay == recipe.train.ema_decay
    x = _x(recipe)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert capsys.readouterr().err.splitlines() == [
        f"note: {path} (embedded recipe): train.polyak_decay: renamed to train.ema_decay in "
        f"inceptionctl 0.2.0; read as train.ema_decay",
        f"note: {path} (embedded recipe): eval.tta: removed in inceptionctl 0.2.0 (nothing "
        f"read it); ignored"]
    assert "polyak_decay" in read_checkpoint(path)["recipe"]["train"]  # the file stays as written


# ------------------------------------------------------------------- torchvision:googlenet

TV_FILE = "googlenet-1378be20.pth"
TV_URL = "https://download.pytorch.org/models/" + TV_FILE


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache under tmp_path, and a network that refuses every request."""
    import urllib.error

    import torch.hub

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "urlopen", refuse)
    monkeypatch.setattr("urllib.request.urlopen", refuse)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _tv_googlenet():
    import torchvision

    torch.manual_seed(3)
    return torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).eval()


def test_torchvision_googlenet_from_a_seeded_cache(offline_hub, tmp_path, cli):
    """A file already in the cache is read as it is (no download), with the 1000 names and the
    recipe of its architecture; its logits are torchvision's own model's."""
    import json

    from PIL import Image
    from torchvision.models import GoogLeNet_Weights

    from inceptionctl.artifact import resolve_with_recipe
    from inceptionctl.backend import open_artifact

    tv = _tv_googlenet()
    offline_hub.mkdir(parents=True)
    torch.save(tv.state_dict(), offline_hub / TV_FILE)
    path, recipe = resolve_with_recipe("torchvision:googlenet")
    assert path == offline_hub / TV_FILE and recipe.name == "googlenet-bn"
    names = GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"]
    assert list(recipe.data.classes) == names and len(names) == 1000

    raw = torch.rand(2, 3, 224, 224)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():  # torchvision's transform_input takes ImageNet-normalised input
        expected = tv.eval()((raw - mean[:, None, None]) / std[:, None, None])
    with open_artifact("torchvision:googlenet", device="cpu") as session:
        assert session.info.classes == names and session.info.kind == "foreign"
        pre = session.info.preprocessing
        got = session.run((raw - torch.tensor(pre["mean"])[:, None, None])
                          / torch.tensor(pre["std"])[:, None, None])
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()

    Image.fromarray((torch.rand(240, 300, 3) * 255).byte().numpy()).save(tmp_path / "a.png")
    out = cli("predict", tmp_path / "a.png", "--weights", "torchvision:googlenet", "--json")
    assert out.exit_code == 0, out.stderr
    top = json.loads(out.stdout)["predictions"][0]["topk"]
    assert all(t["class"] == names[t["index"]] for t in top)


def test_torchvision_googlenet_downloads_through_torchvisions_api(offline_hub, monkeypatch):
    """Missing from the cache: torchvision's weights API fetches it, with the hash check and
    the progress bar, into the cache (the transfer itself is replaced here)."""
    import torch.hub

    from inceptionctl.artifact import resolve_artifact

    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix, progress))
        torch.save(_tv_googlenet().state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert resolve_artifact("torchvision:googlenet") == offline_hub / TV_FILE
    assert calls == [(TV_URL, "1378be20", True)]
    assert resolve_artifact("torchvision:googlenet") == offline_hub / TV_FILE
    assert len(calls) == 1  # cached from then on


def test_torchvision_googlenet_offline_is_one_line(offline_hub, cli, tmp_path):
    from inceptionctl.artifact import resolve_artifact

    with pytest.raises(InceptionError) as info:
        resolve_artifact("torchvision:googlenet")
    text = str(info.value)
    assert text.startswith(f"torchvision:googlenet: cannot fetch {TV_FILE} from {TV_URL} (")
    assert text.endswith(f"; offline, put that file in {offline_hub}") and "\n" not in text
    for args in (["eval", "torchvision:googlenet"], ["export", "torchvision:googlenet", "--to",
                                                     "onnx", "--out", tmp_path / "m.onnx"],
                 ["train", "--weights", "torchvision:googlenet", "--out", tmp_path / "r"]):
        out = cli(*args)
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert out.exit_code == 2 and errors == [f"error: {text}"], (args, out.stderr)
    unknown = cli("eval", "torchvision:resnet50")
    assert unknown.exit_code == 2 and "known: torchvision:googlenet" in unknown.stderr


def test_a_download_leaves_stdout_to_the_json(offline_hub, monkeypatch, cli, tmp_path):
    """torch.hub announces a download on stdout; `predict --json` must still print one JSON
    document there (the announcement goes to stderr)."""
    import json

    import torch.hub
    from PIL import Image

    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, hash_prefix=None, progress=True:
                        torch.save(_tv_googlenet().state_dict(), dst))
    Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()).save(tmp_path / "a.png")
    out = cli("predict", tmp_path / "a.png", "--weights", "torchvision:googlenet", "--json")
    assert out.exit_code == 0, out.stderr
    assert len(json.loads(out.stdout)["predictions"]) == 1
    assert f'Downloading: "{TV_URL}"' in out.stderr


def test_running_weights_of_another_class_count_names_the_count_not_training(tmp_path):
    five = build_model(load_recipe("googlenet-small", ["model.num_classes=5", "data.classes=null"]))
    path = tmp_path / "sd5.pt"
    torch.save(five.state_dict(), path)
    hint = (r"only the classifier differs: the weights have 5 classes \(add --set "
            r"model.num_classes=5 --set data.classes=null, or a recipe naming them\)$")
    with pytest.raises(InceptionError, match=hint):
        load_model(path, recipe=load_recipe("googlenet-small"))
    # the hint's options make the recipe that runs them
    load_model(path, recipe=load_recipe("googlenet-small", ["model.num_classes=5",
                                                            "data.classes=null"]))
    with pytest.raises(InceptionError, match="train without --strict-head"):  # training's hint
        load_weights(build_model(load_recipe("googlenet-small")), path)
