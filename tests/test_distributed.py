"""torchrun on CPU (gloo): elastic restarts after a worker dies, and two "nodes" on one machine.

Each test starts torchrun the way the README shows it; every process it starts is killed (its
whole process group) when the test ends, whatever happened.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from inceptionctl import load_recipe
from inceptionctl.checkpoint import read_checkpoint
from inceptionctl.train import TrainOptions, train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# No batch norm, no dropout: then 2 x B in DDP is 1 x 2B, up to float rounding.
EXACT_SETS = ["model.norm=none", "model.init=xavier", "model.head.dropout=0",
              "model.aux.dropout=0", "train.ema_decay=null"]


def _env(**extra: str) -> dict:
    return dict(os.environ, INCEPTIONCTL_DIST_BACKEND="gloo", OMP_NUM_THREADS="1", **extra)


@contextmanager
def _started(*cmds: list, env: dict):
    """Start the commands side by side, each in its own process group and writing to files
    (so none blocks on a full pipe); kill every group still alive at the end. Their temporary
    folder is one of their own, removed at the end (torchrun leaves its log folders there)."""
    import tempfile

    with tempfile.TemporaryDirectory() as logs:
        os.mkdir(f"{logs}/tmp")
        env = dict(env, TMPDIR=f"{logs}/tmp")
        procs = []
        try:
            for i, cmd in enumerate(cmds):
                with open(f"{logs}/{i}.out", "w") as out, open(f"{logs}/{i}.err", "w") as err:
                    procs.append(subprocess.Popen([str(a) for a in cmd], stdout=out, stderr=err,
                                                  text=True, env=env, start_new_session=True))
            yield procs, logs
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)


def _run(*cmds: list, env: dict, timeout: float = 300) -> list[tuple[int, str, str]]:
    """Run the commands side by side to their end: (exit code, stdout, stderr) of each."""
    with _started(*cmds, env=env) as (procs, logs):
        codes = [p.wait(timeout=timeout) for p in procs]
        return [(code, Path(f"{logs}/{i}.out").read_text(), Path(f"{logs}/{i}.err").read_text())
                for i, code in enumerate(codes)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(args: list, *own: list) -> list[list]:
    """The torchrun commands of two one-process "nodes" on this machine (static rendezvous),
    with ``own[i]`` added to node i's arguments."""
    port = _free_port()
    own = own or ([], [])
    return [[*TORCHRUN, "--nnodes", "2", "--node-rank", rank, "--nproc-per-node", "1",
             "--master-addr", "127.0.0.1", "--master-port", port, "-m", "inceptionctl", *args,
             *own[rank]] for rank in (0, 1)]


def _without_timings(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("img_per_s", "seconds")} for r in records]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_elastic_restart_after_a_sigkill_ends_as_an_uninterrupted_run(tmp_path, tiny_recipe):
    """torchrun --max-restarts 1, rank 1 SIGKILLing itself after step 17 (epoch 2, step 6) on
    the first attempt: torchrun restarts both workers, which resume from the --save-every 5 save
    at step 15 (mid-epoch) and end bit-identical to an uninterrupted run, each epoch in
    metrics.jsonl once. The uninterrupted run is `train --nproc 2`: the CLI starts torchrun
    itself, and rank 0 alone writes the run folder, logs and prints."""
    from inceptionctl.evaluate import EvalOptions, evaluate

    common = ["train", "--recipe", tiny_recipe, "--data", "digits", "--workers", "0",
              "--precision", "fp32", "--device", "cpu", "--save-every", "5", "--resume", "auto",
              "--set", "train.batch_size=64"]
    # 1437 images, batch 64 x 2 processes: 11 steps per epoch, 2 epochs; both runs side by side
    # (one thread per process: the results do not depend on it)
    straight = [sys.executable, "-m", "inceptionctl", *common, "--nproc", "2", "--out",
                tmp_path / "straight", "--json"]
    killed = ["env", "INCEPTIONCTL_TEST_SIGKILL_AT=1:17", *TORCHRUN, "--standalone",
              "--nproc-per-node", "2", "--max-restarts", "1", "-m", "inceptionctl", *common,
              "--out", tmp_path / "elastic"]
    (code0, out0, err0), (code, _, err) = _run(straight, killed, env=_env())
    assert code == 0, err[-3000:]
    assert "exitcode: -9" in err and "local_rank: 1" in err  # it did die, by SIGKILL
    elastic, run = tmp_path / "elastic", tmp_path / "straight"
    assert f"resuming {elastic / 'last.pt'} at epoch 2, step 4 (global step 15)" in err

    # train --nproc 2: one torchrun launch, rank 0 alone writes, logs and prints
    assert code0 == 0, err0[-3000:]
    launch = [ln for ln in err0.splitlines() if ln.startswith("launching: ")]
    assert len(launch) == 1 and "inceptionctl.launch --standalone --nproc-per-node=2 -m " \
        "inceptionctl train" in launch[0] and "--nproc " not in launch[0], launch
    report = json.loads(out0)  # one document: rank 1 prints nothing
    assert err0.count(f"run folder: {run}\n") == 1, err0
    assert err0.count("2 process(es), batch 64 x 2") == 1, err0
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl",
                                                     "recipe.yaml"]
    assert _metrics(run) == report["history"] and report["steps"] == 22

    a = read_checkpoint(run / "last.pt")
    b = read_checkpoint(elastic / "last.pt")
    assert (a["train_state"]["world_size"], a["train_state"]["epoch"]) == (2, 2)
    assert a["train_state"]["global_step"] == b["train_state"]["global_step"] == 22
    for key in ("state_dict", "ema_state_dict"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert [r["epoch"] for r in _metrics(elastic)] == [1, 2]
    assert _without_timings(_metrics(elastic)) == _without_timings(_metrics(run))
    # validation ran over both ranks' shards: the whole val set, as eval of best.pt sees it
    best = max(_metrics(run), key=lambda r: r["val_top1"])
    evaluated = evaluate(EvalOptions([str(run)], data="digits", crops=[1], workers=0,
                                     precision="fp32"))
    assert evaluated.images == 360
    assert evaluated.main.top1 == pytest.approx(best["val_top1"], abs=1e-9)


@pytest.mark.slow
def test_two_nodes_train_one_run(tmp_path, tiny_recipe):
    """Two torchrun "nodes" (1 process each) train one run folder, written by rank 0, to the
    weights one process reaches with the same global batch (DDP's gradient averaging, the
    sharded sampler and rank-0-only writing, as on one machine with --nproc-per-node 2). A node
    that does not see the run's last.pt cannot resume beside the other."""
    args = ["train", "--recipe", tiny_recipe, "--workers", "0", "--precision", "fp32",
            "--device", "cpu", "--resume", "auto"]
    sets = [a for s in EXACT_SETS + ["train.batch_size=16"] for a in ("--set", s)]
    run = ["--max-steps", "6", "--out", tmp_path / "run", *sets]
    (code0, _, err0), (code1, out1, err1) = _run(*_two_nodes(args + run), env=_env())
    assert code0 == 0 and code1 == 0, (err0[-3000:], err1[-3000:])
    assert "rank 0 of 2 (local rank 0 on " in err0 and "run folder: " in err0
    assert "rank 1 of 2 (local rank 0 on " in err1 and "run folder: " not in err1
    assert out1 == ""
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.pt", "recipe.yaml"]

    train(TrainOptions(recipe=load_recipe(tiny_recipe, EXACT_SETS + ["train.batch_size=32"]),
                       data="digits", out=tmp_path / "one", device="cpu", precision="fp32",
                       workers=0, max_steps=6, log=lambda m: None, progress=False))
    a = read_checkpoint(tmp_path / "one" / "last.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "run" / "last.pt")
    assert b["train_state"]["world_size"] == 2 and b["train_state"]["global_step"] == 6
    start = __import__("inceptionctl").build_model(load_recipe(tiny_recipe, EXACT_SETS))
    moved = max((a[k] - v).abs().max().item() for k, v in start.state_dict().items()
                if v.is_floating_point())
    assert moved > 1e-3  # the weights moved from their start: the comparison means something
    for k in a:
        assert torch.allclose(a[k], b["state_dict"][k], atol=1e-5, rtol=0), k

    # node 1 with a run folder of its own (no shared file system): both stop, saying why
    apart = _run(*_two_nodes(args + ["--max-steps", "8"], ["--out", tmp_path / "run"],
                             ["--out", tmp_path / "elsewhere", *sets]), env=_env())
    assert [code for code, _, _ in apart] == [1, 1]
    assert "error: another rank does not start at step 6 as rank 0 does: every machine must " \
           "see the same run folder" in apart[0][2]
    assert "error: rank 1 starts at step 0, rank 0 at step 6: " in apart[1][2]
    assert read_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["global_step"] == 6


@pytest.mark.slow
def test_two_nodes_eval_equals_one_process(tiny_run, cli):
    """Eval sharded over two processes (on two "nodes") gives one process's table exactly."""
    run, _ = tiny_run
    args = ["eval", run, "--crops", "1,10", "--workers", "0", "--limit", "101", "--device",
            "cpu", "--precision", "fp32", "--json"]
    (code0, out0, err0), (code1, out1, err1) = _run(*_two_nodes(args), env=_env())
    assert code0 == 0 and code1 == 0, (err0[-3000:], err1[-3000:])
    assert out1 == ""  # the report is rank 0's
    one = cli(*args)
    assert one.exit_code == 0, one.stderr
    a, b = json.loads(one.stdout), json.loads(out0)
    assert a["images"] == b["images"] == 101
    assert a["table"] == b["table"] and a["confusion"] == b["confusion"]


@pytest.fixture
def launched(monkeypatch):
    """The command lines ``train --nproc`` hands to torchrun, which is not started."""
    import subprocess as sp

    calls = []

    class Launched:
        def __init__(self, cmd, **kw):
            calls.append(cmd)
            self.pid = os.getpid()
            assert kw.get("start_new_session")  # signals reach its group through us

        def wait(self):
            return 0

    monkeypatch.setattr(sp, "Popen", Launched)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return calls


def test_train_nproc_passes_max_restarts_to_torchrun(cli, monkeypatch, tmp_path, launched):
    calls = launched
    argv = ["train", "--nproc", "2", "--max-restarts", "3", "--resume", "auto", "--out",
            str(tmp_path / "run"), "--save-every", "30m"]
    monkeypatch.setattr(sys, "argv", ["inceptionctl", *argv])
    assert cli(*argv).exit_code == 0
    assert calls == [[sys.executable, "-m", "inceptionctl.launch", "--standalone",
                      "--nproc-per-node=2", "--max-restarts=3", "-m", "inceptionctl", "train",
                      "--resume", "auto", "--out", str(tmp_path / "run"), "--save-every",
                      "30m"]]


@pytest.mark.parametrize("status,code", [(-6, 134), (-9, 137), (143, 143), (2, 2)])
def test_train_nproc_exits_as_a_shell_reports_its_launcher(cli, monkeypatch, tmp_path,
                                                            launched, status, code):
    """A launcher killed by a signal (SIGABRT in a C++ teardown, the OOM killer's SIGKILL) made
    the command exit with the signal's negative number (-6 read as 250); it is 128 + N now."""
    import subprocess as sp

    monkeypatch.setattr(sp.Popen, "wait", lambda self: status)
    argv = ["train", "--nproc", "2", "--out", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", ["inceptionctl", *argv])
    assert cli(*argv).exit_code == code


def test_restarts_across_machines_get_a_note(monkeypatch):
    """One agent (one machine) restarts every process alike: its attempt count names the store
    prefix; across machines the counts can differ, so the user is told what to set instead."""
    import datetime

    from inceptionctl.distributed import SHARED_STORE_NOTE, _attempt_store

    timeout = datetime.timedelta(seconds=5)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    assert _attempt_store(timeout) == (None, None)  # no restarts: nothing outlives an attempt
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    assert _attempt_store(timeout) == (None, SHARED_STORE_NOTE)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    assert _attempt_store(timeout) == (None, None)  # a store of the round's own: nothing stale


def test_a_mistake_under_nproc_is_said_once_before_any_process_starts(cli, monkeypatch, tmp_path,
                                                                     launched):
    calls = launched
    for argv, message in (
            (["--recipe", str(tmp_path / "nope.yaml")], "nope.yaml: recipe file not found"),
            (["--data", str(tmp_path / "nope")], "nope: no such folder"),
            (["--weights", str(tmp_path / "nope.pt")], "--weights " + str(tmp_path / "nope.pt")),
            (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"],
             "--device")):
        argv = ["train", "--nproc", "2", *argv]
        monkeypatch.setattr(sys, "argv", ["inceptionctl", *argv])
        result = cli(*argv)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert calls == []


def test_a_failed_process_under_torchrun_is_one_line_with_its_exit_code(tmp_path):
    """A mistake only the processes find (here, weights that are a text file): each says it in
    one line, then the launcher one line naming the rank and code; exit 2, as without --nproc."""
    text = tmp_path / "weights.pt"
    text.write_text("not weights")
    tmp = tmp_path / "tmp"  # the temporary folder: torchrun's log folder goes when it ends
    tmp.mkdir()
    done = subprocess.run([sys.executable, "-m", "inceptionctl", "train", "--nproc", "2",
                           "--weights", str(text), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env=_env(TMPDIR=str(tmp)))
    assert done.returncode == 2, done.stderr[-3000:]
    assert list(tmp.iterdir()) == []
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert errors[:2] == [f"error: {text}: not a PyTorch weights file (it looks like a text "
                          f"file)"] * 2
    assert errors[2].startswith("error: train --nproc 2: rank ") and \
        errors[2].endswith(" exited with code 2 (2 of the processes failed; the message is "
                           "above)")


def test_a_user_error_on_one_rank_ends_the_others_in_one_line_not_a_traceback(tmp_path):
    """--strict-data meeting an unreadable image in one rank's shard: that rank says what, the
    other (its collective broken under it) says it stopped because of it, the launcher names the
    failed rank; exit 2 and no traceback of gloo's."""
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (40, 40), (30 * i, 90, 200)).save(
                    tmp_path / "data" / split / c / f"{i}.png")
    (tmp_path / "data" / "train" / "a" / "3.png").write_bytes(b"not an image")
    done = subprocess.run([sys.executable, "-m", "inceptionctl", "train", "--nproc", "2",
                           "--recipe", "googlenet-small", "--data", str(tmp_path / "data"),
                           "--strict-data", "--precision", "fp32", "--set", "train.epochs=1",
                           "--set", "train.batch_size=4", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "gloo" not in done.stderr, done.stderr[-3000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert errors[0].startswith(f"error: {tmp_path / 'data' / 'train' / 'a' / '3.png'}: "
                                f"cannot read image")
    assert errors[-1].startswith("error: train --nproc 2: rank ") and \
        " exited with code 2 " in errors[-1]
    # the other rank says why it stopped, unless torchrun's SIGTERM reached it first
    assert len(errors) in (2, 3), done.stderr[-3000:]
    if len(errors) == 3:
        assert errors[1].startswith("error: rank ") and ": lost the other processes of the " \
            "group (one that failed says why above): " in errors[1] and "Connection" in errors[1]
        assert f"rank {errors[1].split()[2].rstrip(':')} " not in errors[-1]  # the other one


def test_the_launcher_names_the_rank_that_failed_first_and_said_why():
    from types import SimpleNamespace as F

    from inceptionctl.distributed import peer_lost
    from inceptionctl.launch import first_failure

    # the first to fail, to the second
    assert first_failure({0: F(exitcode=1, timestamp=5), 1: F(exitcode=1, timestamp=4)})[0] == 1
    assert first_failure({0: F(exitcode=-9, timestamp=6), 1: F(exitcode=1, timestamp=5)})[0] == 1
    # within one second: a user error, then a signal but SIGTERM (torchrun's agent sends that to
    # the others once one failed), then a crash or a rank that stopped because another did
    assert first_failure({0: F(exitcode=1, timestamp=5), 1: F(exitcode=2, timestamp=5)})[0] == 1
    assert first_failure({0: F(exitcode=-15, timestamp=5), 1: F(exitcode=2, timestamp=5)})[0] == 1
    assert first_failure({0: F(exitcode=-15, timestamp=5), 1: F(exitcode=1, timestamp=5)})[0] == 1
    assert first_failure({0: F(exitcode=-15, timestamp=5), 1: F(exitcode=-9, timestamp=5)})[0] == 1
    assert first_failure({0: F(exitcode=1, timestamp=5), 1: F(exitcode=-9, timestamp=5)})[0] == 1
    assert first_failure({3: F(exitcode=2, timestamp=5), 1: F(exitcode=2, timestamp=5)})[0] == 1
    lost = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] "
                        "Connection closed by peer [::1]:1. This is typically caused by a "
                        "remote worker crashing. Check the logs of the remote worker.")
    env = {"WORLD_SIZE": "2", "RANK": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert peer_lost(lost) == ("rank 1: lost the other processes of the group (one that "
                                   "failed says why above): Connection closed by peer "
                                   "[::1]:1")
        assert peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
        # this rank's own NCCL or rendezvous trouble is its own error, with its traceback
        assert peer_lost(RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1, invalid usage")) \
            is None
        assert peer_lost(torch.distributed.DistStoreError("Timed out after 901 seconds waiting "
                                                          "for clients. 1/2 clients joined.")) \
            is None
        mp.setenv("WORLD_SIZE", "1")
        assert peer_lost(lost) is None  # alone, a broken connection is this process's own


def test_the_launcher_reports_a_signal_as_a_shell_does():
    from inceptionctl.launch import exit_code

    assert (exit_code(2), exit_code(-9), exit_code(-15), exit_code(0)) == (2, 137, 143, 1)


@pytest.mark.slow
@pytest.mark.parametrize("sig, group, code", [(signal.SIGTERM, False, 143),
                                              (signal.SIGINT, True, 130)])
def test_a_signal_to_the_nproc_command_stops_every_rank_which_saves(tmp_path, tiny_recipe, sig,
                                                                    group, code):
    """`kill PID` of `inceptionctl train --nproc 2` (systemd, SLURM), or Ctrl-C to its group:
    the signal reaches torchrun and both ranks, which save; one line says how to resume (with
    --nproc 2), exit 143 / 130, no traceback, and no process is left training."""
    from .conftest import Child, cli_command

    run = tmp_path / "run"
    args = ["train", "--recipe", tiny_recipe, "--out", run, "--set", "train.epochs=50",
            "--nproc", "2", "--workers", "0", "--precision", "fp32", "--device", "cpu"]
    with Child(cli_command(*args), env=_env()) as child:
        child.wait_for("epoch 1/50: ", timeout=600)
        if group:
            child.signal_group(sig)
        else:
            os.kill(child.proc.pid, sig)  # the command's own pid only
        assert child.wait(timeout=120) == code, child.stderr[-3000:]
    err = child.stderr
    assert "Traceback" not in err and "SignalException" not in err, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0].endswith(
        f"resume with: inceptionctl train --resume {run} --nproc 2"), errors
    state = read_checkpoint(run / "last.pt")["train_state"]
    assert state["epoch"] >= 1 and state["world_size"] == 2
    assert _running(run) == "", "processes still running: " + _running(run)


@pytest.mark.parametrize("under", [False, True])
def test_nproc_checks_out_once_before_any_process_starts(cli, monkeypatch, tmp_path, under):
    """Every rank used to find --out unusable and say so, with the launcher's line after."""
    import subprocess as sp

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sp, "Popen", lambda *a, **k: pytest.fail("torchrun was started"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = afile / "sub" if under else afile
    result = cli("train", "--nproc", "2", "--out", out)
    assert result.exit_code == 2
    said = f"{afile} is not a folder" if under else "is a file; give a folder for the run"
    assert result.stderr.strip().splitlines() == [f"error: --out {out}: {said}"]


def test_nproc_reads_a_damaged_resume_checkpoint_once_before_any_process_starts(
        cli, monkeypatch, tmp_path):
    import subprocess as sp

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sp, "Popen", lambda *a, **k: pytest.fail("torchrun was started"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)  # cut short
    result = cli("train", "--nproc", "2", "--resume", run)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {run / 'last.pt'}: ")


@pytest.mark.slow
def test_the_ranks_save_and_stop_when_the_nproc_command_is_killed(tmp_path, tiny_recipe):
    """SIGKILL of `inceptionctl train --nproc 2` itself (nothing can be forwarded): torchrun,
    in its own process group, gets SIGTERM from the kernel (PR_SET_PDEATHSIG), so the ranks
    save and stop instead of training on unattended."""
    import time

    from .conftest import Child, cli_command

    run = tmp_path / "run"
    args = ["train", "--recipe", tiny_recipe, "--out", run, "--set", "train.epochs=100000",
            "--nproc", "2", "--workers", "0", "--precision", "fp32", "--device", "cpu"]
    with Child(cli_command(*args), env=_env()) as child:
        child.wait_for("epoch 1/100000: ", timeout=600)
        os.kill(child.proc.pid, signal.SIGKILL)
        child.proc.wait(timeout=30)
        deadline = time.monotonic() + 60  # 100,000 tiny epochs take hours
        while time.monotonic() < deadline:
            if not _running(run):
                break
            time.sleep(0.5)
        else:
            subprocess.run(["pkill", "-9", "-f", "--", f"--out {run}"])
            pytest.fail("torchrun's processes went on training after the command was killed")
    state = read_checkpoint(run / "last.pt")["train_state"]
    assert state["epoch"] >= 1 and (state["epoch"] > 1 or state["step_in_epoch"] > 0)


def _running(run: Path) -> str:
    """The pids of processes whose command line names ``--out run`` (empty: none)."""
    found = subprocess.run(["pgrep", "-f", "--", f"--out {run}"], capture_output=True, text=True)
    assert found.returncode in (0, 1), found.stderr  # 1: none found; 2 and up: pgrep failed
    return found.stdout.strip()
