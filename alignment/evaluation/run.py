"""One evaluation, for `align eval` and a pipeline's eval phase alike: :func:`evaluate`.

Every model answers the same held-out prompts (greedy), the answers are checked against the rules, and, when
given, a reward model scores them and a generative judge compares them with the baseline's
(:mod:`alignment.evaluation.judge`). The result is an :class:`~alignment.evaluation.records.EvalReport`, which
both callers print with :func:`~alignment.evaluation.adherence.format_table` and write as ``results.json``
with :meth:`~alignment.evaluation.records.EvalReport.write`: one shape, one writer.

With a ``cache_dir`` (a pipeline's eval folder; `align eval --cache DIR`):

- each model's answers are kept in ``<label>.json`` under a key of what they depend on: the prompts (their
  content), ``max_new_tokens``, ``batch_size``, the model path and its weights' modification time
  (:func:`model_stamp`). The rule checks are not part of the key: they are run again on every evaluation, so
  an edited policies file never shows the verdicts of the old rules;
- the reward-model judgement of the whole set is kept in ``rm.json`` under a key of those answer keys and the
  reward model's path and stamp, so a retrained reward model rescores the answers without generating them
  again. The judge model is not cached (`align eval` only, and cheap next to generation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from alignment.config import ModelOptions
from alignment.errors import AlignError
from alignment.evaluation import judge
from alignment.evaluation.adherence import LEGEND, check_result, evaluate_model, format_table, load_prompts
from alignment.evaluation.records import (
    BASELINE,
    MODEL,
    BaselineRef,
    EvalReport,
    ModelResult,
    RewardModelSummary,
    RewardSummary,
    VsBaseline,
)
from alignment.evaluation.rules import DomainRule, load_rules
from alignment.log import get_logger

_log = get_logger("eval")

Messages = list[dict[str, str]]
Log = Callable[[str], None]


def _fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_stamp(model: str) -> float:
    """When a model folder last changed, so a retrained model is evaluated again."""
    path = Path(model)
    if (path / "model").is_dir() and not (path / "config.json").exists():
        path = path / "model"  # a finished phase folder
    files = list(path.glob("*.safetensors")) if path.is_dir() else []
    return max((f.stat().st_mtime for f in files), default=0.0)


def _cache_file(cache_dir: Path, label: str) -> Path:
    """``<label>.json``; a label that is not a plain file name (an `align eval` path) gets a safe one."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", label):
        return cache_dir / f"{label}.json"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._-")[-60:] or "model"
    return cache_dir / f"{safe}-{hashlib.sha256(label.encode()).hexdigest()[:8]}.json"


def _cached_answers(cache: Path, key: str) -> ModelResult | None:
    """The answers cached under ``key``, or None (none, another key, or cached before per-answer lengths)."""
    if not cache.exists():
        return None
    data = json.loads(cache.read_text())
    # answers cached before per-answer lengths were recorded cannot be judged: generate them again
    if data.get("key") != key or not all({"tokens", "chars"} <= set(a) for a in data.get("answers") or []):
        return None
    data.pop("key")
    return ModelResult.from_json(data)


def _options_key(options: ModelOptions | None) -> list[Any]:
    """The load options in a cache key: none for the defaults, so answers cached before options existed stay
    valid; a dtype or attention kernel changes the answers, so any other choice is part of the key."""
    return [] if options is None or options == ModelOptions() else [dataclasses.asdict(options)]


def _answers(label: str, model: str, prompts: list[Messages], policies: Sequence[DomainRule], *, max_new_tokens: int,
             batch_size: int, cache_dir: Path | None, log: Log,
             options: ModelOptions | None = None) -> tuple[ModelResult, str]:
    """One model's checked answers, from the cache when they are there; and their cache key."""
    key = _fingerprint([prompts, max_new_tokens, batch_size, model, model_stamp(model), *_options_key(options)])
    cache = _cache_file(cache_dir, label) if cache_dir is not None else None
    result = _cached_answers(cache, key) if cache is not None else None
    if result is None:
        log(f"{label} ({model})")
        result = evaluate_model(model, prompts, list(policies), max_new_tokens=max_new_tokens,
                                batch_size=batch_size, label=label, options=options)
        if cache is not None:
            cache.write_text(json.dumps({**result.to_json(), "key": key}, indent=2))
    else:
        check_result(result, list(policies))
    result.label = label
    return result, key


def _scores_from_cache(cache: Path, key: str, results: list[ModelResult]) -> RewardModelSummary | None:
    """Fill the reward-model fields of ``results`` from ``rm.json`` when it was written under ``key``."""
    if not cache.exists():
        return None
    cached = json.loads(cache.read_text())
    if cached.get("key") != key or not all(r.label in cached.get("results", {}) for r in results):
        return None
    for r in results:
        saved = cached["results"][r.label]
        r.reward = RewardSummary.from_json(saved["reward"]) if saved.get("reward") else None
        if saved.get("vs_baseline"):
            vs = VsBaseline.from_json(saved["vs_baseline"])
            if r.vs_baseline is None:
                r.vs_baseline = vs
            r.vs_baseline.rm = vs.rm
        for a, values in zip(r.answers, saved["answers"]):
            a.rm_score, a.rm_p_a = values.get("rm_score"), values.get("rm_p_a")
    return RewardModelSummary.from_json(cached["summary"])


def _score(results: list[ModelResult], prompts: list[Messages], reward_model: str, baseline: int | None, *,
           batch_size: int, cache_dir: Path | None, answer_keys: list[list[str]], log: Log,
           options: ModelOptions | None = None) -> RewardModelSummary:
    """Reward-model scores and win rates against ``results[baseline]``, from ``rm.json`` when nothing changed."""
    cache = cache_dir / "rm.json" if cache_dir is not None else None
    key = _fingerprint([answer_keys, reward_model, model_stamp(reward_model), baseline, *_options_key(options)])
    if cache is not None and (summary := _scores_from_cache(cache, key, results)) is not None:
        return summary
    log(f"scoring every answer with the reward model {reward_model}")
    summary = judge.judge_with_reward_model(results, prompts, reward_model, baseline, batch_size=batch_size,
                                            options=options)
    if cache is not None:
        saved = {r.label: {"reward": r.reward.to_json() if r.reward else None,
                           "vs_baseline": r.vs_baseline.to_json() if r.vs_baseline else None,
                           "answers": [{k: v for k, v in (("rm_score", a.rm_score), ("rm_p_a", a.rm_p_a))
                                        if v is not None} for a in r.answers]}
                 for r in results}
        cache.write_text(json.dumps({"key": key, "summary": summary.to_json(), "results": saved}, indent=2))
    return summary


def evaluate(models: Mapping[str, str], prompts: list[Messages], policies: Sequence[DomainRule], *,
             baseline: str | None = None, reward_model: str | None = None, judge_model: str | None = None,
             max_new_tokens: int = 128, batch_size: int = 16, prompts_file: str | Path | None = None,
             cache_dir: str | Path | None = None, log: Log | None = None,
             model_options: ModelOptions | None = None) -> EvalReport:
    """Every model of ``models`` (label -> path, in table order) answers ``prompts``; judged by ``policies``,
    the reward model and the judge model, each optional.

    ``baseline``: the label (a key of ``models``) the others are compared with; it is listed first. The judge
    model needs one. ``cache_dir``: keep answers and reward-model scores there and reuse them (module
    docstring); None: generate and score afresh. ``log``: progress lines (which model generates, when the
    reward model scores); None: quiet. Model paths are the caller's to check first, so a typo fails before
    any generation, naming the caller's flag or recipe key. ``prompts_file`` is recorded in the report.
    ``model_options``: how every model (the judges too) is loaded; None: float32, transformers' defaults.
    """
    if baseline is not None and baseline not in models:
        raise ValueError(f"the baseline '{baseline}' is not one of the models ({', '.join(models)})")
    if judge_model and baseline is None:
        raise AlignError("a judge model compares each model's answers with a baseline's; name a baseline")
    if not prompts:
        raise AlignError("no prompts", file=prompts_file)
    say: Log = log or (lambda _message: None)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    order = ([baseline] if baseline is not None else []) + [label for label in models if label != baseline]
    results, keys = [], []
    for label in order:
        result, key = _answers(label, models[label], prompts, policies, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, cache_dir=cache, log=say, options=model_options)
        result.role = BASELINE if label == baseline else MODEL
        results.append(result)
        keys.append([label, key])
    base = 0 if baseline is not None else None
    judge.add_length_deltas(results, base)
    rm_summary = None
    if reward_model:
        rm_summary = _score(results, prompts, reward_model, base, batch_size=batch_size, cache_dir=cache,
                            answer_keys=keys, log=say, options=model_options)
    judge_summary = None
    if judge_model:
        judge_summary = judge.judge_with_model(results, prompts, judge_model, 0, batch_size=batch_size,
                                               options=model_options)
    return EvalReport(results=results, prompts=len(prompts), policies=[p.name for p in policies],
                      prompts_file=str(prompts_file) if prompts_file is not None else None,
                      max_new_tokens=max_new_tokens,
                      baseline=BaselineRef(baseline, models[baseline]) if baseline is not None else None,
                      reward_model=rm_summary, judge_model=judge_summary)


def pooled_length_line(report: EvalReport) -> str:
    """The reward model's score-length correlation over every answer of every model, as one line."""
    pooled = report.reward_model.length_corr_tokens if report.reward_model else None
    return (f"RM score vs answer tokens over all {sum(len(r.answers) for r in report.results)} answers: "
            f"r = {'-' if pooled is None else f'{pooled:+.2f}'}")


# ------------------------------------------------------------------------------------------- align eval


def _labels(models: list[str], baseline: str | None) -> dict[str, str]:
    """label -> model in table order: the baseline first, labelled "baseline"; repeated paths numbered."""
    entries = {BASELINE: baseline} if baseline else {}
    for m in models:
        label, n = m, 1
        while label in entries:  # the same path twice, or a model literally named "baseline"
            n += 1
            label = f"{m} #{n}"
        entries[label] = m
    return entries


def eval_command(models: list[str], prompts_path: str, policies_path: str | None = None, max_new_tokens: int = 128,
                 batch_size: int = 16, out: str | None = None, *, baseline: str | None = None,
                 reward_model: str | None = None, judge_model: str | None = None, cache: str | None = None,
                 model_options: ModelOptions | None = None) -> int:
    """`align eval`: answers from every model (and the baseline), judged by every judge that was given."""
    if not (policies_path or reward_model or judge_model):
        raise AlignError("nothing to judge the answers with: give --policies FILE (domain policy checks), "
                         "--reward-model PATH (reward scores, win rates) and/or --judge-model PATH (a pairwise "
                         "judge against --baseline)", field="--policies")
    if judge_model and not baseline:
        raise AlignError("--judge-model compares each model's answers with a baseline's; give --baseline PATH",
                         field="--baseline")
    if batch_size < 1 or max_new_tokens < 1:
        raise AlignError("must be at least 1", field="--batch-size" if batch_size < 1 else "--max-new-tokens")
    # Every path is checked before any model generates, so a typo costs seconds, not a generation run.
    policies = load_rules(policies_path) if policies_path else []
    prompts = load_prompts(prompts_path)
    if not prompts:
        raise AlignError("no prompts", file=prompts_path)
    for m in models:
        judge.check_model(m, "--model")
    if baseline:
        judge.check_model(baseline, "--baseline")
    if reward_model:
        judge.check_reward_model(reward_model)
    if judge_model:
        judge.check_judge_model(judge_model)

    report = evaluate(_labels(models, baseline), prompts, policies, baseline=BASELINE if baseline else None,
                      reward_model=reward_model, judge_model=judge_model, max_new_tokens=max_new_tokens,
                      batch_size=batch_size, prompts_file=prompts_path, cache_dir=cache,
                      model_options=model_options)
    if baseline:
        _log.info(f"baseline: {baseline}")
    print(format_table(report.results, policies))
    if reward_model or baseline:
        if reward_model:
            print(pooled_length_line(report))
        print(LEGEND)
    if out:
        report.write(out)
        _log.info(f"results: {out}")
    return 0

