"""What a phase logs about its precision: `auto` on a CPU says what the bf16 probe measured."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from alignment import training


def test_auto_logs_the_measured_bf16_speed_and_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(training, "_BF16_SPEEDUP", 1.62)
    assert training.use_bf16("auto") is True
    assert training.describe_bf16("auto", True) == (
        "bf16=True (auto: a bf16 matmul ran 1.62x as fast as fp32 here; bf16 is chosen above 1.25x)")
    # a setting given outright was not measured: nothing to explain
    assert training.describe_bf16("false", False) == "bf16=False"
    assert training.describe_bf16("true", True) == "bf16=True"


def fake_clock(durations: list[float]) -> SimpleNamespace:
    """A ``time`` whose perf_counter makes the probe's timed blocks last ``durations``, in the order timed."""
    now, ticks = [0.0], []
    for d in durations:
        ticks += [0.0, d]  # a start, then an end d later

    def perf_counter() -> float:
        now[0] += ticks.pop(0)
        return now[0]

    return SimpleNamespace(perf_counter=perf_counter)


@pytest.mark.parametrize(("fp32", "bf16", "ratio", "fast"), [
    # one round of each slowed by something else on the machine: the best round of each decides
    ([3.0, 9.0, 3.0, 3.0, 3.0], [1.0, 1.0, 5.0, 1.0, 1.0], 3.0, True),
    ([1.2, 1.2, 1.25, 1.3, 1.2], [1.0, 1.0, 1.0, 1.1, 1.0], 1.2, False),  # under the 1.25x needed
    ([2.5, 2.5, 2.5, 2.5, 2.5], [2.0, 2.0, 2.0, 2.0, 2.0], 1.25, False),  # exactly 1.25x is not above it
])
def test_the_probe_keeps_each_precisions_best_round_and_measures_once(
        monkeypatch: pytest.MonkeyPatch, fp32: list[float], bf16: list[float], ratio: float, fast: bool) -> None:
    monkeypatch.setattr(training, "_BF16_SPEEDUP", None)
    # the probe times fp32 then bf16 in each of its five rounds
    monkeypatch.setattr(training, "time", fake_clock([d for pair in zip(fp32, bf16) for d in pair]))
    assert training.bf16_is_fast() is fast
    assert training._BF16_SPEEDUP == pytest.approx(ratio)
    # measured once per process: a second call reads the clock no more (an empty clock would raise)
    assert training.bf16_is_fast() is fast


def test_bf16_probe_leaves_the_global_generator_alone(monkeypatch: pytest.MonkeyPatch):
    """A phase seeds, then asks use_bf16: the first phase of a process measures and later ones read the cached
    verdict, so a probe drawing from the global generator gave the same seed other samples after other phases."""
    monkeypatch.setattr(training, "_BF16_SPEEDUP", None)
    torch.manual_seed(7)
    training.bf16_is_fast()  # measures
    first = torch.rand(4)
    torch.manual_seed(7)
    training.bf16_is_fast()  # cached
    assert torch.equal(torch.rand(4), first)
