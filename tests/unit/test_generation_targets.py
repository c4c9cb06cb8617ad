"""The generation bench's targets table: the engine against generate's tokens/s, per batch size."""

from __future__ import annotations

from benchmarks.generation import targets_table

ROWS = [  # (batch, precision, decoding, generate tok/s, engine tok/s)
    (8, "fp32", "greedy", 60.0, 192.0),  # 3.2x
    (8, "bf16", "greedy", 100.0, 300.0),  # exactly 3x: met
    (32, "fp32", "greedy", 130.0, 130.0),  # 1x
    (32, "bf16", "top-p 0.95", 100.0, 150.0),  # 1.5x
]


def test_a_batch_meets_the_target_only_when_every_row_does_and_a_miss_says_by_how_much() -> None:
    lines = targets_table(ROWS)
    assert lines[2] == "| 8 | ≥3x | 3.00x (bf16, greedy) | 3.20x (fp32, greedy) | ✓ |"
    assert lines[3] == ("| 32 | ≥3x | 1.00x (fp32, greedy) | 1.50x (bf16, top-p 0.95) | "
                        "✗ (the lowest needs 3.00x its speed) |")
    assert len(lines) == 4


def test_a_lower_target_flips_the_verdict_of_the_slow_batch() -> None:
    assert targets_table(ROWS, target=1.0)[3].endswith("| ✓ |")
    assert targets_table(ROWS, target=1.2)[3].endswith("| ✗ (the lowest needs 1.20x its speed) |")
