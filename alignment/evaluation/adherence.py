"""Policy adherence of one or more models on held-out prompts, and `align eval`.

Each model answers every prompt (greedy, batched); each answer is checked against the domain
policies; the table shows the rate per policy, the rate of answers passing all of them, answer
length, and how many answers hit ``max_new_tokens`` without stopping (a model that never learned
to stop shows up here first).

`align eval` can also judge the answers with a reward model and a generative judge model against a
baseline model (:mod:`alignment.evaluation.judge`); a second table then shows those scores with the
answer lengths beside them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from alignment.errors import AlignError
from alignment.evaluation.policies import ALL, Policy, adherence, check_answer, load_policies


def load_prompts(path: str | Path) -> list[list[dict[str, str]]]:
    """The held-out prompts, as message lists; a blank prompt is refused naming its file, line and field."""
    from alignment.data.prompts import load_prompt_file

    return load_prompt_file(path)[0]


def evaluate_model(model_path: str, prompts: list[list[dict[str, str]]], policies: list[Policy], *,
                   max_new_tokens: int = 128, batch_size: int = 16, label: str | None = None) -> dict[str, Any]:
    """Generate, check, and summarise one model (no policies: answers and lengths only)."""
    import torch

    from alignment.generation import generate
    from alignment.modeling import load_causal_lm, load_tokenizer

    start = time.perf_counter()
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, merge_adapter=True)
    if torch.cuda.is_available():
        model = model.to("cuda")
    generated = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         desc=f"eval {label or model_path}")
    answers = [g.text for g in generated]
    lengths = [g.num_tokens for g in generated]
    return {
        "model": str(model_path),
        "label": label or str(model_path),
        "adherence": adherence(answers, policies) if policies else {},
        "mean_length_tokens": sum(lengths) / len(lengths),
        "mean_length_chars": sum(len(a) for a in answers) / len(answers),
        "unfinished": sum(1 for g in generated if not g.finished),
        "seconds": time.perf_counter() - start,
        "answers": [
            {"prompt": p[-1]["content"], "answer": g.text, "checks": check_answer(g.text, policies) if policies else {},
             "tokens": g.num_tokens, "chars": len(g.text), "finished": g.finished}
            for p, g in zip(prompts, generated)
        ],
    }


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(results: list[dict[str, Any]], policies: list[Policy]) -> str:
    """Plain-text tables: one row per model.

    The first has a column per policy (when there are policies) and the answer lengths; a second, when the
    answers were judged (``align eval --reward-model/--judge-model``), has the scores with the lengths
    beside them so a longer-is-better reward hack shows.
    """
    names = [p.name for p in policies] + [ALL] if policies else []
    header = ["model", *names, "mean len", "mean chars", "unfinished"]
    rows = [header]
    for r in results:
        chars = r.get("mean_length_chars")
        rows.append([r["label"], *(f"{100 * r['adherence'][n]:.1f}%" for n in names),
                     f"{r['mean_length_tokens']:.0f}", _cell(chars, ".0f"), str(r["unfinished"])])
    table = _grid(rows)
    judged = [r for r in results if r.get("reward") or r.get("vs_baseline")]
    if not judged:
        return table
    has_rm = any(r.get("reward") for r in results)
    has_base = any(r.get("vs_baseline") for r in results)
    has_rm_pair = any((r.get("vs_baseline") or {}).get("rm_win_rate") is not None for r in results)
    has_judge = any((r.get("vs_baseline") or {}).get("judge_win_rate") is not None for r in results)
    header = ["model", "tokens", "chars"]
    header += ["RM mean", "RM sd", "r(RM,len)"] if has_rm else []
    header += ["Δtokens"] if has_base else []
    header += ["RM win", "RM P(A)", "r(RM Δ,Δlen)"] if has_rm_pair else []
    header += ["judge P(A)", "consistent", "order bias", "label mass", "r(P,Δlen)"] if has_judge else []
    rows = [header]
    for r in results:
        rm, vs = r.get("reward") or {}, r.get("vs_baseline") or {}
        row = [r["label"], f"{r['mean_length_tokens']:.1f}", _cell(r.get("mean_length_chars"), ".0f")]
        if has_rm:
            row += [_cell(rm.get("mean"), "+.3f"), _cell(rm.get("std"), ".3f"),
                    _cell(rm.get("length_corr_tokens"), "+.2f")]
        if has_base:
            row += [_cell(vs.get("length_delta_tokens"), "+.1f")]
        if has_rm_pair:
            row += [_cell(vs.get("rm_win_rate"), ".3f"), _cell(vs.get("rm_p_a"), ".3f"),
                    _cell(vs.get("rm_length_delta_corr"), "+.2f")]
        if has_judge:
            row += [_cell(vs.get("judge_win_rate"), ".3f"), _cell(vs.get("judge_position_consistency"), ".2f"),
                    _cell(vs.get("judge_order_bias"), "+.3f"), _cell(vs.get("judge_label_mass"), ".2f"),
                    _cell(vs.get("judge_length_delta_corr"), "+.2f")]
        rows.append(row)
    return table + "\n\n" + _grid(rows)


LEGEND = """\
tokens/chars: mean answer length; r(RM,len): correlation of RM score and answer tokens across answers;
Δtokens: mean per-prompt length difference to the baseline; RM win: share of prompts where the RM scores the
answer above the baseline's (ties 1/2); RM P(A): mean sigmoid(r_A - r_B); judge P(A): the judge model's
preference, averaged over both answer orders; consistent: share of prompts where both orders pick the same
answer; order bias: mean P("1") - 0.5 (> 0 favours the first answer); label mass: p("1") + p("2");
r(..., Δlen): correlation of the preference with the length difference (high = longer wins)."""


def _finite(value: Any) -> Any:
    """NaN and infinities as null, so the file is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _labels(models: list[str], baseline: str | None) -> list[tuple[str, str]]:
    """(label, model) in table order: the baseline first, labelled "baseline"; repeated paths numbered."""
    entries = [("baseline", baseline)] if baseline else []
    seen: dict[str, int] = {}
    for m in models:
        seen[m] = seen.get(m, 0) + 1
        entries.append((m if seen[m] == 1 else f"{m} #{seen[m]}", m))
    return entries


def eval_command(models: list[str], prompts_path: str, policies_path: str | None = None, max_new_tokens: int = 128,
                 batch_size: int = 16, out: str | None = None, *, baseline: str | None = None,
                 reward_model: str | None = None, judge_model: str | None = None) -> int:
    """`align eval`: answers from every model (and the baseline), judged by every judge that was given."""
    from alignment.evaluation import judge

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
    policies = load_policies(policies_path) if policies_path else []
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

    results = []
    for label, m in _labels(models, baseline):
        result = evaluate_model(m, prompts, policies, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                label=label)
        result["role"] = "baseline" if baseline and not results else "model"
        results.append(result)
    base = 0 if baseline else None
    judge.add_length_deltas(results, base)
    for r in results:
        r["reward"] = None
    summary: dict[str, Any] = {"reward_model": None, "judge_model": None}
    if reward_model:
        summary["reward_model"] = judge.judge_with_reward_model(results, prompts, reward_model, base,
                                                                batch_size=batch_size)
    if judge_model:
        summary["judge_model"] = judge.judge_with_model(results, prompts, judge_model, 0, batch_size=batch_size)

    if baseline:
        print(f"baseline: {baseline}")
    print(format_table(results, policies))
    if reward_model or baseline:
        pooled = summary["reward_model"]["length_corr_tokens"] if reward_model else None
        if reward_model:
            print(f"RM score vs answer tokens over all {sum(len(r['answers']) for r in results)} answers: "
                  f"r = {'-' if pooled is None else f'{pooled:+.2f}'}")
        print(LEGEND)
    if out:
        report = {"results": results, "prompts": len(prompts), "prompts_file": str(prompts_path),
                  "policies": [p.name for p in policies], "max_new_tokens": max_new_tokens,
                  "baseline": {"label": "baseline", "model": baseline} if baseline else None, **summary}
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(_finite(report), indent=2, allow_nan=False))
        print(f"results: {out}")
    return 0
