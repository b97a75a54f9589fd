"""Recipes: loading by name or path, overrides, and one located line for every mistake."""

import dataclasses
import re

import pytest

import inceptionctl.recipe as recipe_module
from inceptionctl import RecipeError, load_recipe
from inceptionctl.geometry import pool_out, smallest_input_size, trace_shapes
from inceptionctl.recipe import KeyChange, available_recipes, recipe_from_data, upgrade_recipe_data

TINY = """
name: tiny
model:
  num_classes: 3
  stem:
    - {name: conv1, layer: conv, out: 8, kernel: 3, padding: 1}
    - {name: pool1, layer: maxpool, kernel: 2, stride: 2}
  stages:
    - modules:
        3a: {1x1: 4, 3x3_reduce: 4, 3x3: 8, 5x5_reduce: 2, 5x5: 4, pool_proj: 4}
      pool: {type: max, kernel: 2, stride: 2}
    - modules:
        4a: {1x1: 8, 3x3_reduce: 4, 3x3: 8, 5x5_reduce: 2, 5x5: 4, pool_proj: 4}
  aux:
    after: [3a]
    pool: {type: avg, output_size: 2}
    conv: 8
    fc: 16
data:
  input_size: 16
  resize: 18
eval:
  size: 16
  scales: [18, 20]
"""


def test_shipped_recipes_are_the_family():
    assert available_recipes() == ["googlenet", "googlenet-bn", "googlenet-small"]
    for name in available_recipes():
        recipe = load_recipe(name)
        assert recipe.name == name
        assert recipe.source == f"recipes/{name}.yaml"


def test_paper_recipe_states_table1():
    r = load_recipe("googlenet")
    m = r.model
    assert (m.norm, m.conv_bias, m.branch5x5_kernel) == ("lrn", True, 5)
    assert (m.lrn.size, m.lrn.alpha, m.lrn.beta) == (5, 1e-4, 0.75)
    assert m.lrn.after == ("maxpool1", "conv3")
    assert m.aux.after == ("4a", "4d")
    assert (m.aux.pool.kernel, m.aux.pool.stride, m.aux.conv, m.aux.fc, m.aux.dropout,
            m.aux.loss_weight) == (5, 3, 128, 1024, 0.7, 0.3)
    assert m.head.dropout == 0.4
    w = m.modules["4e"]
    assert (w.n1x1, w.n3x3_reduce, w.n3x3, w.n5x5_reduce, w.n5x5, w.pool_proj) == \
        (256, 160, 320, 32, 128, 128)
    bn = load_recipe("googlenet-bn")
    assert (bn.model.norm, bn.model.bn_eps, bn.model.branch5x5_kernel) == ("batchnorm", 1e-3, 3)
    assert bn.data.mean == bn.data.std == (0.5, 0.5, 0.5)
    assert bn.model.stages[1].pool.kernel == 2 and bn.model.aux.pool.output_size == 4


def test_table1_output_sizes():
    """Every row of Table 1 (output size and depth) from the recipe's geometry."""
    shapes = {fm.name: (fm.size, fm.channels) for fm in
              trace_shapes(load_recipe("googlenet").model, 224)}
    table1 = {"conv1": (112, 64), "maxpool1": (56, 64), "conv3": (56, 192),
              "maxpool2": (28, 192), "3a": (28, 256), "3b": (28, 480), "pool3": (14, 480),
              "4a": (14, 512), "4b": (14, 512), "4c": (14, 512), "4d": (14, 528),
              "4e": (14, 832), "pool4": (7, 832), "5a": (7, 832), "5b": (7, 1024),
              "head_pool": (1, 1024)}
    assert {k: shapes[k] for k in table1} == table1


def test_pool_out_matches_torch():
    """pool_out against torch's own pooling, for every size, window and rounding checked here;
    a mismatch names its case."""
    import torch

    wrong, checked = [], 0
    # (2, 2, 1) and (3, 3, 1) reach ceil mode's rule that a window may not start in the padding
    for kernel, stride, padding in [(3, 2, 0), (2, 2, 0), (3, 1, 1), (5, 3, 0), (3, 2, 1),
                                    (2, 2, 1), (3, 3, 1)]:
        for ceil in (False, True):
            for size in range(1, 40):
                if size + 2 * padding < kernel:  # the window is larger than the padded input
                    continue
                got = torch.nn.functional.max_pool2d(torch.zeros(1, 1, size, size), kernel,
                                                     stride, padding, ceil_mode=ceil).shape[-1]
                ours = pool_out(size, kernel, stride, padding, ceil)
                checked += 1
                if ours != got:
                    wrong.append(f"size {size}, kernel {kernel}, stride {stride}, padding "
                                 f"{padding}, ceil {ceil}: pool_out {ours}, torch {got}")
    assert not wrong, f"{len(wrong)} of {checked} cases differ: " + "; ".join(wrong[:10])
    assert checked == 532  # 546 combinations less the 14 whose window exceeds the input


def test_load_by_path_and_round_trip(write_recipe):
    path = write_recipe(TINY)
    r = load_recipe(path)
    assert r.name == "tiny" and r.source == str(path)
    assert r.model.num_classes == 3 and r.train.epochs == 90  # defaults filled in
    again = recipe_from_data(r.to_dict())
    assert again == r
    for name in available_recipes():
        shipped = load_recipe(name)
        assert recipe_from_data(shipped.to_dict()) == shipped


def test_overrides_list_and_dict():
    r = load_recipe("googlenet-small", ["model.num_classes=4", "data.classes=[a, b, c, d]",
                                        "train.lr=0.1", "model.stages.0.pool.kernel=2"])
    assert r.model.num_classes == 4 and r.data.classes == ("a", "b", "c", "d")
    assert r.train.lr == 0.1 and r.model.stages[0].pool.kernel == 2
    r2 = load_recipe("googlenet-small", {"model.num_classes": 4, "data.classes": None})
    assert r2.model.num_classes == 4 and r2.data.classes is None
    assert dataclasses.replace(r2, source="x") == r2  # source does not take part in equality


def test_smallest_input_size():
    m = load_recipe("googlenet").model
    smallest = smallest_input_size(m)
    assert smallest is not None and smallest > 1
    load_recipe("googlenet", [f"data.input_size={smallest}", f"eval.size={smallest}"])
    with pytest.raises(RecipeError, match=f"smallest valid input is {smallest}"):
        load_recipe("googlenet", [f"data.input_size={smallest - 1}"])


# Each mistake: (a change to the TINY recipe text, the line it is on, the text of the message).
MISTAKES = [
    ("yaml", TINY.replace("  num_classes: 3", "  num_classes: [3"), None, "invalid YAML"),
    ("unknown key", TINY.replace("num_classes: 3", "num_clases: 3"), 3,
     "model.num_clases: unknown key 'num_clases' (did you mean 'num_classes'?)"),
    ("unknown width", TINY.replace("pool_proj: 4}\n      pool", "pool_prj: 4}\n      pool"), 9,
     "unknown key 'pool_prj' (did you mean 'pool_proj'?)"),
    ("wrong type", TINY.replace("num_classes: 3", "num_classes: three"), 3,
     "model.num_classes: expected an integer, got 'three'"),
    ("wrong type list", TINY.replace("scales: [18, 20]", "scales: 18"), 23,
     "eval.scales: expected a list, got 18"),
    ("missing key", TINY.replace("name: tiny\n", ""), None, "name: missing required key"),
    ("missing width", TINY.replace(" 5x5: 4,", "", 1), 9,
     "model.stages[0].modules.3a.5x5: missing required key"),
    ("negative width", TINY.replace("3x3: 8, 5x5_reduce: 2", "3x3: -8, 5x5_reduce: 2", 1), 9,
     "model.stages[0].modules.3a.3x3: expected a positive integer, got -8"),
    ("unknown layer", TINY.replace("layer: maxpool", "layer: maxpol"), 6,
     "model.stem[1].layer: expected one of conv, maxpool, avgpool, got 'maxpol' "
     "(did you mean 'maxpool'?)"),
    ("unknown norm", TINY.replace("  num_classes: 3", "  num_classes: 3\n  norm: layernorm"), 4,
     "model.norm: expected one of lrn, batchnorm, none"),
    ("aux after missing", TINY.replace("after: [3a]", "after: [4f]"), 14,
     "model.aux.after[0]: no Inception module named '4f' (did you mean '4a'?)"),
    ("input too small", TINY.replace("input_size: 16", "input_size: 2"), 19,
     "data.input_size: 2 is too small for this model"),
    ("python tag", TINY.replace("name: tiny", "name: !!python/object/apply:os.getcwd []"), 1,
     "invalid YAML"),
    ("duplicate key", TINY.replace("  num_classes: 3", "  num_classes: 3\n  num_classes: 4"), 4,
     "model.num_classes: duplicate key"),
    # eval's 1 crop must be training's validation: the sizes are tied, each message at eval's key
    ("eval size apart", TINY.replace("  size: 16", "  size: 14"), 22,
     "eval.size: 14 differs from data.input_size (16); eval reproduces training only when "
     "they agree: set both (--set data.input_size=N --set eval.size=N)"),
    ("eval scale apart", TINY.replace("scales: [18, 20]", "scales: [20, 22]"), 23,
     "eval.scales[0]: 20 differs from data.resize (18); eval's first scale is training's "
     "validation resize"),
    ("unknown optimizer", TINY.replace("eval:", "train: {optimizer: adam}\neval:"), 21,
     "train.optimizer: expected one of sgd, adamw, rmsprop, got 'adam' (did you mean 'adamw'?)"),
    ("nesterov outside sgd",
     TINY.replace("eval:", "train: {optimizer: rmsprop, nesterov: true}\neval:"), 21,
     "train.nesterov: only sgd has Nesterov momentum, the optimizer is rmsprop"),
    ("bad betas", TINY.replace("eval:", "train: {optimizer: adamw, betas: [0.9]}\neval:"), 21,
     "train.betas: expected [beta1, beta2], each in [0, 1), got [0.9]"),
    ("bad eps", TINY.replace("eval:", "train: {eps: 0}\neval:"), 21,
     "train.eps: expected a positive number or null, got 0"),
    ("bad rmsprop decay", TINY.replace("eval:", "train: {rmsprop_decay: 1.0}\neval:"), 21,
     "train.rmsprop_decay: expected a value in (0, 1), got 1.0"),
    ("negative seed", TINY.replace("eval:", "train: {seed: -1}\neval:"), 21,
     "train.seed: expected an integer in [0, 2^32), got -1"),
    ("seed past 32 bits", TINY.replace("eval:", "train: {seed: 4294967296}\neval:"), 21,
     "train.seed: expected an integer in [0, 2^32), got 4294967296"),
    ("name with a path", TINY.replace("name: tiny", "name: ../../etc"), 1,
     "name: expected a plain name (it starts a run folder's name: no slash, not empty, not "
     "starting with a dot), got '../../etc'"),
    ("empty name", TINY.replace("name: tiny", "name: ''"), 1, "name: expected a plain name"),
    ("alias cycle", TINY.replace("name: tiny", "name: tiny\nloop: &loop [*loop]"), 2,
     "invalid YAML: an alias refers to the node that contains it"),
    ("nested too deeply", TINY.replace("name: tiny", "name: tiny\ndeep: " + "[" * 5000
                                       + "]" * 5000), None,
     "invalid YAML: nested too deeply"),
]


@pytest.mark.parametrize("case,text,line,message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_recipe_mistakes(write_recipe, case, text, line, message):
    path = write_recipe(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}:{line}: " if line else f"{path}")
    assert message in text


@pytest.mark.parametrize("case,text,line,message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_recipe_mistakes_through_cli(cli, write_recipe, case, text, line, message):
    path = write_recipe(text)
    result = cli("recipes", "show", path)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("override,message", [
    ("model.num_clases=10", "--set model.num_clases=10: unknown key 'num_clases' in model "
                            "(did you mean 'num_classes'?)"),
    ("model.num_classes=ten", "--set model.num_classes=ten: model.num_classes: expected an "
                              "integer, got 'ten'"),
    ("model.stages.7.pool.kernel=2", "model.stages is a list of 3; '7' is not an index"),
    ("model.num_classes.x=1", "model.num_classes is a value, it has no key 'x'"),
    ("model.aux.after=[4a, 9z]", "--set model.aux.after=[4a, 9z]: model.aux.after[1]: "
                                 "no Inception module named '9z'"),
    ("novalue", "expected KEY=VALUE"),
])
def test_override_mistakes(cli, override, message):
    with pytest.raises(RecipeError, match=None) as info:
        load_recipe("googlenet-bn", [override])
    assert message in str(info.value)
    result = cli("recipes", "show", "googlenet-bn", "--set", override)
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize("name,overrides,pattern", [
    ("googlenet-bn", ["model.in_channels=1"],
     r"--set model.in_channels=1: data.mean \(\S+googlenet-bn.yaml:\d+\): expected 1 values "
     r"\(model.in_channels\), got 3"),
    ("googlenet-small", ["model.num_classes=5"],
     r"--set model.num_classes=5: data.classes \(\S+googlenet-small.yaml:\d+\): expected 5 "),
    ("googlenet-bn", ["data.input_size=200"],
     r"--set data.input_size=200: eval.size \(\S+:\d+\): 224 differs "),
    ("googlenet-bn", ["data.resize=300"],
     r"--set data.resize=300: eval.scales\[0\] \(\S+:\d+\): 256 differs "),
    ("googlenet-bn", ["eval.size=300", "data.input_size=300"],
     r"--set eval.size=300: eval.scales\[0\] \(\S+:\d+\): a scale \(256\) must be >= "
     r"eval.size"),
    # the key itself was set: that --set, as before
    ("googlenet-small", ["data.classes=[a, b]", "model.num_classes=5"],
     r"--set data.classes=\[a, b\]: data.classes: expected 5 "),
    ("googlenet-bn", ["train.optimizer=adamw", "train.nesterov=true"],
     r"--set train.nesterov=true: train.nesterov: only sgd"),
    ("googlenet-bn", ["model.stem.0.stride=32"],
     r"--set model.stem.0.stride=32: data.input_size \(\S+:\d+\): 224 is too small"),
])
def test_a_check_that_a_set_broke_names_the_set_and_the_key_it_failed(name, overrides, pattern):
    """A key the --set did not touch fails a check against one it did (data.mean against
    model.in_channels): the error names that --set, then the key and its place in the file."""
    with pytest.raises(RecipeError) as info:
        load_recipe(name, overrides)
    assert re.fullmatch(pattern + ".*", str(info.value)), str(info.value)


def test_a_set_that_does_not_bear_on_a_failed_check_is_not_blamed(tmp_path):
    """The file's own conv1 makes 224 too small; --set model.head.dropout changes nothing the
    check reads, so the error names the file's line, as it would without the --set."""
    from importlib.resources import files

    text = files("inceptionctl.recipes").joinpath("googlenet-bn.yaml").read_text()
    text = text.replace("kernel: 7, stride: 2, padding: 3}", "kernel: 7, stride: 32, padding: 3}")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for overrides in ([], ["model.head.dropout=0.3", "train.lr=0.1"]):
        with pytest.raises(RecipeError) as info:
            load_recipe(path, overrides)
        assert re.fullmatch(rf"{re.escape(str(path))}:\d+: data.input_size: 224 is too small "
                            rf".*", str(info.value)), str(info.value)


@pytest.mark.parametrize("opset", [0, 8, 21])
def test_an_opset_no_exporter_writes_is_refused_where_the_recipe_says_it(tmp_path, opset):
    """Checked with the recipe (file and line, or the --set), not first by ``export``."""
    from importlib.resources import files

    text = files("inceptionctl.recipes").joinpath("googlenet-small.yaml").read_text()
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace('export:\n', f'export:\n  opset: {opset}\n'))
    line = path.read_text().splitlines().index(f"  opset: {opset}") + 1
    message = f"export.opset: expected an opset from 9 to 20 (default 17), got {opset}"
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == f"{path}:{line}: {message}"
    with pytest.raises(RecipeError) as info:
        load_recipe("googlenet-small", [f"export.opset={opset}"])
    assert str(info.value) == f"--set export.opset={opset}: {message}"
    assert load_recipe("googlenet-small", ["export.opset=20"]).export.opset == 20


@pytest.mark.parametrize("data,what", [(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "it is a JPEG image"),
                                       (b"name: caf\xe9\n", "not UTF-8 text")])
def test_a_file_that_is_not_text_is_named_for_what_it_is(tmp_path, data, what):
    path = tmp_path / "r.yaml"
    path.write_bytes(data)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == f"{path}: not a recipe: {what}; a recipe is a YAML file"


def test_overrides_as_a_list_a_string_or_a_dict():
    for overrides in (["train.epochs=3"], "train.epochs=3", {"train.epochs": 3}):
        assert load_recipe("googlenet-small", overrides).train.epochs == 3, overrides


def test_unknown_recipe_name_and_missing_file(cli, tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe 'googlenet-nb' .did you mean"):
        load_recipe("googlenet-nb")
    missing = tmp_path / "nope.yaml"
    result = cli("recipes", "show", missing)
    assert result.exit_code == 2 and f"{missing}: recipe file not found" in result.stderr
    folder = cli("recipes", "show", tmp_path)
    assert folder.exit_code == 2
    assert f"{tmp_path}: is a folder; give a recipe file (a run folder's is {tmp_path}/" \
        "recipe.yaml)" in folder.stderr


def test_empty_and_non_mapping(write_recipe):
    with pytest.raises(RecipeError, match="the recipe is empty"):
        load_recipe(write_recipe("# nothing\n"))
    with pytest.raises(RecipeError, match="expected a mapping at the top"):
        load_recipe(write_recipe("- a\n- b\n"))


def test_user_file_is_not_modified(write_recipe):
    path = write_recipe(TINY)
    before = path.read_bytes()
    load_recipe(path, ["model.num_classes=5"])
    assert path.read_bytes() == before


# ------------------------------------------------------------------ renamed and removed keys


@pytest.fixture
def key_changes(monkeypatch):
    """Install a migration table for one test; notes already printed are forgotten."""

    def install(*changes: KeyChange) -> None:
        monkeypatch.setattr(recipe_module, "KEY_CHANGES", changes)
        monkeypatch.setattr(recipe_module, "_NOTED", set())

    return install


def test_a_renamed_key_in_a_recipe_file_loads_with_a_note(write_recipe, key_changes, capsys):
    key_changes(KeyChange("model.stages.*.modules.*.pool_projection",
                          "model.stages.*.modules.*.pool_proj", since="0.2.0"))
    path = write_recipe(TINY.replace("pool_proj:", "pool_projection:"))
    assert load_recipe(path) == load_recipe(write_recipe(TINY, "new.yaml"))
    assert capsys.readouterr().err.splitlines() == [
        f"note: {path}:9: model.stages[0].modules.3a.pool_projection: renamed to "
        f"model.stages[0].modules.3a.pool_proj in inceptionctl 0.2.0; read as "
        f"model.stages[0].modules.3a.pool_proj",
        f"note: {path}:12: model.stages[1].modules.4a.pool_projection: renamed to "
        f"model.stages[1].modules.4a.pool_proj in inceptionctl 0.2.0; read as "
        f"model.stages[1].modules.4a.pool_proj"]
    # A mistake in a renamed key is still located on the line where the old key is written.
    key_changes(KeyChange("data.image_size", "data.input_size", since="0.2.0"))
    bad = write_recipe(TINY.replace("input_size: 16", "image_size: 2"), "bad.yaml")
    with pytest.raises(RecipeError, match=rf"^{bad}:19: data.input_size: 2 is too small"):
        load_recipe(bad)


def test_moved_chained_and_removed_keys(key_changes, capsys):
    key_changes(KeyChange("train.polyak", "train.polyak_decay", since="0.2.0"),
                KeyChange("train.polyak_decay", "train.ema_decay", since="0.3.0"),
                KeyChange("train.aux_weight", "model.aux.loss_weight", since="0.2.0"),
                KeyChange("eval.tta", None, since="0.2.0", why="nothing read it"))
    shipped = load_recipe("googlenet-small")
    old = shipped.to_dict()
    old["train"]["polyak"] = old["train"].pop("ema_decay")
    old["train"]["aux_weight"] = old["model"]["aux"].pop("loss_weight")
    old["eval"]["tta"] = True
    before = repr(old)
    assert recipe_from_data(old, "old") == shipped
    assert repr(old) == before  # the caller's data is not changed
    assert capsys.readouterr().err.splitlines() == [
        "note: old: train.polyak: renamed to train.polyak_decay in inceptionctl 0.2.0; "
        "read as train.polyak_decay",
        "note: old: train.polyak_decay: renamed to train.ema_decay in inceptionctl 0.3.0; "
        "read as train.ema_decay",
        "note: old: train.aux_weight: renamed to model.aux.loss_weight in inceptionctl 0.2.0; "
        "read as model.aux.loss_weight",
        "note: old: eval.tta: removed in inceptionctl 0.2.0 (nothing read it); ignored"]
    upgraded, notes = upgrade_recipe_data(old, "old")
    assert upgraded == shipped.to_dict() and len(notes) == 4
    assert upgrade_recipe_data(shipped.to_dict()) == (shipped.to_dict(), [])


def test_old_keys_in_overrides(key_changes, capsys):
    key_changes(KeyChange("train.polyak", "train.polyak_decay", since="0.1.5"),
                KeyChange("train.polyak_decay", "train.ema_decay", since="0.2.0"),
                KeyChange("model.stages.*.modules.*.pool_projection",
                          "model.stages.*.modules.*.pool_proj", since="0.2.0"),
                KeyChange("eval.tta", None, since="0.2.0"))
    r = load_recipe("googlenet-small", ["train.polyak=0.5", "eval.tta=true",
                                        "model.stages.0.modules.3a.pool_projection=7"])
    assert r == load_recipe("googlenet-small", ["train.ema_decay=0.5",
                                                "model.stages.0.modules.3a.pool_proj=7"])
    assert capsys.readouterr().err.splitlines() == [
        "note: --set train.polyak=0.5: train.polyak: renamed to train.polyak_decay in "
        "inceptionctl 0.1.5; read as train.polyak_decay",
        "note: --set train.polyak=0.5: train.polyak_decay: renamed to train.ema_decay in "
        "inceptionctl 0.2.0; read as train.ema_decay",
        "note: --set eval.tta=true: eval.tta: removed in inceptionctl 0.2.0; ignored",
        "note: --set model.stages.0.modules.3a.pool_projection=7: "
        "model.stages.0.modules.3a.pool_projection: renamed to model.stages.0.modules.3a.pool_proj "
        "in inceptionctl 0.2.0; read as model.stages.0.modules.3a.pool_proj"]


def test_old_and_new_key_together_is_a_mistake(write_recipe, key_changes):
    key_changes(KeyChange("train.polyak_decay", "train.ema_decay", since="0.2.0"))
    path = write_recipe(TINY + "train:\n  polyak_decay: 0.9\n  ema_decay: 0.99\n")
    with pytest.raises(RecipeError, match=rf"{path}:25: train.polyak_decay: renamed to "
                                          rf"train.ema_decay in inceptionctl 0.2.0, which is "
                                          rf"given too; keep only the new key"):
        load_recipe(path)


def test_notes_through_the_cli(cli, write_recipe, key_changes):
    key_changes(KeyChange("eval.tta", None, since="0.2.0", why="nothing read it"))
    path = write_recipe(TINY.replace("  size: 16\n", "  size: 16\n  tta: true\n"))
    result = cli("recipes", "show", path)
    assert result.exit_code == 0 and "tta" not in result.stdout
    assert result.stderr.splitlines() == [
        f"note: {path}:23: eval.tta: removed in inceptionctl 0.2.0 (nothing read it); ignored"]


def test_the_shipped_migration_table_is_well_formed():
    for change in recipe_module.KEY_CHANGES:
        old = change.old.split(".")
        assert all(old) and old[-1] != "*" and change.since
        if change.new is not None:
            new = change.new.split(".")
            assert all(new) and new.count("*") == old.count("*") and new[-1] != "*"
