"""Edge cases (`align data edge-cases`): the prompts the current model fails, worst first, for experts to see.

The model answers every prompt (greedy, or ``samples`` sampled answers each); an answer fails when it
breaks a rule of the policies file or, with a reward model, when its score is among the lowest (below
``rm_threshold``, or in the lowest ``rm_quantile`` share of all answers' scores). A prompt's failure rate
is the share of its answers that fail; the prompts that fail more than ``min_fail_rate`` of the time are
written as a prompts file, worst first (highest failure rate, then most rules broken, then lowest mean
score), each row with what failed. The app loads it as any prompts file and serves a project's items in
the order they were added, so a new round's project built from it shows the worst prompts first.

Sampling several answers finds what greedy decoding hides: a prompt answered well 3 times in 4 still
fails users one time in 4, and that is the kind of case worth an expert's correction.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.errors import AlignError
from alignment.files import atomic_write
from alignment.log import get_logger

if TYPE_CHECKING:
    from alignment.config import ModelOptions
    from alignment.evaluation.rules import DomainRule

Messages = list[dict[str, str]]

DEFAULT_RM_QUANTILE = 0.1
DEFAULT_SAMPLING_TEMPERATURE = 0.8

_LOG = get_logger("edge-cases")


@dataclass
class PromptOutcome:
    """One prompt's answers and what failed in each."""

    prompt: Messages
    index: int  # the prompt's position in the prompts file (0-based)
    answers: list[str] = field(default_factory=list)
    broken: list[list[str]] = field(default_factory=list)  # per answer, the rules it breaks
    scores: list[float] = field(default_factory=list)  # per answer, the reward model's score ([] without one)
    low_score: list[bool] = field(default_factory=list)  # per answer, scored among the lowest

    def failed(self, i: int) -> bool:
        return bool(self.broken[i]) or (bool(self.low_score) and self.low_score[i])

    @property
    def fail_rate(self) -> float:
        return sum(self.failed(i) for i in range(len(self.answers))) / len(self.answers)

    @property
    def rules_broken(self) -> Counter[str]:
        return Counter(rule for names in self.broken for rule in names)

    @property
    def mean_score(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None

    def sort_key(self) -> tuple[float, int, float]:
        score = self.mean_score
        return (-self.fail_rate, -sum(self.rules_broken.values()), score if score is not None else 0.0)

    def to_row(self) -> dict[str, Any]:
        """The prompts-file row: the prompt as messages, and under ``edge_case`` what failed (an example
        failing answer included, so whoever loads the file sees why it is there)."""
        worst = next((i for i in range(len(self.answers)) if self.failed(i)), 0)
        info: dict[str, Any] = {
            "fail_rate": round(self.fail_rate, 4),
            "answers": len(self.answers),
            "rules_broken": dict(sorted(self.rules_broken.items())),
            "low_score_answers": sum(self.low_score),
            "source_index": self.index,
            "example_answer": self.answers[worst],
        }
        if self.scores:
            info["mean_score"] = round(self.mean_score or 0.0, 4)
            info["min_score"] = round(min(self.scores), 4)
        return {"messages": self.prompt, "edge_case": info}


def low_score_cutoff(scores: list[float], threshold: float | None, quantile: float | None) -> float | None:
    """The score at or below which an answer fails: ``threshold`` as given (strictly below fails), or the
    highest score among the lowest ``quantile`` share of ``scores`` (at least one answer; ties at the boundary
    all fail). Returns the inclusive cutoff, or None when nothing fails on scores.

    When that cutoff is the highest score (a reward model scoring every answer alike), "the lowest share" tells
    nothing apart: no answer fails on scores, with a warning, rather than every prompt being an edge case."""
    if threshold is not None:
        return math.nextafter(threshold, -math.inf)
    if not quantile or not scores:
        return None
    k = max(1, round(quantile * len(scores)))
    ordered = sorted(scores)
    if ordered[k - 1] >= ordered[-1] and len(ordered) > 1:
        _LOG.warning(f"edge cases: the reward model's lowest {quantile:.0%} of scores reach its highest score "
                     f"({ordered[-1]:.4g}): its scores do not tell these answers apart, so none fails on them")
        return None
    return ordered[k - 1]


def find_edge_cases(outcomes: list[PromptOutcome], *, threshold: float | None = None,
                    quantile: float | None = None, min_fail_rate: float = 0.0) -> list[PromptOutcome]:
    """Mark low scores on ``outcomes`` (answers already generated, rules checked, scores set) and return the
    prompts failing more than ``min_fail_rate`` of the time, worst first."""
    cutoff = low_score_cutoff([s for o in outcomes for s in o.scores], threshold, quantile)
    for o in outcomes:
        o.low_score = [cutoff is not None and s <= cutoff for s in o.scores]
    failing = [o for o in outcomes if o.fail_rate > min_fail_rate]
    return sorted(failing, key=lambda o: (*o.sort_key(), o.index))


def answer_prompts(model_path: str, prompts: list[Messages], *, samples: int, temperature: float,
                   max_new_tokens: int, batch_size: int, seed: int,
                   options: ModelOptions | None = None) -> list[list[str]]:
    """``samples`` answers per prompt (sample ``s`` decoded with seed ``seed + s``)."""
    from alignment.generation import generate
    from alignment.modeling import load_causal_lm, load_tokenizer, on_inference_device

    tokenizer = load_tokenizer(model_path, options)
    model = on_inference_device(load_causal_lm(model_path, merge_adapter=True, options=options))
    answers: list[list[str]] = [[] for _ in prompts]
    for s in range(samples):
        desc = "edge cases: answers" + (f" {s + 1}/{samples}" if samples > 1 else "")
        for i, a in enumerate(generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, temperature=temperature, seed=seed + s, desc=desc)):
            answers[i].append(a.text)
    return answers


def score_outcomes(outcomes: list[PromptOutcome], reward_model: str, *, batch_size: int,
                   options: ModelOptions | None = None) -> None:
    """Every answer's reward-model score into ``outcomes`` (identical answers to one prompt scored once)."""
    from alignment.evaluation.judge import score_answers
    from alignment.modeling import load_reward_model, load_tokenizer

    tokenizer = load_tokenizer(reward_model, options)
    model = load_reward_model(reward_model, options=options).eval().requires_grad_(False)
    model.config.pad_token_id = tokenizer.pad_token_id
    unique: dict[tuple[int, str], int] = {}
    for n, o in enumerate(outcomes):
        for a in o.answers:
            unique.setdefault((n, a), len(unique))
    keys = list(unique)
    scores, _ = score_answers(model, tokenizer, [outcomes[n].prompt for n, _ in keys], [a for _, a in keys],
                              batch_size=batch_size)
    for n, o in enumerate(outcomes):
        o.scores = [scores[unique[(n, a)]] for a in o.answers]


def write_prompts(rows: list[dict[str, Any]], out: Path) -> None:
    """JSONL, written atomically (:func:`alignment.files.atomic_write`): never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))


def check_arguments(args: Any) -> None:
    """Settings that would find nothing, or something else than asked, refused before any model loads."""
    def bad(field: str, message: str) -> AlignError:
        return AlignError(message, field=field)

    if not args.policies and not args.reward_model:
        raise bad("--policies", "nothing to judge answers by: give --policies, --reward-model or both")
    if (args.rm_threshold is not None or args.rm_quantile is not None) and not args.reward_model:
        raise bad("--reward-model", "--rm-threshold and --rm-quantile judge reward-model scores; give --reward-model")
    if args.rm_threshold is not None and args.rm_quantile is not None:
        raise bad("--rm-quantile", "give --rm-threshold or --rm-quantile, not both")
    if args.rm_quantile is not None and not 0 < args.rm_quantile < 1:
        raise bad("--rm-quantile", f"must be between 0 and 1 (exclusive), got {args.rm_quantile}")
    if args.samples < 1:
        raise bad("--samples", f"must be at least 1, got {args.samples}")
    if not 0 <= args.min_fail_rate < 1:
        raise bad("--min-fail-rate", f"must be in [0, 1), got {args.min_fail_rate}")
    if args.temperature is not None and args.temperature < 0:
        raise bad("--temperature", f"must be >= 0, got {args.temperature}")
    if args.samples > 1 and args.temperature == 0:
        raise bad("--temperature", "several samples at temperature 0 are one greedy answer repeated; "
                  "sample (temperature > 0) or use --samples 1")
    if Path(args.out).resolve() == Path(args.prompts).resolve():
        raise bad("--out", "would overwrite the prompts file it reads")


def edge_cases_command(args: Any, options: ModelOptions | None = None) -> int:
    """`align data edge-cases`: answer, judge, write the failing prompts worst first, print a summary."""
    from alignment.evaluation.adherence import load_prompts
    from alignment.evaluation.judge import check_model, check_reward_model
    from alignment.evaluation.rules import check_answer, load_rules

    check_arguments(args)
    prompts = load_prompts(args.prompts)
    if not prompts:
        raise AlignError("no prompts", file=args.prompts)
    policies: list[DomainRule] = load_rules(args.policies) if args.policies else []
    model = str(check_model(args.model, "--model"))
    reward_model = str(check_reward_model(args.reward_model)) if args.reward_model else None
    quantile = args.rm_quantile
    if reward_model and args.rm_threshold is None and quantile is None:
        quantile = DEFAULT_RM_QUANTILE
    temperature = args.temperature if args.temperature is not None else (
        DEFAULT_SAMPLING_TEMPERATURE if args.samples > 1 else 0.0)

    answers = answer_prompts(model, prompts, samples=args.samples, temperature=temperature,
                             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                             options=options)
    outcomes = []
    for i, (prompt, texts) in enumerate(zip(prompts, answers)):
        broken = [[name for name, ok in check_answer(a, policies).items() if not ok] if policies else []
                  for a in texts]
        outcomes.append(PromptOutcome(prompt=prompt, index=i, answers=texts, broken=broken))
    if reward_model:
        score_outcomes(outcomes, reward_model, batch_size=args.batch_size, options=options)
    found = find_edge_cases(outcomes, threshold=args.rm_threshold, quantile=quantile,
                            min_fail_rate=args.min_fail_rate)
    out = Path(args.out)
    write_prompts([o.to_row() for o in found], out)
    print("\n".join(summary_lines(outcomes, found, out)))
    return 0


def summary_lines(outcomes: list[PromptOutcome], found: list[PromptOutcome], out: Path) -> list[str]:
    """What was tried and what failed, for the terminal."""
    total = sum(len(o.answers) for o in outcomes)
    failing = sum(o.failed(i) for o in outcomes for i in range(len(o.answers)))
    rules: Counter[str] = Counter()
    for o in outcomes:
        rules.update(o.rules_broken)
    low = sum(sum(o.low_score) for o in outcomes)
    lines = [f"edge cases: {len(found)} of {len(outcomes)} prompts fail ({failing} of {total} answers) -> {out}"]
    for rule, count in rules.most_common():
        lines.append(f"  rule {rule}: broken by {count} answer{'s' * (count != 1)}")
    if any(o.scores for o in outcomes):
        lines.append(f"  reward model: {low} answer{'s' * (low != 1)} among the lowest scores")
    return lines
