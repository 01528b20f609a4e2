"""bench/graph_timing.py without a GPU: CUDA events and the graph replaced by a clock the test
drives, so the order of flush, record and replay and the per-op arithmetic are checked exactly."""

from __future__ import annotations

import importlib.util
import os

import torch

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "graph_timing.py")
_spec = importlib.util.spec_from_file_location("graph_timing", _PATH)
gt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gt)


class Clock:
    def __init__(self):
        self.now_ms = 0.0
        self.log = []


def fakes(monkeypatch, clock):
    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t = None

        def record(self):
            self.t = clock.now_ms
            clock.log.append("record")

        def elapsed_time(self, other):
            return other.t - self.t

    class Graph:
        def __init__(self, durations_ms):
            self.durations = list(durations_ms)

        def replay(self):
            clock.log.append("replay")
            clock.now_ms += self.durations.pop(0)

    class Flush:
        def zero_(self):
            clock.log.append("flush")
            clock.now_ms += 128.0  # outside the timed interval: must not count

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: clock.log.append("sync"))
    return Graph, Flush


def test_each_replay_is_timed_alone_and_divided_by_the_ops(monkeypatch):
    clock = Clock()
    Graph, Flush = fakes(monkeypatch, clock)
    # binary fractions of a ms, so every sum and difference is exact
    times = gt.replay_us_per_op(Graph([0.0625, 0.03125, 0.046875]), replays=3, ops=125, flush=Flush())
    assert times == [0.5, 0.25, 0.375]  # µs = ms * 1000 / 125 ops
    assert clock.log == ["flush", "record", "replay", "record"] * 3 + ["sync"]


def test_without_a_flush_nothing_is_zeroed(monkeypatch):
    clock = Clock()
    Graph, _ = fakes(monkeypatch, clock)
    times = gt.replay_us_per_op(Graph([0.25, 0.5]), replays=2, ops=10)
    assert times == [25.0, 50.0]
    assert "flush" not in clock.log
