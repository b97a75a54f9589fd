"""The model contract for every shipped recipe, counts, and torchvision parity."""

import pytest
import torch
import torchvision
from torch import nn

from inceptionctl import build_model, load_recipe, load_weights
from inceptionctl.checkpoint import load_model, save_checkpoint, to_model_keys
from inceptionctl.geometry import smallest_input_size
from inceptionctl.model import AuxHead, TrainStep
from inceptionctl.profile import count_cost

from .conftest import SHIPPED


def _small(name: str, **extra):
    """The shipped recipe at its smallest valid input size (the contract, cheaply)."""
    recipe = load_recipe(name)
    size = smallest_input_size(recipe.model)
    overrides = {"data.input_size": size, "eval.size": size,
                 "eval.scales": [size], "data.resize": size}
    overrides.update(extra)
    return load_recipe(name, overrides)


@pytest.mark.parametrize("name", SHIPPED)
def test_contract(name):
    recipe = _small(name)
    model = build_model(recipe)
    size = recipe.data.input_size
    x = torch.randn(3, 3, size, size)
    n_aux = len(recipe.model.aux.after)

    calls = []
    for head in model.aux.values():
        head.register_forward_hook(lambda *a: calls.append(1))

    model.train()
    logits, aux = model.forward_train(x)
    assert logits.shape == (3, recipe.model.num_classes)
    assert len(aux) == n_aux and all(a.shape == logits.shape for a in aux)
    assert len(calls) == n_aux
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2]))
    loss = loss + recipe.model.aux.loss_weight * sum(
        nn.functional.cross_entropy(a, torch.tensor([0, 1, 2])) for a in aux)
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"

    calls.clear()
    out = model(x)  # training mode: still logits only
    assert isinstance(out, torch.Tensor) and out.shape == logits.shape
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (3, recipe.model.num_classes)
    assert torch.isfinite(out).all()
    assert calls == [], "aux heads must not run outside forward_train"


@pytest.mark.parametrize("name", SHIPPED)
def test_one_below_smallest_input_is_refused(name):
    from inceptionctl import RecipeError

    size = smallest_input_size(load_recipe(name).model)
    with pytest.raises(RecipeError, match="too small"):
        load_recipe(name, {"data.input_size": size - 1})


@pytest.mark.parametrize("num_classes", [1, 7, 1000])
def test_num_classes(num_classes):
    recipe = _small("googlenet-small", **{"model.num_classes": num_classes, "data.classes": None})
    model = build_model(recipe).eval()
    size = recipe.data.input_size
    assert model(torch.randn(2, 3, size, size)).shape == (2, num_classes)
    model.train()
    _, aux = model.forward_train(torch.randn(2, 3, size, size))
    assert all(a.shape == (2, num_classes) for a in aux)


def test_nominal_input_sizes_and_table1_shapes():
    """googlenet at 224x224: the shape after every Table 1 row, measured by hooks."""
    recipe = load_recipe("googlenet")
    model = build_model(recipe).eval()
    seen = {}
    for name, module in list(model.stem.named_children()) + list(model.blocks.named_children()):
        module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape[1:]))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    expected = {"conv1": (64, 112, 112), "maxpool1": (64, 56, 56), "conv3": (192, 56, 56),
                "maxpool2": (192, 28, 28), "inception3a": (256, 28, 28),
                "inception3b": (480, 28, 28), "pool3": (480, 14, 14),
                "inception4a": (512, 14, 14), "inception4d": (528, 14, 14),
                "inception4e": (832, 14, 14), "pool4": (832, 7, 7),
                "inception5a": (832, 7, 7), "inception5b": (1024, 7, 7)}
    assert {k: tuple(seen[k]) for k in expected} == expected


def test_parameter_counts_and_cost():
    googlenet = count_cost(load_recipe("googlenet"))
    assert googlenet.params == 6_998_552
    assert round(googlenet.macs / 1e9, 3) == 1.583
    bn = count_cost(load_recipe("googlenet-bn"))
    assert bn.params == 6_624_904
    assert round(bn.macs / 1e9, 3) == 1.498
    # the built model on a real device agrees with the meta-device count
    assert build_model(load_recipe("googlenet-bn")).num_params() == 6_624_904
    small = count_cost(load_recipe("googlenet-small"))
    assert small.params < 500_000 and small.macs < 50e6


def test_counts_match_torchvision():
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    ours = build_model(load_recipe("googlenet-bn"))
    assert ours.num_params(include_aux=True) == sum(p.numel() for p in tv.parameters())
    assert ours.num_params() == sum(p.numel() for n, p in tv.named_parameters()
                                    if not n.startswith("aux"))


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_scripted_traced_and_exported_keep_the_contract():
    recipe = _small("googlenet-bn")
    size = recipe.data.input_size
    model = build_model(recipe).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        eager = model(x)
        scripted = torch.jit.script(model)
        traced = torch.jit.trace(model, x)
        assert torch.equal(scripted(x), eager)
        assert torch.allclose(traced(x), eager, atol=1e-6)
        scripted.train()
        logits, aux = scripted.forward_train(x)
    assert logits.shape == eager.shape and len(aux) == 2
    # The scripted module shares buffers: its training pass moved the batch-norm statistics.
    model.eval()
    exported = torch.export.export(model, (x,))
    assert len(exported.graph_signature.user_outputs) == 1  # logits only
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-6)


def test_train_step_wrapper_runs_aux():
    model = build_model(_small("googlenet-small"))
    size = model.recipe.data.input_size
    logits, aux = TrainStep(model)(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 10) and len(aux) == 2


def test_reset_classifier():
    model = build_model(_small("googlenet-small"))
    model.reset_classifier(3)
    assert model.num_classes == 3
    assert all(isinstance(h, AuxHead) and h.fc2.out_features == 3 for h in model.aux.values())


def test_reset_classifier_keeps_the_recipe_and_its_init(tmp_path):
    model = build_model(load_recipe("googlenet-small"))
    assert model.classifier_names() == ["fc", "aux.aux1.fc2", "aux.aux2.fc2"]
    model.reset_classifier(3)
    assert model.recipe.model.num_classes == 3 and model.recipe.data.classes is None
    for layer in (model.fc, *(h.fc2 for h in model.aux.values())):  # the recipe's init:
        assert torch.count_nonzero(layer.bias) == 0 and layer.weight.std() < 0.02  # N(0, 0.01)
    path = save_checkpoint(tmp_path / "three.pt", model.eval(), model.recipe)
    loaded, recipe, _info = load_model(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert recipe.model.num_classes == 3 and torch.equal(loaded(x), model(x))


# ------------------------------------------------------------------ torchvision parity

def _torchvision_googlenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True,
                                      transform_input=False)
    # Non-trivial batch-norm statistics, so a mis-mapped key cannot hide.
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return tv.eval()


@pytest.mark.parametrize("with_aux", [True, False])
def test_torchvision_parity(tmp_path, with_aux):
    tv = _torchvision_googlenet()
    sd = tv.state_dict()
    if not with_aux:
        sd = {k: v for k, v in sd.items() if not k.startswith("aux")}
    path = tmp_path / "googlenet-1378be20.pth"
    torch.save(sd, path)

    ours = build_model(load_recipe("googlenet-bn"))
    report = load_weights(ours, path)
    assert report.aux_initialised == (not with_aux)
    ours.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (tv(x) - ours(x)).abs().max().item()
    assert diff <= 1e-5


def test_torchvision_aux_heads_match_in_training():
    tv = _torchvision_googlenet(1)
    path_sd = tv.state_dict()
    ours = build_model(load_recipe("googlenet-bn"))
    ours.load_state_dict(to_model_keys(ours, path_sd))
    for m in list(tv.modules()) + list(ours.modules()):
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # dropout is random; everything else must agree in training mode
    tv.train()
    ours.train()
    x = torch.randn(2, 3, 224, 224)
    out = tv(x)
    logits, (aux1, aux2) = ours.forward_train(x)
    assert (out.logits - logits).abs().max() <= 1e-5
    assert (out.aux_logits1 - aux1).abs().max() <= 1e-5
    assert (out.aux_logits2 - aux2).abs().max() <= 1e-5


def test_transform_input_is_preprocessing(tmp_path):
    """torchvision's transform_input=True on ImageNet-normalised input == ours on (x-0.5)/0.5."""
    tv = _torchvision_googlenet()
    tv_ti = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False,
                                         transform_input=True).eval()
    tv_ti.load_state_dict(tv.state_dict())
    path = tmp_path / "w.pth"
    torch.save(tv.state_dict(), path)
    recipe = load_recipe("googlenet-bn")
    ours = build_model(recipe)
    load_weights(ours, path)
    ours.eval()
    image = torch.rand(2, 3, 224, 224)
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    imagenet_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    mean = torch.tensor(recipe.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(recipe.data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        a = tv_ti((image - imagenet_mean) / imagenet_std)
        b = ours((image - mean) / std)
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_inception_runs_its_three_1x1_convolutions_as_one(layout):
    """Without batch norm the three 1x1 convolutions over a module's input run as one (the
    branch layers are not called), with the outputs and gradients of three, in either layout."""
    block = build_model(_small("googlenet")).double().blocks["inception3a"]
    x = torch.randn(2, block.branch1.conv.in_channels, 9, 9, dtype=torch.float64)
    x = x.contiguous(memory_format=layout).requires_grad_(True)
    params = [x, *block.parameters()]
    called = []
    for conv in (block.branch1.conv, block.branch2[0].conv, block.branch3[0].conv):
        conv.forward = (lambda f: lambda t: called.append(1) or f(t))(conv.forward)  # no hook
    fused = block(x)
    fused_grads = torch.autograd.grad(fused.square().sum(), params)
    assert called == [] and fused.is_contiguous(memory_format=layout)
    block.fuse_1x1 = False
    plain = block(x)
    plain_grads = torch.autograd.grad(plain.square().sum(), params)
    assert len(called) == 3
    assert (fused - plain).abs().max() < 1e-12
    assert max((a - b).abs().max() for a, b in zip(fused_grads, plain_grads)) < 1e-10
    # with batch norm every convolution keeps its own statistics
    assert not build_model(_small("googlenet-bn")).blocks["inception3a"].fuse_1x1


def test_a_hook_on_a_branch_layer_is_honoured():
    """Pruning (a pre-hook that recomputes the weight) and a forward hook on a branch layer
    work as on any model: the module then runs its layers one by one."""
    import torch.nn.utils.prune as prune

    block = build_model(_small("googlenet")).double().blocks["inception3a"]
    x = torch.randn(1, block.branch1.conv.in_channels, 7, 7, dtype=torch.float64)
    prune.l1_unstructured(block.branch2[0].conv, "weight", amount=0.5)
    seen = []
    block.branch1.register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    pruned = block(x)
    assert seen == [block.branch1.conv.out_channels]
    block.fuse_1x1 = False
    assert (pruned - block(x)).abs().max() < 1e-12
    prune.remove(block.branch2[0].conv, "weight")
    block.branch1._forward_hooks.clear()
    block.fuse_1x1 = True
    assert (block(x) - pruned).abs().max() < 1e-12  # fused again, with the pruned weights
    assert len(seen) == 2
    # a layer swapped for another type (quantization-aware training does) runs as itself

    class Doubled(nn.Conv2d):
        def forward(self, t):
            return 2 * super().forward(t)

    conv = block.branch3[0].conv
    swapped = Doubled(conv.in_channels, conv.out_channels, 1).double()
    swapped.load_state_dict(conv.state_dict())
    before = block(x)
    block.branch3[0].conv = swapped
    assert not torch.equal(block(x), before)


@pytest.mark.parametrize("channels,size,beta", [(64, 5, 0.75), (192, 5, 0.75), (7, 4, 0.5),
                                                (3, 5, 0.75)])
def test_lrn_equals_torch(channels, size, beta):
    """Both of our LRN kernels (the CPU's sliding window sum and the banded convolution) compute
    exactly what nn.LocalResponseNorm computes, and its gradient."""
    from inceptionctl.model import LocalResponseNorm, lrn_banded

    ref = nn.LocalResponseNorm(size, alpha=0.1, beta=beta, k=1.0)
    ours = LocalResponseNorm(channels, size, alpha=0.1, beta=beta, k=1.0).double()
    x = torch.randn(2, channels, 9, 9, dtype=torch.float64, requires_grad=True) * 3
    a, b = ref(x), ours(x)
    banded = lrn_banded(x, ours.band, size, 0.1, beta, 1.0)
    (ga,) = torch.autograd.grad(a.square().sum(), x)
    (gb,) = torch.autograd.grad(b.square().sum(), x)
    (gd,) = torch.autograd.grad(banded.square().sum(), x)
    assert (a - b).abs().max() < 1e-12 and (ga - gb).abs().max() < 1e-12
    assert (a - banded).abs().max() < 1e-12 and (ga - gd).abs().max() < 1e-12
    assert b.grad_fn.name() == "_SlidingLRNBackward" and banded.grad_fn.name() == "_BandedLRNBackward"
    assert not any(k.endswith("band") for k in ours.state_dict())  # not a weight
    # channels_last, as training runs it: the same numbers, and the layout kept
    xl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    c = ours(xl)
    (gc,) = torch.autograd.grad(c.square().sum(), xl)
    assert c.is_contiguous(memory_format=torch.channels_last)
    assert (a - c).abs().max() < 1e-12 and (ga - gc).abs().max() < 1e-12


def test_lrn_trains_under_bf16_autocast():
    """In bf16 autocast (the CPU training default) LRN's forward and gradient stay within bf16
    rounding of the float64 reference."""
    from inceptionctl.model import LocalResponseNorm

    ref = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
    ours = LocalResponseNorm(64, 5, alpha=1e-4, beta=0.75, k=1.0)
    x = (torch.rand(2, 64, 8, 8) * 40).to(torch.bfloat16).requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
    g = torch.randn_like(y, dtype=torch.float32)
    (gx,) = torch.autograd.grad(y, x, g.to(y.dtype))
    y64 = ref(x64)
    (gx64,) = torch.autograd.grad(y64, x64, g.double())
    assert y.dtype == gx.dtype == torch.bfloat16
    assert (y.double() - y64).abs().max() <= 0.02 * y64.abs().max()
    assert (gx.double() - gx64).abs().max() <= 0.02 * gx64.abs().max()


def _cxx_compiler() -> str | None:
    import os
    import shutil

    return shutil.which(os.environ.get("CXX", "g++"))


@pytest.fixture
def compiled_lrn(monkeypatch):
    """The compiled LRN kernel for tensors of any size, made afresh for the test (no graph
    compiled before it is reused)."""
    import torch._dynamo

    import inceptionctl.model as model

    torch._dynamo.reset()
    monkeypatch.setattr(model, "COMPILED_LRN_MIN_NUMEL", 0)
    monkeypatch.setattr(model, "_lrn_kernels", None)
    monkeypatch.delenv("INCEPTIONCTL_COMPILED_LRN", raising=False)
    return model


@pytest.fixture
def lrn_notes():
    """What inceptionctl.model logs during the test (pytest's log capture is off here)."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("inceptionctl.model")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _lrn_and_grad(lrn: nn.Module, x: torch.Tensor, g: torch.Tensor):
    x = x.detach().requires_grad_(True)
    y = lrn(x)
    (gx,) = torch.autograd.grad(y, x, g.to(y.dtype))
    return y, gx


@pytest.mark.skipif(_cxx_compiler() is None, reason="no C++ compiler for torch.compile")
@pytest.mark.parametrize("channels,size,beta", [(8, 5, 0.75), (7, 4, 0.5)])
def test_compiled_lrn_equals_torch(compiled_lrn, channels, size, beta):
    """fp32 training on channels_last tensors runs LRN through the compiled kernel: torch's
    numbers and gradient to float32 rounding, the layout kept, for any batch size (one compile
    with dynamic shapes)."""
    from torch._dynamo.utils import counters

    ours = compiled_lrn.LocalResponseNorm(channels, size, alpha=0.1, beta=beta, k=2.0)
    graphs = counters["stats"]["unique_graphs"]
    for batch in (3, 2, 5):
        x = (torch.randn(batch, channels, 9, 10) * 3).contiguous(memory_format=torch.channels_last)
        y, gx = _check_lrn(ours, x, "_CompiledLRNBackward")
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert gx.is_contiguous(memory_format=torch.channels_last)
        # a sum's gradient (expanded, no layout) takes the same graph
        (gs,) = torch.autograd.grad(ours(x.requires_grad_(True)).sum(), x)
        assert gs.grad_fn is None and gs.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(compiled_lrn._lrn_kernels, tuple)  # compiled, not fallen back
    assert counters["stats"]["unique_graphs"] - graphs == 2  # one per pass, for every shape


def test_compiled_lrn_is_only_for_fp32_channels_last_training(compiled_lrn, monkeypatch):
    """Anything else keeps its kernel: fp64 (exact tests), contiguous tensors, no gradient,
    tensors under the size floor, and INCEPTIONCTL_COMPILED_LRN=0."""
    lrn = compiled_lrn.LocalResponseNorm(16, 5, 1e-4, 0.75, 1.0)
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    assert compiled_lrn._use_compiled_lrn(x.requires_grad_(True))
    for other in (x.detach().double().requires_grad_(True), x.detach().contiguous().requires_grad_(True)):
        assert lrn(other).grad_fn.name() == "_SlidingLRNBackward"
    with torch.no_grad():
        assert not compiled_lrn._use_compiled_lrn(x)
    monkeypatch.setattr(compiled_lrn, "COMPILED_LRN_MIN_NUMEL", x.numel() + 1)
    assert lrn(x).grad_fn.name() == "_SlidingLRNBackward"
    monkeypatch.setattr(compiled_lrn, "COMPILED_LRN_MIN_NUMEL", 0)
    monkeypatch.setenv("INCEPTIONCTL_COMPILED_LRN", "0")
    monkeypatch.setattr(compiled_lrn, "_lrn_kernels", None)
    assert lrn(x).grad_fn.name() == "_SlidingLRNBackward"
    assert compiled_lrn._lrn_kernels == "INCEPTIONCTL_COMPILED_LRN=0"


def _check_lrn(ours: nn.Module, x: torch.Tensor, expect: str):
    """``ours`` on ``x`` takes the ``expect`` kernel and gives torch's LRN and gradient to
    float32 rounding."""
    ref = nn.LocalResponseNorm(ours.size, alpha=ours.alpha, beta=ours.beta, k=ours.k)
    g = torch.randn_like(x)
    y, gx = _lrn_and_grad(ours, x, g)
    y64, gx64 = _lrn_and_grad(ref, x.double(), g.double())
    assert y.grad_fn.name() == expect
    assert (y.double() - y64).abs().max() <= 1e-6 * y64.abs().max()
    assert (gx.double() - gx64).abs().max() <= 1e-6 * gx64.abs().max()
    return y, gx


@pytest.mark.parametrize("size,beta", [(5, 0.75), (4, 0.5), (2, 1.3)])
def test_compiled_lrn_formulas_equal_torch(compiled_lrn, monkeypatch, size, beta):
    """The compiled kernel's two passes, run as plain torch (no compiler needed): torch's LRN
    and gradient, the window reflected in the gradient for even sizes."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: lambda *args: fn(*args))
    ours = compiled_lrn.LocalResponseNorm(9, size, alpha=0.1, beta=beta, k=2.0)
    x = (torch.randn(2, 9, 5, 4) * 3).contiguous(memory_format=torch.channels_last)
    _check_lrn(ours, x, "_CompiledLRNBackward")
    assert isinstance(compiled_lrn._lrn_kernels, tuple)


@pytest.mark.parametrize("fails", ["create", "forward", "backward"])
def test_lrn_where_it_cannot_compile_takes_the_sliding_sum(compiled_lrn, monkeypatch, lrn_notes,
                                                          fails):
    """A machine where torch.compile cannot work (no C++ compiler, a Python it does not
    support): one line says why, and that step and every later one get torch's numbers from the
    sliding sum."""
    ours = compiled_lrn.LocalResponseNorm(12, 5, alpha=0.1, beta=0.75, k=1.0)

    def broken(fn, **kwargs):
        if fails == "create":
            raise RuntimeError("Python 3.99+ not yet supported for torch.compile")

        def run(*args):
            if fn.__name__.startswith("_lrn_" + fails):
                raise RuntimeError("Compiler: g++ not found")
            return fn(*args)  # the other pass, uncompiled
        return run

    monkeypatch.setattr(torch, "compile", broken)
    x = (torch.randn(2, 12, 5, 5) * 3).contiguous(memory_format=torch.channels_last)
    for step in range(2):
        _check_lrn(ours, x, "_SlidingLRNBackward" if fails == "create" or step
                   else "_CompiledLRNBackward")
    assert compiled_lrn._lrn_kernels == "cannot compile: RuntimeError"
    (note,) = [r.getMessage() for r in lrn_notes]  # said once
    assert note.startswith("note: LRN runs on its eager kernel (RuntimeError: ")
    assert ("not yet supported" if fails == "create" else "g++ not found") in note


def test_lrn_with_torch_compile_disabled_keeps_the_sliding_sum(compiled_lrn, monkeypatch,
                                                              lrn_notes):
    """With torch.compile disabled (TORCHDYNAMO_DISABLE=1) its functions would run eagerly,
    slower than the sliding sum: the sliding sum runs, and nothing is said."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # what it returns then
    ours = compiled_lrn.LocalResponseNorm(12, 5, alpha=0.1, beta=0.75, k=1.0)
    x = (torch.randn(2, 12, 5, 5) * 3).contiguous(memory_format=torch.channels_last)
    _check_lrn(ours, x, "_SlidingLRNBackward")
    assert compiled_lrn._lrn_kernels == "torch.compile is disabled" and not lrn_notes


def _export_ops(module: nn.Module, x: torch.Tensor, path) -> list[str]:
    import warnings

    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), input_names=["x"], output_names=["y"],
                          opset_version=17, dynamo=False)
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize("channels,size,beta", [(64, 5, 0.75), (7, 3, 0.5)])
def test_lrn_exports_as_one_onnx_lrn_node_that_matches(tmp_path, channels, size, beta):
    """Odd windows export as ONNX's LRN (centred like torch's), and ONNX Runtime agrees."""
    import onnxruntime as ort

    from inceptionctl.model import LocalResponseNorm

    lrn = LocalResponseNorm(channels, size, alpha=0.1, beta=beta, k=1.0).eval()
    x = torch.randn(2, channels, 9, 9) * 3
    assert _export_ops(lrn, x, tmp_path / "lrn.onnx") == ["LRN"]
    out = ort.InferenceSession(str(tmp_path / "lrn.onnx"),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        ref = nn.LocalResponseNorm(size, alpha=0.1, beta=beta, k=1.0)(x)
    assert (torch.from_numpy(out) - ref).abs().max() <= 1e-5


def test_lrn_with_an_even_window_keeps_the_banded_form(tmp_path):
    """ONNX centres an even window one channel off torch's, so it is not exported as LRN."""
    from inceptionctl.model import LocalResponseNorm

    ops = _export_ops(LocalResponseNorm(7, 4, 0.1, 0.5, 1.0).eval(), torch.randn(1, 7, 5, 5),
                      tmp_path / "even.onnx")
    assert "LRN" not in ops and "Conv" in ops


@pytest.mark.slow
def test_paper_recipe_onnx_unfolds_its_two_lrns(tmp_path):
    import onnx

    from inceptionctl.artifact import preprocessing, write_onnx

    recipe = load_recipe("googlenet")
    model = build_model(recipe).eval()
    path = write_onnx(model, preprocessing(recipe), (1, 1, 2), 17, {}, tmp_path / "g.onnx")
    nodes = onnx.load(str(path)).graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("LRN") == 0
    assert ops.count("Conv") == 57 + 2  # the paper's 57 convolutions and two LRN windows
    assert [n.name for n in nodes if n.name.endswith(":lrn_window")] == [
        "/stem/lrn1/LRN:lrn_window", "/stem/lrn2/LRN:lrn_window"]


def _lrn_graph(channels: int, size: int, beta: float, alpha: float = 0.1, k: float = 2.0):
    from onnx import TensorProto, helper

    node = helper.make_node("LRN", ["x"], ["y"], name="lrn", size=size, alpha=alpha, beta=beta,
                            bias=k)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", channels, 5, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("channels,size,beta", [(64, 5, 0.75), (7, 3, 0.5), (6, 4, 0.75),
                                                (3, 5, 0.75)])
def test_unfolded_lrn_computes_what_the_lrn_op_computes(channels, size, beta):
    """ONNX's LRN (any window, odd or even) and its unfolded ops give the same numbers in
    ONNX Runtime, and torch's where the windows are centred alike (odd sizes)."""
    import copy

    import onnx
    import onnxruntime as ort

    from inceptionctl.artifact import LRN_STEP, unfold_lrn

    model = _lrn_graph(channels, size, beta)
    unfolded = copy.deepcopy(model)
    assert unfold_lrn(unfolded) == 1
    onnx.checker.check_model(unfolded, full_check=True)
    assert "LRN" not in [n.op_type for n in unfolded.graph.node]
    assert all(LRN_STEP in n.name for n in unfolded.graph.node)
    x = torch.randn(2, channels, 5, 4) * 3

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]
                                    ).run(None, {"x": x.numpy()})[0]

    ours = run(unfolded)
    # ONNX's definition: the window runs from c - floor((size-1)/2) to c + ceil((size-1)/2)
    x64 = x.double()
    sums = torch.stack([x64[:, max(0, c - (size - 1) // 2):c + size // 2 + 1].square().sum(1)
                        for c in range(channels)], 1)
    ref = (x64 / (2.0 + 0.1 / size * sums) ** beta).numpy()
    assert abs(ours - ref).max() <= 1e-5 * abs(ref).max()
    if size % 2:  # ONNX Runtime's LRN kernel (odd sizes only) and torch's LRN agree
        assert abs(ours - run(model)).max() <= 1e-5 * abs(ref).max()
        with torch.no_grad():
            torch_ref = nn.LocalResponseNorm(size, alpha=0.1, beta=beta, k=2.0)(x).numpy()
        assert abs(ours - torch_ref).max() <= 1e-5 * abs(torch_ref).max()


def test_unfold_lrn_leaves_what_it_cannot_unfold_and_keeps_names_apart():
    """Two LRNs of one name unfold under different names; an LRN with an unknown channel count
    or an fp16 input stays the LRN op it was (which runs as it did)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from inceptionctl.artifact import unfold_lrn

    twice = _lrn_graph(8, 5, 0.75)
    twice.graph.node.append(helper.make_node("LRN", ["y"], ["z"], name="lrn", size=3,
                                             alpha=0.1, beta=0.5, bias=2.0))
    twice.graph.output[0].name = "z"
    assert unfold_lrn(twice) == 2
    onnx.checker.check_model(twice, full_check=True)
    names = [n.name for n in twice.graph.node]
    assert len(names) == len(set(names)) == 6 + 4  # beta 0.75: two roots and a division
    x = torch.randn(2, 8, 5, 4) * 3
    out = ort.InferenceSession(twice.SerializeToString(), providers=["CPUExecutionProvider"]
                               ).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        ref = nn.LocalResponseNorm(3, 0.1, 0.5, 2.0)(nn.LocalResponseNorm(5, 0.1, 0.75, 2.0)(x))
    assert abs(out - ref.numpy()).max() <= 1e-5 * abs(ref.numpy()).max()
    unknown = _lrn_graph(8, 5, 0.75)
    unknown.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "c"
    half = _lrn_graph(8, 5, 0.75)
    half.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    half.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    for model in (unknown, half):
        before = model.SerializeToString()
        assert unfold_lrn(model) == 0 and model.SerializeToString() == before


@pytest.mark.parametrize("route", ["export", "copy of the fp32 ONNX"])
def test_fp16_export_keeps_the_unfolded_lrn_in_fp32(tmp_path, route):
    """In an fp16 ONNX, x * x and the window run in fp32: at |x| > 256 (x * x past fp16's
    65504) the output still matches PyTorch's fp32 LRN, whether the fp16 file is exported from
    the model or converted from our fp32 ONNX."""
    import onnx
    import onnxruntime as ort

    from inceptionctl.artifact import (LRN_FP32_STEPS, lrn_step, write_float16_copy,
                                       write_onnx)
    from inceptionctl.model import LocalResponseNorm

    net = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), LocalResponseNorm(8, 5, 1e-4, 0.75, 1.0),
                        nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        net[0].weight.fill_(1.0)  # LRN sees 3x the input: 450 to 1050, fine in fp16, its square not
    if route == "export":
        path = write_onnx(net, {"eval_size": 8}, (1, 1, 2), 17, {}, tmp_path / "h.onnx",
                          float16=True)
    else:
        fp32 = write_onnx(net, {"eval_size": 8}, (1, 1, 2), 17, {}, tmp_path / "f.onnx")
        path = write_float16_copy(fp32, tmp_path / "h.onnx", {})
    graph = onnx.load(str(path)).graph
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.value_info}
    steps = [n for n in graph.node if lrn_step(n) in LRN_FP32_STEPS]
    assert len(steps) == 5 and all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in steps)
    x = torch.rand(2, 3, 8, 8) * 200 + 150
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = net(x).numpy()
    assert abs(out - ref).max() <= 2e-2 * abs(ref).max()
