"""The paper's training, each piece against a reference that does not share its code.

Schedules against torch's own LR schedulers, the Polyak copy against torch's EMA averaging
function, the crop sampling against torchvision's RandomResizedCrop, the photometric noise against
its closed-form statistics, and the loss of the real training step against cross-entropy written
out here. The paper's numbers (gamma 0.96 every 8 epochs, aux weight 0.3, crops of 8%-100% of the
area at aspect 3/4-4/3) are written here too, so a recipe that drifts from them fails.
"""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.optim import lr_scheduler
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torchvision.transforms import RandomResizedCrop

from inceptionctl import build_model, load_recipe
from inceptionctl import data as data_mod
from inceptionctl.data import Batch, PaperCrop, train_transform
from inceptionctl.model import TrainStep
from inceptionctl.trainer import Schedule, Trainer

PAPER_GAMMA, PAPER_STEP_EPOCHS = 0.96, 8  # "decreasing the learning rate by 4% every 8 epochs"
PAPER_AUX_WEIGHT = 0.3  # "their loss is added to the total loss with a discount weight (0.3)"
PAPER_SCALE, PAPER_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # "8% and 100%", "between 3/4 and 4/3"


def test_googlenet_recipe_states_the_papers_numbers():
    r = load_recipe("googlenet")
    assert (r.train.schedule, r.train.gamma, r.train.step_epochs) == (
        "step", PAPER_GAMMA, PAPER_STEP_EPOCHS)
    assert r.train.warmup_epochs == 0 and r.train.label_smoothing == 0
    assert r.model.aux.loss_weight == PAPER_AUX_WEIGHT
    assert tuple(r.train.scale) == PAPER_SCALE
    assert tuple(r.train.ratio) == pytest.approx(PAPER_RATIO, abs=1e-12)
    assert r.train.random_interpolation and r.train.hflip == 0.5


# ------------------------------------------------------------------------------- the schedule

def _trainer(tiny_recipe, sets, steps_per_epoch=10):
    recipe = load_recipe(tiny_recipe, sets)
    model = build_model(recipe).to(memory_format=torch.channels_last)
    return Trainer(model, recipe, torch.device("cpu"), "fp32", steps_per_epoch=steps_per_epoch)


def _reference_lrs(make, base_lr, steps):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = make(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _trainer_lrs(trainer, steps):
    lrs = []
    with warnings.catch_warnings():  # the schedule alone: no optimizer step between
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):  # the rate a step would use, then the Trainer's schedule step
            lrs.append(trainer.optimizer.param_groups[0]["lr"])
            trainer.scheduler.step()
    return lrs


def test_step_schedule_equals_steplr_step_by_step(tiny_recipe):
    paper = load_recipe("googlenet").train
    per_epoch, epochs = 3, 40
    trainer = _trainer(tiny_recipe, {"train.schedule": "step", "train.gamma": paper.gamma,
                                     "train.step_epochs": paper.step_epochs,
                                     "train.warmup_epochs": 0, "train.epochs": epochs,
                                     "train.lr": paper.lr}, per_epoch)
    ref = _reference_lrs(lambda o: lr_scheduler.StepLR(
        o, step_size=PAPER_STEP_EPOCHS * per_epoch, gamma=PAPER_GAMMA), paper.lr, epochs * per_epoch)
    ours = _trainer_lrs(trainer, epochs * per_epoch)
    assert ours == pytest.approx(ref, rel=1e-12, abs=0)
    assert ours[8 * per_epoch] == pytest.approx(paper.lr * 0.96)  # epoch 8: the first cut


@pytest.mark.parametrize("kind", ["cosine", "poly"])
def test_warmup_then_decay_equals_linearlr_then_torch_decay(tiny_recipe, kind):
    per_epoch, epochs, warm = 4, 12, 2.5
    trainer = _trainer(tiny_recipe, {"train.schedule": kind, "train.warmup_epochs": warm,
                                     "train.epochs": epochs, "train.poly_power": 0.5}, per_epoch)
    lr, total, w = trainer.recipe.train.lr, epochs * per_epoch, int(warm * per_epoch)

    def make(opt):
        # (step + 1) / w over the first w steps: LinearLR from 1/w reaching 1 at step w - 1
        up = lr_scheduler.LinearLR(opt, start_factor=1 / w, end_factor=1.0, total_iters=w - 1)
        down = (lr_scheduler.CosineAnnealingLR(opt, T_max=total - w) if kind == "cosine"
                else lr_scheduler.PolynomialLR(opt, total_iters=total - w, power=0.5))
        return lr_scheduler.SequentialLR(opt, [up, down], milestones=[w])

    ref = _reference_lrs(make, lr, total)
    ours = _trainer_lrs(trainer, total)
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert ours[0] == pytest.approx(lr / w) and max(ours) == pytest.approx(lr)


# -------------------------------------------------------------------------------- the Polyak copy

def _batch(seed, n=8, classes=10, size=16):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 3, size, size, generator=g),
                 torch.randint(0, classes, (n,), generator=g), [])


def test_polyak_equals_torch_ema_with_the_warmup_written_here(tiny_recipe):
    decay = 0.99
    trainer = _trainer(tiny_recipe, {"train.ema_decay": decay})
    model = trainer.model

    def tensors(m):
        return [t for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]

    ref = [t.detach().clone() for t in tensors(model)]
    plain = [t.clone() for t in ref]  # the same average without the warm-up
    for n in range(6):
        trainer.step(_batch(n))
        now = [t.detach() for t in tensors(model)]
        if n == 0:  # the first update copies the weights
            for r, p, c in zip(ref, plain, now):
                r.copy_(c)
                p.copy_(c)
        else:  # the decay after n updates: min(decay, (1 + n) / (10 + n))
            get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(ref, now, torch.tensor(n))
            get_ema_multi_avg_fn(decay)(plain, now, torch.tensor(n))
    ours = tensors(trainer.ema.module)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert int(trainer.ema.n_averaged) == 6
    # the warm-up matters: without it the copy would still sit near the first weights
    gap = max(float((a - b).abs().max().detach()) for a, b in zip(ours, plain))
    assert gap > 1e-4


# --------------------------------------------------------------------------- crops and noise

def _sample_crops(transform, n, monkeypatch, shape=(3, 240, 320)):
    """Crop one image n times with ``transform``'s crop; return each crop's (h, w, interpolation).

    The resize is replaced by a 2x2 stand-in: the crop box and the chosen interpolation are what
    is measured.
    """
    seen = []

    def fake_resize(crop, size, mode):
        seen.append((crop.shape[-2], crop.shape[-1], mode))
        return crop[..., :2, :2].clone()

    monkeypatch.setattr(data_mod, "resize_to", fake_resize)
    crop = transform.transforms[0]  # the training transform's own crop step
    assert isinstance(crop, PaperCrop)
    img = torch.full(shape, 120, dtype=torch.uint8)
    torch.manual_seed(0)
    for _ in range(n):
        crop(img)
    return seen


def test_crop_area_and_aspect_match_torchvision_random_resized_crop(monkeypatch):
    recipe = load_recipe("googlenet")
    transform = train_transform(recipe)
    n, shape = 3000, (3, 240, 320)
    seen = _sample_crops(transform, n, monkeypatch, shape)
    ours_area = np.array([h * w / (shape[1] * shape[2]) for h, w, _ in seen])
    ours_aspect = np.log([w / h for h, w, _ in seen])

    torch.manual_seed(12345)  # the reference, with the paper's ranges written above
    img = torch.zeros(shape, dtype=torch.uint8)
    boxes = [RandomResizedCrop.get_params(img, list(PAPER_SCALE), list(PAPER_RATIO))
             for _ in range(n)]
    ref_area = np.array([h * w / (shape[1] * shape[2]) for _, _, h, w in boxes])
    ref_aspect = np.log([w / h for _, _, h, w in boxes])
    assert stats.ks_2samp(ours_area, ref_area).pvalue > 1e-3
    assert stats.ks_2samp(ours_aspect, ref_aspect).pvalue > 1e-3
    assert ours_area.min() >= 0.08 - 0.01 and ours_area.max() <= 1.0
    assert np.exp(ours_aspect).min() >= 0.75 - 0.02 and np.exp(ours_aspect).max() <= 4 / 3 + 0.02


def test_four_interpolations_equally_often(monkeypatch):
    n = 4000
    seen = _sample_crops(train_transform(load_recipe("googlenet")), n, monkeypatch, (3, 40, 40))
    modes = [m for _, _, m in seen]
    counts = {m: modes.count(m) for m in set(modes)}
    assert set(counts) == {"bilinear", "area", "nearest", "bicubic"}
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3
    fixed = load_recipe("googlenet", {"train.random_interpolation": False,
                                      "data.interpolation": "bicubic"})
    seen = _sample_crops(train_transform(fixed), 50, monkeypatch, (3, 40, 40))
    assert {m for _, _, m in seen} == {"bicubic"}


def _photometric(tiny_recipe, **train):
    """The tiny recipe's training transform with the crop the whole image, resized to itself."""
    sets = {"train.scale": [1.0, 1.0], "train.ratio": [1.0, 1.0],
            "train.random_interpolation": False, "data.interpolation": "nearest",
            "train.hflip": 0.0, "train.color_jitter": 0.0, "train.lighting": 0.0}
    sets.update({f"train.{k}": v for k, v in train.items()})
    recipe = load_recipe(tiny_recipe, sets)
    mean = torch.tensor(recipe.data.mean).view(3, 1, 1)
    std = torch.tensor(recipe.data.std).view(3, 1, 1)
    transform = train_transform(recipe)
    return lambda img: transform(img) * std + mean  # back to [0, 1]


def _image(seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(30, 226, (3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_hflip_at_the_recipes_probability(tiny_recipe, p):
    t = _photometric(tiny_recipe, hflip=p)
    img = _image()
    plain = img.float() / 255
    n, flips = 2000, 0
    torch.manual_seed(0)
    for _ in range(n):
        out = t(img)
        if torch.allclose(out, plain.flip(-1), atol=1e-5):
            flips += 1
        else:
            torch.testing.assert_close(out, plain, atol=1e-5, rtol=0)
    assert stats.binomtest(flips, n, p).pvalue > 1e-3
    off = _photometric(tiny_recipe, hflip=0.0)
    assert all(torch.allclose(off(img), plain, atol=1e-5) for _ in range(50))


# AlexNet's PCA of ImageNet's RGB pixels, written here from the paper's published values
EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]])


def test_lighting_noise_statistics_and_off_at_zero(tiny_recipe):
    std = 0.1
    t = _photometric(tiny_recipe, lighting=std)
    img = torch.full((3, 16, 16), 128, dtype=torch.uint8)  # mid-grey: no clamping
    base = img.float() / 255
    torch.manual_seed(0)
    shifts = []
    for _ in range(2000):
        d = t(img) - base
        assert torch.allclose(d, d[:, :1, :1].expand_as(d), atol=1e-5)  # one shift per channel
        shifts.append(d[:, 0, 0])
    shifts = torch.stack(shifts).double()
    # shift = V (alpha * eigval), alpha ~ N(0, std): covariance V diag(std * eigval)^2 V^T
    expected = (EIGVEC * (std * EIGVAL) ** 2) @ EIGVEC.T
    torch.testing.assert_close(shifts.T.cov().float(), expected, rtol=0.1, atol=2e-6)
    assert shifts.mean(0).abs().max() < 4 * expected.diagonal().sqrt().max() / math.sqrt(2000)
    off = _photometric(tiny_recipe, lighting=0.0)
    torch.testing.assert_close(off(img), base, atol=1e-6, rtol=0)


def test_color_jitter_statistics_and_off_at_zero(tiny_recipe):
    j = 0.4
    t = _photometric(tiny_recipe, color_jitter=j)
    # on a uniform grey image contrast, saturation and hue change nothing: what is left is
    # brightness, a factor drawn uniformly from [1 - j, 1 + j]
    img = torch.full((3, 16, 16), 100, dtype=torch.uint8)
    torch.manual_seed(0)
    factors = []
    for _ in range(800):
        out = t(img)
        assert torch.allclose(out, out[0, 0, 0].expand_as(out), atol=1e-5)
        factors.append(float(out[0, 0, 0]) * 255 / 100)
    factors = np.array(factors)
    # each uint8 step rounds: a factor moves by a few 1 / 100 at most
    assert factors.min() >= 1 - j - 0.03 and factors.max() <= 1 + j + 0.03
    assert factors.min() < 1 - j + 0.05 and factors.max() > 1 + j - 0.05
    assert stats.kstest(factors, stats.uniform(1 - j, 2 * j).cdf).pvalue > 1e-3
    # on a coloured image the colours themselves move (saturation and hue)
    colour = _image(3)
    chroma = [(t(colour) - colour.float() / 255).std(0).mean() for _ in range(50)]
    assert float(torch.stack(chroma).mean()) > 1e-3
    off = _photometric(tiny_recipe, color_jitter=0.0)
    torch.testing.assert_close(off(colour), colour.float() / 255, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------ the loss of one step

def _ce(z, y, eps):
    """Cross-entropy with label smoothing eps, written out: (1 - eps) NLL + eps x mean(-log p)."""
    logp = z.float().log_softmax(1)
    nll = -logp.gather(1, y[:, None])[:, 0]
    return ((1 - eps) * nll - eps * logp.mean(1)).mean()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_real_step_trains_on_main_plus_weighted_aux(tiny_recipe, smoothing):
    w = load_recipe("googlenet").model.aux.loss_weight
    assert load_recipe(tiny_recipe).model.aux.loss_weight == PAPER_AUX_WEIGHT  # the default too
    trainer = _trainer(tiny_recipe, {"model.aux.after": ["3a", "4a"], "model.aux.loss_weight": w,
                                     "train.label_smoothing": smoothing})
    before = TrainStep(copy.deepcopy(trainer.model)).train()
    batch = _batch(7)
    torch.manual_seed(3)  # the same dropout masks for both forward passes
    loss, _ = trainer.step(batch)
    torch.manual_seed(3)
    logits, aux = before(batch.images.contiguous(memory_format=torch.channels_last))
    assert len(aux) == 2
    y = batch.labels
    expected = _ce(logits, y, smoothing) + PAPER_AUX_WEIGHT * (
        _ce(aux[0], y, smoothing) + _ce(aux[1], y, smoothing))
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-5)
    if smoothing:  # and the smoothing is not lost on the way
        plain = _ce(logits, y, 0) + PAPER_AUX_WEIGHT * (_ce(aux[0], y, 0) + _ce(aux[1], y, 0))
        assert abs(float(plain.detach() - loss)) > 1e-4  # ten times the tolerance above
