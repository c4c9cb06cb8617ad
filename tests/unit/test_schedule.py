"""Which examples each step reads: every example once per epoch, length grouping, ranks in step."""

from __future__ import annotations

import random

import pytest

from alignment import distributed as dist
from alignment.config import TrainConfig
from alignment.training import GROUP_STEPS, Schedule


def _epoch(schedule: Schedule, epoch: int = 0) -> list[list[int]]:
    """Every step's examples (all ranks, all micro-batches) of one epoch."""
    start = epoch * schedule.steps_per_epoch
    return [[i for r in range(schedule.world) for mb in schedule.micro_batches(s, r) for i in mb]
            for s in range(start, start + schedule.steps_per_epoch)]


def _padding(schedule: Schedule, lengths: list[int]) -> float:
    """Fraction of padding in the micro-batches (each is padded to its longest example)."""
    batches = [mb for s in range(schedule.steps_per_epoch) for r in range(schedule.world)
               for mb in schedule.micro_batches(s, r)]
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / sum(max(lengths[i] for i in b) * len(b) for b in batches)


@pytest.mark.parametrize("world,grad_accum", [(1, 1), (2, 1), (2, 2)])
def test_length_grouping_covers_every_example_once_and_pads_little(world: int, grad_accum: int) -> None:
    rng = random.Random(0)
    lengths = [rng.randint(20, 300) for _ in range(400)]
    cfg = TrainConfig(batch_size=4, grad_accum=grad_accum)
    grouped = Schedule.create(len(lengths), cfg, world, lengths)
    plain = Schedule.create(len(lengths), TrainConfig(batch_size=4, grad_accum=grad_accum, group_by_length=False),
                            world, lengths)
    for schedule in (grouped, plain):
        steps = _epoch(schedule)
        flat = sorted(i for s in steps for i in s)
        assert flat == list(range(400))  # 400 is a multiple of every step size here: no wrap-around
    # Random batches of uniform lengths in [20, 300] waste about a third; sorted groups about 5%.
    assert _padding(plain, lengths) > 0.2
    assert _padding(grouped, lengths) < 0.08
    # The steps are shuffled, not run from longest to shortest.
    maxima = [max(lengths[i] for i in s) for s in _epoch(grouped)]
    assert maxima != sorted(maxima, reverse=True) and maxima != sorted(maxima)
    # Deterministic for a seed (resume reads the same batches), different across epochs.
    again = Schedule.create(len(lengths), cfg, world, lengths)
    assert _epoch(again) == _epoch(grouped)
    assert _epoch(grouped, 1) != _epoch(grouped, 0)


def test_grouping_is_off_without_lengths_or_when_disabled() -> None:
    lengths = list(range(50))
    assert Schedule.create(50, TrainConfig(), 1).lengths is None
    assert Schedule.create(50, TrainConfig(group_by_length=False), 1, lengths).lengths is None
    assert Schedule.create(50, TrainConfig(), 1, lengths).lengths == lengths
    with pytest.raises(ValueError, match="49 lengths for 50 examples"):
        Schedule.create(50, TrainConfig(), 1, lengths[:-1])


def test_a_group_spans_sixteen_steps() -> None:
    # 3 groups' worth of examples with lengths rising across groups: each step's examples come from
    # one group, so no step mixes the shortest and the longest.
    per_step = 2
    lengths = [i // (per_step * GROUP_STEPS) for i in range(3 * per_step * GROUP_STEPS)]  # 0, 1 or 2
    schedule = Schedule.create(len(lengths), TrainConfig(batch_size=per_step), 1, lengths)
    for step in _epoch(schedule):
        assert len({lengths[i] for i in step}) <= 2  # neighbours in one sorted group, never 0 and 2


@pytest.mark.parametrize("world", [1, 2, 3])
def test_even_shard_with_lengths_takes_longest_first_and_covers_all(world: int, monkeypatch) -> None:
    lengths = [5, 40, 7, 33, 12, 90, 1]
    seen: list[int] = []
    counts = set()
    for rank in range(world):
        monkeypatch.setattr(dist, "rank", lambda r=rank: r)
        monkeypatch.setattr(dist, "world_size", lambda: world)
        shards = dist.even_shard(len(lengths), 2, lengths)
        counts.add(len(shards))
        mine = [i for s in shards for i in s if i >= 0]
        assert [lengths[i] for i in mine] == sorted((lengths[i] for i in mine), reverse=True)
        seen += mine
    assert sorted(seen) == list(range(len(lengths)))
    assert len(counts) == 1  # the same number of forwards on every rank


def test_grouped_by_regroups_by_other_lengths_and_keeps_the_size() -> None:
    rng = random.Random(1)
    first = [rng.randint(20, 300) for _ in range(160)]
    second = [rng.randint(20, 300) for _ in range(160)]
    cfg = TrainConfig(batch_size=4, max_steps=30)
    schedule = Schedule.create(160, cfg, 1, first)
    regrouped = schedule.grouped_by(second)
    assert regrouped.total_steps == schedule.total_steps == 30
    assert _epoch(regrouped) == _epoch(Schedule.create(160, cfg, 1, second))  # as if created with them
    assert _padding(regrouped, second) < 0.08 < _padding(schedule, second)
    assert schedule.lengths == first  # the original is unchanged
    plain = Schedule.create(160, TrainConfig(batch_size=4, group_by_length=False), 1, first)
    assert plain.grouped_by(second) is plain  # grouping stays off
    with pytest.raises(ValueError, match="159 lengths for 160 examples"):
        schedule.grouped_by(second[:-1])
