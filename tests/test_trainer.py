"""One training step: the paper's loss, the EMA decay per update, the device-side non-finite guard."""

import pytest
import torch
from torch import nn

from inceptionctl import build_model, load_recipe
from inceptionctl.data import Batch
from inceptionctl.trainer import Polyak, Trainer, compute_loss, ema_decay_per_update


@pytest.mark.parametrize("sets", [[], ["train.label_smoothing=0.1", "model.aux.loss_weight=0.5"]])
def test_compute_loss_is_main_plus_weighted_aux(sets):
    recipe = load_recipe("googlenet", sets)
    w, smoothing = recipe.model.aux.loss_weight, recipe.train.label_smoothing
    assert w == (0.5 if sets else 0.3)  # the paper's 0.3 unless the recipe says otherwise
    logits, aux1, aux2 = (torch.randn(8, 1000) for _ in range(3))
    y = torch.randint(0, 1000, (8,))

    def ce(z):
        return nn.functional.cross_entropy(z, y, label_smoothing=smoothing)

    expected = ce(logits) + w * (ce(aux1) + ce(aux2))
    assert torch.allclose(compute_loss(logits, [aux1, aux2], y, recipe), expected, atol=1e-6)
    assert torch.equal(compute_loss(logits, [], y, recipe), ce(logits))  # no aux heads: main only
    if smoothing:
        plain = nn.functional.cross_entropy(logits, y)
        assert not torch.allclose(compute_loss(logits, [], y, recipe), plain)


def test_ema_decay_scales_with_world_size():
    # one process: the recipe's decay itself, to the bit
    for decay in (0.9, 0.99, 0.9999, 0.99998):
        assert ema_decay_per_update(decay, 1, 32) == decay
    # torchvision's reference: alpha = 1 - decay, scaled by the images an update covers
    for decay in (0.9, 0.9999):
        for world, batch, steps in ((2, 32, 1), (8, 16, 1), (4, 64, 2), (1, 32, 3)):
            images = world * batch * steps
            expected = 1.0 - min(1.0, (1.0 - decay) * images / batch)
            assert ema_decay_per_update(decay, world, batch, steps) == pytest.approx(expected, abs=0)
    assert ema_decay_per_update(0.9999, 2, 32) == pytest.approx(0.9998)
    # N processes average over the same span of images as one: 1 / alpha updates of N batches
    one, eight = 0.9999, ema_decay_per_update(0.9999, 8, 32)
    assert 8 * 32 / (1 - eight) == pytest.approx(32 / (1 - one), rel=1e-9)
    assert ema_decay_per_update(0.9, 16, 32) == 0.0  # alpha capped at 1: follow the weights


def test_polyak_warmup_copy_and_skip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = Polyak(model, decay=0.5)
    yes, no = torch.tensor(True), torch.tensor(False)

    def nudge():
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(5, 4))  # moves the running stats, counts a batch

    nudge()
    ema.update(model, yes)  # the first update copies
    for e, p in zip(ema.module.state_dict().values(), model.state_dict().values()):
        assert torch.equal(e, p)
    for n in (1, 2, 3):
        before = {k: v.clone() for k, v in ema.module.state_dict().items()}
        nudge()
        ema.update(model, no)  # a skipped step: nothing moves
        for k, v in ema.module.state_dict().items():
            assert torch.equal(v, before[k]), k
        assert int(ema.n_averaged) == n
        ema.update(model, yes)
        d = min(0.5, (1 + n) / (10 + n))
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                assert torch.allclose(ema.module.state_dict()[k], d * before[k] + (1 - d) * v,
                                      atol=1e-6), k
            else:
                assert torch.equal(ema.module.state_dict()[k], v)
        assert int(ema.n_averaged) == n + 1


def _trainer(tiny_recipe, **kw):
    recipe = load_recipe(tiny_recipe)
    model = build_model(recipe).to(memory_format=torch.channels_last)
    trainer = Trainer(model, recipe, torch.device("cpu"), "fp32", steps_per_epoch=10, **kw)
    data = Batch(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)), [])
    return trainer, data


def test_step_returns_device_values_and_moves_the_weights(tiny_recipe):
    trainer, data = _trainer(tiny_recipe)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    loss, bad = trainer.step(data)
    assert loss.dim() == 0 and torch.isfinite(loss) and not bad
    assert not torch.equal(before["fc.weight"], trainer.model.state_dict()["fc.weight"])
    assert int(trainer.ema.n_averaged) == 1 and trainer.scheduler.last_epoch == 1
    assert set(trainer.state_dict()) == {"optimizer", "scheduler", "scaler", "ema_n_averaged"}


def _poison(monkeypatch):
    """NaN logits from the next forward pass on, as a diverged model gives them."""
    from inceptionctl import model as model_mod

    real = model_mod.GoogLeNet.forward_train

    def poisoned(self, x):
        logits, aux = real(self, x)
        return logits * float("nan"), aux

    monkeypatch.setattr(model_mod.GoogLeNet, "forward_train", poisoned)
    return lambda: monkeypatch.setattr(model_mod.GoogLeNet, "forward_train", real)


@pytest.mark.parametrize("first", [True, False])
def test_nonfinite_step_changes_no_weights(tiny_recipe, first, monkeypatch):
    trainer, data = _trainer(tiny_recipe)
    if not first:  # momentum buffers exist by then
        trainer.step(data)
        trainer.step(data)
    weights = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    ema = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    momentum = {i: s["momentum_buffer"].clone() for i, s in
                trainer.optimizer.state_dict()["state"].items()}
    n, last_epoch = int(trainer.ema.n_averaged), trainer.scheduler.last_epoch
    heal = _poison(monkeypatch)
    loss, bad = trainer.step(data)
    heal()
    assert bool(bad) and not torch.isfinite(loss)
    for k, v in trainer.model.named_parameters():  # batch-norm statistics move in the forward
        assert torch.equal(v, weights[k]), k
    for k, v in trainer.ema.module.state_dict().items():
        assert torch.equal(v, ema[k]), k
    assert int(trainer.ema.n_averaged) == n
    assert trainer.scheduler.last_epoch == last_epoch + 1  # the schedule counts every step
    for i, s in trainer.optimizer.state_dict()["state"].items():
        if i in momentum:
            assert torch.equal(s["momentum_buffer"], momentum[i])
        else:  # made by the skipped first step: zero, the same next step as no buffer
            assert not s["momentum_buffer"].any()
    # and training goes on from there
    loss, bad = trainer.step(data)
    assert torch.isfinite(loss) and not bad
    assert not torch.equal(weights["fc.weight"], trainer.model.state_dict()["fc.weight"])


def test_first_step_after_a_skipped_one_equals_a_first_step(tiny_recipe, monkeypatch):
    torch.manual_seed(1)
    a, data = _trainer(tiny_recipe)
    b, _ = _trainer(tiny_recipe)
    b.model.load_state_dict(a.model.state_dict())
    b.ema.module.load_state_dict(a.ema.module.state_dict())
    heal = _poison(monkeypatch)
    b.step(data)  # skipped
    heal()
    b.scheduler = torch.optim.lr_scheduler.LambdaLR(b.optimizer, a.scheduler.lr_lambdas[0])
    torch.manual_seed(2)
    a.step(data)
    torch.manual_seed(2)
    b.step(data)
    b_params = dict(b.model.named_parameters())
    for k, v in a.model.named_parameters():
        assert torch.equal(v, b_params[k]), k


@pytest.mark.parametrize("stepped", [True, False])
def test_a_state_saved_before_the_fused_step_resumes(tiny_recipe, monkeypatch, stepped):
    """A run saved by the unfused optimizer steps, and skips, here; saved before its first
    step (no momentum buffers yet), a skipped first step leaves zeros, not uninitialised
    memory, and training goes on."""
    a, data = _trainer(tiny_recipe)
    if stepped:
        a.step(data)
    state = a.state_dict()
    if not stepped:
        state["optimizer"]["state"] = {}  # what torch's SGD saves before any step
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = None  # what torch.optim.SGD() without fused= saves
    b, _ = _trainer(tiny_recipe)
    b.model.load_state_dict(a.model.state_dict())
    b.load_state_dict(state)
    assert all(group["fused"] for group in b.optimizer.param_groups)
    weights = {k: v.detach().clone() for k, v in b.model.named_parameters()}
    heal = _poison(monkeypatch)
    loss, bad = b.step(data)
    heal()
    assert bool(bad) and all(torch.equal(v, weights[k]) for k, v in b.model.named_parameters())
    if not stepped:
        assert all(not s["momentum_buffer"].any() for s in b.optimizer.state.values())
    for _ in range(2):
        loss, bad = b.step(data)
        assert torch.isfinite(loss) and not bad


def test_a_state_saved_in_the_other_memory_format_takes_the_parameters_layout(tiny_recipe):
    """CUDA's fused kernels need a state tensor laid out as its parameter: a run resumed with
    the other memory format gets its momentum buffers re-laid, values unchanged."""
    a, data = _trainer(tiny_recipe)  # channels_last
    a.step(data)
    state = a.state_dict()
    recipe = load_recipe(tiny_recipe)
    b = Trainer(build_model(recipe), recipe, torch.device("cpu"), "fp32", steps_per_epoch=10,
                channels_last=False)
    b.model.load_state_dict(a.model.state_dict())
    b.load_state_dict(state)
    saved = [v["momentum_buffer"] for v in state["optimizer"]["state"].values()]
    assert any(v.dim() == 4 and not v.is_contiguous() for v in saved)  # the case at hand
    for p, buf in zip(b._params, saved):
        now = b.optimizer.state[p]["momentum_buffer"]
        assert now.stride() == p.stride() and torch.equal(now, buf)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_an_adamw_state_saved_on_the_cpu_resumes_on_cuda(tiny_recipe, monkeypatch):
    recipe = load_recipe(tiny_recipe, ["train.optimizer=adamw", "train.lr=0.001"])
    a = Trainer(build_model(recipe), recipe, torch.device("cpu"), "fp32")
    data = Batch(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)), [])
    a.step(data)
    state = a.state_dict()
    for group in state["optimizer"]["param_groups"]:
        group["fused"], group["capturable"] = None, False  # an unfused CPU run's state
    cuda = torch.device("cuda")
    b = Trainer(build_model(recipe).to(cuda), recipe, cuda, "fp32")
    b.load_state_dict(state)
    assert all(s["step"].device.type == "cuda" for s in b.optimizer.state.values())
    heal = _poison(monkeypatch)
    loss, bad = b.step(data)
    heal()
    assert bool(bad) and all(int(s["step"]) == 1 for s in b.optimizer.state.values())
    loss, bad = b.step(data)
    assert torch.isfinite(loss) and not bad
    assert all(int(s["step"]) == 2 for s in b.optimizer.state.values())


# --------------------------------------------------------------------------------- optimizers

@pytest.mark.parametrize("overrides, cls, expected", [
    (["train.momentum=0.8", "train.nesterov=true", "train.weight_decay=0.0001"], torch.optim.SGD,
     {"momentum": 0.8, "nesterov": True, "weight_decay": 0.0001, "dampening": 0}),
    (["train.optimizer=adamw", "train.betas=[0.8, 0.99]", "train.weight_decay=0.05"],
     torch.optim.AdamW, {"betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.05}),
    (["train.optimizer=adamw", "train.eps=0.000001"], torch.optim.AdamW, {"eps": 1e-6}),
    # the Inception-v2/v3 papers' RMSprop: decay 0.9, epsilon 1.0, momentum 0.9
    (["train.optimizer=rmsprop"], torch.optim.RMSprop,
     {"alpha": 0.9, "eps": 1.0, "momentum": 0.9, "centered": False}),
    (["train.optimizer=rmsprop", "train.rmsprop_decay=0.95", "train.eps=0.1",
      "train.momentum=0"], torch.optim.RMSprop, {"alpha": 0.95, "eps": 0.1, "momentum": 0.0}),
])
def test_the_optimizer_is_the_recipes(tiny_recipe, overrides, cls, expected):
    recipe = load_recipe(tiny_recipe, overrides + ["train.lr=0.02"])
    trainer = Trainer(build_model(recipe), recipe, torch.device("cpu"), "fp32")
    assert type(trainer.optimizer) is cls
    group = trainer.optimizer.param_groups[0]
    assert group["initial_lr"] == 0.02
    for key, value in expected.items():
        assert group[key] == value, key
    # PyTorch's fused step where it has one (a non-finite step skips itself there)
    assert bool(group.get("fused")) == (cls is not torch.optim.RMSprop)
    assert sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"]) == \
        sum(p.numel() for p in trainer.model.parameters())


@pytest.mark.parametrize("name, slots", [("adamw", ("exp_avg", "exp_avg_sq", "step")),
                                         ("rmsprop", ("square_avg", "momentum_buffer", "step"))])
def test_a_skipped_step_leaves_adaptive_state_as_it_was(tiny_recipe, monkeypatch, name, slots):
    recipe = load_recipe(tiny_recipe, [f"train.optimizer={name}", "train.lr=0.001"])
    model = build_model(recipe).to(memory_format=torch.channels_last)
    trainer = Trainer(model, recipe, torch.device("cpu"), "fp32", steps_per_epoch=10)
    data = Batch(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)), [])
    trainer.step(data)
    before = {i: {k: v.clone() for k, v in s.items()}
              for i, s in trainer.optimizer.state_dict()["state"].items()}
    weights = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    heal = _poison(monkeypatch)
    _, bad = trainer.step(data)
    heal()
    assert bool(bad)
    after = trainer.optimizer.state_dict()["state"]
    assert after.keys() == before.keys()
    for i, s in after.items():
        assert set(slots) <= set(s)
        for k in slots:
            assert torch.equal(s[k], before[i][k]), (i, k)
    for k, v in trainer.model.named_parameters():
        assert torch.equal(v, weights[k]), k


def _stepped(tiny_recipe, steps, steps_per_epoch=10, overrides=()):
    recipe = load_recipe(tiny_recipe, overrides=list(overrides))
    torch.manual_seed(0)
    model = build_model(recipe).to(memory_format=torch.channels_last)
    trainer = Trainer(model, recipe, torch.device("cpu"), "fp32", steps_per_epoch=steps_per_epoch)
    data = Batch(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)), [])
    for _ in range(steps):
        trainer.step(data)
    return trainer, recipe, data


def test_a_run_extended_to_more_epochs_follows_the_longer_schedule(tiny_recipe):
    """The saved schedule gives only its position: more epochs on resume stretch the cosine
    instead of keeping the old one, which had reached a learning rate of 0."""
    from inceptionctl.trainer import Schedule

    done, recipe, data = _stepped(tiny_recipe, 20)
    assert recipe.train.schedule == "cosine" and done.lr == 0.0
    longer, recipe4, _ = _stepped(tiny_recipe, 0, overrides=["train.epochs=4"])
    longer.load_state_dict(done.state_dict(), epoch=2)
    expected = recipe4.train.lr * Schedule(recipe4, 10)(20)
    assert expected > 0.01 and longer.lr == pytest.approx(expected)
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    longer.step(data)
    assert longer.lr == pytest.approx(recipe4.train.lr * Schedule(recipe4, 10)(21))


def test_a_resume_at_an_epoch_end_with_another_world_size_counts_this_runs_steps(tiny_recipe):
    """--nproc 1 saved after one epoch of 10 steps; --nproc 2 resumes with 5 steps per epoch."""
    from inceptionctl.trainer import Schedule

    one, recipe, _ = _stepped(tiny_recipe, 10)
    two, _, _ = _stepped(tiny_recipe, 0, steps_per_epoch=5)
    two.load_state_dict(one.state_dict(), epoch=1)
    assert two.scheduler.last_epoch == 5
    assert two.lr == pytest.approx(recipe.train.lr * Schedule(recipe, 5)(5))


def test_a_resume_with_the_same_settings_keeps_the_schedule_to_the_bit(tiny_recipe):
    a, _, data = _stepped(tiny_recipe, 7)
    b, _, _ = _stepped(tiny_recipe, 0)
    b.load_state_dict(a.state_dict(), epoch=0, step_in_epoch=7)
    assert b.scheduler.last_epoch == 7 and b.lr == a.lr
    a.step(data), b.step(data)
    assert b.lr == a.lr


def test_last_step_lr_is_the_rate_the_last_step_ran_at(tiny_recipe):
    trainer, data = _trainer(tiny_recipe)
    ran_at = []
    for _ in range(4):
        ran_at.append(trainer.optimizer.param_groups[0]["lr"])  # what the step will use
        trainer.step(data)
        assert trainer.last_step_lr == pytest.approx(ran_at[-1], rel=1e-12)
    assert len(set(ran_at)) == 4 and trainer.lr != ran_at[-1]  # the schedule moves every step
