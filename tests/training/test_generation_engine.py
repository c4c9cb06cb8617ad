"""The generation engine (alignment.generation.decode) against transformers' ``generate`` on a tiny Llama:
the same tokens under greedy decoding, the same draws under sampling while every row is still running, a row's
answer unchanged by the rows it is batched with, and every user of generation going through the engine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from alignment.generation import decode, next_tokens

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["Hi", "What is a deductible and how does it work for a water claim?", "Cancel my policy, please.",
           "Is hail covered?"]


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from alignment.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir).eval()
    # Large random weights: the tiny model's own greedy answer repeats one token, which would not show rows
    # leaving the batch at different steps.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.ndim >= 2:
                weight.normal_(0, 0.5, generator=generator)
    model.generation_config.eos_token_id = None  # stop tokens are passed explicitly to both paths
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in PROMPTS]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert len(set(enc["attention_mask"].sum(1).tolist())) > 1  # prompts of different lengths: left padding
    return model, tok, enc


def hf(model, enc, pad, stops, n, **sampling):
    out = model.generate(**enc, max_new_tokens=n, pad_token_id=pad, eos_token_id=stops or None, top_k=None,
                         **sampling)
    return out[:, enc["input_ids"].shape[1]:]


def test_greedy_is_generates_tokens_with_rows_leaving_early(lm):
    model, tok, enc = lm
    pad = tok.pad_token_id
    free = hf(model, enc, pad, [], 12, do_sample=False)
    # Stop tokens that row 0 emits at step 2 and row 2 at step 5: rows leave the engine's batch at different
    # steps, and the others run to the limit.
    stops = [int(free[0, 2]), int(free[2, 5])]
    firsts = [next((i for i, x in enumerate(r.tolist()) if x in stops), None) for r in free]
    assert firsts[0] == 2 and firsts[2] == 5 and None in firsts, firsts
    want = hf(model, enc, pad, stops, 12, do_sample=False)
    got = decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=12, stop_ids=stops, pad_id=pad)
    assert got.shape == want.shape == (4, 12)
    assert torch.equal(got, want)
    assert (got[0, 3:] == pad).all() and (got[2, 6:] == pad).all()  # after its stop, a row holds padding


def test_sampling_draws_generates_tokens_while_every_row_runs(lm):
    model, tok, enc = lm
    pad = tok.pad_token_id
    torch.manual_seed(7)
    want = hf(model, enc, pad, [], 10, do_sample=True, temperature=0.7, top_p=0.9)
    torch.manual_seed(7)
    got = decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=10, stop_ids=[], pad_id=pad,
                 temperature=0.7, top_p=0.9)
    assert torch.equal(got, want)


def test_a_rows_answer_does_not_depend_on_its_batch(lm):
    model, tok, enc = lm
    pad = tok.pad_token_id
    free = decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=10, stop_ids=[], pad_id=pad)
    stop = int(free[1, 1])  # row 1 leaves after two tokens; the others go on with a smaller batch
    together = decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=10, stop_ids=[stop],
                      pad_id=pad)
    assert (together[1, 2:] == pad).all() and not (together[0] == pad).any()
    for row in range(len(PROMPTS)):
        width = int(enc["attention_mask"][row].sum())
        alone = decode(model, enc["input_ids"][row:row + 1, -width:], enc["attention_mask"][row:row + 1, -width:],
                       max_new_tokens=10, stop_ids=[stop], pad_id=pad)
        assert together[row, :alone.shape[1]].tolist() == alone[0].tolist()


def test_top_p_keeps_the_smallest_set_over_p_and_always_the_best_token():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    draws = {int(next_tokens(logits, 1.0, 0.7)) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 >= 0.7: the two most likely tokens only
    assert {int(next_tokens(logits, 1.0, 0.01)) for _ in range(20)} == {0}
    assert int(next_tokens(logits, 0.0, 1.0)) == 0  # temperature 0: greedy


def test_every_user_of_generation_goes_through_the_engine():
    """No model.generate call outside the engine: evaluation, the app's candidates, head-to-head answers and
    PPO rollouts all use alignment.generation."""
    calls = []
    for folder in ("alignment", "feedback_app"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                # any `<something>.generate(...)`: the engine's own generate is imported and called by name
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "generate":
                    calls.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert calls == []
