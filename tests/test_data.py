"""Data: decoding every image mode, bad files, folder layouts, keyed augmentation."""

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inceptionctl import load_recipe
from inceptionctl.data import (Collate, DataError, KeyedSampler, Transformed, decode_rgb,
                               digits, open_data, train_transform)


def _save(path, mode, size=(20, 14), fmt=None):
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))  # hash() is salted per process
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    img = {"RGB": rgb, "L": rgb.convert("L"), "RGBA": rgb.convert("RGBA"),
           "P": rgb.convert("P"), "CMYK": rgb.convert("CMYK"), "LA": rgb.convert("LA")}[mode]
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return img


@pytest.mark.parametrize("mode,ext", [("RGB", "png"), ("L", "png"), ("RGBA", "png"),
                                      ("P", "png"), ("LA", "png"), ("RGB", "jpg"),
                                      ("L", "jpg"), ("CMYK", "jpg")])
def test_every_mode_decodes_to_rgb(tmp_path, mode, ext):
    path = tmp_path / f"img.{ext}"
    img = _save(path, mode)
    out = decode_rgb(path)
    assert out.dtype == torch.uint8 and out.shape == (3, 14, 20)
    expected = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    tol = 0 if ext == "png" and mode != "RGBA" and mode != "LA" else 40
    assert (out.int() - expected.int()).abs().max() <= tol
    del img


def make_folder(root, classes=("cat", "dog"), per_class=6, size=(20, 14)):
    for c in classes:
        for i in range(per_class):
            _save(root / c / f"{c}{i}.png", "RGB", size)
    return root


def test_imagefolder_train_val(tmp_path):
    make_folder(tmp_path / "train")
    make_folder(tmp_path / "val", per_class=2)
    recipe = load_recipe("googlenet-small", {"model.num_classes": 2, "data.classes": None})
    splits = open_data(str(tmp_path), recipe)
    assert splits.classes == ["cat", "dog"]
    assert (len(splits.train), len(splits.val)) == (12, 4)
    sample = splits.val.load(3)
    assert sample.label == 1 and sample.path.endswith("dog1.png")


def test_val_split_is_stratified_and_fixed(tmp_path):
    make_folder(tmp_path / "all", per_class=10)
    recipe = load_recipe("googlenet-small")
    a = open_data(str(tmp_path / "all"), recipe, val_split=0.2)
    b = open_data(str(tmp_path / "all"), recipe, val_split=0.2)
    assert [i for i in a.val.items] == [i for i in b.val.items]
    assert sorted(a.val.labels()) == [0, 0, 1, 1]
    with pytest.raises(DataError, match="pass --val-split"):
        open_data(str(tmp_path / "all"), recipe)
    # a fraction that leaves one side empty, and one out of range wherever --data points
    with pytest.raises(DataError, match=r"--val-split 0.99: .*all has 20 images, too few to "
                                        r"leave some on both sides of the split"):
        open_data(str(tmp_path / "all"), recipe, val_split=0.99)
    for spec in ("digits", "synthetic", str(tmp_path / "all")):
        for bad in (1.5, -0.1, float("nan")):
            with pytest.raises(DataError, match=r"--val-split: expected a fraction in \(0, 1\)"):
                open_data(spec, recipe, val_split=bad)


def test_a_class_named_train_is_a_class_when_one_folder_is_split(tmp_path):
    """vehicles/{train,bus,car} with --val-split: train/ holds images, not class folders, so it
    is the class 'train' of one folder to split; train/ of class folders stays the layout."""
    make_folder(tmp_path / "vehicles", classes=("bus", "car", "train"), per_class=10)
    recipe = load_recipe("googlenet-small")
    splits = open_data(str(tmp_path / "vehicles"), recipe, val_split=0.2)
    assert splits.classes == ["bus", "car", "train"] and len(splits.val) == 6
    with pytest.raises(DataError, match="vehicles/train: no class folders .*where 'train' is a "
                                        "class of one folder, pass --val-split to split it"):
        open_data(str(tmp_path / "vehicles"), recipe)  # without --val-split: the layout
    make_folder(tmp_path / "split" / "train", per_class=10)
    assert open_data(str(tmp_path / "split"), recipe, val_split=0.2).classes == ["cat", "dog"]


def test_ilsvrc_layout(tmp_path):
    make_folder(tmp_path / "train", classes=("n01440764", "n01443537"), per_class=3)
    for i, syn in enumerate(["n01443537", "n01440764", "n01443537"]):
        _save(tmp_path / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG", "RGB", fmt="JPEG")
    rows = ["ImageId,PredictionString"] + [
        f"ILSVRC2012_val_{i + 1:08d},{syn} 1 2 3 4"
        for i, syn in enumerate(["n01443537", "n01440764", "n01443537"])]
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    splits = open_data(str(tmp_path), load_recipe("googlenet-small"))
    assert splits.classes == ["n01440764", "n01443537"]
    assert splits.val.labels() == [1, 0, 1]
    (tmp_path / "LOC_val_solution.csv").unlink()
    with pytest.raises(DataError, match="without a ground-truth file"):
        open_data(str(tmp_path), load_recipe("googlenet-small"))
    (tmp_path / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG 1\n"
                                      "ILSVRC2012_val_00000002.JPEG n01440764\n"
                                      "ILSVRC2012_val_00000003.JPEG 1\n")
    assert open_data(str(tmp_path), load_recipe("googlenet-small")).val.labels() == [1, 0, 1]


@pytest.mark.parametrize("name,text,message", [
    ("LOC_val_solution.csv", "Image,Labels\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n",
     r"LOC_val_solution.csv: expected the columns ImageId,PredictionString, got Image,Labels"),
    ("LOC_val_solution.csv", "ImageId,PredictionString\nILSVRC2012_val_00000001,\n",
     r"LOC_val_solution.csv:2: expected 'ImageId,SYNSET ...', got an empty field"),
    ("LOC_val_solution.csv", b"\xff\xfe\x00\x81binary", r"LOC_val_solution.csv: not a text file"),
    ("val.txt", b"\x89PNG\r\n\x1a\n\x00\x00\xff", r"val.txt: not a text file"),
    # a digit to str.isdigit that int cannot read: no label, not a ValueError
    ("val.txt", "ILSVRC2012_val_00000001.JPEG \u00b2\n",
     r"val.txt: the label of ILSVRC2012_val_00000001.JPEG is not one of the training classes"),
    # a spreadsheet's byte-order mark is not part of the first column's name
    ("LOC_val_solution.csv", "\ufeffImageId,PredictionString\nILSVRC2012_val_00000001,\n",
     r"LOC_val_solution.csv:2: expected 'ImageId,SYNSET ...', got an empty field"),
])
def test_a_broken_ground_truth_file_is_one_line(tmp_path, name, text, message):
    make_folder(tmp_path / "train", classes=("n01440764", "n01443537"), per_class=3)
    _save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", "RGB", fmt="JPEG")
    gt = tmp_path / name
    gt.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError, match=message):
        open_data(str(tmp_path), load_recipe("googlenet-small"))


@pytest.mark.parametrize("case,message", [
    ("missing", "no such folder"),
    ("file", "not a folder"),
    ("no classes", "no class folders"),
    ("empty class", "class folder has no images"),
    ("no val", "has train/ but no val/"),
    ("val classes differ", "class folders do not match"),
])
def test_folder_mistakes(tmp_path, case, message):
    root = tmp_path / "data"
    if case == "file":
        root.write_text("x")
    elif case == "no classes":
        (root / "train").mkdir(parents=True)
    elif case == "empty class":
        make_folder(root / "train")
        (root / "train" / "empty").mkdir()
    elif case == "no val":
        make_folder(root / "train")
    elif case == "val classes differ":
        make_folder(root / "train")
        make_folder(root / "val", classes=("cat", "cow"))
    with pytest.raises(DataError, match=message):
        open_data(str(root), load_recipe("googlenet-small"))


def _bad_files(root):
    """A zero-byte, a garbage and a truncated image in the first two class folders."""
    first, second = sorted(p for p in root.iterdir() if p.is_dir())[:2]
    (first / "zero.png").write_bytes(b"")
    (first / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    good = sorted(second.glob("*.png"))[0].read_bytes()
    (second / "truncated.png").write_bytes(good[: len(good) // 3])


def test_bad_images_are_reported_and_skipped_or_fatal(tmp_path):
    make_folder(tmp_path / "train")
    _bad_files(tmp_path / "train")
    make_folder(tmp_path / "val", per_class=2)
    recipe = load_recipe("googlenet-small", {"model.num_classes": 2, "data.classes": None})
    splits = open_data(str(tmp_path), recipe)
    ds = Transformed(splits.train, train_transform(recipe), seed=0)
    items = [ds[(i, 0)] for i in range(len(ds))]
    batch = Collate(strict=False)(items)
    assert len(batch.images) == 12 and batch.images.shape[1:] == (3, 32, 32)
    assert sorted(p.rsplit("/", 1)[1] for p, _ in batch.bad) == \
        ["garbage.jpg", "truncated.png", "zero.png"]
    with pytest.raises(DataError, match=r"garbage.jpg: cannot read image .*--strict-data"):
        Collate(strict=True)(items)


def test_augmentation_is_keyed_not_global():
    recipe = load_recipe("googlenet-small")
    ds = Transformed(digits(36, "train"), train_transform(recipe), seed=3)
    torch.manual_seed(0)
    a = ds[(5, 1)][0]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    b = ds[(5, 1)][0]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert torch.equal(a, b)
    assert not torch.equal(a, ds[(5, 2)][0])  # another epoch, another crop


def test_another_transform_is_keyed_on_the_cpu_generator_only(monkeypatch):
    """A transform other than ours is seeded per item on torch's CPU generator (what
    fork_rng(devices=[]) restores), never on the GPUs' (dropout's, in a loader without
    workers)."""
    from torchvision.transforms import v2

    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    jitter = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.ColorJitter(0.5, 0.5)])
    ds = Transformed(digits(36, "val"), jitter, seed=3)
    torch.manual_seed(0)
    reseeded.clear()
    state = torch.get_rng_state()
    a, b = ds[(4, 0)][0], ds[(4, 0)][0]
    assert torch.equal(a, b) and not torch.equal(a, ds[(4, 1)][0])
    assert torch.equal(torch.get_rng_state(), state) and reseeded == []


def test_sampler_orders_agree_across_world_sizes():
    one = [i for i, _ in KeyedSampler(100, epoch=3, seed=1, world=1)]
    two = [[i for i, _ in KeyedSampler(100, epoch=3, seed=1, rank=r, world=2)] for r in (0, 1)]
    batch = 8
    # process r's k-th batch of 4 + the other's == the single process's k-th batch of 8
    for k in range(len(two[0]) // 4):
        merged = sorted(two[0][4 * k:4 * k + 4] + two[1][4 * k:4 * k + 4])
        assert merged == sorted(one[batch * k:batch * k + batch])
    evals = [[i for i, _ in KeyedSampler(11, 0, 0, r, 3, shuffle=False)] for r in range(3)]
    assert sorted(sum(evals, [])) == list(range(11))  # no padding, no duplicates
    skipped = [i for i, _ in KeyedSampler(100, epoch=3, seed=1, skip=16)]
    assert skipped == one[16:]


def test_digits_split():
    train, val = digits(36, "train"), digits(36, "val")
    assert (len(train), len(val)) == (1437, 360)
    assert train.images.shape[1:] == (3, 36, 36) and train.images.dtype == torch.uint8
    assert torch.bincount(val.targets).min() >= 35  # stratified


def _bmp(path, w, h, pixels=True):
    """A 24-bit BMP header declaring w x h, with its pixels or with 100 bytes of them."""
    import struct

    row = (w * 3 + 3) // 4 * 4
    header = b"BM" + struct.pack("<IHHI", 54 + row * h, 0, 0, 54) + struct.pack(
        "<IiiHHIIiiII", 40, w, h, 1, 24, 0, row * h, 2835, 2835, 0, 0)
    path.write_bytes(header + bytes(row * h if pixels else 100))
    return path


def test_what_pil_decodes_gives_pils_reason_and_no_python_warning(tmp_path):
    """BMP goes through PIL: a truncated one says so (not torchvision's 'unsupported'), one
    declaring 100M pixels (PIL's DecompressionBombWarning, under our limit) fails as truncated
    with no warning printed, and one over the limit is too large."""
    import warnings

    assert decode_rgb(_bmp(tmp_path / "ok.bmp", 8, 6)).shape == (3, 6, 8)
    cases = {_bmp(tmp_path / "trunc.bmp", 8, 8, False): "image file is truncated",
             _bmp(tmp_path / "big.bmp", 10_000, 10_000, False): "image file is truncated",
             _bmp(tmp_path / "huge.bmp", 20_000, 20_000, False):
                 "image too large: over the limit of 178,956,970 pixels"}
    for path, reason in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # fails here
            with pytest.raises(ValueError) as info:
                decode_rgb(path)
        assert str(info.value).startswith(reason), (path, str(info.value))
    (tmp_path / "text.bmp").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="^Unsupported image file"):
        decode_rgb(tmp_path / "text.bmp")


def test_predict_inputs_follow_linked_folders_and_keep_what_cannot_be_read(tmp_path):
    """A linked folder is followed (a link back up the tree is not a loop), and a broken link,
    a FIFO or a device named as an image is kept, for the read to report as skipped; reading a
    FIFO is refused at once instead of blocking."""
    import os
    import signal

    from inceptionctl.data import collect_images
    from inceptionctl.jpeg import read_bytes

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(elsewhere / name)
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "linked").symlink_to(elsewhere)
    (root / "sub" / "up").symlink_to(root)
    (root / "broken.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(root / "fifo.png")
    found = collect_images([str(root)])
    assert sorted(p.relative_to(root).as_posix() for p in found) == \
        ["broken.png", "fifo.png", "linked/a.png", "linked/b.png"]
    assert collect_images(["/dev/null"]) == [Path("/dev/null")]
    with pytest.raises(DataError, match="nope.png: no such file or folder"):
        collect_images([str(tmp_path / "nope.png")])
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("reading a FIFO blocked"))
    signal.alarm(10)
    try:
        for path in (root / "fifo.png", Path("/dev/null")):
            with pytest.raises(ValueError, match="not a regular file"):
                read_bytes(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_samples_replace_an_unreadable_image_with_the_next_readable_one(tmp_path):
    """--samples N images where N are readable: an unreadable one among the spread picks costs
    a substitute, not a sample (compare and export's parity see N)."""
    from inceptionctl.checkpoint import preprocessing
    from inceptionctl.data import load_samples

    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(folder / f"{i}.png")
    (folder / "-broken.png").write_bytes(b"not a png")  # sorted first: a spread pick
    pre = preprocessing(load_recipe("googlenet-small"))
    samples = load_samples(tmp_path / "imgs", pre, ["x", "y"], 4)
    assert len(samples.images) == 4 and samples.skipped == 1
    assert "(4 images, 1 unreadable skipped)" in samples.description
    every = load_samples(tmp_path / "imgs", pre, ["x", "y"], 100)
    assert len(every.images) == 6 and every.skipped == 1


def test_class_folders_that_are_not_the_models_say_why_they_are_unlabelled(tmp_path):
    from inceptionctl.checkpoint import preprocessing
    from inceptionctl.data import load_samples

    for c in ("cat", "dog", "zebra"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / c / "a.png")
    pre = preprocessing(load_recipe("googlenet-small"))
    samples = load_samples(tmp_path / "imgs", pre, ["cat", "dog"], 3)
    assert samples.labels is None
    assert samples.description.startswith(f"{tmp_path / 'imgs'} (unlabelled: class folder(s) "
                                           f"zebra are not among the model's 2 classes")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "flat" / "a.png")  # no class folders: plain
    assert load_samples(tmp_path / "flat", pre, ["cat", "dog"], 1).description == \
        f"{tmp_path / 'flat'} (unlabelled) (1 images)"
