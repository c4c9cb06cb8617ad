"""A preference pair as one row: the prompt once, the chosen segment, then the rejected one behind a mask."""

from __future__ import annotations

import torch

from alignment.batching import collate_shared_pairs, pair_rows, shared_prefix
from alignment.data.chat import IGNORE_INDEX as I
from alignment.data.preferences import TokenizedPair


def test_rows_masks_positions_labels_and_last_tokens_by_hand():
    a = TokenizedPair([1, 2, 3, 4, 5], [I, I, I, 4, 5], [1, 2, 3, 7], [I, I, I, 7], margin=0.5)
    b = TokenizedPair([9, 8, 6], [I, I, 6], [9, 8, 5, 5], [I, I, 5, 5], weight=2.0)
    out = collate_shared_pairs([a, b], pad_id=0)
    # the prompt but its last token once; each segment starts with the prompt's last token
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5, 3, 7], [9, 8, 6, 8, 5, 5, 0]]
    assert out["labels"].tolist() == [[I, I, I, 4, 5, I, 7], [I, I, 6, I, 5, 5, I]]
    # the rejected segment's positions continue from the shared part
    assert out["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 2, 3]
    assert out["position_ids"][1, :6].tolist() == [0, 1, 2, 1, 2, 3]
    assert out["attention_mask"].shape == (2, 1, 7, 7)
    assert out["attention_mask"][0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 1, 0],  # the rejected segment sees the shared part and itself, not the chosen segment
        [1, 1, 0, 0, 0, 1, 1],
    ]
    assert out["attention_mask"][1, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 0, 0, 1, 0, 0, 0],
        [1, 0, 0, 1, 1, 0, 0],
        [1, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],  # padding sees only itself
    ]
    assert out["rejected_start"].tolist() == [5, 3] and out["prompt_lengths"].tolist() == [2, 1]
    assert out["chosen_last"].tolist() == [4, 2] and out["rejected_last"].tolist() == [6, 5]
    assert out["sequence_lengths"].tolist() == [5, 3, 4, 4]  # chosen rows, then rejected rows
    assert out["margin"].tolist() == [0.5, 0.0] and out["weight"].tolist() == [1.0, 2.0]
    # positions before a target belong to the chosen sequence (rows 0..B-1) or, in the rejected segment, B..2B-1
    rows, cols = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([3, 4, 5, 2, 3, 4])
    assert pair_rows(out, rows, cols).tolist() == [0, 0, 2, 1, 3, 3]


def test_the_shared_part_stops_at_the_first_trained_token_even_when_the_answers_start_alike():
    same_start = TokenizedPair([1, 2, 3, 4], [I, I, 3, 4], [1, 2, 3, 5], [I, I, 3, 5])
    assert shared_prefix(same_start) == 2
    out = collate_shared_pairs([same_start], pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 2, 3, 5]]
    assert out["labels"].tolist() == [[I, I, 3, 4, I, 3, 5]]
    assert out["chosen_last"].tolist() == [3] and out["rejected_last"].tolist() == [6]


def test_an_empty_rejected_answer_is_scored_at_the_end_of_the_prompt():
    out = collate_shared_pairs([TokenizedPair([1, 2, 3], [I, I, 3], [1, 2], [I, I])], pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3, 2]]
    assert out["chosen_last"].tolist() == [2] and out["rejected_last"].tolist() == [3]
    assert out["position_ids"].tolist() == [[0, 1, 2, 1]]


def test_pairs_with_nothing_in_common_keep_both_rows_whole():
    out = collate_shared_pairs([TokenizedPair([1, 2], [I, 2], [3, 4], [I, 4])], pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4]] and out["labels"].tolist() == [[I, 2, I, 4]]
    assert out["position_ids"].tolist() == [[0, 1, 0, 1]]
    assert out["attention_mask"][0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]


def test_a_prompt_group_as_one_row_by_hand():
    """PPO's group rows: a prompt's answers share one row, the prompt (but its last token) once, then a segment per
    answer that starts with the prompt's last token; the labels mark each answer's tokens, in answer order."""
    from alignment.ppo import answers_of, minibatch, rollout_rows

    prompts = [[5, 6, 7], [5, 6, 7], [8, 9], [8, 9]]
    responses = [[1, 2], [3], [4, 4, 2], [2]]
    rows = rollout_rows(prompts, responses, pad=0, group=2)
    assert rows["input_ids"].tolist() == [[5, 6, 7, 1, 2, 7, 3], [8, 9, 4, 4, 2, 9, 2]]
    assert rows["labels"].tolist() == [[I, I, I, 1, 2, I, 3], [I, I, 4, 4, 2, I, 2]]
    assert rows["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3], [0, 1, 2, 3, 4, 1, 2]]
    assert rows["lengths"].tolist() == [7, 7]
    assert rows["attention_mask"][0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 1, 0],  # the second answer sees the prompt and itself, not the first answer
        [1, 1, 0, 0, 0, 1, 1],
    ]
    assert answers_of(torch.tensor([1, 0]), 2).tolist() == [2, 3, 0, 1]
    one = minibatch(rollout_rows(prompts[:2], [[1], [3]], pad=0, group=2), torch.tensor([0]))
    assert one["input_ids"].tolist() == [[5, 6, 7, 1, 7, 3]] and one["attention_mask"].shape == (1, 1, 6, 6)


def test_group_rows_need_each_groups_answers_to_share_their_prompt():
    import pytest

    from alignment.ppo import rollout_rows

    with pytest.raises(ValueError, match="share one prompt"):
        rollout_rows([[1, 2], [1, 3]], [[4], [5]], pad=0, group=2)


def test_pair_lengths_are_the_widths_each_layout_pads_to():
    from alignment.batching import collate_pairs, pair_lengths

    pairs = [TokenizedPair([1, 2, 3, 4, 5], [I, I, I, 4, 5], [1, 2, 3, 7], [I, I, I, 7]),
             TokenizedPair([9, 8, 6], [I, I, 6], [9, 8, 5, 5], [I, I, 5, 5]),
             TokenizedPair([1, 2, 3], [I, I, 3], [1, 2], [I, I])]
    assert pair_lengths(pairs) == pair_lengths(pairs, collate_pairs) == [5, 4, 3]
    assert pair_lengths(pairs, collate_shared_pairs) == [7, 6, 4]
    for pair, width in zip(pairs, pair_lengths(pairs, collate_shared_pairs)):  # a pair alone pads to nothing
        assert collate_shared_pairs([pair], pad_id=0)["input_ids"].shape[1] == width
    for pair, width in zip(pairs, pair_lengths(pairs)):
        assert collate_pairs([pair], pad_id=0)["input_ids"].shape[1] == width
