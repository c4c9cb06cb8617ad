"""Judging answers: reward-model scores, win rates against a baseline, a position-swapped judge, lengths.

`align eval` and a pipeline's eval phase have each model answer the same held-out prompts
(:func:`alignment.evaluation.run.evaluate`); this module judges those answers, filling in the typed records of
:mod:`alignment.evaluation.records`.

Reward model (``--reward-model``, a one-score sequence classifier trained by ``align rm``)
    Every answer is scored the way the reward model was trained: ``prompt + answer`` rendered with the
    chat template (so the answer ends in the end-of-turn token), score read at the last real token
    (:class:`alignment.reward.LastTokenScores`). Per model: the mean score. Against the baseline, per
    prompt, two numbers:

    - the **win rate**: 1 when the model's answer scores higher than the baseline's answer to the same
      prompt, 0 when lower, 1/2 for a tie (identical answers are scored once, so they always tie);
    - the **pairwise preference** ``P(A better) = sigmoid(r(A) - r(B))``: the Bradley-Terry probability
      the reward model was trained to predict. A reward model scores each answer on its own, so this
      judge has no order to be biased by. (Showing a Bradley-Terry reward model a *comparison prompt*
      with "Answer 1" and "Answer 2" would not be meaningful: it was never trained on such inputs.)

Generative judge (``--judge-model``, any causal LM, ideally an instruction-tuned one)
    The judge sees one user turn, :data:`JUDGE_TEMPLATE`: the question, "Answer 1", "Answer 2" and the
    request to reply with 1 or 2. We read its next-token distribution and keep the two labels:
    ``P("1") = p("1") / (p("1") + p("2"))``. LLM judges favour a position, so every pair is judged in
    both orders, A (the model's answer) first and then B (the baseline's) first::

        P(A better) = (P("1" | A is Answer 1) + P("2" | A is Answer 2)) / 2

    which makes ``P(A better over B) + P(B better over A) = 1`` exactly. Reported beside it:

    - **position consistency**: the fraction of prompts where both orders pick the same answer (a
      judge that always says "1" picks A in one order and B in the other: 0 consistency);
    - **order bias**: the mean ``P("1")`` over all comparisons (both orders) minus 0.5; positive when the
      judge favours the first answer. Swap-averaging removes it from the win rate, this shows its size;
    - **label mass**: the mean ``p("1") + p("2")`` before renormalising; near 0 means the judge does not
      answer with a label at all, and its verdicts are noise.

Length
    Longer-is-better is the classic reward hack, so lengths are reported beside every score: mean answer
    tokens and characters per model, the correlation between reward score and answer length across
    answers (per model and over all answers), and, against the baseline, the mean length difference and
    the correlation of each judge's preference with the per-prompt length difference.

The maths (:func:`win_rate`, :func:`bt_preferences`, :func:`swap_averaged`, :func:`position_consistency`,
:func:`order_bias`, :func:`pearson`) is pure Python and imports no torch; the model parts import it lazily.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.errors import AlignError
from alignment.evaluation.records import (
    AnswerJudgement,
    JudgeComparison,
    JudgeModelSummary,
    ModelResult,
    RewardComparison,
    RewardModelSummary,
    RewardSummary,
    VsBaseline,
)
from alignment.evaluation.stats import pearson  # shared with rm_diagnostics; still importable from here

if TYPE_CHECKING:
    import torch

    from alignment.config import ModelOptions

Messages = list[dict[str, str]]

JUDGE_LABELS = ("1", "2")
JUDGE_TEMPLATE = (
    "Two assistants answered the same request. Decide which answer is better: more helpful, more correct "
    "and more appropriate.\n\n"
    "{question}\n\n"
    "Answer 1:\n{answer_1}\n\n"
    "Answer 2:\n{answer_2}\n\n"
    "Which answer is better? Reply with a single digit: 1 or 2."
)
"""The generative judge's user turn; ``{question}`` is rendered by :func:`render_question`."""

_NO_TEMPLATE_SUFFIX = "\n\nBetter answer (1 or 2):\n"
"""Appended to the judge text when the judge's tokenizer has no chat template."""

RM_MAX_LENGTH = 4096
"""Tokens of ``prompt + answer`` a reward model reads; longer inputs are truncated (and counted)."""


# ------------------------------------------------------------------------------------------- maths


def sigmoid(x: float) -> float:
    """The logistic function, stable for large ``|x|``."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def mean(values: Sequence[float]) -> float | None:
    """The mean, or None for no values."""
    return sum(values) / len(values) if len(values) else None


def _same_length(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"expected sequences of the same length, got {len(a)} and {len(b)}")


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float], *, tol: float = 0.0) -> float:
    """Fraction of prompts where A's score beats B's; a tie (``|a - b| <= tol``) counts half."""
    _same_length(scores_a, scores_b)
    if not scores_a:
        raise ValueError("no pairs to compare")
    points = [0.5 if abs(a - b) <= tol else float(a > b) for a, b in zip(scores_a, scores_b)]
    return sum(points) / len(points)


def bt_preferences(scores_a: Sequence[float], scores_b: Sequence[float]) -> list[float]:
    """Bradley-Terry ``P(A better) = sigmoid(r(A) - r(B))`` per pair: order-free by construction."""
    _same_length(scores_a, scores_b)
    return [sigmoid(a - b) for a, b in zip(scores_a, scores_b)]


def two_label_probability(logit_1: float, logit_2: float) -> float:
    """``P("1")`` renormalised over the two labels: ``p1 / (p1 + p2) = sigmoid(logit_1 - logit_2)``."""
    return sigmoid(logit_1 - logit_2)


def swap_averaged(p_one_a_first: Sequence[float], p_one_a_second: Sequence[float]) -> list[float]:
    """Per pair, ``P(A better) = (P("1" | A first) + P("2" | A second)) / 2``.

    Args:
        p_one_a_first: the judge's ``P("1")`` with A shown as Answer 1 (B as Answer 2).
        p_one_a_second: the judge's ``P("1")`` with B shown as Answer 1 (A as Answer 2); ``P("2") = 1 - P("1")``.
    """
    _same_length(p_one_a_first, p_one_a_second)
    return [(p + (1.0 - q)) / 2.0 for p, q in zip(p_one_a_first, p_one_a_second)]


def _pick(p_first_label: float) -> int:
    """+1 when the label shown first wins, -1 when the second does, 0 for an exact tie."""
    return (p_first_label > 0.5) - (p_first_label < 0.5)


def position_consistency(p_one_a_first: Sequence[float], p_one_a_second: Sequence[float]) -> float:
    """Fraction of pairs where both orders pick the same answer (an exact 0.5 picks neither: a tie, which
    agrees only with a tie in the other order).

    With A first, the judge picks A when ``P("1") > 0.5``; with A second, when ``P("1") < 0.5``.
    """
    _same_length(p_one_a_first, p_one_a_second)
    if not p_one_a_first:
        raise ValueError("no pairs to compare")
    same = [_pick(p) == -_pick(q) for p, q in zip(p_one_a_first, p_one_a_second)]
    return sum(same) / len(same)


def order_bias(p_one_a_first: Sequence[float], p_one_a_second: Sequence[float]) -> float:
    """Mean ``P("1")`` over every comparison (both orders) minus 0.5; > 0 favours the first position.

    A and B each sit in each position once, so answer quality cancels and only the position remains.
    """
    _same_length(p_one_a_first, p_one_a_second)
    both = [*p_one_a_first, *p_one_a_second]
    if not both:
        raise ValueError("no pairs to compare")
    return sum(both) / len(both) - 0.5


def std(values: Sequence[float]) -> float | None:
    """Population standard deviation; None for no values."""
    m = mean(values)
    return None if m is None else math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


# ------------------------------------------------------------------------------------------ models


def _device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_model(path: str, flag: str) -> Path:
    """The model directory for a command-line model argument, or an AlignError naming the flag."""
    from alignment.modeling import resolve_model

    try:
        return resolve_model(path)
    except AlignError as exc:
        raise AlignError(exc.message, file=exc.file, field=flag) from None


def check_reward_model(path: str) -> Path:
    """A trained reward model directory: a sequence classifier, or a LoRA adapter trained as one.

    A causal LM would get a freshly initialised score head, whose scores mean nothing, so it is refused.
    """
    from alignment.modeling import is_adapter, is_reward_model

    resolved = check_model(path, "--reward-model")
    if is_reward_model(resolved):
        return resolved
    if is_adapter(resolved):
        adapter = json.loads((resolved / "adapter_config.json").read_text())
        if adapter.get("task_type") == "SEQ_CLS":
            return resolved
    raise AlignError("not a reward model (its config.json names no *ForSequenceClassification architecture); "
                     "train one with `align rm`, or give a causal LM as --judge-model instead",
                     file=resolved / "config.json", field="--reward-model")


def check_judge_model(path: str) -> Path:
    """A causal LM to use as the generative judge (not a reward model)."""
    from alignment.modeling import is_reward_model

    resolved = check_model(path, "--judge-model")
    if is_reward_model(resolved):
        raise AlignError("this is a reward model (a sequence classifier), not a causal LM that can answer "
                         "'1' or '2'; give it as --reward-model instead", file=resolved / "config.json",
                         field="--judge-model")
    return resolved


def score_answers(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[Messages], answers: Sequence[str], *,
                  batch_size: int = 16, max_length: int = RM_MAX_LENGTH) -> tuple[list[float], int]:
    """Reward-model scores of ``prompt + answer`` at the last real token, and how many were truncated.

    Rendered with the chat template as in reward-model training (:func:`tokenize_response`), right padded.
    """
    import torch

    from alignment.batching import pad_sequences
    from alignment.data.preferences import tokenize_response
    from alignment.logits import causal_mask
    from alignment.reward import LastTokenScores
    from alignment.training import autocast, use_bf16

    _same_length(prompts, answers)
    encoded, truncated = [], 0
    for prompt, answer in zip(prompts, answers):
        ids, _labels, cut = tokenize_response(tokenizer, list(prompt), [{"role": "assistant", "content": answer}],
                                              max_length)
        encoded.append(ids)
        truncated += int(cut)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    scores = [0.0] * len(encoded)
    scorer = LastTokenScores(model)
    try:
        with torch.no_grad(), autocast(use_bf16("auto") and device.type == "cuda"):
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                ids, mask = pad_sequences([encoded[i] for i in idx], pad)
                ids, mask = ids.to(device), mask.to(device)
                model(input_ids=ids, attention_mask=causal_mask(mask), use_cache=False)
                for row, s in zip(idx, scorer.take(mask).tolist()):
                    scores[row] = float(s)
    finally:
        scorer.remove()
    return scores, truncated


def render_question(prompt: Messages) -> str:
    """The prompt as the judge sees it: earlier turns (system included) as context, then the last turn."""
    parts = []
    if len(prompt) > 1:
        parts.append("Conversation so far:\n" + "\n".join(f"{m['role'].capitalize()}: {m['content']}"
                                                          for m in prompt[:-1]))
    parts.append("Request:\n" + prompt[-1]["content"])
    return "\n\n".join(parts)


@dataclass
class JudgeVerdicts:
    """A generative judge's verdicts on pairs (A, B), one entry per pair, both orders."""

    p_one_a_first: list[float]  # P("1") with A as Answer 1
    p_one_a_second: list[float]  # P("1") with B as Answer 1, A as Answer 2
    label_mass: list[float]  # p("1") + p("2") before renormalising, averaged over both orders

    @property
    def p_a(self) -> list[float]:
        """Swap-averaged ``P(A better)`` per pair."""
        return swap_averaged(self.p_one_a_first, self.p_one_a_second)


class PairwiseJudge:
    """A causal LM that compares two answers by the next-token probabilities of "1" and "2"."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, source: str | Path | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        ids = []
        for label in JUDGE_LABELS:
            enc = tokenizer.encode(label, add_special_tokens=False)
            if len(enc) != 1:
                raise AlignError(f"the judge's tokenizer splits the label '{label}' into {len(enc)} tokens; "
                                 "the judge needs '1' and '2' to be single tokens", file=source,
                                 field="--judge-model")
            ids.append(enc[0])
        if ids[0] == ids[1]:
            raise AlignError("the judge's tokenizer maps '1' and '2' to the same token", file=source,
                             field="--judge-model")
        self.label_ids = ids

    def render(self, prompt: Messages, answer_1: str, answer_2: str) -> str:
        """The full judge input: :data:`JUDGE_TEMPLATE` as a user turn, ready for the judge's reply."""
        text = JUDGE_TEMPLATE.format(question=render_question(prompt), answer_1=answer_1, answer_2=answer_2)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text + _NO_TEMPLATE_SUFFIX

    def label_probabilities(self, texts: Sequence[str], batch_size: int = 16) -> tuple[list[float], list[float]]:
        """Per text: ``P("1")`` renormalised over the two labels, and the raw mass ``p("1") + p("2")``.

        Left padding with position ids counted from each row's first real token, and only the last
        position's logits computed: the same numbers as judging each text alone.
        """
        import torch

        from alignment.batching import pad_sequences, positions
        from alignment.training import autocast, use_bf16

        device = next(self.model.parameters()).device
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        encoded = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        p_one, mass = [0.0] * len(encoded), [0.0] * len(encoded)
        with torch.no_grad(), autocast(use_bf16("auto") and device.type == "cuda"):
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                ids, mask = pad_sequences([encoded[i] for i in idx], pad, left=True)  # (B, T), (B, T)
                pos = positions(mask)  # (B, T)
                ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                                 logits_to_keep=1)
                logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
                pair = logprobs[:, self.label_ids]  # (B, 2)
                for row, (l1, l2) in zip(idx, pair.tolist()):
                    p_one[row] = two_label_probability(l1, l2)
                    mass[row] = math.exp(l1) + math.exp(l2)
        return p_one, mass

    def compare(self, prompts: Sequence[Messages], answers_a: Sequence[str], answers_b: Sequence[str], *,
                batch_size: int = 16) -> JudgeVerdicts:
        """Judge each pair (A, B) in both orders."""
        _same_length(prompts, answers_a)
        _same_length(prompts, answers_b)
        first = [self.render(p, a, b) for p, a, b in zip(prompts, answers_a, answers_b)]
        second = [self.render(p, b, a) for p, a, b in zip(prompts, answers_a, answers_b)]
        p_one, mass = self.label_probabilities(first + second, batch_size)
        n = len(first)
        return JudgeVerdicts(p_one[:n], p_one[n:], [(m1 + m2) / 2 for m1, m2 in zip(mass[:n], mass[n:])])


# ------------------------------------------------------------------------------------- orchestration


def _answers(result: ModelResult) -> list[str]:
    return [a.answer for a in result.answers]


def _lengths(result: ModelResult, key: str) -> list[float]:
    """Per-answer ``tokens`` or ``chars``; answers cached without lengths are generated again before judging."""
    return [float(getattr(a, key)) for a in result.answers]


def _vs_baseline(result: ModelResult, baseline: ModelResult) -> VsBaseline:
    if result.vs_baseline is None:
        result.vs_baseline = VsBaseline(baseline=baseline.label)
    return result.vs_baseline


def add_length_deltas(results: list[ModelResult], baseline: int | None) -> None:
    """Mean per-prompt length difference (tokens, characters) of each model against the baseline."""
    for i, r in enumerate(results):
        if baseline is None or i == baseline:
            r.vs_baseline = None
            continue
        b = results[baseline]
        r.vs_baseline = VsBaseline(
            baseline=b.label,
            length_delta_tokens=mean([x - y for x, y in zip(_lengths(r, "tokens"), _lengths(b, "tokens"))]),
            length_delta_chars=mean([x - y for x, y in zip(_lengths(r, "chars"), _lengths(b, "chars"))]),
        )


def judge_with_reward_model(results: list[ModelResult], prompts: list[Messages], reward_model: str,
                            baseline: int | None, *, batch_size: int = 16,
                            options: ModelOptions | None = None) -> RewardModelSummary:
    """Score every answer with the reward model; fill ``reward``, per answer ``rm_score`` (and ``rm_p_a``
    against the baseline), and the reward-model part of ``vs_baseline``.

    Identical answers to the same prompt are scored once, so they tie exactly. Returns the summary over
    all answers (the pooled score-length correlation).
    """
    from alignment.modeling import load_reward_model, load_tokenizer

    tokenizer = load_tokenizer(reward_model, options)
    model = load_reward_model(reward_model, options=options).eval().requires_grad_(False).to(_device())
    model.config.pad_token_id = tokenizer.pad_token_id
    unique: dict[tuple[int, str], int] = {}
    for r in results:
        for i, answer in enumerate(_answers(r)):
            unique.setdefault((i, answer), len(unique))
    keys = list(unique)
    scores, truncated = score_answers(model, tokenizer, [prompts[i] for i, _ in keys], [a for _, a in keys],
                                      batch_size=batch_size)
    del model
    _free_memory()
    all_scores, all_tokens = [], []
    for r in results:
        rs = [scores[unique[(i, a)]] for i, a in enumerate(_answers(r))]
        for answer, s in zip(r.answers, rs):
            answer.rm_score = s
        tokens = _lengths(r, "tokens")
        r.reward = RewardSummary(mean=mean(rs), std=std(rs), length_corr_tokens=pearson(rs, tokens),
                                 length_corr_chars=pearson(rs, _lengths(r, "chars")))
        all_scores += rs
        all_tokens += tokens
    if baseline is not None:
        b = results[baseline]
        b_scores = [a.rm_score for a in b.answers]
        b_tokens = _lengths(b, "tokens")
        for i, r in enumerate(results):
            if i == baseline:
                continue
            a_scores = [a.rm_score for a in r.answers]
            prefs = bt_preferences(a_scores, b_scores)
            for answer, p in zip(r.answers, prefs):
                answer.rm_p_a = p
            deltas = [x - y for x, y in zip(_lengths(r, "tokens"), b_tokens)]
            _vs_baseline(r, b).rm = RewardComparison(
                win_rate=win_rate(a_scores, b_scores),
                ties=sum(1 for x, y in zip(a_scores, b_scores) if x == y),
                p_a=mean(prefs),
                length_delta_corr=pearson([x - y for x, y in zip(a_scores, b_scores)], deltas),
            )
    return RewardModelSummary(model=reward_model, answers_scored=len(keys), truncated=truncated,
                              length_corr_tokens=pearson(all_scores, all_tokens))


def judge_with_model(results: list[ModelResult], prompts: list[Messages], judge_model: str, baseline: int, *,
                     batch_size: int = 16, options: ModelOptions | None = None) -> JudgeModelSummary:
    """Compare every model's answers with the baseline's through the generative judge, both orders."""
    from alignment.modeling import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(judge_model, options)
    model = load_causal_lm(judge_model, merge_adapter=True, options=options).requires_grad_(False).to(_device())
    judge = PairwiseJudge(model, tokenizer, source=judge_model)
    b = results[baseline]
    b_tokens = _lengths(b, "tokens")
    for i, r in enumerate(results):
        if i == baseline:
            continue
        v = judge.compare(prompts, _answers(r), _answers(b), batch_size=batch_size)
        p_a = v.p_a
        for answer, p1, p2, pa in zip(r.answers, v.p_one_a_first, v.p_one_a_second, p_a):
            answer.judge = AnswerJudgement(p_one_a_first=p1, p_one_a_second=p2, p_a=pa)
        deltas = [x - y for x, y in zip(_lengths(r, "tokens"), b_tokens)]
        _vs_baseline(r, b).judge = JudgeComparison(
            win_rate=mean(p_a),
            position_consistency=position_consistency(v.p_one_a_first, v.p_one_a_second),
            order_bias=order_bias(v.p_one_a_first, v.p_one_a_second),
            label_mass=mean(v.label_mass),
            length_delta_corr=pearson(p_a, deltas),
        )
    del judge, model
    _free_memory()
    return JudgeModelSummary(model=judge_model, template=JUDGE_TEMPLATE, labels=list(JUDGE_LABELS),
                             method="P(A) = (P('1' | A first) + P('2' | A second)) / 2, labels renormalised")
