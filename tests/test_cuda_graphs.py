"""The torch backend's CUDA-graph cache (``backends/torch.py``'s ``_Graphs``), its control flow
run on the CPU with torch.cuda's graph calls replaced by stand-ins: a capture that fails turns
graphs off and the pass runs eagerly, an error in the warm-up passes is raised as it is, and
beyond the limit inputs run eagerly. The replays themselves are checked on a GPU
(``tests/test_gpu.py``)."""

from contextlib import nullcontext

import pytest
import torch

from inceptionctl.backends.torch import _Graphs


class _Fakes:
    """torch.cuda's stream and graph calls, as far as ``_Graphs`` uses them; ``capturing``
    is true inside a capture, as a real stream's capture status would be."""

    def __init__(self):
        self.capturing = False
        self.replays = 0

    def install(self, monkeypatch):
        fakes = self

        class Stream:
            def wait_stream(self, other):
                pass

        class CUDAGraph:
            def replay(self):
                fakes.replays += 1

        class graph:
            def __init__(self, g, pool=None, stream=None):
                assert pool == "pool" and isinstance(stream, Stream)

            def __enter__(self):
                fakes.capturing = True

            def __exit__(self, *exc):
                fakes.capturing = False

        for name, value in (("device", lambda d: nullcontext()), ("Stream", Stream),
                            ("current_stream", lambda *a: Stream()),
                            ("stream", lambda s: nullcontext()), ("graph", graph),
                            ("CUDAGraph", CUDAGraph), ("graph_pool_handle", lambda: "pool"),
                            ("synchronize", lambda *a: None)):
            monkeypatch.setattr(torch.cuda, name, value)
        return self


@pytest.fixture
def fakes(monkeypatch):
    return _Fakes().install(monkeypatch)


def test_a_graph_per_key_up_to_the_limit_then_eager(fakes):
    calls = []

    def fn(x):
        calls.append(fakes.capturing)
        return x * 2

    graphs = _Graphs(torch.device("cpu"), limit=2)
    x = torch.arange(4.0)
    assert torch.equal(graphs(("a",), x, fn), x * 2)
    assert calls == [False, False, True] and fakes.replays == 1  # 2 warm-up passes, a capture
    assert torch.equal(graphs(("a",), x, fn), x * 2) and len(calls) == 3 and fakes.replays == 2
    graphs(("b",), x, fn)
    calls.clear()
    assert torch.equal(graphs(("c",), x + 1, fn), (x + 1) * 2)  # past the limit: eager
    assert calls == [False] and sorted(graphs.captured) == [("a",), ("b",)]


def test_a_capture_that_fails_turns_graphs_off_and_runs_eagerly(fakes):
    def fn(x):
        if fakes.capturing:
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        return x + 1

    graphs = _Graphs(torch.device("cpu"))
    x = torch.zeros(3)
    assert torch.equal(graphs(("a",), x, fn), x + 1)
    assert graphs.failed == "operation not permitted when stream is capturing"
    assert not graphs.captured and fakes.replays == 0
    assert torch.equal(graphs(("b",), x, fn), x + 1) and not graphs.captured  # no new capture


def test_an_error_in_the_warm_up_passes_is_the_callers(fakes):
    def fn(x):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    graphs = _Graphs(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="out of memory"):
        graphs(("a",), torch.zeros(2), fn)
    assert graphs.failed is None  # the next input may be captured
