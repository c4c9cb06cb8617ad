"""A preference pair as one row: the prompt once, the chosen answer, then the rejected one behind a mask."""

from __future__ import annotations

from alignment.batching import collate_shared_pairs, shared_prefix
from alignment.data.chat import IGNORE_INDEX as I
from alignment.data.preferences import TokenizedPair


def test_rows_masks_positions_and_last_tokens_by_hand():
    a = TokenizedPair([1, 2, 3, 4, 5], [I, I, I, 4, 5], [1, 2, 3, 7], [I, I, I, 7], margin=0.5)
    b = TokenizedPair([9, 8, 6], [I, I, 6], [9, 8, 5, 5], [I, I, 5, 5], weight=2.0)
    out = collate_shared_pairs([a, b], pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5, 7], [9, 8, 6, 5, 5, 0]]
    # the rejected answer restarts its positions where the prompt ends
    assert out["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3]
    assert out["position_ids"][1, :5].tolist() == [0, 1, 2, 2, 3]
    assert out["attention_mask"].shape == (2, 1, 6, 6)
    assert out["attention_mask"][0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 1],  # the rejected token sees the prompt and itself, not the chosen answer
    ]
    assert out["attention_mask"][1, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 0, 1, 0, 0],
        [1, 1, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding sees only itself
    ]
    assert out["chosen_last"].tolist() == [4, 2] and out["rejected_last"].tolist() == [5, 4]
    assert out["sequence_lengths"].tolist() == [5, 3, 4, 4]  # chosen rows, then rejected rows
    assert out["prompt_lengths"].tolist() == [3, 2]
    assert out["margin"].tolist() == [0.5, 0.0] and out["weight"].tolist() == [1.0, 2.0]


def test_the_shared_part_stops_at_the_first_trained_token_even_when_the_answers_start_alike():
    same_start = TokenizedPair([1, 2, 3, 4], [I, I, 3, 4], [1, 2, 3, 5], [I, I, 3, 5])
    assert shared_prefix(same_start) == 2
    out = collate_shared_pairs([same_start], pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 3, 5]]
    assert out["chosen_last"].tolist() == [3] and out["rejected_last"].tolist() == [5]


def test_an_empty_rejected_answer_is_scored_at_the_end_of_the_prompt():
    out = collate_shared_pairs([TokenizedPair([1, 2, 3], [I, I, 3], [1, 2], [I, I])], pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3]]
    assert out["chosen_last"].tolist() == [2] and out["rejected_last"].tolist() == [1]
