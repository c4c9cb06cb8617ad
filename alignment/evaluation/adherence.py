"""Policy adherence of one or more models on held-out prompts.

Each model answers every prompt (greedy, batched); each answer is checked against the domain
policies; the table shows the rate per policy, the rate of answers passing all of them, answer
length, and how many answers hit ``max_new_tokens`` without stopping (a model that never learned
to stop shows up here first).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from alignment.errors import AlignError
from alignment.evaluation.policies import ALL, Policy, adherence, check_answer, load_policies


def load_prompts(path: str | Path) -> list[list[dict[str, str]]]:
    from alignment.data import load_dataset_file, to_conversation

    ds, info = load_dataset_file(path, "prompts")
    return [to_conversation(r, "prompts", info.variant)["prompt"] for r in ds]


def evaluate_model(model_path: str, prompts: list[list[dict[str, str]]], policies: list[Policy], *,
                   max_new_tokens: int = 128, batch_size: int = 16, label: str | None = None) -> dict[str, Any]:
    """Generate, check, and summarise one model."""
    from alignment.generation import generate
    from alignment.modeling import load_causal_lm, load_tokenizer

    start = time.perf_counter()
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, merge_adapter=True)
    generated = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         desc=f"eval {label or model_path}")
    answers = [g.text for g in generated]
    lengths = [g.num_tokens for g in generated]
    rates = adherence(answers, policies)
    return {
        "model": str(model_path),
        "label": label or str(model_path),
        "adherence": rates,
        "mean_length_tokens": sum(lengths) / len(lengths),
        "unfinished": sum(1 for g in generated if not g.finished),
        "seconds": time.perf_counter() - start,
        "answers": [
            {"prompt": p[-1]["content"], "answer": a, "checks": check_answer(a, policies)}
            for p, a in zip(prompts, answers)
        ],
    }


def format_table(results: list[dict[str, Any]], policies: list[Policy]) -> str:
    """A plain-text table: one row per model, one column per policy."""
    names = [p.name for p in policies] + [ALL]
    header = ["model", *names, "mean len", "unfinished"]
    rows = [header]
    for r in results:
        rows.append([r["label"], *(f"{100 * r['adherence'][n]:.1f}%" for n in names),
                     f"{r['mean_length_tokens']:.0f}", str(r["unfinished"])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def eval_command(models: list[str], prompts_path: str, policies_path: str, max_new_tokens: int,
                 batch_size: int, out: str | None) -> int:
    policies = load_policies(policies_path)
    prompts = load_prompts(prompts_path)
    if not prompts:
        raise AlignError("no prompts", file=prompts_path)
    results = [evaluate_model(m, prompts, policies, max_new_tokens=max_new_tokens, batch_size=batch_size)
               for m in models]
    print(format_table(results, policies))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"results": results}, indent=2))
        print(f"results: {out}")
    return 0
