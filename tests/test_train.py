"""Training: the embedded default, exact resume, signals, non-finite guard, DDP, fine-tuning."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from inceptionctl import CheckFailed, InceptionError, load_recipe
from inceptionctl.checkpoint import read_checkpoint
from inceptionctl.train import TrainOptions, TrainState, train
from inceptionctl.trainer import Schedule

from .conftest import Child, cli_command, run_child
from .test_data import _bad_files, make_folder


def _opts(recipe, tmp_path, name="run", logs=None, **kw):
    kw.setdefault("data", "digits")
    kw.setdefault("precision", "fp32")
    kw.setdefault("device", "cpu")  # bit-exact comparisons are CPU facts, also on a GPU machine
    kw.setdefault("workers", 0)
    return TrainOptions(recipe=recipe, out=tmp_path / name, runs_dir=tmp_path / "runs",
                        log=(logs.append if logs is not None else (lambda m: None)),
                        progress=False, **kw)


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _optimizer_equal(a: dict, b: dict) -> None:
    for key, sa in a["state"].items():
        assert torch.equal(sa["momentum_buffer"], b["state"][key]["momentum_buffer"])


def _capture_initial_weights(monkeypatch) -> dict:
    """The weights each run starts from, as its Trainer first sees them (keyed by run folder)."""
    from inceptionctl import train as train_mod

    start: dict = {}

    class Capturing(train_mod.Trainer):
        def __init__(self, model, *args, **kw):
            start.setdefault(len(start), {k: v.detach().clone()
                                          for k, v in model.state_dict().items()})
            super().__init__(model, *args, **kw)

    monkeypatch.setattr(train_mod, "Trainer", Capturing)
    return start


def _without_timings(history: list[dict], *also: str) -> list[dict]:
    drop = ("img_per_s", "seconds", *also)
    return [{k: v for k, v in r.items() if k not in drop} for r in history]


def _same_rng(a: dict, b: dict) -> None:
    assert torch.equal(a["torch"], b["torch"])
    assert torch.equal(a["numpy"]["keys"], b["numpy"]["keys"])
    assert {k: v for k, v in a["numpy"].items() if k != "keys"} == \
        {k: v for k, v in b["numpy"].items() if k != "keys"}
    assert a["python"] == b["python"]


@pytest.mark.slow
@pytest.mark.parametrize("precision,workers", [("bf16", 0), ("fp32", 1)])
def test_resume_is_bit_identical(tmp_path, tiny_recipe, precision, workers, monkeypatch):
    """One uninterrupted run against one stopped mid-epoch, then at an epoch's end, then resumed."""
    recipe = load_recipe(tiny_recipe, {"train.batch_size": 8})
    per_epoch = 64 // 8
    splits, total = [3, per_epoch], per_epoch + 3
    start = _capture_initial_weights(monkeypatch)

    def run(name, steps, **kw):
        return train(_opts(recipe, tmp_path, name, max_steps=steps, workers=workers,
                           precision=precision, data="synthetic", synthetic_count=64, **kw))

    straight = run("straight", total)
    for at in splits:
        resume = {"resume": str(tmp_path / "split")} if at != splits[0] else {}
        assert run("split", at, **resume).steps == at
        saved = read_checkpoint(tmp_path / "split" / "last.pt")["train_state"]
        assert (saved["epoch"], saved["step_in_epoch"]) == divmod(at, per_epoch)
    resumed = run("split", total, resume=str(tmp_path / "split"))
    assert resumed.steps == straight.steps == total

    a = read_checkpoint(tmp_path / "straight" / "last.pt")
    b = read_checkpoint(tmp_path / "split" / "last.pt")
    _same_state(a["state_dict"], b["state_dict"])
    _same_state(a["ema_state_dict"], b["ema_state_dict"])
    sa, sb = a["train_state"], b["train_state"]
    _optimizer_equal(sa["optimizer"], sb["optimizer"])
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"] == total
    assert torch.equal(sa["ema_n_averaged"], sb["ema_n_averaged"])
    _same_rng(sa["rng"], sb["rng"])
    assert len(sa["history"]) == 1
    # train_loss included: last.pt keeps the running loss of the epoch it stopped in
    assert _without_timings(sa["history"]) == _without_timings(sb["history"])
    assert (sa["best_top1"], sa["best_epoch"]) == (sb["best_top1"], sb["best_epoch"])
    metrics = [(tmp_path / name / "metrics.jsonl").read_text().splitlines()
               for name in ("straight", "split")]
    assert [_without_timings([json.loads(x) for x in m]) for m in metrics] == \
        [_without_timings(sa["history"])] * 2
    # the weights moved from where the run started: the comparison above means something
    assert start[0].keys() == a["state_dict"].keys()
    moved = max((a["state_dict"][k].float() - v.float()).abs().max().item()
                for k, v in start[0].items() if v.is_floating_point())
    assert moved > 1e-3


def test_resume_is_bit_identical_with_adamw(tmp_path, tiny_recipe):
    """AdamW's moments and step counts travel in last.pt: a split run ends where one does."""
    recipe = load_recipe(tiny_recipe, ["train.optimizer=adamw", "train.lr=0.002"])
    straight = train(_opts(recipe, tmp_path, "straight", max_steps=16))
    train(_opts(recipe, tmp_path, "split", max_steps=8))
    resumed = train(_opts(recipe, tmp_path, "split", max_steps=16,
                          resume=str(tmp_path / "split")))
    assert resumed.steps == straight.steps == 16
    a = read_checkpoint(tmp_path / "straight" / "last.pt")
    b = read_checkpoint(tmp_path / "split" / "last.pt")
    _same_state(a["state_dict"], b["state_dict"])
    _same_state(a["ema_state_dict"], b["ema_state_dict"])
    sa, sb = a["train_state"]["optimizer"]["state"], b["train_state"]["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa
    for key in sa:
        assert set(sa[key]) == {"step", "exp_avg", "exp_avg_sq"}
        for slot in sa[key]:
            assert torch.equal(sa[key][slot], sb[key][slot]), (key, slot)


class _Died(Exception):
    """A process that died between two steps, without a chance to save."""


def test_resume_from_a_save_every_checkpoint_is_bit_identical(tmp_path, tiny_recipe,
                                                              monkeypatch):
    """--save-every 3: a run that dies after step 14 resumes from the save at step 12 (epoch 2,
    step 4) and ends exactly where an uninterrupted run ends: weights, EMA, optimizer, metrics."""
    from inceptionctl import trainer as trainer_mod
    from inceptionctl.train import SaveEvery

    recipe = load_recipe(tiny_recipe, {"train.batch_size": 8})  # 8 steps per epoch, 2 epochs

    def run(name, **kw):
        return train(_opts(recipe, tmp_path, name, data="synthetic", synthetic_count=64, **kw))

    straight = run("straight")
    steps = []
    real_step = trainer_mod.Trainer.step

    def dying_step(self, batch):
        if len(steps) == 14:
            raise _Died
        steps.append(1)
        return real_step(self, batch)

    monkeypatch.setattr(trainer_mod.Trainer, "step", dying_step)
    with pytest.raises(_Died):
        run("split", save_every=SaveEvery(steps=3))
    monkeypatch.setattr(trainer_mod.Trainer, "step", real_step)
    saved = read_checkpoint(tmp_path / "split" / "last.pt")["train_state"]
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 4, 12)
    assert saved["epoch_loss_steps"] == 4 and len(saved["history"]) == 1
    resumed = run("split", resume="auto", save_every=SaveEvery(steps=3))
    assert resumed.steps == straight.steps == 16

    a = read_checkpoint(tmp_path / "straight" / "last.pt")
    b = read_checkpoint(tmp_path / "split" / "last.pt")
    _same_state(a["state_dict"], b["state_dict"])
    _same_state(a["ema_state_dict"], b["ema_state_dict"])
    _optimizer_equal(a["train_state"]["optimizer"], b["train_state"]["optimizer"])
    _same_rng(a["train_state"]["rng"], b["train_state"]["rng"])
    metrics = [[json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
               for n in ("straight", "split")]
    assert [r["epoch"] for r in metrics[1]] == [1, 2]
    assert _without_timings(metrics[0]) == _without_timings(metrics[1])
    assert _without_timings(straight.history) == _without_timings(resumed.history)


def test_save_every_minutes_saves_at_host_syncs(tmp_path, tiny_recipe, monkeypatch):
    """--save-every Nm writes last.pt at the first host sync past N minutes, mid-epoch."""
    from inceptionctl import train as train_mod
    from inceptionctl.train import SaveEvery

    saves = []
    real = train_mod._save

    def counting(run, kind, trainer, state):
        saves.append((kind, state.global_step, state.epoch_loss_steps))
        return real(run, kind, trainer, state)

    monkeypatch.setattr(train_mod, "_save", counting)
    logs = []
    train(_opts(load_recipe(tiny_recipe), tmp_path, max_steps=5, log_every=2, logs=logs,
                save_every=SaveEvery(minutes=1e-9)))
    # at the syncs after steps 2 and 4 (their losses counted), then the stop at step 5
    assert saves == [("last", 2, 2), ("last", 4, 4), ("last", 5, 5)]
    assert any("every 1e-09 minutes" in m for m in logs)


@pytest.mark.parametrize("value", ["0", "-3", "5x", "m", "0m", "1.5"])
def test_save_every_bad_values_are_one_line(cli, value):
    result = cli("train", "--save-every", value, "--data", "synthetic")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0] == (f"error: --save-every {value}: expected a positive number of optimizer "
                        f"steps (e.g. 500) or of minutes (e.g. 30m)")


def test_save_every_parses_steps_and_minutes():
    from inceptionctl.train import SaveEvery

    assert SaveEvery.parse("500") == SaveEvery(steps=500)
    assert SaveEvery.parse("30m") == SaveEvery(minutes=30.0)
    assert SaveEvery.parse("0.5m") == SaveEvery(minutes=0.5)


def test_train_state_round_trip_through_last_pt(tmp_path, tiny_recipe):
    train(_opts(load_recipe(tiny_recipe), tmp_path, max_steps=50))  # past one epoch
    saved = read_checkpoint(tmp_path / "run" / "last.pt")["train_state"]
    state = TrainState.from_dict(saved)
    assert (state.epoch, state.step_in_epoch, state.global_step) == (1, 6, 50)
    assert len(state.history) == 1 and state.best_epoch == 1 and state.world_size == 1
    again = state.to_dict()
    assert list(again) == list(saved)  # exactly the keys last.pt holds, in its order
    for key, value in saved.items():  # what was read is what is written back
        assert again[key] == value if key == "history" else again[key] is value, key
    assert TrainState.from_dict(again).to_dict().keys() == saved.keys()
    # runs saved before world_size was recorded were single-process runs
    older = {k: v for k, v in saved.items() if k != "world_size"}
    assert TrainState.from_dict(older).world_size == 1
    with pytest.raises(InceptionError, match="without 'optimizer'"):
        TrainState.from_dict({k: v for k, v in saved.items() if k != "optimizer"})


def test_host_syncs_once_per_log_interval(tmp_path, tiny_recipe, monkeypatch):
    from inceptionctl import distributed

    calls = []
    real = distributed.Context.all_reduce_sum
    monkeypatch.setattr(distributed.Context, "all_reduce_sum",
                        lambda self, t: calls.append(t.numel()) or real(self, t))
    logs = []
    train(_opts(load_recipe(tiny_recipe), tmp_path, max_steps=20, log_every=5, logs=logs))
    # 4 syncs of (2 signals + 5 losses + 5 flags), then the epoch's unreadable-image count
    assert calls == [12, 12, 12, 12, 1]
    calls.clear()
    train(_opts(load_recipe(tiny_recipe), tmp_path, "whole", max_steps=44, log_every=10))
    # one epoch of 44 steps: 4 full intervals, the last 4 steps, images, then validation
    assert calls == [22, 22, 22, 22, 10, 1, 5]


def test_run_folder_records(tmp_path, tiny_recipe):
    logs = []
    result = train(_opts(load_recipe(tiny_recipe, ["train.epochs=2"]), tmp_path, logs=logs))
    run = Path(result.run)
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl",
                                                    "recipe.yaml"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"train_loss", "val_top1", "val_top5", "lr", "img_per_s", "seconds"} <= set(lines[0])
    assert load_recipe(run / "recipe.yaml").train.epochs == 2
    assert any(m.startswith("run folder: ") for m in logs)
    best = read_checkpoint(run / "best.pt")
    assert best["train_state"] is None and best["meta"]["epoch"] == result.best_epoch  # epochs completed
    assert result.best_top1 == max(r["val_top1"] for r in lines)


def test_a_skipped_step_leaves_no_nan_in_batch_norm_statistics(tmp_path, tiny_recipe,
                                                               monkeypatch):
    """A step whose loss is not finite changes no weight, but its forward pass has run batch
    norm: its running statistics (and the Polyak copy's) are put back at the log interval, so
    validation and the saved checkpoints hold no NaN."""
    recipe = load_recipe(tiny_recipe, ["train.epochs=1"])
    assert recipe.model.norm == "batchnorm" and recipe.train.ema_decay is not None

    from inceptionctl import model as model_mod

    real, calls = model_mod.GoogLeNet.forward_train, []

    def poisoned(self, x):  # the second step's forward pass overflows
        calls.append(1)
        return real(self, x * float("inf") if len(calls) == 2 else x)

    monkeypatch.setattr(model_mod.GoogLeNet, "forward_train", poisoned)
    logs = []
    result = train(_opts(recipe, tmp_path, logs=logs, max_steps=4, log_every=3))
    assert sum("step skipped" in m for m in logs) == 1
    assert any(m.startswith("restored ") and "batch-norm running statistics that the skipped "
               "step(s) left not finite (as they were 3 steps before)" in m for m in logs), logs
    saved = read_checkpoint(tmp_path / "run" / "last.pt")
    for key in ("state_dict", "ema_state_dict"):
        bad = [k for k, v in saved[key].items() if v.is_floating_point()
               and not torch.isfinite(v).all()]
        assert bad == [], (key, bad[:3])
    assert result.new_steps == 4


def test_nonfinite_guard_stops_and_keeps_last_good(tmp_path, tiny_recipe, monkeypatch):
    recipe = load_recipe(tiny_recipe, ["train.epochs=3"])
    train(_opts(recipe, tmp_path, max_steps=44))  # one good epoch: last.pt at step 44
    before = (tmp_path / "run" / "last.pt").read_bytes()

    from inceptionctl import model as model_mod

    real = model_mod.GoogLeNet.forward_train

    def poisoned(self, x):
        logits, aux = real(self, x)
        return logits * float("nan"), aux

    monkeypatch.setattr(model_mod.GoogLeNet, "forward_train", poisoned)
    logs = []
    with pytest.raises(CheckFailed) as info:
        train(_opts(recipe, tmp_path, resume="auto", logs=logs, max_nonfinite=3))
    text = str(info.value)
    assert "loss not finite for 3 steps in a row, the last at step 47 (epoch 2, step 3)" in text
    assert "last good checkpoint" in text and info.value.exit_code == 1
    assert sum("step skipped" in m for m in logs) == 3
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_a_few_steps_of_the_224_recipes(tmp_path):
    for name in ("googlenet", "googlenet-bn"):
        recipe = load_recipe(name, ["model.num_classes=10", "train.batch_size=2"])
        result = train(_opts(recipe, tmp_path, name, data="synthetic", max_steps=2,
                             synthetic_count=8, precision="bf16"))
        assert result.steps == 2
        ckpt = read_checkpoint(tmp_path / name / "last.pt")
        assert ckpt["train_state"]["step_in_epoch"] == 2
        assert any(k.startswith("aux.aux2.") for k in ckpt["state_dict"])


def test_own_folder_trains_with_the_data_classes(tmp_path, tiny_recipe):
    """A 2-class folder trains as it is: no --set; the model follows the data and says so."""
    make_folder(tmp_path / "two" / "train", classes=("cat", "dog"), per_class=12)
    make_folder(tmp_path / "two" / "val", classes=("cat", "dog"), per_class=2)
    logs = []
    result = train(_opts(load_recipe(tiny_recipe, ["train.batch_size=8"]), tmp_path,
                         data=str(tmp_path / "two"), logs=logs, max_steps=2))
    assert [m for m in logs if m.startswith("classes:")] == [
        f"classes: 2 from {tmp_path / 'two'} (cat, dog); the recipe's model had 10"]
    ckpt = read_checkpoint(Path(result.run) / "last.pt")
    assert ckpt["classes"] == ["cat", "dog"] and ckpt["recipe"]["model"]["num_classes"] == 2
    assert ckpt["state_dict"]["fc.weight"].shape[0] == 2
    # a batch larger than the training set stays a clear error
    with pytest.raises(InceptionError, match="24 training images, fewer than one batch "
                                             r"\(32 x 1 processes\): lower it with "
                                             r"--set train.batch_size=N"):
        train(_opts(load_recipe(tiny_recipe), tmp_path, "big", data=str(tmp_path / "two")))


def test_weights_for_another_class_count_reset_the_head(tmp_path, tiny_recipe):
    """Fine-tuning a 10-class run onto 3 classes: new classifiers, named; --strict-head refuses."""
    base = train(_opts(load_recipe(tiny_recipe), tmp_path, "base", max_steps=3))
    make_folder(tmp_path / "three" / "train", classes=("a", "b", "c"), per_class=12)
    make_folder(tmp_path / "three" / "val", classes=("a", "b", "c"), per_class=2)
    recipe = load_recipe(tiny_recipe, ["train.batch_size=8"])
    with pytest.raises(InceptionError, match=r"fc.weight \[10, .*\] vs model \[3, .*without "
                                             r"--strict-head"):
        train(_opts(recipe, tmp_path, "ft0", data=str(tmp_path / "three"), strict_head=True,
                    weights=Path(base.run) / "last.pt"))
    logs = []
    result = train(_opts(recipe, tmp_path, "ft", data=str(tmp_path / "three"), logs=logs,
                         weights=Path(base.run) / "last.pt", max_steps=2))
    assert "weights: new head (re-initialised): aux.aux1.fc2, fc" in logs
    ckpt = read_checkpoint(Path(result.run) / "last.pt")
    base_ckpt = read_checkpoint(Path(base.run) / "last.pt")
    assert ckpt["classes"] == ["a", "b", "c"]
    assert ckpt["state_dict"]["fc.weight"].shape[0] == 3
    # the body came from the weights (trained two more steps, so close, not equal; a fresh
    # initialisation is far)
    key = "stem.conv1.conv.weight"
    drift = (ckpt["state_dict"][key] - base_ckpt["ema_state_dict"][key]).abs().max().item()
    assert drift < 0.05


def test_bad_data_in_training(tmp_path, tiny_recipe):
    data = tmp_path / "data"
    make_folder(data / "train", classes=("a", "b"), per_class=20)
    make_folder(data / "val", classes=("a", "b"), per_class=3)
    _bad_files(data / "train")
    (data / "train" / "b" / "empty.png").write_bytes(b"")  # a second zero-byte file
    recipe = load_recipe(tiny_recipe, ["model.num_classes=2", "train.epochs=1",
                                       "train.batch_size=8"])
    logs = []
    (data / "val" / "a" / "broken.png").write_bytes(b"not a png")
    snapshot = sorted((p, p.stat().st_size, p.stat().st_mtime_ns) for p in data.rglob("*"))
    result = train(_opts(recipe, tmp_path, logs=logs, data=str(data)))
    assert result.skipped_images == 4
    line = next(m for m in logs if "unreadable image" in m)
    assert "skipped 4 unreadable image(s)" in line and "/train/a/" in line
    # the validation set's unreadable image: said, and kept in metrics.jsonl
    assert "epoch 1: validation skipped 1 unreadable image(s); val_top1 counts the 6 it read" \
        in logs
    (record,) = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").open()]
    assert record["val_unreadable"] == 1
    with pytest.raises(InceptionError, match="cannot read image .*--strict-data"):
        train(_opts(recipe, tmp_path, "strict", data=str(data), strict_data=True))
    assert sorted((p, p.stat().st_size, p.stat().st_mtime_ns) for p in data.rglob("*")) == snapshot


def _unreadable_training_set(data: Path) -> None:
    """Classes a and b: readable val images, train images (3 each) that are not PNGs."""
    make_folder(data / "val", classes=("a", "b"), per_class=3)
    for c in ("a", "b"):
        (data / "train" / c).mkdir(parents=True)
        for i in range(3):
            (data / "train" / c / f"{c}{i}.png").write_bytes(b"not a png")


def test_a_training_set_none_of_which_reads_is_an_error(tmp_path, tiny_recipe):
    """Every image unreadable: an epoch of no steps is not a trained model."""
    data = tmp_path / "data"
    _unreadable_training_set(data)
    recipe = load_recipe(tiny_recipe, ["model.num_classes=2", "train.epochs=1",
                                       "train.batch_size=2"])
    with pytest.raises(InceptionError, match=r"data: none of the training images could be read "
                                             r"in epoch 1 \(6 unreadable; the first: .*\.png\)"):
        train(_opts(recipe, tmp_path, data=str(data)))
    assert not (tmp_path / "run" / "best.pt").exists()


def _cli(*args, env=None, **kw):
    kw.setdefault("timeout", 600)  # run() kills the child when it expires
    return subprocess.run([sys.executable, "-m", "inceptionctl", *map(str, args)],
                          capture_output=True, text=True, env=env, **kw)


def test_cli_errors_are_one_line(cli, tmp_path, tiny_recipe):
    cases = [
        (["--data", tmp_path / "nope"], "no such folder"),
        # no GPU here; "only N CUDA device(s)" on a machine with fewer than 8
        (["--device", "cuda:7"], ("--device cuda:7: no CUDA device", "--device cuda:7: only ")),
        (["--precision", "fp8"], "--precision fp8: expected auto, fp32, bf16 or fp16"),
        # GradScaler's fp16 is a CUDA mode: on CPU it is refused, pointing at what works there
        (["--precision", "fp16", "--device", "cpu"],
         "--precision fp16: needs a CUDA device; on CPU use bf16 or fp32"),
        (["--resume", tmp_path / "nothing"], "no checkpoint there"),
        (["--weights", tmp_path / "nope.pt"], "no such file"),
        (["--set", "train.lr=-1"], "train.lr: expected a positive number, got -1.0"),
    ]
    for args, message in cases:
        result = cli("train", "--recipe", tiny_recipe, "--out", tmp_path / "o", *args)
        assert result.exit_code == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        wanted = message if isinstance(message, tuple) else (message,)
        assert lines[-1].startswith("error: ") and any(m in lines[-1] for m in wanted), \
            (args, result.stderr)
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_sigterm_saves_and_says_how_to_resume(tmp_path, tiny_recipe):
    """SIGTERM (a scheduler's preemption) in the second epoch: exit 143 with last.pt saved
    mid-epoch and the resume command said. That the resumed run ends as an uninterrupted one is
    the SIGINT test's (the same save path)."""
    run = tmp_path / "run"
    # with a loader worker, which gets the group's SIGTERM too (it used to die of it and fail
    # the run with a traceback, nothing saved)
    args = ["train", "--recipe", tiny_recipe, "--out", run, "--set", "train.epochs=50",
            "--workers", "1", "--precision", "fp32", "--device", "cpu"]
    with Child(cli_command(*args)) as child:
        child.wait_for("epoch 1/50: ", timeout=600)  # the first epoch done and saved
        time.sleep(0.5)  # inside the second epoch
        child.signal_group(signal.SIGTERM)
        assert child.wait(timeout=60) == 143, child.stderr[-3000:]
    assert "Traceback" not in child.stderr
    assert f"resume with: inceptionctl train --resume {run}" in child.stderr
    state = read_checkpoint(run / "last.pt")["train_state"]
    assert state["epoch"] == 1 and state["step_in_epoch"] > 0  # saved inside epoch 2
    assert state["global_step"] > 44


# Every training subprocess below: the tiny recipe on CPU, fp32, one thread (the runs compared
# bit for bit run in the same conditions).
TINY_CLI = ["--workers", "0", "--precision", "fp32", "--device", "cpu"]
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_sigint_saves_and_the_resumed_run_ends_as_an_uninterrupted_one(tmp_path, tiny_recipe,
                                                                        cli):
    """Ctrl-C (SIGINT to the process group) in the second epoch: exit 130 with last.pt saved
    mid-epoch; --resume then ends with the weights of a run that was never interrupted."""
    args = ["train", "--recipe", tiny_recipe, "--set", "train.epochs=2", *TINY_CLI]
    run = tmp_path / "run"
    # the uninterrupted run, on the other core meanwhile (both children use one thread)
    straight = Child(cli_command(*args, "--out", tmp_path / "straight", "--json"), env=ONE_THREAD)
    with straight, Child(cli_command(*args, "--out", run), env=ONE_THREAD,
                         sigint_default=True) as child:
        child.wait_for("epoch 1/2: ", timeout=600)  # epoch 1 done and saved, epoch 2 begun
        child.signal_group(signal.SIGINT)
        assert child.wait(timeout=120) == 130, child.stderr[-3000:]
        assert straight.wait(timeout=600) == 0, straight.stderr[-3000:]
    last_line = child.stderr.strip().splitlines()[-1]
    state = read_checkpoint(run / "last.pt")["train_state"]
    assert state["epoch"] == 1 and 0 < state["step_in_epoch"] < 44, state["step_in_epoch"]
    assert last_line == (f"error: interrupted at epoch 2, step {state['step_in_epoch']}: saved "
                         f"{run / 'last.pt'}; resume with: inceptionctl train --resume {run}")
    assert "Traceback" not in child.stderr

    # the resume in this process, on one thread as the children ran
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = cli("train", "--resume", run, *TINY_CLI, "--json")
    finally:
        torch.set_num_threads(threads)
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    assert f"resuming {run / 'last.pt'} at epoch 2, step {state['step_in_epoch']}" in \
        resumed.stderr
    a = read_checkpoint(tmp_path / "straight" / "last.pt")
    b = read_checkpoint(run / "last.pt")
    _same_state(a["state_dict"], b["state_dict"])
    _same_state(a["ema_state_dict"], b["ema_state_dict"])
    sa, sb = a["train_state"], b["train_state"]
    assert (sa["epoch"], sa["global_step"]) == (sb["epoch"], sb["global_step"]) == (2, 88)
    _optimizer_equal(sa["optimizer"], sb["optimizer"])
    assert _without_timings(sa["history"]) == _without_timings(sb["history"])
    assert _without_timings(json.loads(resumed.stdout)["history"]) == \
        _without_timings(json.loads(straight.stdout)["history"])


_SLOW_MID_EPOCH_SAVE = """\
import sys, time, torch
real = torch.save
def slow(obj, f, *args, **kw):
    state = obj.get("train_state") if isinstance(obj, dict) else None
    if state and state.get("step_in_epoch"):  # the save a stop makes inside an epoch
        with open(f, "wb") as fh:
            fh.write(b"PK half a checkpoint")
        print("saving mid-epoch", file=sys.stderr, flush=True)
        time.sleep(300)
    return real(obj, f, *args, **kw)
torch.save = slow
from inceptionctl.cli import main
sys.argv = ["inceptionctl"] + sys.argv[1:]
main()
"""


@pytest.mark.slow
def test_a_second_sigint_while_saving_stops_at_once(tmp_path, tiny_recipe):
    """The first SIGINT asks for a save; a second one during that save stops the run at once
    (the save takes 300 s here): one line, exit 130, the previous last.pt intact and no
    half-written file left."""
    run = tmp_path / "run"
    with Child([sys.executable, "-c", _SLOW_MID_EPOCH_SAVE, "train", "--recipe", tiny_recipe,
                "--set", "train.epochs=2", *TINY_CLI, "--out", run], env=ONE_THREAD,
               sigint_default=True) as child:
        child.wait_for("epoch 1/2: ", timeout=600)
        child.signal_group(signal.SIGINT)
        child.wait_for("saving mid-epoch", timeout=120)
        started = time.monotonic()
        child.signal_group(signal.SIGINT)
        code = child.wait(timeout=60)
        seconds = time.monotonic() - started
    assert code == 130, child.stderr[-3000:]
    assert seconds < 30, seconds
    assert child.stderr.strip().splitlines()[-1] == "interrupted (exit 130)", child.stderr
    assert "Traceback" not in child.stderr
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl",
                                                     "recipe.yaml"]
    state = read_checkpoint(run / "last.pt")["train_state"]
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 44)


def test_without_tensorboard_the_flag_is_one_line_before_any_work(cli, tiny_recipe, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    result = cli("train", "--recipe", tiny_recipe, "--data", "synthetic", "--tensorboard",
                 *TINY_CLI, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == ("error: --tensorboard: the tensorboard "
                                                      "package is not installed (pip install "
                                                      "tensorboard)")
    assert not (tmp_path / "run").exists()


def test_tensorboard_event_files_hold_the_runs_scalars(tmp_path, tiny_recipe):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = load_recipe(tiny_recipe, {"train.batch_size": 8, "train.epochs": 1})
    result = train(_opts(recipe, tmp_path, data="synthetic", synthetic_count=64,
                         tensorboard=True, log_every=3))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["train/loss", "train/lr", "val/top1", "val/top5"]
    loss, lr = events.Scalars("train/loss"), events.Scalars("train/lr")
    assert [e.step for e in loss] == [e.step for e in lr] == list(range(1, 9))  # 64 / 8 steps
    record = result.history[0]
    assert sum(e.value for e in loss) / 8 == pytest.approx(record["train_loss"], rel=1e-6)
    # each step's rate is the one it ran at: the schedule's at the step's position, not the next
    schedule = Schedule(recipe, 8)
    assert [e.value for e in lr] == pytest.approx([recipe.train.lr * schedule(i)
                                                   for i in range(8)], rel=1e-6)
    assert lr[-1].value == pytest.approx(record["lr"], abs=1e-7)  # the epoch's last step's
    for tag, key in (("val/top1", "val_top1"), ("val/top5", "val_top5")):
        assert [(e.step, e.value) for e in events.Scalars(tag)] == \
            [(8, pytest.approx(record[key], rel=1e-6))]


@pytest.mark.slow
def test_embedded_default_reaches_95_percent(default_run):
    """`inceptionctl train` with no arguments: >= 95% top-1 on the held-out digits."""
    run, report, seconds = default_run
    assert report["best_top1"] >= 95.0
    assert (run / "best.pt").is_file() and (run / "metrics.jsonl").is_file()
    assert report["epochs"] == load_recipe("googlenet-small").train.epochs
    print(f"default: best top-1 {report['best_top1']:.2f}% in {seconds:.1f}s wall")


@pytest.mark.slow
def test_no_channels_last_trains_the_same_steps(tmp_path, tiny_recipe, monkeypatch):
    """--no-channels-last changes the memory layout only: the same run, up to float rounding."""
    from inceptionctl import trainer as trainer_mod

    layouts = []
    real = trainer_mod.Trainer.step

    def step(self, batch):
        layouts.append(self.memory_format)
        return real(self, batch)

    monkeypatch.setattr(trainer_mod.Trainer, "step", step)
    recipe = load_recipe(tiny_recipe, {"train.batch_size": 8})
    runs = {}
    for name, flag in (("nhwc", True), ("nchw", False)):
        train(_opts(recipe, tmp_path, name, data="synthetic", synthetic_count=64, max_steps=3,
                    channels_last=flag))
        runs[name] = read_checkpoint(tmp_path / name / "last.pt")["state_dict"]
    assert layouts == [torch.channels_last] * 3 + [torch.contiguous_format] * 3
    for k, v in runs["nhwc"].items():
        assert torch.allclose(v.float(), runs["nchw"][k].float(), atol=1e-4, rtol=1e-4), k


@pytest.mark.parametrize("names", [("best.pt",), ("metrics.jsonl",), ("best.pt", "metrics.jsonl")])
def test_a_runs_files_in_out_are_never_replaced_by_a_new_run(tiny_recipe, tmp_path, names):
    """best.pt or metrics.jsonl without last.pt (a finished run whose last.pt was removed, or
    the user's own files): a new run there would write over them."""
    out = tmp_path / "exp"
    out.mkdir()
    for name in names:
        (out / name).write_bytes(b"mine")
    with pytest.raises(InceptionError, match=rf"--out .*exp: holds {' and '.join(names)}, which "
                                             r"a new run would replace"):
        train(_opts(load_recipe(tiny_recipe), tmp_path, name="exp", max_steps=1))
    assert all((out / name).read_bytes() == b"mine" for name in names)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


def test_a_recipe_file_in_out_is_never_replaced(tiny_recipe, tmp_path):
    """The user's own recipe.yaml in --out (say, the one they train from) is left as it was;
    the recipe.yaml of this command's earlier try, which stopped before its first checkpoint,
    does not block the next one (a retry, or torchrun restarting a process that died)."""
    out = tmp_path / "exp"
    out.mkdir()
    theirs = out / "recipe.yaml"
    text = "# my experiment\n" + tiny_recipe.read_text()
    theirs.write_text(text)
    with pytest.raises(InceptionError, match=r"--out .*exp: holds a recipe.yaml that is not this "
                                             r"run's \(training would replace it\)"):
        train(_opts(load_recipe(theirs), tmp_path, name="exp", max_steps=1))
    assert theirs.read_text() == text

    # a try that fails after writing its recipe.yaml (no training image reads), then the same
    # command once the images are fixed; the written recipe follows the data's two classes
    data = tmp_path / "data"
    _unreadable_training_set(data)
    recipe = load_recipe(tiny_recipe, ["train.epochs=1", "train.batch_size=2"])
    with pytest.raises(InceptionError, match="none of the training images could be read"):
        train(_opts(recipe, tmp_path, name="retry", data=str(data)))
    assert "classes: [a, b]" in (tmp_path / "retry" / "recipe.yaml").read_text()
    make_folder(data / "train", classes=("a", "b"), per_class=3)  # the same names, now images
    train(_opts(recipe, tmp_path, name="retry", data=str(data)))
    assert (tmp_path / "retry" / "last.pt").is_file()

def test_a_resume_refuses_another_recipe_and_weights_and_counts_its_own_steps(tmp_path,
                                                                              tiny_recipe, cli):
    """--recipe naming another recipe, or --weights, beside --resume RUN were ignored without a
    word; --resume auto (a restarted command line) continues and says --weights is not used.
    The closing line and --json count the steps this command took apart from the run's."""
    run = tmp_path / "run"
    first = cli("train", "--recipe", tiny_recipe, "--out", run, "--max-steps", "2", *TINY_CLI)
    assert first.exit_code == 0, first.stderr
    other = cli("train", "--recipe", "googlenet", "--resume", run, *TINY_CLI)
    assert other.exit_code == 2 and other.stderr.strip().splitlines()[-1] == (
        f"error: --resume {run}: the run trains recipe 'tiny', not --recipe googlenet (a resumed "
        f"run keeps its recipe; leave --recipe out)")
    weights = cli("train", "--resume", run, "--weights", run / "last.pt", *TINY_CLI)
    assert weights.exit_code == 2 and "--weights starts a new run" in weights.stderr
    assert read_checkpoint(run / "last.pt")["train_state"]["global_step"] == 2  # untouched
    again = cli("train", "--recipe", tiny_recipe, "--resume", "auto", "--out", run, "--weights",
                run / "last.pt", "--max-steps", "5", *TINY_CLI, "--json")
    assert again.exit_code == 0, again.stderr
    assert f"resume auto: continuing {run}; --weights is for a new run and is not used" in \
        again.stderr
    result = json.loads(again.stdout)
    assert (result["steps"], result["new_steps"]) == (5, 3)
    assert "3 steps in " in again.stderr and "(5 in all)" in again.stderr


def test_a_resume_writes_only_in_a_run_folder_and_says_a_read_only_one_at_once(
        tmp_path, tiny_recipe, cli, monkeypatch):
    """A checkpoint copied beside other files under another name resumed in that folder,
    replacing its best.pt and metrics.jsonl; a read-only run folder failed after an epoch."""
    import shutil

    run = tmp_path / "run"
    assert cli("train", "--recipe", tiny_recipe, "--out", run, "--max-steps", "2",
               *TINY_CLI).exit_code == 0
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(run / "last.pt", store / "epoch0-step2.pt")
    (store / "metrics.jsonl").write_text("mine\n")
    result = cli("train", "--resume", store / "epoch0-step2.pt", *TINY_CLI)
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: --resume {store / 'epoch0-step2.pt'}: a run continues in the folder of its "
        f"last.pt, and this file is not one; copy it to a run folder as last.pt and resume "
        f"that folder")
    assert sorted(p.name for p in store.iterdir()) == ["epoch0-step2.pt", "metrics.jsonl"]
    assert (store / "metrics.jsonl").read_text() == "mine\n"
    # the run folder read-only (as a read-only mount reports it to access())
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: False if (
        mode & os.W_OK and Path(path) == run) else real_access(path, mode, *a, **k))
    result = cli("train", "--resume", run, *TINY_CLI)
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: --resume {run}: cannot write in the run folder (read-only)")
    assert "epoch 1/" not in result.stderr  # said before any training


def test_a_resume_cannot_end_the_run_before_where_it_is(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe, ["train.epochs=2", "train.batch_size=8"])
    train(_opts(recipe, tmp_path, data="synthetic", synthetic_count=16))
    before = (tmp_path / "run" / "recipe.yaml").read_text()
    with pytest.raises(InceptionError, match=r"the run has trained 2 epochs; train.epochs=1 "
                                             r"would end it before where it is \(give 2 or "
                                             r"more\)"):
        train(_opts(recipe, tmp_path, data="synthetic", synthetic_count=16,
                    resume=str(tmp_path / "run"), overrides=["train.epochs=1"]))
    assert (tmp_path / "run" / "recipe.yaml").read_text() == before
    # the same epochs (a restarted command line) or more still resume
    again = train(_opts(recipe, tmp_path, data="synthetic", synthetic_count=16,
                        resume=str(tmp_path / "run"), overrides=["train.epochs=3"]))
    assert again.epochs == 3


def _two_class_folder(data):
    """``data/cat`` and ``data/dog``, 12 small distinct PNGs each."""
    from PIL import Image

    for c in ("cat", "dog"):
        (data / c).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (20, 20), (20 * i, 100 if c == "cat" else 0, 50)).save(
                data / c / f"{i}.png")
    return data


def test_a_resume_needs_the_images_it_started_with(tmp_path, tiny_recipe):
    """Images added, removed or renamed in the data folder would change a resumed run's split
    (validation images into training) and its place in the epoch: the resume says so instead."""
    import shutil

    data = _two_class_folder(tmp_path / "pics")
    recipe = load_recipe(tiny_recipe, ["train.epochs=3", "train.batch_size=4"])
    run = tmp_path / "run"
    train(_opts(recipe, tmp_path, data=str(data), val_split=0.25, max_steps=2))
    shutil.copy(data / "cat" / "0.png", data / "cat" / "new.png")
    with pytest.raises(InceptionError, match=rf"--resume {run}: the images in {data} changed "
                                             rf"since the run started \(train 18 -> 18, val 6 -> "
                                             rf"7 images\): .*put them back, or start a new run"):
        train(_opts(recipe, tmp_path, data=str(data), val_split=0.25, resume=str(run),
                    max_steps=3))
    (data / "cat" / "new.png").rename(data / "cat" / "0b.png")  # back to 24, one renamed
    (data / "cat" / "0.png").unlink()
    with pytest.raises(InceptionError, match=r"\(train 18 -> 18, val 6 -> 6 images; as many, "
                                             r"so files renamed or replaced\)"):
        train(_opts(recipe, tmp_path, data=str(data), val_split=0.25, resume=str(run),
                    max_steps=3))
    (data / "cat" / "0b.png").rename(data / "cat" / "0.png")
    assert train(_opts(recipe, tmp_path, data=str(data), val_split=0.25, resume=str(run),
                       max_steps=3)).steps == 3


def test_a_resume_keeps_the_split_and_knows_its_folder_however_written(tmp_path, tiny_recipe,
                                                                        monkeypatch):
    """A run on one folder split by --val-split: resuming with another split is refused (it
    would train on validation images), the same folder written another way (./x/, absolute,
    from another working folder) is the same data, and the resume hint names the split."""
    from inceptionctl.train import resume_command

    data = _two_class_folder(tmp_path / "pics")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(tiny_recipe, ["train.epochs=3", "train.batch_size=4"])
    train(_opts(recipe, tmp_path, data="pics", val_split=0.25, max_steps=2))
    with pytest.raises(InceptionError, match=r"the run splits its data with --val-split 0.25, "
                                             r"not 0.5 \(pass --val-split 0.25\)"):
        train(_opts(recipe, tmp_path, data="pics", val_split=0.5, resume="auto", max_steps=3))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = train(_opts(recipe, tmp_path, data=str(data) + "/", val_split=0.25, resume="auto",
                         max_steps=3))
    assert result.steps == 3
    with pytest.raises(InceptionError, match=rf"the run trains on '{data}', not 'pics' \(pass "
                                             rf"--data {data}\)"):
        train(_opts(recipe, tmp_path, data="pics", val_split=0.25, resume="auto", max_steps=4))
    assert resume_command(tmp_path / "run", "pics", 1, 0.25) == \
        f"inceptionctl train --resume {tmp_path / 'run'} --data pics --val-split 0.25"
