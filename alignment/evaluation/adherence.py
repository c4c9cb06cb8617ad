"""Policy adherence of one or more models on held-out prompts: answers, checks and the printed tables.

Each model answers every prompt (greedy, batched); each answer is checked against the domain
policies; the table shows the rate per policy, the rate of answers passing all of them, answer
length, and how many answers hit ``max_new_tokens`` without stopping (a model that never learned
to stop shows up here first).

When the answers were also judged with a reward model and a generative judge model against a
baseline model (:mod:`alignment.evaluation.judge`), a second table shows those scores with the
answer lengths beside them. The orchestration of all of it, for `align eval` and a pipeline's eval phase,
is :func:`alignment.evaluation.run.evaluate`; the records are :mod:`alignment.evaluation.records`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from alignment.evaluation.records import (
    AnswerRecord,
    JudgeComparison,
    ModelResult,
    RewardComparison,
    RewardSummary,
    VsBaseline,
)
from alignment.evaluation.rules import ALL, DomainRule, adherence, check_answer

if TYPE_CHECKING:
    from alignment.config import ModelOptions


def load_prompts(path: str | Path) -> list[list[dict[str, str]]]:
    """The held-out prompts, as message lists; a blank prompt is refused naming its file, line and field."""
    from alignment.data.prompts import load_prompt_file

    return load_prompt_file(path)[0]


def check_result(result: ModelResult, policies: list[DomainRule]) -> None:
    """(Re)check every answer of ``result`` against ``policies`` and set its adherence rates.

    Checks depend on the answer text and the rules alone, so cached answers are checked again with the rules
    of today rather than trusted with the verdicts of the rules they were generated under.
    """
    for a in result.answers:
        a.checks = check_answer(a.answer, policies) if policies else {}
    result.adherence = adherence([a.answer for a in result.answers], policies) if policies else {}


def evaluate_model(model_path: str, prompts: list[list[dict[str, str]]], policies: list[DomainRule], *,
                   max_new_tokens: int = 128, batch_size: int = 16, label: str | None = None,
                   options: ModelOptions | None = None) -> ModelResult:
    """Generate, check, and summarise one model (no policies: answers and lengths only). ``options``: how the
    model loads (dtype, attention kernel, remote code); None: float32, transformers' defaults."""

    from alignment.generation import generate
    from alignment.modeling import load_causal_lm, load_tokenizer, on_inference_device

    start = time.perf_counter()
    tokenizer = load_tokenizer(model_path, options)
    model = on_inference_device(load_causal_lm(model_path, merge_adapter=True, options=options))
    generated = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         desc=f"eval {label or model_path}")
    lengths = [g.num_tokens for g in generated]
    result = ModelResult(
        label=label or str(model_path), model=str(model_path),
        answers=[AnswerRecord(prompt=p[-1]["content"], answer=g.text, tokens=g.num_tokens, chars=len(g.text),
                              finished=g.finished) for p, g in zip(prompts, generated)],
        mean_length_tokens=sum(lengths) / len(lengths),
        mean_length_chars=sum(len(g.text) for g in generated) / len(generated),
        unfinished=sum(1 for g in generated if not g.finished),
    )
    check_result(result, policies)
    result.seconds = time.perf_counter() - start
    return result


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(results: list[ModelResult], policies: list[DomainRule]) -> str:
    """Plain-text tables: one row per model.

    The first has a column per policy (when there are policies) and the answer lengths; a second, when the
    answers were judged (a reward model, a judge model, or a baseline to compare lengths with), has the scores
    with the lengths beside them so a longer-is-better reward hack shows.
    """
    names = [p.name for p in policies] + [ALL] if policies else []
    header = ["model", *names, "mean len", "mean chars", "unfinished"]
    rows = [header]
    for r in results:
        rows.append([r.label, *(f"{100 * r.adherence[n]:.1f}%" for n in names),
                     f"{r.mean_length_tokens:.0f}", _cell(r.mean_length_chars, ".0f"), str(r.unfinished)])
    table = _grid(rows)
    if not any(r.reward or r.vs_baseline for r in results):
        return table
    has_rm = any(r.reward for r in results)
    has_base = any(r.vs_baseline for r in results)
    has_rm_pair = any(r.vs_baseline and r.vs_baseline.rm and r.vs_baseline.rm.win_rate is not None for r in results)
    has_judge = any(r.vs_baseline and r.vs_baseline.judge and r.vs_baseline.judge.win_rate is not None
                    for r in results)
    header = ["model", "tokens", "chars"]
    header += ["RM mean", "RM sd", "r(RM,len)"] if has_rm else []
    header += ["Δtokens"] if has_base else []
    header += ["RM win", "RM P(A)", "r(RM Δ,Δlen)"] if has_rm_pair else []
    header += ["judge P(A)", "consistent", "order bias", "label mass", "r(P,Δlen)"] if has_judge else []
    rows = [header]
    for r in results:
        rm = r.reward or RewardSummary()
        vs = r.vs_baseline or VsBaseline(baseline="")
        pair, judged = vs.rm or RewardComparison(), vs.judge or JudgeComparison()
        row = [r.label, f"{r.mean_length_tokens:.1f}", _cell(r.mean_length_chars, ".0f")]
        if has_rm:
            row += [_cell(rm.mean, "+.3f"), _cell(rm.std, ".3f"), _cell(rm.length_corr_tokens, "+.2f")]
        if has_base:
            row += [_cell(vs.length_delta_tokens, "+.1f")]
        if has_rm_pair:
            row += [_cell(pair.win_rate, ".3f"), _cell(pair.p_a, ".3f"), _cell(pair.length_delta_corr, "+.2f")]
        if has_judge:
            row += [_cell(judged.win_rate, ".3f"), _cell(judged.position_consistency, ".2f"),
                    _cell(judged.order_bias, "+.3f"), _cell(judged.label_mass, ".2f"),
                    _cell(judged.length_delta_corr, "+.2f")]
        rows.append(row)
    return table + "\n\n" + _grid(rows)


LEGEND = """\
tokens/chars: mean answer length; r(RM,len): correlation of RM score and answer tokens across answers;
Δtokens: mean per-prompt length difference to the baseline; RM win: share of prompts where the RM scores the
answer above the baseline's (ties 1/2); RM P(A): mean sigmoid(r_A - r_B); judge P(A): the judge model's
preference, averaged over both answer orders; consistent: share of prompts where both orders pick the same
answer; order bias: mean P("1") - 0.5 (> 0 favours the first answer); label mass: p("1") + p("2");
r(..., Δlen): correlation of the preference with the length difference (high = longer wins)."""
