"""Typed evaluation records, and the one ``results.json`` shape they are written as and read from.

Both `align eval --out FILE` and a pipeline's eval phase (``<run>/eval/results.json``) write an
:class:`EvalReport` through :meth:`EvalReport.write`; the report, the learning verdicts and the benchmarks
read it back through :meth:`EvalReport.read`. The shape, key by key::

    {
      "results": [ModelResult, ...],      # one per model, the baseline first when there is one
      "prompts": 66,                      # held-out prompts every model answered
      "prompts_file": "heldout.jsonl",    # or null (written before this key existed)
      "policies": ["signoff", ...],       # rule names in file order; [] when no rules judged the answers
      "max_new_tokens": 128,              # or null
      "baseline": {"label": "base", "model": "runs/x/base"},   # or null: no baseline, no pairwise numbers
      "reward_model": {"model", "answers_scored", "truncated", "length_corr_tokens"},   # or null
      "judge_model": {"model", "template", "labels", "method"},                         # or null
      "verdicts": [...]                   # a pipeline's learning verdicts (alignment.verdict), or null
    }

    ModelResult: {"label", "model", "role" ("baseline" | "model"), "adherence" ({rule: rate, "all": rate};
      {} without rules), "mean_length_tokens", "mean_length_chars", "unfinished", "seconds",
      "answers": [Answer, ...] (in prompt order), "reward" (RewardSummary or null),
      "vs_baseline" (VsBaseline or null: the baseline itself, or no baseline)}
    Answer: {"prompt", "answer", "checks" ({rule: passed}), "tokens", "chars", "finished",
      "rm_score"?, "rm_p_a"?, "judge"? ({"p_one_a_first", "p_one_a_second", "p_a"})}; the last three only
      when that judge ran (rm_p_a and judge: not on the baseline's answers)
    RewardSummary: {"mean", "std", "length_corr_tokens", "length_corr_chars"}
    VsBaseline: {"baseline" (its label), "length_delta_tokens", "length_delta_chars",
      "rm_win_rate", "rm_ties", "rm_p_a", "rm_length_delta_corr" (when a reward model judged),
      "judge_win_rate", "judge_position_consistency", "judge_order_bias", "judge_label_mass",
      "judge_length_delta_corr" (when a judge model judged)}

Older files still read: a pipeline's results.json from before this module names its baseline by label
(``"baseline": "base"``) and has no ``role``, ``prompts_file``, ``max_new_tokens`` or ``judge_model``; older
still, no ``reward``/``vs_baseline`` and answers without ``tokens``/``chars``. Keys this module does not know
(a benchmark's per-answer ``content``, say) are kept in ``extra`` and written back unchanged.

Pure Python and JSON: no torch, nothing else of :mod:`alignment` imported, so every reader can afford it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASELINE = "baseline"
MODEL = "model"
ROLES = (BASELINE, MODEL)


def finite_json(value: Any) -> Any:
    """NaN and infinities as null, so the file is valid JSON (``json.dumps(..., allow_nan=False)`` passes)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    return value


def _rest(data: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    """The keys of ``data`` a record does not model, kept so that a rewrite loses nothing."""
    return {k: v for k, v in data.items() if k not in known}


# ------------------------------------------------------------------------------------------------ answers


@dataclass
class AnswerJudgement:
    """The generative judge on one answer (A) against the baseline's answer (B) to the same prompt."""

    p_one_a_first: float  # P("1") with A shown as Answer 1
    p_one_a_second: float  # P("1") with B shown as Answer 1, A as Answer 2
    p_a: float  # swap-averaged P(A better)

    def to_json(self) -> dict[str, Any]:
        return {"p_one_a_first": self.p_one_a_first, "p_one_a_second": self.p_one_a_second, "p_a": self.p_a}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AnswerJudgement:
        return cls(data.get("p_one_a_first"), data.get("p_one_a_second"), data.get("p_a"))


_ANSWER_KEYS = ("prompt", "answer", "checks", "tokens", "chars", "finished", "rm_score", "rm_p_a", "judge")


@dataclass
class AnswerRecord:
    """One model's answer to one held-out prompt, with what every judge said about it.

    (Not ``Answer``: :class:`alignment.generation.Answer` is the generator's raw output.)
    """

    prompt: str  # the prompt's last turn, as the report shows it
    answer: str  # the generated text
    checks: dict[str, bool] = field(default_factory=dict)  # rule name -> passed; {} without rules
    tokens: int | None = None  # generated tokens, the stop token included; None: written before lengths were
    chars: int | None = None
    finished: bool | None = None  # stopped at an end-of-turn token rather than at max_new_tokens
    rm_score: float | None = None  # the reward model's score of prompt + answer; None: no reward model
    rm_p_a: float | None = None  # sigmoid(rm_score - the baseline's rm_score); None on the baseline's answers
    judge: AnswerJudgement | None = None  # None: no judge model, or the baseline's answers
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": self.prompt, "answer": self.answer, "checks": dict(self.checks)}
        # lengths of old files stay absent rather than null: readers test for the key
        for key in ("tokens", "chars", "finished"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        # a judge's keys appear only when it ran: "rm_score" in an answer means "scored"
        if self.rm_score is not None:
            out["rm_score"] = self.rm_score
        if self.rm_p_a is not None:
            out["rm_p_a"] = self.rm_p_a
        if self.judge is not None:
            out["judge"] = self.judge.to_json()
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AnswerRecord:
        judge = data.get("judge")
        return cls(prompt=data.get("prompt", ""), answer=data.get("answer", ""), checks=dict(data.get("checks") or {}),
                   tokens=data.get("tokens"), chars=data.get("chars"), finished=data.get("finished"),
                   rm_score=data.get("rm_score"), rm_p_a=data.get("rm_p_a"),
                   judge=AnswerJudgement.from_json(judge) if isinstance(judge, Mapping) else None,
                   extra=_rest(data, _ANSWER_KEYS))


# -------------------------------------------------------------------------------------------- per model


@dataclass
class RewardSummary:
    """A reward model's scores of one model's answers."""

    mean: float | None = None
    std: float | None = None
    length_corr_tokens: float | None = None  # Pearson r of score and answer tokens, across the answers
    length_corr_chars: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "length_corr_tokens": self.length_corr_tokens,
                "length_corr_chars": self.length_corr_chars}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RewardSummary:
        return cls(data.get("mean"), data.get("std"), data.get("length_corr_tokens"), data.get("length_corr_chars"))


@dataclass
class RewardComparison:
    """The reward model on one model's answers against the baseline's, prompt by prompt."""

    win_rate: float | None = None  # share of prompts scored above the baseline's answer, ties 1/2
    ties: int | None = None
    p_a: float | None = None  # mean Bradley-Terry P(better) = sigmoid(r - r_baseline)
    length_delta_corr: float | None = None  # r of the score difference and the token difference

    KEYS = ("rm_win_rate", "rm_ties", "rm_p_a", "rm_length_delta_corr")

    def to_json(self) -> dict[str, Any]:
        return dict(zip(self.KEYS, (self.win_rate, self.ties, self.p_a, self.length_delta_corr)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RewardComparison:
        return cls(*(data.get(k) for k in cls.KEYS))


@dataclass
class JudgeComparison:
    """The generative judge on one model's answers against the baseline's, both orders."""

    win_rate: float | None = None  # mean swap-averaged P(A better)
    position_consistency: float | None = None  # share of prompts where both orders pick the same answer
    order_bias: float | None = None  # mean P("1") - 0.5 over both orders; > 0 favours the first answer
    label_mass: float | None = None  # mean p("1") + p("2") before renormalising
    length_delta_corr: float | None = None  # r of P(A better) and the token difference

    KEYS = ("judge_win_rate", "judge_position_consistency", "judge_order_bias", "judge_label_mass",
            "judge_length_delta_corr")

    def to_json(self) -> dict[str, Any]:
        return dict(zip(self.KEYS, (self.win_rate, self.position_consistency, self.order_bias, self.label_mass,
                                    self.length_delta_corr)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JudgeComparison:
        return cls(*(data.get(k) for k in cls.KEYS))


@dataclass
class VsBaseline:
    """One model against the baseline on the same prompts; flattened into one JSON object."""

    baseline: str  # the baseline's label
    length_delta_tokens: float | None = None  # mean per-prompt difference, this model minus the baseline
    length_delta_chars: float | None = None
    rm: RewardComparison | None = None  # None: no reward model judged
    judge: JudgeComparison | None = None  # None: no judge model judged

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"baseline": self.baseline, "length_delta_tokens": self.length_delta_tokens,
                               "length_delta_chars": self.length_delta_chars}
        if self.rm is not None:
            out.update(self.rm.to_json())
        if self.judge is not None:
            out.update(self.judge.to_json())
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VsBaseline:
        def part(kind: type[RewardComparison] | type[JudgeComparison]) -> Any:
            return kind.from_json(data) if any(k in data for k in kind.KEYS) else None

        return cls(baseline=data.get("baseline", ""), length_delta_tokens=data.get("length_delta_tokens"),
                   length_delta_chars=data.get("length_delta_chars"), rm=part(RewardComparison),
                   judge=part(JudgeComparison))


_RESULT_KEYS = ("label", "model", "role", "adherence", "mean_length_tokens", "mean_length_chars", "unfinished",
                "seconds", "answers", "reward", "vs_baseline")


@dataclass
class ModelResult:
    """One model's answers to the held-out prompts, and every aggregate over them."""

    label: str  # the row name: "base" or a phase name in a pipeline, "baseline" or the path in `align eval`
    model: str  # the model path (or alias) that answered
    role: str = MODEL  # "baseline" (the others are compared with it) or "model"
    answers: list[AnswerRecord] = field(default_factory=list)  # in prompt order
    adherence: dict[str, float] = field(default_factory=dict)  # rule -> pass rate, and "all"; {} without rules
    mean_length_tokens: float = 0.0
    mean_length_chars: float | None = None  # None: written before character lengths were recorded
    unfinished: int = 0  # answers that hit max_new_tokens without stopping
    seconds: float | None = None  # wall time to load the model and generate (the first time, when cached)
    reward: RewardSummary | None = None  # None: no reward model
    vs_baseline: VsBaseline | None = None  # None: this is the baseline, or there is none
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"label": self.label, "model": self.model, "role": self.role, "adherence": dict(self.adherence),
               "mean_length_tokens": self.mean_length_tokens, "mean_length_chars": self.mean_length_chars,
               "unfinished": self.unfinished, "seconds": self.seconds,
               "answers": [a.to_json() for a in self.answers],
               "reward": self.reward.to_json() if self.reward is not None else None,
               "vs_baseline": self.vs_baseline.to_json() if self.vs_baseline is not None else None}
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], baseline: str | None = None) -> ModelResult:
        """``baseline``: the report's baseline label, for the role of a result written without one."""
        label = data.get("label") or str(data.get("model", ""))
        role = data.get("role") or (BASELINE if baseline is not None and label == baseline else MODEL)
        reward, vs = data.get("reward"), data.get("vs_baseline")
        return cls(label=label, model=str(data.get("model", label)), role=role,
                   answers=[AnswerRecord.from_json(a) for a in data.get("answers") or []],
                   adherence=dict(data.get("adherence") or {}),
                   mean_length_tokens=data.get("mean_length_tokens", 0.0),
                   mean_length_chars=data.get("mean_length_chars"), unfinished=data.get("unfinished", 0),
                   seconds=data.get("seconds"),
                   reward=RewardSummary.from_json(reward) if reward else None,
                   vs_baseline=VsBaseline.from_json(vs) if vs else None,
                   extra=_rest(data, _RESULT_KEYS))


# ----------------------------------------------------------------------------------------------- report


@dataclass
class BaselineRef:
    """The model every other model is compared with."""

    label: str
    model: str | None  # None: an old file named the baseline by a label no result carries

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "model": self.model}


@dataclass
class RewardModelSummary:
    """The reward model that scored every answer, over all of them."""

    model: str
    answers_scored: int | None = None  # distinct (prompt, answer) pairs: identical answers are scored once
    truncated: int | None = None  # prompt + answer cut at the reward model's input limit
    length_corr_tokens: float | None = None  # r of score and answer tokens over every answer of every model

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "answers_scored": self.answers_scored, "truncated": self.truncated,
                "length_corr_tokens": self.length_corr_tokens}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RewardModelSummary:
        return cls(str(data.get("model")), data.get("answers_scored"), data.get("truncated"),
                   data.get("length_corr_tokens"))


@dataclass
class JudgeModelSummary:
    """The generative judge and how it was asked."""

    model: str
    template: str = ""  # its user turn, with {question}, {answer_1}, {answer_2}
    labels: list[str] = field(default_factory=list)  # the two label tokens read from its next-token distribution
    method: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "template": self.template, "labels": list(self.labels), "method": self.method}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JudgeModelSummary:
        return cls(str(data.get("model")), data.get("template", ""), list(data.get("labels") or []),
                   data.get("method", ""))


_REPORT_KEYS = ("results", "prompts", "prompts_file", "policies", "max_new_tokens", "baseline", "reward_model",
                "judge_model", "verdicts")


@dataclass
class EvalReport:
    """Every model's answers to the same held-out prompts, judged: the content of ``results.json``."""

    results: list[ModelResult]  # the baseline first when there is one
    prompts: int  # how many held-out prompts
    policies: list[str] = field(default_factory=list)  # rule names, in file order
    prompts_file: str | None = None
    max_new_tokens: int | None = None
    baseline: BaselineRef | None = None
    reward_model: RewardModelSummary | None = None
    judge_model: JudgeModelSummary | None = None
    verdicts: list[dict[str, Any]] | None = None  # set by a pipeline after the evaluation (alignment.verdict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"results": [r.to_json() for r in self.results], "prompts": self.prompts,
               "prompts_file": self.prompts_file, "policies": list(self.policies),
               "max_new_tokens": self.max_new_tokens,
               "baseline": self.baseline.to_json() if self.baseline is not None else None,
               "reward_model": self.reward_model.to_json() if self.reward_model is not None else None,
               "judge_model": self.judge_model.to_json() if self.judge_model is not None else None,
               "verdicts": self.verdicts}
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvalReport:
        """Read this shape or an older one (see the module docstring)."""
        raw = data.get("results") or []
        base = data.get("baseline")
        label = base.get("label") if isinstance(base, Mapping) else base if isinstance(base, str) else None
        results = [ModelResult.from_json(r, label) for r in raw]
        baseline = None
        if isinstance(base, Mapping) and base.get("label") is not None:
            baseline = BaselineRef(str(base["label"]), base.get("model"))
        elif isinstance(base, str):  # the pipeline's shape before this module: the baseline's label
            match = next((r for r in results if r.label == base), None)
            baseline = BaselineRef(base, match.model if match else None)
        prompts = data.get("prompts")
        if prompts is None:
            prompts = len(results[0].answers) if results else 0
        rm, judge = data.get("reward_model"), data.get("judge_model")
        return cls(results=results, prompts=prompts, policies=list(data.get("policies") or []),
                   prompts_file=data.get("prompts_file"), max_new_tokens=data.get("max_new_tokens"),
                   baseline=baseline,
                   reward_model=RewardModelSummary.from_json(rm) if isinstance(rm, Mapping) and rm else None,
                   judge_model=JudgeModelSummary.from_json(judge) if isinstance(judge, Mapping) and judge else None,
                   verdicts=data.get("verdicts"), extra=_rest(data, _REPORT_KEYS))

    def write(self, path: str | Path) -> Path:
        """Write ``results.json``: the one writer of this file (NaN and infinities as null)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(finite_json(self.to_json()), indent=2, allow_nan=False))
        return path

    @classmethod
    def read(cls, path: str | Path) -> EvalReport:
        return cls.from_json(json.loads(Path(path).read_text()))
