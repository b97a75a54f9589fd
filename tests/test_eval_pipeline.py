"""Eval keeps one batch in flight (``Session.submit_crops``): a session that computes later, as
one on CUDA does, gives the same report as one that computes at once, batch for batch."""

import pytest
import torch

from inceptionctl import evaluate as ev
from inceptionctl.backend import open_artifact
from inceptionctl.errors import InceptionError


class Deferred:
    """A real session whose ``submit_crops`` returns before computing, counting batches in
    flight; ``fail_at`` makes the n-th result raise."""

    def __init__(self, session, fail_at=None):
        self.inner, self.fail_at = session, fail_at
        self.info, self.device = session.info, session.device
        self.switchable, self.set_precision = session.switchable, session.set_precision
        self.run = session.run  # the precision probe times it
        self.in_flight = self.most_in_flight = self.submitted = 0

    def submit_crops(self, crops, mean, std):
        self.submitted += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        crops, number = crops.clone(), self.submitted

        def result():
            self.in_flight -= 1
            if number == self.fail_at:
                raise InceptionError(f"batch {number} failed")
            return self.inner.run_crops(crops, mean, std)

        return result

    def close(self):
        self.inner.close()


def _report(run, monkeypatch, wrap):
    made = []

    def opened(path, *args, **kwargs):
        made.append(wrap(open_artifact(path, "torch", "cpu")))
        return made[-1]

    monkeypatch.setattr(ev, "open_artifact", opened)
    report = ev.evaluate(ev.EvalOptions([str(run), str(run)], crops=[1, 10], device="cpu",
                                        batch_size=16, limit=24, workers=0))
    return report, made


def test_deferred_results_give_the_same_report_with_one_batch_in_flight(tiny_run, monkeypatch):
    run, _ = tiny_run
    now, _ = _report(run, monkeypatch, lambda s: s)
    later, made = _report(run, monkeypatch, Deferred)
    assert [(r.models, r.crops, r.top1, r.top5) for r in later.rows] == \
        [(r.models, r.crops, r.top1, r.top5) for r in now.rows]
    assert later.confusion == now.confusion
    # 24 images x 11 crops in batches of 16: 17 batches per model, each collected, one pending
    # per model at a time (the loop submits batch i+1 before collecting batch i)
    assert [m.submitted for m in made] == [17, 17]
    assert [m.most_in_flight for m in made] == [2, 2] and [m.in_flight for m in made] == [0, 0]


def test_a_failing_deferred_batch_ends_eval_with_its_error(tiny_run, monkeypatch):
    run, _ = tiny_run
    with pytest.raises(InceptionError, match="batch 3 failed"):
        _report(run, monkeypatch, lambda s: Deferred(s, fail_at=3))


def test_the_torch_session_submits_on_the_cpu_as_it_runs(tiny_run):
    run, _ = tiny_run
    session = open_artifact(str(run), "torch", "cpu")
    mean, std = session.info.preprocessing["mean"], session.info.preprocessing["std"]
    size = int(session.info.preprocessing["eval_size"])
    crops = torch.randint(0, 256, (5, 3, size, size), dtype=torch.uint8)
    assert torch.equal(session.submit_crops(crops, mean, std)(),
                       session.run(ev.normalize(crops, mean, std)))


def test_the_cuda_path_keeps_one_device_copy_of_each_mean_and_std(tiny_run):
    """``submit_crops`` on CUDA sends mean and std to the device once (a copy per batch would
    wait for the forward pass queued before it): ImageNet's values as a list, a float32 tensor
    and a (3, 1, 1) array are one entry, with the float32 values normalize would use."""
    import numpy as np

    run, _ = tiny_run
    session = open_artifact(str(run), "torch", "cpu")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    first = session._device_stats(mean, std)
    for m, s in ((torch.tensor(mean), torch.tensor(std)),
                 (np.array(mean).reshape(3, 1, 1), tuple(std))):
        assert session._device_stats(m, s) is first
    assert len(session._stats) == 1
    assert torch.equal(first[0], torch.tensor(mean)) and first[0].dtype == torch.float32
    assert session._device_stats([0.5] * 3, std) is not first


def test_eval_workers_make_many_crops_in_process_on_two_cpus(monkeypatch):
    from inceptionctl import data

    monkeypatch.setattr(ev, "usable_cpus", lambda: 2)
    monkeypatch.setattr(data, "default_workers", lambda: 1)
    monkeypatch.setattr(ev, "default_workers", lambda: 1)
    assert ev.eval_workers([144]) == 0 and ev.eval_workers([10, 144]) == 0
    assert ev.eval_workers([1, 144]) == 1  # 1 crop: decoding is a real share of the work
    monkeypatch.setattr(ev, "usable_cpus", lambda: 16)
    monkeypatch.setattr(ev, "default_workers", lambda: 8)
    assert ev.eval_workers([144]) == 8
