"""The generation engine (alignment.generation.decode) against transformers' ``generate`` on a tiny Llama:
the same tokens under greedy decoding, sampling from the same tempered top-p distribution (frequencies against
hand-computed probabilities, the nucleus against transformers' TopPLogitsWarper), a row's answer unchanged by
the rows it is batched with, and every user of generation going through the engine."""

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


def test_a_tiny_top_p_decodes_greedily_and_sampling_repeats_under_a_seed(lm):
    model, tok, enc = lm
    pad = tok.pad_token_id
    greedy = hf(model, enc, pad, [], 10, do_sample=False)
    # top_p -> 0 keeps the most likely token only: whatever the draw, the answer is greedy's
    narrow = decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=10, stop_ids=[], pad_id=pad,
                    temperature=0.7, top_p=1e-6)
    assert torch.equal(narrow, greedy)

    def sampled(seed):
        torch.manual_seed(seed)
        return decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=10, stop_ids=[], pad_id=pad,
                      temperature=1.0, top_p=0.9)

    assert torch.equal(sampled(3), sampled(3))
    assert not torch.equal(sampled(3), sampled(4))
    assert not torch.equal(sampled(3), greedy)


def frequencies(draws: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(draws, minlength=vocab).double() / draws.numel()


@pytest.mark.parametrize(("temperature", "top_p", "want"), [
    # softmax(log p) = p; top_p 1 keeps all five
    (1.0, 1.0, [0.4, 0.3, 0.15, 0.1, 0.05]),
    # tokens more likely than the third hold 0.7 < 0.8, than the fourth 0.85: three kept, renormalised by 0.85
    (1.0, 0.8, [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0.0, 0.0]),
    # temperature 0.5 squares the probabilities: 0.16, 0.09, 0.0225, 0.01, 0.0025 (sum 0.285); the first holds
    # 0.561 < 0.8, the first two 0.877: two kept, 0.16 / 0.25 and 0.09 / 0.25
    (0.5, 0.8, [0.64, 0.36, 0.0, 0.0, 0.0]),
])
def test_sampling_draws_from_the_tempered_nucleus(temperature, top_p, want):
    logits = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])).repeat(40_000, 1)
    torch.manual_seed(0)
    got = frequencies(next_tokens(logits, temperature, top_p), 5)
    want = torch.tensor(want, dtype=torch.float64)
    sigma = (want * (1 - want) / 40_000).sqrt()
    assert ((got - want).abs() <= 5 * sigma + 1e-12).all(), (got, want)  # dropped tokens: never drawn


def test_tokens_of_tiny_probability_keep_their_share():
    import alignment.generation as engine

    # 0.999 on the first token, then 100,000 tokens of 1e-8 each (1e-3 together): each is below half the float32
    # spacing near 1, so a running sum accumulated in float32 (as GPU scans do) would stop at 0.999 and the tail
    # could never be drawn
    probs = torch.full((1, 100_001), 1e-8)
    probs[0, 0] = 0.999
    # u = 0.9995 of the total 1.0 lands halfway through the tail: after 0.999 + 50,000 * 1e-8
    token = int(engine._draw(probs, torch.tensor([[0.9995]], dtype=torch.float64))[0])
    assert 49_000 < token < 51_000, token
    assert int(engine._draw(probs, torch.tensor([[0.5]], dtype=torch.float64))[0]) == 0
    # u * total rounded up to the total: the last column with weight, never the zero-weight one after it
    assert engine._draw(torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([[1.0]], dtype=torch.float64)).tolist() == [1]


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_broken_logits_are_refused_not_drawn_from(top_p):
    for bad in (float("nan"), float("-inf")):
        logits = torch.tensor([[0.0, 1.0, 2.0], [bad, bad, bad]])
        with pytest.raises(ValueError, match="NaN or inf"):
            next_tokens(logits, 1.0, top_p)


def random_rows(vocab: int) -> torch.Tensor:
    """Rows from peaked to flat, so that the nucleus at top_p 0.9 is found among 256 tokens, among 4096, or
    only by sorting the whole row."""
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([12.0, 8.0, 6.0, 4.0, 3.0, 2.0, 1.0, 0.3, 0.1] * 4)[:, None]
    return torch.randn(len(scales), vocab, generator=generator) * scales


def test_the_nucleus_is_transformers_top_p_at_every_stage_of_the_search():
    from transformers.generation.logits_process import TopPLogitsWarper

    import alignment.generation as engine

    logits = random_rows(8000)
    kept = torch.isfinite(TopPLogitsWarper(0.9)(None, logits.clone()))
    sizes = kept.sum(-1)
    assert (sizes <= 256).any() and ((sizes > 256) & (sizes <= 4096)).any() and (sizes > 4096).any(), sizes
    probs = logits.softmax(-1)
    n = len(logits)
    most = engine.nucleus_draw(probs, 0.9, torch.zeros(n, 1, dtype=torch.float64))
    least = engine.nucleus_draw(probs, 0.9, torch.full((n, 1), 1 - 1e-12, dtype=torch.float64))
    assert torch.equal(most, logits.argmax(-1))
    # the last token of each nucleus is transformers' least likely kept one
    want = probs.masked_fill(~kept, 2.0).argmin(-1)
    assert torch.equal(least, want)


def test_the_staged_search_draws_what_sorting_every_row_draws(monkeypatch):
    import alignment.generation as engine

    probs = random_rows(8000).softmax(-1)
    u = torch.rand(len(probs), 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    staged = engine.nucleus_draw(probs, 0.9, u)
    monkeypatch.setattr(engine, "NUCLEUS_CANDIDATES", ())
    assert torch.equal(engine.nucleus_draw(probs, 0.9, u), staged)


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


def test_every_model_loaded_to_generate_goes_to_the_gpu_when_there_is_one(monkeypatch):
    """Each function that loads a causal LM and generates with it (evaluation, edge cases, the app's candidates,
    head-to-head answers, align serve's engine) places it with on_inference_device, which moves it to the GPU if
    there is one."""
    from alignment import modeling

    def called(node: ast.AST) -> set[str]:
        return {n.func.id if isinstance(n.func, ast.Name) else n.func.attr for n in ast.walk(node)
                if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))}

    generating, placed = [], []
    for folder in ("alignment", "feedback_app"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef):
                    names = called(node)
                    # (serve's Engine generates; the training phases' Engine of that name does not)
                    serving = "Engine" in names and path.name == "serve.py"
                    if "load_causal_lm" in names and (names & {"generate", "decode"} or serving):
                        generating.append(f"{path.relative_to(REPO)}:{node.name}")
                        if "on_inference_device" in names:
                            placed.append(generating[-1])
    assert len(generating) >= 5 and placed == generating

    moved = []

    class Model(torch.nn.Module):
        def to(self, device):  # noqa: D102 - records where it was sent
            moved.append(device)
            return self

    model = Model()
    monkeypatch.setattr(modeling.torch.cuda, "is_available", lambda: False)
    assert modeling.on_inference_device(model) is model and moved == []
    monkeypatch.setattr(modeling.torch.cuda, "is_available", lambda: True)
    assert modeling.on_inference_device(model) is model and moved == ["cuda"]


def test_on_step_sees_each_rows_tokens_and_can_stop_decode(lm):
    model, tok, enc = lm
    pad = tok.pad_token_id
    free = decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=10, stop_ids=[], pad_id=pad)
    stop = int(free[1, 1])  # row 1 leaves after two tokens: later steps hold fewer rows
    want = decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=10, stop_ids=[stop], pad_id=pad)
    seen: dict[int, list[int]] = {row: [] for row in range(len(PROMPTS))}
    steps: list[list[int]] = []

    def record(rows: torch.Tensor, tokens: torch.Tensor) -> None:
        steps.append(rows.tolist())
        for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
            seen[row].append(token)

    got = decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=10, stop_ids=[stop], pad_id=pad,
                 on_step=record)
    assert torch.equal(got, want)  # watching changes nothing
    assert 1 not in steps[2] and steps[0] == list(range(len(PROMPTS)))  # a row that stopped is seen no more
    for row, tokens in seen.items():
        answer = want[row].tolist()
        assert tokens == answer[: answer.index(stop) + 1 if stop in answer else len(answer)], row

    # True ends decode after that step: the tokens drawn so far, each row's as without the hook
    calls = []
    early = decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=10, stop_ids=[stop], pad_id=pad,
                   on_step=lambda rows, tokens: calls.append(1) or len(calls) == 3)
    assert len(calls) == 3 and torch.equal(early, want[:, :3])


def test_answer_cuts_at_the_first_stop_token_and_drops_padding(lm):
    from alignment.generation import answer

    _, tok, _ = lm
    pad = tok.pad_token_id
    words = tok(" Hello there", add_special_tokens=False).input_ids
    # pad is a stop token (SmolLM2's <|im_end|>): the first one ends the answer and is counted
    got = answer(tok, torch.tensor([*words, pad, pad, pad]), [pad])
    assert (got.text, got.num_tokens, got.finished) == ("Hello there", len(words) + 1, True)
    # pad is not a stop token: padding is dropped wherever it is, and the answer runs to its stop token
    other = tok.convert_tokens_to_ids("<|endoftext|>")
    assert other != pad
    got = answer(tok, [words[0], pad, *words[1:], other, pad], [other])
    assert (got.text, got.num_tokens, got.finished) == ("Hello there", len(words) + 1, True)
    unfinished = answer(tok, words, [other])
    assert (unfinished.text, unfinished.num_tokens, unfinished.finished) == ("Hello there", len(words), False)


def test_the_generation_bench_profile_sorts_operators_and_accounts_for_a_decode_step(lm, monkeypatch):
    """benchmarks/generation.py's profile: operator names go to their kind, and one decode's profile has a
    positive step time, the weights-read floor at the given bandwidth, matrix products and operator calls."""
    import sys

    sys.path.insert(0, str(REPO))
    from benchmarks.generation import kind_of, profile_decode

    assert [kind_of(op) for op in ("aten::addmm", "aten::mm", "aten::linear", "aten::scaled_dot_product_attention",
                                   "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::cat", "aten::_to_copy",
                                   "aten::mul", "aten::index_select", "mkldnn::_linear_pointwise")] == [
        "matmul", "matmul", "matmul", "attention", "attention", "KV cache growth", "casts and copies", "other", "other",
        "matmul"]
    model, tok, enc = lm
    stops = torch.tensor([tok.eos_token_id])
    r = profile_decode(model, enc, stops, tok.pad_token_id, 4, bf16=False, bandwidth=1e9)
    # the floor reads every weight once: a tied embedding table once, fp32 here
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    params = {id(p): p for p in model.parameters()}
    assert r["floor ms"] == pytest.approx(1e3 * sum(p.numel() * 4 for p in params.values()) / 1e9)
    assert r["step ms"] > 0 and r["matmul"] > 0
    # per decode step, the prefill left out: a prefill that takes 40 s more changes no step's time (spread over 3
    # steps it would add 13,333 ms to each). The 40 s pass on a clock of the bench's own, so the test does not wait
    # for them, and the bound sits far above a tiny model's real step even on a loaded machine (366 ms once).
    import time
    import types

    import benchmarks.generation as bench_generation

    offset = [0.0]
    real_clock = time.perf_counter
    monkeypatch.setattr(bench_generation, "time", types.SimpleNamespace(perf_counter=lambda: real_clock() + offset[0]))

    class SlowPrefill(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, **kwargs):  # noqa: ANN003, ANN201
            if kwargs["input_ids"].shape[1] > 1:
                offset[0] += 40.0
            return self.inner(**kwargs)

        def get_input_embeddings(self):  # noqa: ANN201
            return model.get_input_embeddings()

        def get_output_embeddings(self):  # noqa: ANN201
            return model.get_output_embeddings()

    slow = profile_decode(SlowPrefill(), enc, stops, tok.pad_token_id, 4, bf16=False, bandwidth=1e9)
    assert offset[0] == 40.0 * 6  # every timed, profiled and warm-up decode had its prefill
    assert slow["step ms"] < 5000
    # bf16: matrices are read as 2 bytes, vectors (norms) in their own precision
    rb = profile_decode(model, enc, stops, tok.pad_token_id, 4, bf16=True, bandwidth=1e9)
    expect = sum(p.numel() * (2 if p.ndim >= 2 else 4) for p in params.values())
    assert rb["floor ms"] == pytest.approx(1e3 * expect / 1e9)
    # untied: of the input table a step reads only the batch's rows
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.generation import weights_read_per_step

    untied = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, tie_word_embeddings=False))
    everything = sum(p.numel() * 4 for p in untied.parameters())
    assert weights_read_per_step(untied, bf16=False) == everything - 100 * 16 * 4
