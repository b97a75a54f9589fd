"""Test-time crops: geometry against crop_boxes, exact agreement with torchvision, structure, errors.

Geometry is checked on images whose pixels encode their own coordinates: channel 0 holds the
x coordinate of the pixel centre, channel 1 the y coordinate. Resizing such a ramp (bilinear,
antialias) gives back, at each output pixel, the coordinate of its centre in the original image,
up to the antialias filter's small error (measured at most ~0.13 resized pixel for non-integer
factors) and away from edges where the filter is truncated. So a crop pixel (i, j) must hold the
coordinate of the centre of cell (i, j) of its box, within TOL resized pixels; a box off by a
single resized pixel is off by 1.0 and fails.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from inceptionctl import crops as crops_mod
from inceptionctl.crops import CropBox, crop_boxes, normalize, take_crops

SIZE, SCALES = 32, [36, 41, 46, 50]
PAPER_SIZE, PAPER_SCALES = 224, [256, 288, 320, 352]
TOL = 0.25  # in resized pixels; see the module docstring
SHAPES = {"landscape": (40, 60), "portrait": (60, 40), "square": (40, 40), "odd": (41, 67)}


def ramp(height: int, width: int) -> torch.Tensor:
    """A float image with two channels: x and y of each pixel centre (two keep the checks cheap)."""
    y, x = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    return torch.stack([x, y]).float()


def noise(height: int, width: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    img = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    return img if dtype == torch.uint8 else img.to(dtype) / 255


def box_errors(
    out: torch.Tensor, boxes: list[CropBox], height: int, width: int, whole: torch.Tensor
) -> torch.Tensor:
    """Return each ramp crop's worst interior error, in resized pixels, against its box.

    ``whole`` flags the whole-square crops (resized twice). Vectorised over the crops.
    """
    size = out.shape[-1]
    col = lambda name: torch.tensor([float(getattr(b, name)) for b in boxes])[:, None]  # noqa: E731
    top, left, bottom, right, scale = (col(n) for n in ("top", "left", "bottom", "right", "scale"))
    mirrored = torch.tensor([b.mirrored for b in boxes])
    out = out.clone()
    out[mirrored] = out[mirrored].flip(-1)
    f1 = min(height, width) / scale  # original pixels per resized pixel
    f2 = torch.where(whole[:, None], scale / size, 1.0)  # the second resize of a whole-square crop
    # The resize filter reaches max(f, 1) input pixels: skip pixels whose filter hit an image edge
    # (or, for a whole-square crop, the square's edge), where it is truncated and biased.
    reach2 = torch.where(whole[:, None], f2.clamp(min=1.0) * f1, 0.0)
    m_img = f1.clamp(min=1.0) + reach2 + 0.5
    m_box = torch.where(whole[:, None], reach2 + 0.5, 0.0)
    cells = torch.arange(size) + 0.5
    ex, ey = left + cells * (right - left) / size, top + cells * (bottom - top) / size
    okx = (ex >= m_img) & (ex <= width - m_img) & (ex >= left + m_box) & (ex <= right - m_box)
    oky = (ey >= m_img) & (ey <= height - m_img) & (ey >= top + m_box) & (ey <= bottom - m_box)
    assert (okx.float().mean(1) > 0.5).all() and (oky.float().mean(1) > 0.5).all(), "test image too small"
    # x does not vary along a column, so only columns need to be interior for channel 0 (rows for 1).
    err_x = (out[:, 0] - ex[:, None, :]).abs_().mul_(okx[:, None, :]).amax(dim=(1, 2))
    err_y = (out[:, 1] - ey[:, :, None]).abs_().mul_(oky[:, :, None]).amax(dim=(1, 2))
    return torch.maximum(err_x, err_y) / f1[:, 0]


def check_geometry(height: int, width: int, count: int, size: int, scales: list[int]) -> None:
    out = take_crops(ramp(height, width), count, size, scales)
    boxes = crop_boxes(height, width, count, size, scales)
    assert len(boxes) == out.shape[0] == count
    whole = torch.tensor([count == 144 and k % 6 == 5 for k in range(count)])
    errors = box_errors(out, boxes, height, width, whole)
    worst = int(errors.argmax())
    message = f"crop {worst} ({boxes[worst]}) is {errors[worst]:.3f} resized pixels off its box"
    assert errors[worst] < TOL, message


@pytest.mark.parametrize("count", [1, 10, 144])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_pixels_come_from_the_boxes(shape, count):
    check_geometry(*shape, count, SIZE, SCALES)


def test_pixels_come_from_the_boxes_at_the_papers_sizes():
    # 10 crops only: 144 float crops of 224 (87 MB) are slow on a busy machine, and the 144-crop
    # path is size-agnostic (checked above on small images and in test_paper_crop_boxes).
    check_geometry(300, 400, 10, PAPER_SIZE, PAPER_SCALES)


def test_the_geometry_check_catches_a_box_one_resized_pixel_off():
    height, width = SHAPES["odd"]
    crop = take_crops(ramp(height, width), 1, SIZE, SCALES)[0]
    box = crop_boxes(height, width, 1, SIZE, SCALES)[0]
    f1 = min(height, width) / box.scale
    shifted = CropBox(box.top, box.left + f1, box.bottom, box.right + f1, False, box.scale)
    flags = torch.tensor([False, False])
    errors = box_errors(torch.stack([crop, crop]), [box, shifted], height, width, flags)
    assert errors[0] < TOL and errors[1] > 0.9


@pytest.mark.parametrize("count", [1, 10, 144])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_count_shape_and_dtype(shape, dtype, count):
    out = take_crops(noise(*shape, dtype), count, SIZE, SCALES)
    assert out.shape == (count, 3, SIZE, SIZE)
    assert out.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_one_crop_is_torchvisions_resize_and_center_crop(shape, dtype):
    img = noise(*shape, dtype)
    expected = v2.Compose([v2.Resize(SCALES[0], antialias=True), v2.CenterCrop(SIZE)])(img)
    assert torch.equal(take_crops(img, 1, SIZE, SCALES)[0], expected)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("shape", [*SHAPES.values(), (40, 62)], ids=[*SHAPES.keys(), "odd-margin"])
def test_ten_crops_are_torchvisions_resize_and_ten_crop_in_order(shape, dtype):
    img = noise(*shape, dtype)
    expected = torch.stack(v2.TenCrop(SIZE)(v2.Resize(SCALES[0], antialias=True)(img)))
    assert torch.equal(take_crops(img, 10, SIZE, SCALES), expected)


@pytest.mark.parametrize("shape", [(40, 60), (40, 62)], ids=["even-margin", "odd-margin"])
def test_ten_crop_mirror_half_is_five_crop_of_the_mirrored_image(shape):
    # TenCrop's second half: [tl, tr, bl, br, center] of the mirror = mirrors of [tr, tl, br, bl, ?].
    out = take_crops(noise(*shape), 10, SIZE, SCALES)
    for mirror, source in [(5, 1), (6, 0), (7, 3), (8, 2)]:
        assert torch.equal(out[mirror], out[source].flip(-1))
    # The mirror's centre window is the mirror of the centre crop only when W - size is even
    # (round-half-to-even shifts it by one pixel otherwise): 40x62 -> 36x55, 55 - 32 = 23.
    odd = TF.resize(torch.zeros(1, *shape), [SCALES[0]]).shape[-1] % 2 == 1
    assert torch.equal(out[9], out[4].flip(-1)) != odd
    boxes = crop_boxes(*shape, 10, SIZE, SCALES)
    assert [b.mirrored for b in boxes] == [False] * 5 + [True] * 5
    assert (boxes[9].left == boxes[4].left) != odd


def reference_144(img: torch.Tensor, size: int, scales: list[int]) -> torch.Tensor:
    """The 144 crops spelled out with one torchvision call per crop (slow but obvious)."""
    out = []
    for scale in scales:
        resized = TF.resize(img, [scale], antialias=True)
        h, w = resized.shape[-2:]
        mid = int(round((max(h, w) - scale) / 2.0))
        corners = [(0, 0), (mid, 0), (h - scale, 0)] if h > w else [(0, 0), (0, mid), (0, w - scale)]
        for top, left in corners:
            square = TF.crop(resized, top, left, scale, scale)
            six = [*TF.five_crop(square, [size, size]), TF.resize(square, [size, size], antialias=True)]
            out += six + [TF.horizontal_flip(c) for c in six]
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_144_crops_equal_the_spelled_out_torchvision_pipeline(shape, dtype):
    img = noise(*shape, dtype)
    assert torch.equal(take_crops(img, 144, SIZE, SCALES), reference_144(img, SIZE, SCALES))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_144_structure(shape):
    height, width = shape
    out = take_crops(noise(height, width), 144, SIZE, SCALES).view(4, 3, 2, 6, 3, SIZE, SIZE)
    assert torch.equal(out[:, :, 1], out[:, :, 0].flip(-1))  # the second 6 mirror the first 6
    boxes = crop_boxes(height, width, 144, SIZE, SCALES)
    assert [b.scale for b in boxes] == [s for s in SCALES for _ in range(36)]
    assert [b.mirrored for b in boxes] == ([False] * 6 + [True] * 6) * 12
    short = min(height, width)
    for s in range(4):
        wholes = [boxes[(s * 3 + q) * 12 + 5] for q in range(3)]
        for whole in wholes:  # each square spans the shorter side, and as much of the longer one
            # (within a resized pixel: the longer side was truncated to an int when resized)
            extent = sorted([whole.bottom - whole.top, whole.right - whole.left])
            assert extent[0] == pytest.approx(short) and short <= extent[1] < short * (1 + 1 / SCALES[s])
        along = [w.left for w in wholes] if width >= height else [w.top for w in wholes]
        assert along[0] == 0 and along[0] <= along[1] <= along[2]
        assert along[2] + short == pytest.approx(max(height, width), abs=1e-6 + max(height, width) / short)
        for q, whole in enumerate(wholes):  # the five crops lie inside their square, corners on its corners
            five = boxes[(s * 3 + q) * 12 : (s * 3 + q) * 12 + 5]
            assert five[0].top == whole.top and five[0].left == whole.left
            assert five[3].bottom == pytest.approx(whole.bottom)
            assert five[3].right == pytest.approx(whole.right)
            assert all(whole.left <= b.left and b.right <= whole.right + 1e-9 for b in five)


def test_paper_crop_boxes():
    boxes = crop_boxes(375, 500, 144, PAPER_SIZE, PAPER_SCALES)
    assert len(boxes) == 144 and {b.scale for b in boxes} == set(PAPER_SCALES)
    first = boxes[0]  # scale 256, left square, top-left 224 crop: 224 resized pixels of 375/256
    assert (first.top, first.left) == (0, 0)
    assert first.bottom == pytest.approx(224 * 375 / 256)


def test_square_image_three_squares_are_identical():
    out = take_crops(noise(40, 40), 144, SIZE, SCALES).view(4, 3, 12, 3, SIZE, SIZE)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_one_and_ten_crops_use_only_the_first_scale():
    img = noise(40, 60)
    for count in (1, 10):
        assert torch.equal(take_crops(img, count, SIZE, SCALES), take_crops(img, count, SIZE, SCALES[:1]))
        assert crop_boxes(40, 60, count, SIZE, SCALES) == crop_boxes(40, 60, count, SIZE, SCALES[:1])


def test_a_handful_of_resizes_per_image(monkeypatch):
    calls = []
    real = crops_mod.TF.resize
    monkeypatch.setattr(crops_mod.TF, "resize", lambda *a, **k: calls.append(1) or real(*a, **k))
    take_crops(noise(40, 60), 144, SIZE, SCALES)
    assert len(calls) == 8  # per scale: the image, then its three squares in one batch


@pytest.mark.parametrize("scale", [36, 37, 50, 99])
@pytest.mark.parametrize("shape", [(40, 60), (60, 40), (41, 67), (67, 41), (33, 100), (97, 53)])
def test_resized_shape_follows_torchvision(shape, scale):
    expected = tuple(TF.resize(torch.zeros(1, *shape), [scale]).shape[-2:])
    assert crops_mod._resized_shape(*shape, scale) == expected


@pytest.mark.parametrize(
    ("count", "size", "scales", "message"),
    [
        (5, SIZE, SCALES, "crop count must be 1, 10 or 144, got 5"),
        (1, 0, SCALES, "crop size must be >= 1, got 0"),
        (10, SIZE, [], "scales must name at least one"),
        (1, SIZE, [30], "every scale must be >= the crop size 32, got 30"),
        (144, SIZE, [36, 40], "144 crops need exactly 4 scales .* got 2"),
    ],
)
def test_bad_arguments(count, size, scales, message):
    with pytest.raises(ValueError, match=message):
        take_crops(noise(40, 60), count, size, scales)
    with pytest.raises(ValueError, match=message):
        crop_boxes(40, 60, count, size, scales)


def test_image_must_be_one_chw_tensor():
    with pytest.raises(ValueError, match=r"image must be one \[C, H, W\] tensor, got shape \(1, 3, 40, 60\)"):
        take_crops(noise(40, 60)[None], 1, SIZE, SCALES)


def test_normalize():
    out = take_crops(noise(40, 60), 10, SIZE, SCALES)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    got = normalize(out, mean, std)
    assert got.dtype == torch.float32 and got.shape == out.shape
    expected = TF.normalize(TF.to_dtype(out, torch.float32, scale=True), mean, std)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(normalize(out.float() / 255, mean, std), expected)
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        normalize(out, [0.5], [0.5])


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest", "area"])
def test_one_crop_is_trainings_validation_with_the_recipes_interpolation(mode):
    """eval's 1 crop with data.interpolation is what training validates on (data.eval_transform)."""
    from inceptionctl import load_recipe
    from inceptionctl.data import eval_transform

    recipe = load_recipe("googlenet-small", {"data.interpolation": mode})
    img = noise(45, 61, torch.uint8)
    d = recipe.data
    ours = normalize(take_crops(img, 1, recipe.eval.size, list(recipe.eval.scales), mode),
                     d.mean, d.std)[0]
    assert torch.allclose(ours, eval_transform(recipe)(img), atol=1e-6)
    if mode != "bilinear":  # and the mode does change the crop
        bilinear = normalize(take_crops(img, 1, recipe.eval.size, list(recipe.eval.scales)),
                             d.mean, d.std)[0]
        assert not torch.allclose(ours, bilinear, atol=1e-3)


@pytest.mark.parametrize("mode", ["bicubic", "area"])
def test_144_crops_take_the_interpolation_too(mode):
    img = noise(45, 61, torch.uint8)
    crops = take_crops(img, 144, SIZE, SCALES, mode)
    assert crops.shape == (144, 3, SIZE, SIZE) and crops.dtype == torch.uint8
    assert not torch.equal(crops, take_crops(img, 144, SIZE, SCALES))
