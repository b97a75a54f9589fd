"""Device and precision resolution; ``--precision auto`` decided by measuring on this machine."""

import json
import os
import sys

import pytest
import torch

from inceptionctl import runtime
from inceptionctl.errors import InceptionError
from inceptionctl.recipe import load_recipe
from inceptionctl.runtime import PrecisionChoice, choose_precision, pick_fastest

CPU = torch.device("cpu")


def _never(precision):
    raise AssertionError(f"probed {precision}, but nothing should be measured")


@pytest.fixture
def two_candidates(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: True)


@pytest.mark.parametrize("rates, expected", [
    ({"fp32": 100.0, "bf16": 150.0}, "bf16"),   # bf16 pays (an AMD EPYC with fast bf16)
    ({"fp32": 18.2, "bf16": 13.9}, "fp32"),     # bf16 24% slower (a Xeon without AMX)
    ({"fp32": 100.0, "bf16": 104.0}, "fp32"),   # within 5%: fp32 keeps its exactness
    ({"fp32": 100.0, "bf16": 90.0, "fp16": 200.0}, "fp16"),
])
def test_auto_picks_the_fastest_with_fp32_winning_near_ties(rates, expected):
    assert pick_fastest(rates) == expected


def test_auto_measures_each_candidate_twice_in_turn_and_caches(two_candidates, tmp_path):
    calls = []
    rates = {"fp32": [20.0, 30.0], "bf16": [22.0, 25.0]}  # a first round within 15%

    def probe(p):
        calls.append(p)
        return rates[p].pop(0)

    cache = tmp_path / "c.json"
    choice = choose_precision("auto", CPU, probe, key="k", cache=cache)
    assert calls == ["fp32", "bf16", "bf16", "fp32"]
    # the best of the two rounds counts: fp32 30 beats bf16 25
    assert choice == PrecisionChoice("fp32", "probe", {"fp32": 30.0, "bf16": 25.0}, "k")
    again = choose_precision("auto", CPU, _never, key="k", cache=cache)
    assert (again.precision, again.source, again.rates) == ("fp32", "cache", choice.rates)
    assert "measured earlier on this machine" in again.describe()
    other = choose_precision("auto", CPU, lambda p: {"fp32": 1.0, "bf16": 9.0}[p], key="k2",
                             cache=cache)
    assert other.precision == "bf16"
    assert set(json.loads(cache.read_text())["entries"]) == {"k", "k2"}


@pytest.mark.parametrize("first, winner", [({"fp32": 10.0, "bf16": 11.6}, "bf16"),
                                           ({"fp32": 18.2, "bf16": 13.9}, "fp32")])
def test_a_decisive_first_round_is_not_measured_again(two_candidates, tmp_path, first, winner):
    """More than 15% between the fastest and the next: one round, the probe's cost halved."""
    calls = []

    def probe(p):
        calls.append(p)
        return first[p]

    choice = choose_precision("auto", CPU, probe, key="k", cache=tmp_path / "c.json")
    assert calls == ["fp32", "bf16"]
    assert (choice.precision, choice.rates) == (winner, first)


def test_three_candidates_stop_early_only_on_a_clear_lead(monkeypatch, tmp_path):
    """On CUDA (fp32, bf16, fp16) the leader is compared with the runner-up, whichever it is."""
    monkeypatch.setattr(runtime, "candidates", lambda device: ["fp32", "bf16", "fp16"])
    for first, rounds, winner in (({"fp32": 50.0, "bf16": 100.0, "fp16": 110.0}, 2, "fp16"),
                                  ({"fp32": 50.0, "bf16": 100.0, "fp16": 130.0}, 1, "fp16")):
        calls = []

        def probe(p, first=first, calls=calls):
            calls.append(p)
            return first[p]

        choice = choose_precision("auto", torch.device("cuda"), probe, key="k", use_cache=False)
        assert len(calls) == 3 * rounds and choice.precision == winner


@pytest.mark.parametrize("rates, clear", [({"fp32": 100.0, "bf16": 114.9}, False),
                                          ({"fp32": 100.0, "bf16": 115.1}, True),
                                          ({"fp32": 100.0, "bf16": 90.0, "fp16": 110.0}, False),
                                          ({"fp32": 100.0, "bf16": 90.0, "fp16": 120.0}, True),
                                          ({"fp32": 100.0}, False)])
def test_a_clear_lead_is_more_than_15_percent_over_the_next(rates, clear):
    assert runtime.clear_lead(rates) is clear


def test_explicit_precision_is_never_second_guessed(two_candidates, tmp_path):
    choice = choose_precision("fp32", CPU, _never, key="k", cache=tmp_path / "c.json")
    assert (choice.precision, choice.source) == ("fp32", "explicit")
    assert not (tmp_path / "c.json").exists()
    with pytest.raises(InceptionError, match="--precision fp16: needs a CUDA device"):
        choose_precision("fp16", CPU, _never, key="k")


def test_one_candidate_needs_no_measurement(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: False)
    choice = choose_precision("auto", CPU, _never, key="k", cache=tmp_path / "c.json")
    assert (choice.precision, choice.source) == ("fp32", "only")
    assert choice.automatic and not choice.measured
    assert choice.describe() == ("precision auto -> fp32 (the only candidate: no bf16 on this "
                                 "CPU, nothing to measure)")


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": 99, "entries": {}}),
                                  json.dumps({"format": runtime.PROBE_FORMAT,
                                              "entries": {"k": {"precision": "fp8"}}})])
def test_a_damaged_or_foreign_cache_is_measured_again(two_candidates, tmp_path, text):
    cache = tmp_path / "c.json"
    cache.write_text(text)
    choice = choose_precision("auto", CPU, lambda p: {"fp32": 1.0, "bf16": 2.0}[p], key="k",
                              cache=cache)
    assert (choice.precision, choice.source) == ("bf16", "probe")
    assert json.loads(cache.read_text())["entries"]["k"]["precision"] == "bf16"


def test_the_key_names_machine_torch_and_work():
    key = runtime.probe_key(CPU, "train", "googlenet-small", 64, 32)
    assert runtime.machine_name(CPU) in key and torch.__version__ in key
    assert "train" in key and "googlenet-small" in key and "batch 64" in key and "32px" in key


ZEN4 = "\n".join(f"""processor\t: {n}
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
""" for n in (0, 1))  # two processors: the first one's fields count


def _cpu(monkeypatch, tmp_path, text):
    path = tmp_path / f"cpuinfo-{abs(hash(text))}"
    path.write_text(text)
    monkeypatch.setattr(runtime, "CPUINFO", path)


def test_the_key_tells_cpus_with_the_same_name_apart(monkeypatch, tmp_path):
    """VMs name several CPU generations alike ("AMD EPYC"): family, model, stepping and flags
    decide whether a cached decision is this CPU's."""
    keys = {}
    for label, text in {"zen4": ZEN4, "zen5": ZEN4.replace("family\t: 25", "family\t: 26")
                        .replace("model\t\t: 17", "model\t\t: 2"),
                        "no bf16": ZEN4.replace(" avx512_bf16", ""),
                        "zen4 again": ZEN4}.items():
        _cpu(monkeypatch, tmp_path, text)
        assert runtime.machine_name(CPU) == "AMD EPYC"
        keys[label] = runtime.probe_key(CPU, "train", "googlenet", 16, 224)
    assert keys["zen4"] == keys["zen4 again"]
    assert len({keys["zen4"], keys["zen5"], keys["no bf16"]}) == 3
    assert "cpu family 25, model 17, stepping 1" in keys["zen4"]
    _cpu(monkeypatch, tmp_path, ZEN4.replace(" avx512_bf16", ""))
    assert runtime.cpu_features()["avx512_bf16"] is False and runtime.cpu_features()["avx512f"]


def test_a_gpu_key_names_the_gpu_and_its_host(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    keys = []
    for text in (ZEN4, ZEN4.replace("model\t\t: 17", "model\t\t: 2")):
        _cpu(monkeypatch, tmp_path, text)
        keys.append(runtime.probe_key(torch.device("cuda", 0), "train", "googlenet", 128, 224))
    assert keys[0].startswith("NVIDIA H200 on AMD EPYC (cpu family 25, model 17")
    assert keys[0] != keys[1]


def test_a_decision_cached_on_another_cpu_of_the_same_name_is_measured_again(
        two_candidates, monkeypatch, tmp_path):
    cache = tmp_path / "c.json"
    _cpu(monkeypatch, tmp_path, ZEN4)
    key = runtime.probe_key(CPU, "train", "googlenet", 16, 224)
    choose_precision("auto", CPU, lambda p: {"fp32": 1.0, "bf16": 2.0}[p], key=key, cache=cache)
    _cpu(monkeypatch, tmp_path, ZEN4.replace("model\t\t: 17", "model\t\t: 2"))
    key = runtime.probe_key(CPU, "train", "googlenet", 16, 224)
    choice = choose_precision("auto", CPU, lambda p: {"fp32": 2.0, "bf16": 1.0}[p], key=key,
                              cache=cache)
    assert (choice.precision, choice.source) == ("fp32", "probe")


def test_the_probe_trains_the_real_model_in_each_candidate_without_touching_the_run():
    from inceptionctl.model import build_model
    from inceptionctl.train import _probe_train

    recipe = load_recipe("googlenet-small", overrides=["train.batch_size=4"])
    model = build_model(recipe)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    for precision in runtime.candidates(CPU):
        assert _probe_train(model, recipe, CPU, precision, channels_last=True) > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_time_rate_counts_images_over_the_timed_calls():
    calls = []
    rate = runtime.time_rate(lambda: calls.append(1), images=8, device=CPU, budget_s=0.0,
                             min_steps=3, warmup=2)
    assert len(calls) == 5 and rate > 0


def test_train_auto_records_its_measured_choice_and_a_resume_keeps_it(two_candidates, tmp_path,
                                                                       monkeypatch):
    from inceptionctl.checkpoint import read_checkpoint
    from inceptionctl.train import TrainOptions, train

    import inceptionctl.train as train_mod

    measured = {"fp32": 50.0, "bf16": 80.0}
    monkeypatch.setattr(train_mod, "_probe_train", lambda m, r, d, p, cl: measured[p])
    logs: list[str] = []
    recipe = load_recipe("googlenet-small", overrides=["train.batch_size=16"])

    def opts(**kw):
        return TrainOptions(device="cpu", recipe=recipe, data="synthetic", synthetic_count=32,
                            out=tmp_path / "run", runs_dir=tmp_path / "runs", workers=0,
                            log=logs.append, progress=False, **kw)

    train(opts(max_steps=1))
    assert "precision auto -> bf16 (measured now: fp32 50.0 img/s, bf16 80.0 img/s)" in logs
    meta = read_checkpoint(tmp_path / "run" / "last.pt")["meta"]
    assert meta["precision"] == "bf16"
    assert meta["precision_choice"]["source"] == "probe"
    assert meta["precision_choice"]["rates"] == measured
    # the machine now measures fp32 faster, but a resumed run keeps what it was trained in
    measured.update(fp32=500.0)
    logs.clear()
    train(opts(max_steps=2, resume="auto"))
    meta = read_checkpoint(tmp_path / "run" / "last.pt")["meta"]
    assert meta["precision"] == "bf16" and meta["precision_choice"]["source"] == "resume"


# ------------------------------------------------------- eval / predict / profile: auto measured

class _Switchable:
    """A session that switches precision and runs at a rate the test sets per precision."""

    switchable = ("fp32", "bf16", "fp16")
    device = "cpu"

    def __init__(self, rates):
        from inceptionctl.backend import ArtifactInfo

        self.rates, self.ran = rates, []
        self.info = ArtifactInfo(path="m.pt", kind="checkpoint", recipe={"name": "tiny"},
                                 classes=["a", "b"], preprocessing={"eval_size": 8})

    def set_precision(self, precision):
        self.info.precision = precision

    def run(self, x):
        self.ran.append((self.info.precision, len(x)))


def _fake_rates(monkeypatch, session):
    """time_rate reports the session's rate for the precision it is set to (after one call)."""
    def rate(step, images, device, **kw):
        step()
        return session.rates[session.info.precision]

    monkeypatch.setattr(runtime, "time_rate", rate)


@pytest.fixture
def own_cache(monkeypatch, tmp_path):
    """A probe cache of the test's own: nothing measured by other tests is read back."""
    monkeypatch.setattr(runtime, "cache_path", lambda: tmp_path / "precision.json")


def test_inference_auto_measures_the_session_at_the_batch_and_caches(two_candidates, monkeypatch,
                                                                      own_cache):
    session = _Switchable({"fp32": 40.0, "bf16": 90.0})
    _fake_rates(monkeypatch, session)
    logs = []
    choice = runtime.choose_session_precision(session, "auto", 64, logs.append)
    assert (choice.precision, choice.source) == ("bf16", "probe")
    assert session.info.precision == "bf16"
    assert {p for p, _ in session.ran} == {"fp32", "bf16"}
    assert {n for _, n in session.ran} == {16}  # the probe's batch: at most 16 of the real 64
    assert logs == ["precision auto -> bf16 (measured now: fp32 40.0 img/s, bf16 90.0 img/s)"]
    assert "| infer | tiny | batch 64 | 8px" in choice.key
    # read back: another session of the same recipe at the same batch measures nothing
    other = _Switchable({"fp32": 1.0, "bf16": 1.0})
    other.run = _never
    again = runtime.choose_session_precision(other, "auto", 64, None)
    assert (again.precision, again.source, other.info.precision) == ("bf16", "cache", "bf16")


def test_a_cache_that_cannot_be_written_costs_a_measurement_not_the_command(
        two_candidates, monkeypatch, tmp_path):
    """A folder where the cache file goes (or a read-only home): the choice is made and used,
    and the next run measures again."""
    path = tmp_path / "precision.json"
    path.mkdir()
    monkeypatch.setattr(runtime, "cache_path", lambda: path)
    for _ in range(2):
        session = _Switchable({"fp32": 40.0, "bf16": 90.0})
        _fake_rates(monkeypatch, session)
        choice = runtime.choose_session_precision(session, "auto", 64, None)
        assert (choice.precision, choice.source) == ("bf16", "probe")
    assert path.is_dir() and not any(path.iterdir())


def test_inference_explicit_precision_skips_the_probe(two_candidates):
    session = _Switchable({})
    session.run = _never
    choice = runtime.choose_session_precision(session, "fp32", 64, None)
    assert (choice.precision, choice.source, session.info.precision) == ("fp32", "explicit",
                                                                          "fp32")


def test_a_session_in_its_own_precision_takes_auto_or_that_precision_only():
    session = _Switchable({})
    session.switchable, session.run = (), _never
    session.info.precision = "int8"
    assert runtime.choose_session_precision(session, "auto", 8, None) is None
    assert runtime.choose_session_precision(session, "int8", 8, None) is None
    with pytest.raises(InceptionError, match=r"--precision bf16: m.pt runs in int8 \(the "
                                             r"precision it was exported in\)"):
        runtime.choose_session_precision(session, "bf16", 8, None)


def test_auto_with_one_candidate_says_so_where_an_explicit_precision_says_nothing(
        monkeypatch, tiny_run, cli, tmp_path):
    """A CPU without bf16: train and eval still name auto's choice in one line, as they do
    where it is measured; an explicit --precision prints no such line."""
    from inceptionctl.train import TrainOptions, train

    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: False)
    monkeypatch.setattr(runtime, "time_rate", _never)
    line = "precision auto -> fp32 (the only candidate: no bf16 on this CPU, nothing to measure)"
    run, _ = tiny_run
    out = cli("eval", run, "--limit", "8", "--device", "cpu")
    assert out.exit_code == 0, out.output
    assert line in out.stderr.splitlines()
    out = cli("eval", run, "--limit", "8", "--device", "cpu", "--precision", "fp32")
    assert out.exit_code == 0 and "precision" not in out.stderr, out.stderr
    logs: list[str] = []
    recipe = load_recipe("googlenet-small", overrides=["train.batch_size=8"])
    for precision, said in (("auto", [line]), ("fp32", [])):
        logs.clear()
        train(TrainOptions(device="cpu", recipe=recipe, data="synthetic", synthetic_count=16,
                           out=tmp_path / precision, runs_dir=tmp_path / "runs", workers=0,
                           precision=precision, log=logs.append, progress=False, max_steps=1))
        assert [ln for ln in logs if ln.startswith("precision")] == said


def test_eval_and_predict_record_the_measured_choice(two_candidates, monkeypatch, tiny_run, cli,
                                                     tmp_path, own_cache):
    """Through the CLI on a real run: auto's line on stderr and its record in --json; an
    explicit --precision is taken as given and said so."""
    from inceptionctl.backends.torch import TorchSession

    measured, now = {"fp32": 10.0, "bf16": 30.0}, []
    switch = TorchSession.set_precision
    monkeypatch.setattr(TorchSession, "set_precision",
                        lambda self, p: (now.append(p), switch(self, p))[1])
    monkeypatch.setattr(runtime, "time_rate",
                        lambda step, images, device, **kw: (step(), measured[now[-1]])[1])
    run, _ = tiny_run
    out = cli("eval", run, "--limit", "20", "--device", "cpu", "--json")
    assert out.exit_code == 0, out.output
    assert "precision auto -> bf16 (measured now: fp32 10.0 img/s, bf16 30.0 img/s)" in out.stderr
    data = json.loads(out.stdout)
    assert data["precisions"][0]["precision"] == "bf16"
    assert data["precisions"][0]["rates"] == measured
    fixed = json.loads(cli("eval", run, "--limit", "20", "--device", "cpu", "--precision",
                           "fp32", "--json").stdout)
    assert fixed["precisions"][0]["precision"] == "fp32"
    assert fixed["precisions"][0]["source"] == "explicit"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "x.png")
    pred = cli("predict", tmp_path / "x.png", "-w", run, "--device", "cpu", "--json")
    assert pred.exit_code == 0, pred.output
    assert json.loads(pred.stdout)["precision"]["precision"] in ("bf16", "fp32")
    bad = cli("eval", run, "--precision", "int4")
    assert bad.exit_code != 0 and "--precision" in bad.output


_FAULTS = """
import resource, sys, torch
from inceptionctl.host import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else None
def faults_of_a_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(16 * 2**20)  # 64 MiB, every page written, then freed as a step's activation
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
# glibc settles on where the block goes within a few steps (two places, in turn, at first)
warm = [faults_of_a_step() for _ in range(8)]
print(applied, sorted(faults_of_a_step() for _ in range(5))[2])  # a step, steady: the median
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_without_faulting_it_in_again():
    """A 64 MiB block freed and allocated again (a training step's largest activation): with
    keep_freed_memory the pages stay mapped; glibc's default maps and faults them every time.
    A user's allocator choice (a MALLOC_* variable) is left alone."""
    import subprocess

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD",
                                                        "INCEPTIONCTL_KEEP_FREED_MEMORY")}
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")

    def run(mode, **extra):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True,
                             text=True, timeout=120, env={**env, **extra}, check=True).stdout
        applied, faults = out.split()
        return applied, int(faults)

    on, off = run("on"), run("off")
    assert on[0] == "True" and on[1] < pages // 100, on
    assert off[1] >= pages // 2, off  # the default, for contrast
    chosen = run("on", MALLOC_ARENA_MAX="2")
    assert chosen[0] == "False" and chosen[1] >= pages // 2, chosen


def test_a_decision_measured_on_a_busy_machine_is_used_but_not_cached(two_candidates, tmp_path,
                                                                      monkeypatch):
    """Other processes took 90% of the CPUs while the probe ran: its rates may be anyone's
    (a review saw fp32 36 img/s against bf16 405 on a busy VM), so the next run measures again."""
    ticks = iter([(0, 0), (900, 1000), (0, 0), (100, 1000)])
    monkeypatch.setattr(runtime, "cpu_ticks", lambda: next(ticks))
    cache = tmp_path / "c.json"
    busy = choose_precision("auto", CPU, lambda p: {"fp32": 1.0, "bf16": 2.0}[p], key="k",
                            cache=cache)
    assert (busy.precision, busy.source) == ("bf16", "probe, busy")
    assert "other processes kept the CPUs busy: not cached" in busy.describe()
    assert not cache.exists()
    quiet = choose_precision("auto", CPU, lambda p: {"fp32": 1.0, "bf16": 2.0}[p], key="k",
                             cache=cache)
    assert quiet.source == "probe" and "k" in json.loads(cache.read_text())["entries"]
