"""The training data path: JPEG headers, reduced-scale decoding, the colour operations against
torchvision's, the device path (run here on the CPU), bad files on every path, and the cached
listing of class folders."""

import os
import random
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from inceptionctl import data as data_mod
from inceptionctl import filelist, load_recipe
from inceptionctl.data import (Collate, DataError, FileSource, Transformed, area_resize,
                               decode_rgb, finish_on_device, finish_photometric, image_folder,
                               sample_seed, train_transform)
from inceptionctl.filelist import FileLists
from inceptionctl.host import keep_freed_memory_in_worker
from inceptionctl.jpeg import (decode_full, decode_on_device, decode_scaled, draft_scale,
                               jpeg_header, read_bytes)

CPU = torch.device("cpu")


def _photo(w, h, seed=0):
    """A smooth colour field with some texture: what JPEG is made for."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
    big += rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))


def _jpeg(path, w, h, seed=0, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    _photo(w, h, seed).save(path, "JPEG", quality=save.pop("quality", 90), **save)
    return path


# ------------------------------------------------------------------------------------ headers

@pytest.mark.parametrize("mode,components,progressive", [
    ("RGB", 3, False), ("L", 1, False), ("CMYK", 4, False), ("RGB", 3, True)])
def test_jpeg_header_gives_the_size_without_decoding(tmp_path, mode, components, progressive):
    path = tmp_path / "x.jpg"
    img = _photo(123, 77).convert(mode)
    img.save(path, "JPEG", quality=85, progressive=progressive, exif=Image.Exif())
    header = jpeg_header(read_bytes(path))
    assert (header.height, header.width) == (77, 123)
    assert header.components == components and header.progressive == progressive


def test_jpeg_header_of_other_bytes_is_none(tmp_path):
    _photo(20, 10).save(tmp_path / "x.png")
    assert jpeg_header(read_bytes(tmp_path / "x.png")) is None
    good = read_bytes(_jpeg(tmp_path / "y.jpg", 40, 30))
    assert jpeg_header(good[:20]) is None  # cut before the frame header
    assert jpeg_header(b"") is None and jpeg_header(b"\xff\xd8") is None


# ---------------------------------------------------------------------- reduced-scale decoding

def test_draft_scale_keeps_the_crop_at_least_the_output_size():
    assert draft_scale(448, 500, 224) == 2
    assert draft_scale(447, 900, 224) == 1
    assert draft_scale(900, 1000, 224) == 4
    assert draft_scale(1800, 1800, 224) == 8
    assert draft_scale(100, 100, 16) == 4


def test_draft_decode_is_close_to_full_decode_then_resize(tmp_path):
    """A crop on the grid of the reduced image: the two differ by less than the full-size
    path differs from itself with the crop moved by half a reduced pixel (a crop elsewhere
    can be placed that far off the full-size one)."""
    data = read_bytes(_jpeg(tmp_path / "big.jpg", 1600, 1200))
    crop = train_transform(load_recipe("googlenet")).crop
    full = decode_full(data)
    for scale in (2, 4, 8):
        small = decode_scaled(data, scale)
        assert small.shape == (3, 1200 // scale, 1600 // scale)
        for mode in ("bilinear", "bicubic", "area"):
            box = (96, 152, min(1096, 224 * scale + 16), min(1440, 224 * scale + 32))
            p = (1200, 1600) + box + (mode,)
            ours, reference = crop.apply(small, p).float(), crop.apply(full, p).float()
            half = scale // 2
            moved = crop.apply(full, (1200, 1600, box[0] + half, box[1] + half) + box[2:]
                               + (mode,)).float()
            assert ours.shape == reference.shape == (3, 224, 224)
            off = (ours - reference).abs().mean()
            assert off < 5.0 and off < (moved - reference).abs().mean(), (scale, mode)


def test_a_large_crop_decodes_at_a_reduced_scale_and_nearest_never(tmp_path, monkeypatch):
    src = FileSource([(str(_jpeg(tmp_path / "a.jpg", 900, 700)), 0)], ["a"], str(tmp_path))
    recipe = load_recipe("googlenet-small")  # 32x32 crops: most crops here allow 1/8
    scales = []
    real = data_mod.decode_scaled
    monkeypatch.setattr(data_mod, "decode_scaled",
                        lambda data, s: scales.append(s) or real(data, s))
    ds = Transformed(src, train_transform(recipe), seed=0)
    for epoch in range(40):
        image, _, _, err = ds[(0, epoch)]
        assert err is None and image.shape == (3, 32, 32)
    assert 8 in scales
    transform = train_transform(recipe)
    assert transform.crop.draft_scale((700, 900, 0, 0, 700, 900, "nearest")) == 1


def test_the_file_path_is_the_keyed_transform_of_the_decoded_image(tmp_path):
    """Small images decode at full size: the item is exactly what the transform makes of the
    decoded file with the draws of the sample's key."""
    paths = [str(_jpeg(tmp_path / f"{i}.jpg", 60 + 7 * i, 50, seed=i)) for i in range(4)]
    recipe = load_recipe("googlenet")
    transform = train_transform(recipe)
    ds = Transformed(FileSource([(p, 0) for p in paths], ["a"], str(tmp_path)), transform, 7)
    for i, path in enumerate(paths):
        for epoch in (0, 3):
            image = decode_rgb(path)
            plan = transform.plan(image.shape, random.Random(sample_seed(7, epoch, i)))
            assert torch.equal(ds[(i, epoch)][0], transform.apply(image, plan))


# ------------------------------------------------------------------------- colour operations

def _colours(n=4, h=37, w=41):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, h, w, generator=g)
    x[0, :, :5] = 0.5  # grey
    x[1, 0] = x[1, 1]  # red == green: the sector ties
    x[2, 1] = x[2, 2]
    x[3, :, :3], x[3, :, 3:6] = 0.0, 1.0
    return x


@pytest.mark.parametrize("op,reference,factors", [
    ("_brightness", TF.adjust_brightness, (0.6, 1.0, 1.4)),
    ("_contrast", TF.adjust_contrast, (0.6, 1.0, 1.4)),
    ("_saturation", TF.adjust_saturation, (0.6, 1.0, 1.4)),
    ("_hue", TF.adjust_hue, (-0.5, -0.1, 0.0, 0.07, 0.5)),
])
def test_colour_operations_equal_torchvisions(op, reference, factors):
    ours = getattr(data_mod, op)
    x = _colours()
    for f in factors:
        expected = torch.stack([reference(img, f) for img in x])
        batched = ours(x.clone(), torch.full((len(x), 1, 1, 1), f))
        torch.testing.assert_close(batched, expected, atol=2e-6, rtol=0)
        one = ours(x[:1].clone(), float(f))
        torch.testing.assert_close(one, expected[:1], atol=2e-6, rtol=0)


def test_batched_steps_equal_one_image_at_a_time():
    transform = train_transform(load_recipe("googlenet"))
    x = _colours(6)
    rng = random.Random(1)
    for step in transform.transforms[1:]:
        params = [step.params(x[i].shape, rng) for i in range(len(x))]
        one = torch.stack([step.apply_batch(x[i:i + 1].clone(), [params[i]])[0]
                           for i in range(len(x))])
        torch.testing.assert_close(step.apply_batch(x.clone(), params), one, atol=2e-6, rtol=0)
    jitter = transform.transforms[3]
    same = [((2, 0, 3, 1), p[1]) for p in (jitter.params(x[0].shape, rng) for _ in x)]
    one = torch.stack([jitter.apply_batch(x[i:i + 1].clone(), [same[i]])[0]
                       for i in range(len(x))])  # one order for all: the whole batch at once
    torch.testing.assert_close(jitter.apply_batch(x.clone(), same), one, atol=2e-6, rtol=0)


def test_area_resize_equals_interpolate_area():
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        h, w = torch.randint(3, 500, (2,), generator=g).tolist()
        img = torch.randint(0, 256, (3, h + 4, w + 4), dtype=torch.uint8, generator=g)
        img = img[:, 2:2 + h, 1:1 + w]  # a crop: not contiguous
        size = tuple(torch.randint(3, 260, (2,), generator=g).tolist())
        expected = F.interpolate(img[None].float(), size=size, mode="area")[0]
        expected = expected.round_().clamp_(0, 255).to(torch.uint8)
        assert torch.equal(area_resize(img, size), expected), (h, w, size)


# ------------------------------------------------------------------ the device path, on a CPU

def _folder_source(tmp_path, n=6, size=(90, 70)):
    paths = [str(_jpeg(tmp_path / "c" / f"{i}.jpg", size[0] + 3 * i, size[1], seed=i))
             for i in range(n)]
    return FileSource([(p, i % 2) for i, p in enumerate(paths)], ["a", "b"], str(tmp_path))


def test_device_path_on_the_cpu_equals_the_worker_path(tmp_path):
    source = _folder_source(tmp_path)
    transform = train_transform(load_recipe("googlenet"))
    on_device = Transformed(source, transform, 5, decode="device")
    in_worker = Transformed(source, transform, 5)
    for epoch in (0, 2):
        batch = Collate(strict=False)([on_device[(i, epoch)] for i in range(len(source))])
        out = finish_on_device(batch, transform, CPU, strict=False)
        expected = torch.stack([in_worker[(i, epoch)][0] for i in range(len(source))])
        torch.testing.assert_close(out.images, expected, atol=1e-5, rtol=0)
        assert out.labels.tolist() == [0, 1, 0, 1, 0, 1] and out.bad == []


def test_uint8_crops_finished_on_the_device_equal_the_worker_path(tmp_path):
    """train on a GPU: workers ship uint8 crops and draws, the device does the float steps."""
    source = _folder_source(tmp_path)
    (tmp_path / "c" / "bad.jpg").write_bytes(b"not a jpeg")
    source.items.insert(2, (str(tmp_path / "c" / "bad.jpg"), 1))
    transform = train_transform(load_recipe("googlenet"))
    crops = Transformed(source, transform, 5, photometric="device")
    in_worker = Transformed(source, transform, 5)
    for epoch in (0, 2):
        batch = Collate(strict=False)([crops[(i, epoch)] for i in range(len(source))])
        assert batch.images.dtype == torch.uint8 and batch.images.shape == (6, 3, 224, 224)
        assert [os.path.basename(p) for p, _ in batch.bad] == ["bad.jpg"]
        out = finish_photometric(batch, transform, CPU)
        expected = torch.stack([in_worker[(i, epoch)][0] for i in range(len(source)) if i != 2])
        torch.testing.assert_close(out.images, expected, atol=1e-5, rtol=0)
        assert out.labels.tolist() == [0, 1, 0, 1, 0, 1] and out.plans is None
    with pytest.raises(ValueError, match="photometric"):
        Transformed(source, transform, 5, photometric="gpu")


def test_train_does_the_float_steps_on_an_accelerator_only():
    from inceptionctl.train import photometric_where

    assert photometric_where("cpu", torch.device("cuda", 0)) == "device"
    assert photometric_where("cpu", CPU) == "here"
    assert photometric_where("gpu", torch.device("cuda", 0)) == "here"  # every step there


def test_device_decode_decodes_alone_what_the_batch_call_refuses(tmp_path):
    good = [torch.frombuffer(read_bytes(_jpeg(tmp_path / f"{i}.jpg", 40, 30, seed=i)),
                             dtype=torch.uint8) for i in range(2)]
    bad = torch.frombuffer(bytearray(good[0].numpy().tobytes()[:300]), dtype=torch.uint8)
    out = decode_on_device([good[0], bad, good[1]], CPU)
    assert out[0].shape == out[2].shape == (3, 30, 40)
    assert isinstance(out[1], ValueError) and "\n" not in str(out[1])


# -------------------------------------------------------------------------------- bad files

def _corrupt(tmp_path, size):
    """A truncated and a damaged JPEG (both with a good header) and a file of garbage."""
    good = read_bytes(_jpeg(tmp_path / "good.jpg", *size))
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    damaged = bytearray(good)
    damaged[len(good) // 3:len(good) // 3 + 400] = bytes(400)  # zeros where the scan was
    damaged[-2:] = b"\x00\x00"
    (tmp_path / "damaged.jpg").write_bytes(bytes(damaged[: len(good) * 2 // 3]))
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff not a jpeg at all" * 20)
    (tmp_path / "empty.jpg").write_bytes(b"")
    names = ["truncated.jpg", "damaged.jpg", "garbage.jpg", "empty.jpg"]
    items = [(str(tmp_path / "good.jpg"), 0)] + [(str(tmp_path / n), 1) for n in names]
    return FileSource(items, ["a", "b"], str(tmp_path)), names


@pytest.mark.parametrize("size,recipe", [((80, 60), "googlenet"),
                                         ((900, 700), "googlenet-small")])  # the draft path
def test_corrupt_jpegs_are_reported_in_one_line_and_skipped_or_fatal(tmp_path, size, recipe):
    source, names = _corrupt(tmp_path, size)
    transform = train_transform(load_recipe(recipe))
    # every path gives the reason eval's decoder gives (FileSource.load)
    reasons = {source.items[i][0]: source.load(i).error for i in range(1, len(source))}
    for decode in ("cpu", "device"):
        ds = Transformed(source, transform, 0, decode=decode)
        for epoch in range(3):
            items = [ds[(i, epoch)] for i in range(len(source))]
            batch = Collate(strict=False)(items)
            if decode == "device":
                batch = finish_on_device(batch, transform, CPU, strict=False)
            assert len(batch.images) == 1 and batch.labels.tolist() == [0]
            assert sorted(os.path.basename(p) for p, _ in batch.bad) == sorted(names)
            assert dict(batch.bad) == reasons
            for _, reason in batch.bad:
                assert reason and "\n" not in reason and ".cpp" not in reason
            with pytest.raises(DataError, match=r"cannot read image .*--strict-data"):
                strict = Collate(strict=True)(items)
                if decode == "device":
                    finish_on_device(strict, transform, CPU, strict=True)


# ------------------------------------------------------------------------- class folder lists

def _settled(path, age=60):
    """Date a folder back, as a folder nobody touched for a while."""
    t = time.time() - age
    os.utime(path, (t, t))


def _tree(root):
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            _photo(8, 6).save(root / c / f"{i}.png")
    (root / "cat" / "sub").mkdir()
    _photo(8, 6).save(root / "cat" / "sub" / "x.JPEG")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes((root / "dog" / "0.png").read_bytes())
    for d in (root / "cat" / "sub", root / "cat", root / "dog", root):
        _settled(d)
    return root


def _rglob_listing(root):
    """What the listing was before the cache: rglob, files only, image extensions, sorted."""
    return [sorted(str(p) for p in (root / c).rglob("*") if p.is_file()
                   and filelist.is_image(p.name)) for c in ("cat", "dog")]


def test_listing_keeps_the_imagefolder_order_and_extensions(tmp_path):
    root = _tree(tmp_path / "data")
    os.symlink(root / "dog", root / "cat" / "link-to-dog")  # a symlinked folder: not followed
    _settled(root / "cat")
    lists = FileLists(None).class_files(root, ["cat", "dog"])
    assert lists == _rglob_listing(root)
    assert [os.path.basename(p) for p in lists[0]] == ["0.png", "1.png", "2.png", "x.JPEG"]


def test_listing_is_cached_in_the_run_folder_and_follows_changes(tmp_path, monkeypatch):
    root = _tree(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    first = FileLists(run)
    items = image_folder(root, lists=first).items
    first.save()
    (cache,) = run.glob("filelist-*.json")

    def no_scan(folder):
        raise AssertionError(f"listed {folder} again")

    monkeypatch.setattr(filelist, "scan_class", no_scan)
    again = FileLists(run)
    assert image_folder(root, lists=again).items == items  # read from the cache
    assert again.reused == ["cat", "dog"]

    # a file added in a class folder changes its time: that class (only) is listed again
    monkeypatch.undo()
    scanned = []
    real = filelist.scan_class
    monkeypatch.setattr(filelist, "scan_class", lambda folder: scanned.append(folder)
                        or real(folder))
    _photo(8, 6).save(root / "dog" / "3.png")
    _settled(root / "dog", age=30)
    third = FileLists(run)
    source = image_folder(root, lists=third)
    assert [os.path.basename(s) for s in scanned] == ["dog"]
    assert len(source.items) == len(items) + 1 and source.items[-1][0].endswith("3.png")
    third.save()
    assert FileLists(run).class_files(root, ["cat", "dog"]) == _rglob_listing(root)

    # in a sub-folder too
    scanned.clear()
    _photo(8, 6).save(root / "cat" / "sub" / "y.png")
    _settled(root / "cat" / "sub", age=20)
    assert FileLists(run).class_files(root, ["cat", "dog"]) == _rglob_listing(root)
    assert [os.path.basename(s) for s in scanned] == ["cat"]
    assert cache.is_file()


def test_a_folder_changed_just_now_is_listed_again(tmp_path, monkeypatch):
    root = _tree(tmp_path / "data")
    os.utime(root / "cat")  # now: a file could still arrive within the same timestamp
    run = tmp_path / "run"
    run.mkdir()
    lists = FileLists(run)
    lists.class_files(root, ["cat", "dog"])
    lists.save()
    again = FileLists(run)
    again.class_files(root, ["cat", "dog"])
    assert again.reused == ["dog"]


def test_a_damaged_cache_is_ignored(tmp_path):
    root = _tree(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    lists = FileLists(run)
    expected = lists.class_files(root, ["cat", "dog"])
    lists.save()
    (cache,) = run.glob("filelist-*.json")
    cache.write_text("{not json")
    assert FileLists(run).class_files(root, ["cat", "dog"]) == expected


# ------------------------------------------------------------------------------------ train

@pytest.mark.slow
def test_train_with_the_device_path_on_the_cpu_takes_the_same_steps(tmp_path, tiny_recipe,
                                                                     monkeypatch):
    """train's --decode gpu wiring, run on the CPU (the CUDA check set aside): workers send
    encoded items, the loop decodes and augments them, and the steps equal --decode cpu's."""
    from inceptionctl import train as train_mod
    from inceptionctl.checkpoint import read_checkpoint

    for split, n in (("train", 12), ("val", 2)):
        for c in ("cat", "dog"):
            for i in range(n):
                _jpeg(tmp_path / "data" / split / c / f"{i}.jpg", 40 + i, 30, seed=i)
    recipe = load_recipe(tiny_recipe, ["train.batch_size=8", "train.hflip=0.5"])
    monkeypatch.setattr(train_mod, "_check_decode", lambda decode, device: None)
    runs = {}
    where = train_mod.photometric_where
    for name, decode, workers in (("cpu", "cpu", 0), ("gpu", "gpu", 1), ("crops", "cpu", 1)):
        # "crops": what train on a GPU does with --decode cpu, the float steps in the loop
        monkeypatch.setattr(train_mod, "photometric_where", lambda decode, device: "device")
        if name != "crops":
            monkeypatch.setattr(train_mod, "photometric_where", where)
        result = train_mod.train(train_mod.TrainOptions(
            recipe=recipe, data=str(tmp_path / "data"), out=tmp_path / name, device="cpu",
            precision="fp32", workers=workers, decode=decode, max_steps=3, progress=False,
            log=lambda m: None))
        assert result.steps == 3 and result.skipped_images == 0
        runs[name] = read_checkpoint(tmp_path / name / "last.pt")["state_dict"]
        assert list((tmp_path / name).glob("filelist-*.json"))
    for k, v in runs["cpu"].items():
        if v.is_floating_point():
            torch.testing.assert_close(runs["gpu"][k], v, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(runs["crops"][k], v, atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------------------------------- CLI

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_decode_gpu_without_cuda_is_one_clear_error(cli, tmp_path):
    result = cli("train", "--decode", "gpu", "--max-steps", "1", "--out", tmp_path / "run")
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == ["error: --decode gpu: JPEGs are decoded on a CUDA device, and there is no "
                     "CUDA device here; use --decode cpu"]
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_device_path_on_cuda_matches_the_cpu_path(tmp_path):
    source = _folder_source(tmp_path, n=8, size=(300, 220))
    (tmp_path / "c" / "bad.jpg").write_bytes(read_bytes(source.items[0][0])[:500])
    source.items.append((str(tmp_path / "c" / "bad.jpg"), 1))
    transform = train_transform(load_recipe("googlenet"))
    on_device = Transformed(source, transform, 5, decode="device")
    in_worker = Transformed(source, transform, 5)
    batch = Collate(strict=False)([on_device[(i, 1)] for i in range(len(source))])
    out = finish_on_device(batch, transform, torch.device("cuda"), strict=False)
    assert out.images.is_cuda and out.images.shape == (8, 3, 224, 224)
    assert [os.path.basename(p) for p, _ in out.bad] == ["bad.jpg"]
    expected = torch.stack([in_worker[(i, 1)][0] for i in range(8)])
    diff = (out.images.cpu() - expected).abs()
    # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a level or two
    assert diff.mean() < 0.02 and diff.max() < 0.5, (diff.mean(), diff.max())
    # --decode cpu on a GPU: uint8 crops from the workers, the float steps on the device
    crops = Transformed(source, transform, 5, photometric="device")
    batch = Collate(strict=False)([crops[(i, 1)] for i in range(len(source))]).pin_memory()
    out = finish_photometric(batch, transform, torch.device("cuda"))
    assert out.images.is_cuda and [os.path.basename(p) for p, _ in out.bad] == ["bad.jpg"]
    torch.testing.assert_close(out.images.cpu(), expected, atol=1e-4, rtol=0)


def test_keeping_freed_memory_is_harmless_where_it_applies():
    keep_freed_memory_in_worker()  # glibc: set; elsewhere: nothing
    assert torch.ones(3_000_000).sum() == 3_000_000


def _png16(rgb16: np.ndarray) -> bytearray:
    """A 16-bit RGB PNG of ``rgb16`` (``H x W x 3`` uint16), written by hand (PIL cannot)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    return bytearray(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_images_read_as_their_8_bit_copies(tmp_path):
    """libpng keeps 16-bit samples (0..65535) and PIL clips them at 255: both must read as the
    8-bit copy of the same picture, or a 16-bit file is classified as noise."""
    rgb8 = np.asarray(_photo(40, 30).convert("RGB"))
    eight = decode_full(bytearray(_encode(Image.fromarray(rgb8), "PNG")))
    sixteen = decode_full(_png16(rgb8.astype(np.uint16) * 257))
    assert sixteen.dtype == torch.uint8 and torch.equal(sixteen, eight)
    grey = rgb8[..., 0].copy()
    tiff = decode_full(bytearray(_encode(Image.fromarray(grey.astype(np.uint16) * 257), "TIFF")))
    assert torch.equal(tiff, torch.from_numpy(grey).expand(3, *grey.shape))


def test_an_image_declaring_too_many_pixels_is_refused_undecoded(tmp_path):
    import struct
    import zlib

    png = bytearray(_png16(np.zeros((2, 2, 3), np.uint16)))
    body = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)  # a 370-byte "bomb"
    png[16:29] = body
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    with pytest.raises(ValueError, match=r"image too large: 100000x100000 pixels"):
        decode_full(png)


def _encode(im: Image.Image, fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()
