"""What a phase logs about its precision: `auto` on a CPU says what the bf16 probe measured."""

from __future__ import annotations

import pytest

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


def test_the_probe_records_the_ratio_its_verdict_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "_BF16_SPEEDUP", None)
    fast = training.bf16_is_fast()
    assert training._BF16_SPEEDUP is not None and training._BF16_SPEEDUP > 0
    assert fast == (training._BF16_SPEEDUP > training._BF16_NEEDED)
