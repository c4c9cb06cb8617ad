"""Ranking -> preference pairs: hand-listed expectations per policy, then a seeded property check."""

from __future__ import annotations

import math
import random

import pytest

from alignment.data.pairs import PAIR_POLICIES, PreferencePair, dedupe_pairs, ranking_to_pairs


def index_pairs(pairs: list[PreferencePair]) -> list[tuple[int, int]]:
    return [(p.chosen_index, p.rejected_index) for p in pairs]


def msg(content: str, role: str = "assistant") -> list[dict[str, str]]:
    return [{"role": role, "content": content}]


# ------------------------------------------------------------------------------------------------ N = 2


def test_two_responses_give_one_pair():
    (pair,) = ranking_to_pairs(["good", "bad"], [1, 2])
    assert pair == PreferencePair("good", "bad", 1.0, 2.0, 0, 1)


def test_two_responses_reversed_ranks():
    (pair,) = ranking_to_pairs(["bad", "good"], [2, 1])
    assert (pair.chosen, pair.rejected) == ("good", "bad")
    assert (pair.chosen_index, pair.rejected_index) == (1, 0)
    assert (pair.chosen_rank, pair.rejected_rank) == (1.0, 2.0)


@pytest.mark.parametrize("policy", PAIR_POLICIES)
def test_two_tied_responses_give_no_pair(policy):
    assert ranking_to_pairs(["a", "b"], [1, 1], policy) == []


# ------------------------------------------------------------------------- N = 4, distinct ranks
# ranks [3, 1, 4, 2]: best to worst is index 1, 3, 0, 2.

RESPONSES4 = ["a", "b", "c", "d"]
RANKS4 = [3, 1, 4, 2]


def test_all_distinct():
    pairs = ranking_to_pairs(RESPONSES4, RANKS4, "all")
    assert index_pairs(pairs) == [(1, 3), (1, 0), (1, 2), (3, 0), (3, 2), (0, 2)]
    assert ["".join((p.chosen, p.rejected)) for p in pairs] == ["bd", "ba", "bc", "da", "dc", "ac"]


def test_default_policy_is_all():
    assert ranking_to_pairs(RESPONSES4, RANKS4) == ranking_to_pairs(RESPONSES4, RANKS4, "all")


def test_best_vs_rest_distinct():
    assert index_pairs(ranking_to_pairs(RESPONSES4, RANKS4, "best-vs-rest")) == [(1, 3), (1, 0), (1, 2)]


def test_adjacent_distinct():
    assert index_pairs(ranking_to_pairs(RESPONSES4, RANKS4, "adjacent")) == [(1, 3), (3, 0), (0, 2)]


# ----------------------------------------------------------------------------------------------- ties
# ranks [1, 1, 2, 3]: indices 0 and 1 tie for best.

RANKS_TIED = [1, 1, 2, 3]


def test_all_with_ties():
    assert index_pairs(ranking_to_pairs(RESPONSES4, RANKS_TIED, "all")) == [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]


def test_best_vs_rest_with_tied_best():
    assert index_pairs(ranking_to_pairs(RESPONSES4, RANKS_TIED, "best-vs-rest")) == [(0, 2), (1, 2), (0, 3), (1, 3)]


def test_adjacent_with_ties():
    # both rank-1 responses vs the rank-2 one, then rank 2 vs rank 3
    assert index_pairs(ranking_to_pairs(RESPONSES4, RANKS_TIED, "adjacent")) == [(0, 2), (1, 2), (2, 3)]


def test_tie_in_the_middle():
    # ranks [1, 2, 2, 3]: adjacent links 0 to both rank-2 ones and both rank-2 ones to 3, never 1 to 2
    assert index_pairs(ranking_to_pairs(RESPONSES4, [1, 2, 2, 3], "adjacent")) == [(0, 1), (0, 2), (1, 3), (2, 3)]
    assert (1, 2) not in index_pairs(ranking_to_pairs(RESPONSES4, [1, 2, 2, 3], "all"))


@pytest.mark.parametrize("policy", PAIR_POLICIES)
def test_all_tied_gives_no_pairs(policy):
    assert ranking_to_pairs(RESPONSES4, [2, 2, 2, 2], policy) == []


# ----------------------------------------------------------------------------------- equal content


def test_same_text_at_two_ranks_drops_the_pair_between_them():
    pairs = ranking_to_pairs(["x", "y", "x"], [1, 2, 3])
    assert index_pairs(pairs) == [(0, 1), (1, 2)]  # (0, 2) would be x > x


def test_whitespace_only_difference_counts_as_equal():
    assert ranking_to_pairs(["  answer\n", "answer"], [1, 2]) == []
    assert index_pairs(ranking_to_pairs(["answer", "other", "\tanswer "], [1, 2, 3])) == [(0, 1), (1, 2)]


def test_inner_whitespace_and_case_still_differ():
    assert len(ranking_to_pairs(["an  answer", "an answer"], [1, 2])) == 1
    assert len(ranking_to_pairs(["Answer", "answer"], [1, 2])) == 1


def test_message_list_responses():
    responses = [msg("Paris."), msg("Lyon."), msg(" Paris.\n")]
    pairs = ranking_to_pairs(responses, [1, 2, 3])
    assert index_pairs(pairs) == [(0, 1), (1, 2)]
    assert pairs[0].chosen is responses[0]  # responses are passed through as given
    assert pairs[0].rejected is responses[1]


def test_message_lists_differing_in_role_are_not_equal():
    assert len(ranking_to_pairs([msg("hi", "assistant"), msg("hi", "user")], [1, 2])) == 1


def test_message_list_compares_the_whole_sequence():
    longer = msg("Paris.") + [{"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}]
    assert len(ranking_to_pairs([msg("Paris."), longer], [1, 2])) == 1


def test_string_and_message_list_are_not_equal():
    assert len(ranking_to_pairs(["Paris.", msg("Paris.")], [1, 2])) == 1


def test_identical_responses_at_different_ranks_vs_another_are_not_duplicated():
    # "A" at ranks 1 and 2 both beat "B": one A > B pair, the first (best-ranked) one.
    pairs = ranking_to_pairs(["A", "A", "B"], [1, 2, 3])
    assert index_pairs(pairs) == [(0, 2)]
    # the same when the two "A"s tie, and for every policy that links them to B
    assert index_pairs(ranking_to_pairs(["A", " A", "B"], [1, 1, 2])) == [(0, 2)]
    assert index_pairs(ranking_to_pairs(["A", "A", "B"], [1, 1, 2], "adjacent")) == [(0, 2)]
    assert index_pairs(ranking_to_pairs(["A", "A", "B"], [1, 1, 2], "best-vs-rest")) == [(0, 2)]


def test_identical_worse_responses_are_not_duplicated():
    assert index_pairs(ranking_to_pairs(["best", "meh", "meh"], [1, 2, 3])) == [(0, 1)]


def test_dedupe_pairs_keeps_first_occurrence():
    first = ranking_to_pairs(["a", "b"], [1, 2])[0]
    again = ranking_to_pairs(["x", "a ", "b"], [1, 2, 3])[2]  # a > b from another ranking, index (1, 2)
    reverse = ranking_to_pairs(["b", "a"], [1, 2])[0]
    assert dedupe_pairs([first, reverse, again]) == [first, reverse]
    assert dedupe_pairs(iter([again, first])) == [again]
    assert dedupe_pairs([]) == []


# ------------------------------------------------------------------------------------- ranks, order


def test_float_ranks():
    pairs = ranking_to_pairs(["a", "b", "c"], [1.5, 0.5, 2.0])
    assert index_pairs(pairs) == [(1, 0), (1, 2), (0, 2)]
    assert (pairs[0].chosen_rank, pairs[0].rejected_rank) == (0.5, 1.5)
    assert all(isinstance(p.chosen_rank, float) and isinstance(p.rejected_rank, float) for p in pairs)


def test_int_and_float_of_equal_value_tie():
    assert ranking_to_pairs(["a", "b"], [1, 1.0]) == []


def test_negative_ranks_are_fine():
    assert index_pairs(ranking_to_pairs(["a", "b"], [0, -1])) == [(1, 0)]


def test_order_is_deterministic_and_sorted():
    rng = random.Random(1)
    responses = [f"r{i}" for i in range(6)]
    ranks = [rng.choice([1, 2, 3]) for _ in responses]
    for policy in PAIR_POLICIES:
        pairs = ranking_to_pairs(responses, ranks, policy)
        assert pairs == ranking_to_pairs(list(responses), list(ranks), policy)
        keys = [(p.chosen_rank, p.rejected_rank, p.chosen_index, p.rejected_index) for p in pairs]
        assert keys == sorted(keys)


@pytest.mark.parametrize("policy", PAIR_POLICIES)
def test_input_order_does_not_change_pairs_when_ranks_are_distinct(policy):
    responses, ranks = ["a", "b", "c", "d", "e"], [4, 2, 5, 1, 3]
    order = [2, 0, 4, 1, 3]
    shuffled = ranking_to_pairs([responses[i] for i in order], [ranks[i] for i in order], policy)
    original = ranking_to_pairs(responses, ranks, policy)
    assert [(p.chosen, p.rejected) for p in shuffled] == [(p.chosen, p.rejected) for p in original]


def test_accepts_tuples():
    assert index_pairs(ranking_to_pairs(("a", "b"), (2, 1))) == [(1, 0)]


# ------------------------------------------------------------------------------------------- errors


def test_length_mismatch():
    with pytest.raises(ValueError, match="3 responses but 2 ranks"):
        ranking_to_pairs(["a", "b", "c"], [1, 2])
    with pytest.raises(ValueError, match="1 responses but 0 ranks"):
        ranking_to_pairs(["a"], [])  # checked before the fewer-than-2 shortcut


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_responses_give_no_pairs(n):
    assert ranking_to_pairs(["a"] * n, [1] * n) == []


def test_unknown_policy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'pairwise'") as err:
        ranking_to_pairs(["a", "b"], [1, 2], "pairwise")  # type: ignore[arg-type]
    for policy in PAIR_POLICIES:
        assert policy in str(err.value)


def test_nan_rank():
    with pytest.raises(ValueError, match=r"ranks\[1\]"):
        ranking_to_pairs(["a", "b"], [1, math.nan])
    with pytest.raises(ValueError, match=r"ranks\[0\]"):
        ranking_to_pairs(["a"], [float("nan")])  # bad ranks fail even with no pairs to make


@pytest.mark.parametrize("bad", [math.inf, "1", None, True])
def test_non_numeric_or_infinite_rank(bad):
    with pytest.raises(ValueError, match=r"ranks\[2\]"):
        ranking_to_pairs(["a", "b", "c"], [1, 2, bad])


# ------------------------------------------------------------------------------- property, seeded

VOCAB = ["alpha", "beta", "gamma", "delta", " alpha", "beta\n"]  # whitespace variants make duplicates


def content(response):
    """The test's own notion of equal content, written independently of the module."""
    if isinstance(response, str):
        return response.strip()
    return tuple((m["role"], m["content"].strip()) for m in response)


def random_ranking(rng: random.Random):
    n = rng.randint(0, 7)
    as_messages = rng.random() < 0.3
    responses = [rng.choice(VOCAB) for _ in range(n)]
    if as_messages:
        responses = [msg(r) for r in responses]
    levels = rng.choice([[1, 2], [1, 2, 3], [0.5, 1.5, 2.5, 3.5], list(range(10))])
    ranks = [rng.choice(levels) for _ in range(n)]
    return responses, ranks


def test_property_random_rankings():
    rng = random.Random(0)
    for _ in range(200):
        responses, ranks = random_ranking(rng)
        by_policy = {policy: ranking_to_pairs(responses, ranks, policy) for policy in PAIR_POLICIES}
        for pairs in by_policy.values():
            for p in pairs:
                assert p.chosen_rank < p.rejected_rank
                assert p.chosen_rank == ranks[p.chosen_index] and p.rejected_rank == ranks[p.rejected_index]
                assert p.chosen is responses[p.chosen_index] and p.rejected is responses[p.rejected_index]
                assert content(p.chosen) != content(p.rejected)
            contents = [(content(p.chosen), content(p.rejected)) for p in pairs]
            assert len(contents) == len(set(contents))  # no pair twice
            keys = [(p.chosen_rank, p.rejected_rank, p.chosen_index, p.rejected_index) for p in pairs]
            assert keys == sorted(keys)

        # subsets of "all", compared by content because de-duplication may keep a different index pair
        all_contents = {(content(p.chosen), content(p.rejected)) for p in by_policy["all"]}
        for policy in ("adjacent", "best-vs-rest"):
            assert {(content(p.chosen), content(p.rejected)) for p in by_policy[policy]} <= all_contents

        # "all" = every index pair with distinct ranks, minus equal content, minus repeated content pairs
        n = len(responses)
        naive = [
            (i, j)
            for i in range(n)
            for j in range(n)
            if ranks[i] < ranks[j] and content(responses[i]) != content(responses[j])
        ]
        assert len(by_policy["all"]) == len({(content(responses[i]), content(responses[j])) for i, j in naive})
        if len({content(r) for r in responses}) == n:  # no duplicates: exactly the naive index pairs
            assert sorted(index_pairs(by_policy["all"])) == sorted(naive)
            assert set(index_pairs(by_policy["adjacent"])) <= set(naive)
            assert set(index_pairs(by_policy["best-vs-rest"])) <= set(naive)

        # best-vs-rest: every chosen is tied for best; adjacent: rank levels are neighbours
        levels = sorted(set(ranks))
        for p in by_policy["best-vs-rest"]:
            assert p.chosen_rank == levels[0]
        for p in by_policy["adjacent"]:
            assert levels.index(p.rejected_rank) == levels.index(p.chosen_rank) + 1
