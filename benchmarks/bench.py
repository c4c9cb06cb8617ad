"""`make bench`: our training phases against TRL's trainers, same model, data, batch, lengths and steps.

Four workloads (SFT tokens/s, reward-model pairs/s, DPO pairs/s, PPO episodes/s), each run four ways:
ours (``alignment.sft.run_sft`` and friends, from the quickstart recipes), ours with
``train.gradient_checkpointing: true`` (the memory-saving setting TRL turns on by default), "TRL defaults" (TRL's config
defaults as they are, e.g. gradient checkpointing and bf16 autocast on) and "TRL tuned" (the same precision
and gradient checkpointing as ours, no logging/saving/evaluation, and for RLOO the same number of
optimizer updates per rollout batch as our PPO). Every row runs in its own fresh subprocess
(``python -m benchmarks.workloads``) so peak RSS is per row. The machine's peak matmul FLOP/s (fp32 and
bf16) is measured too, and the SFT/RM/DPO rows report model FLOP/s utilisation against both peaks.

    make bench                                            # all rows, writes benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench.py --steps 2 --only sft,rm
    .venv/bin/python benchmarks/bench.py --dry-run        # the plan, nothing runs

This module is the parent: argument parsing, orchestration, the FLOP formulas and the rendering of
RESULTS.md (all pure and importable without torch); the measured code lives in ``benchmarks/workloads.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment import allocator
from alignment.errors import AlignError

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "quickstart"
DEFAULT_OUT = REPO / "benchmarks" / "RESULTS.md"
DEFAULT_WORKDIR = REPO / "runs" / "bench"

WORKLOADS = ("sft", "rm", "dpo", "ppo", "grpo", "rloo")
# The online RL workloads: our PPO phase (`align ppo`) with the quickstart's ppo.yaml; grpo and rloo set
# `advantage` to the critic-free estimator and sample GROUP_SIZE answers per prompt.
RL_WORKLOADS = ("ppo", "grpo", "rloo")
GROUP_SIZE = 4
VARIANTS = ("ours", "ours-ckpt", "trl-defaults", "trl-tuned")
WORKLOAD_TITLES = {"sft": "SFT", "rm": "Reward model", "dpo": "DPO (sigmoid)", "ppo": "PPO vs RLOO",
                   "grpo": "GRPO", "rloo": "RLOO"}
VARIANT_TITLES = {"ours": "ours", "ours-ckpt": "ours + grad. ckpt", "trl-defaults": "TRL defaults",
                  "trl-tuned": "TRL tuned"}
UNITS = {"sft": "tokens/s", "rm": "pairs/s", "dpo": "pairs/s", "ppo": "episodes/s", "grpo": "episodes/s",
         "rloo": "episodes/s"}
TRL_TRAINERS = {"sft": "SFTTrainer", "rm": "RewardTrainer", "dpo": "DPOTrainer", "ppo": "RLOOTrainer",
                "grpo": "GRPOTrainer", "rloo": "RLOOTrainer"}

# Targets, checked against the measured numbers (never hard-coded verdicts).
TARGET_VS_DEFAULTS = 1.3
TARGET_VS_TUNED = 1.3
# PPO against TRL's RLOO (no critic, so less work per episode); GRPO and RLOO run the same algorithm on both sides.
TARGET_VS_TUNED_RL = {"ppo": 2.0, "grpo": 1.5, "rloo": 1.5}
# Model FLOP/s of SFT/RM/DPO as a fraction of the measured matmul peak: of the bf16 peak where the CPU has AMX
# (bf16 is then the fast precision, as on the GPUs users train on), else of the better of the fp32 and bf16 peaks.
TARGET_MFU_AMX = 0.35
TARGET_MFU_BEST = 0.5
MFU_WORKLOADS = ("sft", "rm", "dpo")
# Workloads whose run 1 profiles one step after the timed ones (online RL reports its generation / scoring /
# training split instead).
PROFILED_WORKLOADS = MFU_WORKLOADS

CHILD_ENV = {
    "WANDB_MODE": "disabled",
    "WANDB_SILENT": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def phase_of(workload: str) -> str:
    """The `align` phase a workload runs: the RL workloads all run the PPO phase."""
    return "ppo" if workload in RL_WORKLOADS else workload


def recipe_overrides(workload: str, ppo_batch_size: int) -> dict[str, Any]:
    """What a critic-free workload changes in the quickstart's ppo.yaml: the estimator, GROUP_SIZE answers
    per prompt and as many prompts as make PPO's episodes per rollout batch (equal work per batch), no
    critic; GRPO keeps the KL in the loss, as its paper does. Empty for every other workload."""
    if workload not in ("grpo", "rloo"):
        return {}
    return {"advantage": workload, "num_generations": GROUP_SIZE, "critic": "none",
            "train.batch_size": max(1, ppo_batch_size // GROUP_SIZE),
            **({"kl_penalty": "loss"} if workload == "grpo" else {})}


# --------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelDims:
    """What the FLOP formula needs from a decoder-only transformer with a gated MLP (Llama family)."""

    layers: int
    hidden: int
    attn_dim: int  # num_attention_heads * head_dim: the width of Q and of the attention output
    vocab: int
    body_params: int  # matmul weights of the decoder layers (q, k, v, o, gate, up, down); no embeddings
    head_params: int  # the LM head, vocab * hidden (tied with the embedding in SmolLM2, but still a matmul)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelDims:
        """From a Hugging Face ``config.json`` mapping (Llama, Mistral, Qwen2/3, ... : gated-MLP decoders)."""
        try:
            hidden = int(config["hidden_size"])
            layers = int(config["num_hidden_layers"])
            heads = int(config["num_attention_heads"])
            inter = int(config["intermediate_size"])
            vocab = int(config["vocab_size"])
        except KeyError as exc:
            raise ValueError(f"the FLOP formula needs a Llama-style config; missing {exc}") from None
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q and o: h x (H*d); k and v: h x (KV*d)
        mlp = 3 * hidden * inter  # gate, up, down
        return cls(layers=layers, hidden=hidden, attn_dim=heads * head_dim, vocab=vocab,
                   body_params=layers * (attention + mlp), head_params=vocab * hidden)


def train_flops(dims: ModelDims, tokens: float, tokens_sq: float, head_tokens: float) -> float:
    """Forward + backward FLOPs over sequences with ``tokens`` = Σt real tokens and ``tokens_sq`` = Σt²:
    6·N_body per token, 6·N_head per position where the LM head runs (``head_tokens``), and
    12·L·d_attn·t per token for attention scores (PaLM's count: full t×t, not halved for causal masking)."""
    return (6.0 * dims.body_params * tokens + 6.0 * dims.head_params * head_tokens
            + 12.0 * dims.layers * dims.attn_dim * tokens_sq)


def forward_flops(dims: ModelDims, tokens: float, tokens_sq: float, head_tokens: float) -> float:
    """Forward-only FLOPs: a third of :func:`train_flops`."""
    return (2.0 * dims.body_params * tokens + 2.0 * dims.head_params * head_tokens
            + 4.0 * dims.layers * dims.attn_dim * tokens_sq)


def step_flops(workload: str, dims: ModelDims, tokens: float, tokens_sq: float, targets: float,
               ref_inline: bool) -> float | None:
    """Model FLOPs of one optimizer step (real tokens only); ``targets`` = positions whose next token is a
    training target, the only ones where the LM head runs (ours and TRL alike). None for PPO."""
    if workload == "sft":
        return train_flops(dims, tokens, tokens_sq, targets)
    if workload == "rm":  # no LM head; a 1-output score head (hidden x 1) on every position
        return train_flops(dims, tokens, tokens_sq, 0.0) + 6.0 * dims.hidden * tokens
    if workload == "dpo":
        ref = forward_flops(dims, tokens, tokens_sq, targets) if ref_inline else 0.0
        return train_flops(dims, tokens, tokens_sq, targets) + ref
    return None


def matmul_flops(workload: str, dims: ModelDims, row_tokens: float, targets: float, ref_inline: bool,
                 recompute: bool = False) -> float | None:
    """The matrix products' share of a step's model FLOPs (attention scores left out), counted over the tokens
    the rows really hold (a shared-prompt row's prompt once): FLOPs the hardware ran in matrix products, padding
    not counted. ``recompute``: gradient checkpointing runs the decoder layers' forward a second time."""
    flops = step_flops(workload, dims, row_tokens, 0.0, targets, ref_inline)
    if flops is None or not recompute:
        return flops
    return flops + 2.0 * dims.body_params * row_tokens


# --------------------------------------------------------------------------------------------------
# Summaries of measurements
# --------------------------------------------------------------------------------------------------
@dataclass
class Summary:
    """One row, reduced: throughput over the timed steps and what goes with it."""

    ok: bool
    error: str = ""
    throughput: float = 0.0  # items per second over the timed steps (items: tokens, pairs or episodes)
    seconds: list[float] | None = None  # per timed step
    maxrss_mib: float | None = None
    flops_per_s: float | None = None
    precision: str = ""
    gradient_checkpointing: bool | None = None
    split: dict[str, float] | None = None  # PPO: fraction of step time in generate / score / train
    metrics_throughput: float | None = None  # ours: the phase's own perf/* figure, mean over the timed steps
    allocator: str = ""  # the row's memory allocator (alignment.allocator.describe)
    runs: list[float] | None = None  # combined rows (:func:`combine`): each run's throughput, in run order
    failed_runs: int = 0  # combined rows: runs that failed beside the ones that count
    # One step after the timed ones under torch's profiler: its counts, "seconds", ms per kind of operator
    # (benchmarks.profiling.TRAINING_KINDS) and "calls"; "matmul_flops": the real tokens' matrix-product FLOPs.
    profile: dict[str, float] | None = None


def summarize(result: Mapping[str, Any], workload: str, warmup: int, dims: ModelDims | None,
              ref_inline: bool) -> Summary:
    """Reduce a child's result to a :class:`Summary`: the first ``warmup`` steps are dropped."""
    if not result.get("ok"):
        return Summary(ok=False, error=str(result.get("error") or "failed"), maxrss_mib=result.get("maxrss_mib"))
    timed = list(result.get("steps", []))[warmup:]
    if not timed:
        return Summary(ok=False, error="no timed step recorded", maxrss_mib=result.get("maxrss_mib"))
    seconds = [float(s["seconds"]) for s in timed]
    total = sum(seconds)
    items = sum(float(s["items"]) for s in timed)
    flops = None
    if dims is not None:
        per_step = [step_flops(workload, dims, float(s.get("tokens", 0)), float(s.get("tokens_sq", 0)),
                               float(s.get("targets", 0)), ref_inline) for s in timed]
        if all(f is not None for f in per_step):
            flops = sum(per_step) / total  # type: ignore[arg-type]
    split = None
    if workload in RL_WORKLOADS and all("generate" in s and "score" in s for s in timed):
        gen, score = sum(s["generate"] for s in timed), sum(s["score"] for s in timed)
        split = {"generate": gen / total, "score": score / total, "train": max(0.0, total - gen - score) / total}
    perf = [float(v) for v in (result.get("metrics_throughput") or [])[warmup:] if v is not None]
    profile = dict(result["profile"]) if result.get("profile") else None
    if profile is not None and dims is not None:
        mm = matmul_flops(workload, dims, profile.get("row_tokens", profile.get("tokens", 0.0)),
                          float(profile.get("targets", 0.0)), ref_inline, bool(result.get("gradient_checkpointing")))
        if mm is not None:
            profile["matmul_flops"] = mm
    return Summary(ok=True, throughput=items / total, seconds=seconds, maxrss_mib=result.get("maxrss_mib"),
                   profile=profile, flops_per_s=flops, precision=str(result.get("precision", "")),
                   gradient_checkpointing=result.get("gradient_checkpointing"), split=split,
                   metrics_throughput=sum(perf) / len(perf) if perf else None,
                   allocator=_short_allocator(result.get("allocator")))


def combine(runs: Sequence[Summary]) -> Summary:
    """One variant's repeated runs as one row: the median run throughput (a slow outlier run moves it less
    than a mean), every timed step's seconds, the highest peak memory of any run; failed only if every run
    failed (the first failure's error)."""
    ok = [s for s in runs if s.ok]
    if not ok:
        return runs[0]
    flops = [s.flops_per_s for s in ok]
    perf = [s.metrics_throughput for s in ok if s.metrics_throughput is not None]
    rss = [s.maxrss_mib for s in ok if s.maxrss_mib]
    splits = [s.split for s in ok if s.split]
    return dataclasses.replace(
        ok[0], throughput=statistics.median(s.throughput for s in ok),
        seconds=[x for s in ok for x in (s.seconds or [])], maxrss_mib=max(rss) if rss else None,
        flops_per_s=statistics.median(flops) if all(f is not None for f in flops) else None,  # type: ignore[type-var]
        metrics_throughput=statistics.median(perf) if perf else None,
        split={k: statistics.fmean(sp[k] for sp in splits) for k in splits[0]} if splits else None,
        profile=next((s.profile for s in ok if s.profile), None),
        runs=[s.throughput for s in ok], failed_runs=len(runs) - len(ok))


@dataclass
class Ratio:
    """Ours over another variant, run by run: run i of one against run i of the other (adjacent in time, so a
    machine that slows for a while slows both), then the median of those pair ratios and their range."""

    median: float
    low: float
    high: float
    pairs: int


def pair_ratio(ours: Sequence[Summary] | None, other: Sequence[Summary] | None) -> Ratio | None:
    if not ours or not other:
        return None
    pairs = [a.throughput / b.throughput for a, b in zip(ours, other) if a.ok and b.ok and b.throughput > 0]
    if not pairs:
        return None
    return Ratio(statistics.median(pairs), min(pairs), max(pairs), len(pairs))


# A target's verdict: met (the median pair ratio reaches it), missed beyond noise (every pair falls short), or
# within noise (the median falls short but some pair reaches it: more runs would tell); None: not measured.
MET, MISSED, NOISE = True, False, "noise"


def ratio_verdict(r: Ratio | None, target: float) -> bool | str | None:
    if r is None:
        return None
    if r.median >= target:
        return MET
    return MISSED if r.high < target else NOISE


def _as_list(results: Any) -> list[Any]:
    return results if isinstance(results, list) else [results]


def _short_allocator(text: Any) -> str:
    """"tcmalloc (/usr/lib/.../libtcmalloc_minimal.so.4)" -> "tcmalloc"; "system malloc" stays."""
    return str(text).split(" (")[0] if text else ""


def _peak_ok(s: Summary | None) -> float | None:
    return s.maxrss_mib if s is not None and s.ok and s.maxrss_mib else None


def memory_at_most(ours: Summary | None, other: Summary | None) -> bool | None:
    """Peak RSS of ``ours`` no higher than ``other``'s (None when either is missing)."""
    a, b = _peak_ok(ours), _peak_ok(other)
    return None if a is None or b is None else a <= b


def target_vs_tuned(workload: str) -> float:
    return TARGET_VS_TUNED_RL.get(workload, TARGET_VS_TUNED)


def mfu_target(peak: Mapping[str, float] | None, amx: bool) -> tuple[float, float] | None:
    """(fraction, the peak it is a fraction of): 35% of the bf16 peak with AMX, else 50% of the better peak."""
    if not peak or not peak.get("bf16"):
        return None
    return (TARGET_MFU_AMX, peak["bf16"]) if amx else (TARGET_MFU_BEST, max(peak["bf16"], peak.get("fp32") or 0.0))


def has_amx(machine: Mapping[str, Any]) -> bool:
    return "amx_bf16" in (machine.get("cpu_flags") or [])


def check_targets(workload: str, runs: Mapping[str, Sequence[Summary]], peak: Mapping[str, float] | None,
                  amx: bool = False) -> dict[str, bool | str | None]:
    """Each target's verdict for one workload from every variant's runs (:data:`MET`, :data:`MISSED`,
    :data:`NOISE`; None: not measurable from what ran).

    Speed, as medians of run-by-run ratios: ours (and ours with gradient checkpointing) at least 1.3x TRL
    defaults; ours at least 1.3x TRL tuned (PPO against RLOO 2x; GRPO and RLOO, the same algorithm on both
    sides, 1.5x). Memory is compared at equal checkpointing: ours against TRL tuned (which checkpoints as ours
    does, i.e. not), ours + grad. ckpt against TRL defaults (which checkpoint). Model FLOP/s: see
    :func:`mfu_target`."""
    ours, ckpt = runs.get("ours"), runs.get("ours-ckpt")
    defaults, tuned = runs.get("trl-defaults"), runs.get("trl-tuned")
    best = {v: combine(r) for v, r in runs.items() if r}
    mfu = None
    target = mfu_target(peak, amx)
    lead = best.get("ours")
    if workload in MFU_WORKLOADS and lead is not None and lead.ok and lead.flops_per_s and target:
        mfu = lead.flops_per_s / target[1] >= target[0]
    return {"vs_defaults": ratio_verdict(pair_ratio(ours, defaults), TARGET_VS_DEFAULTS),
            "vs_tuned": ratio_verdict(pair_ratio(ours, tuned), target_vs_tuned(workload)),
            "ckpt_vs_defaults": ratio_verdict(pair_ratio(ckpt, defaults), TARGET_VS_DEFAULTS),
            "memory": memory_at_most(best.get("ours"), best.get("trl-tuned")),
            "memory_ckpt": memory_at_most(best.get("ours-ckpt"), best.get("trl-defaults")), "mfu": mfu}


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
def _num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}" if abs(x) >= 1 else f"{x:.{max(digits, 3)}f}"


def _cell_error(text: str) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return "failed: " + (text[:90] + "…" if len(text) > 90 else text)


def _throughput_cell(s: Summary | None, unit: str) -> str:
    if s is None:
        return "not run"
    if not s.ok:
        return _cell_error(s.error)
    return f"{_num(s.throughput)} {unit}"


def _ratio_cell(r: Ratio | None) -> str:
    """"1.25×" from one pair of runs; "1.25× (1.10–1.31)" from several: the median and the range."""
    if r is None:
        return "—"
    return f"{r.median:.2f}×" if r.pairs == 1 else f"{r.median:.2f}× ({r.low:.2f}–{r.high:.2f})"


def _short(r: Ratio | None, target: float) -> str:
    """How far the median falls short of its target, when it does."""
    if r is None or r.median >= target:
        return ""
    pct = 100 * (1 - r.median / target)
    return f", {pct:.1f}% short" if pct < 1 else f", {pct:.0f}% short"  # 1.495x of 1.5x: "0.3%", not "0%"


def _vs_cell(r: Ratio | None, target: float) -> str:
    """The ratio, and how far short of ``target`` its median falls when it does."""
    if r is None:
        return ""
    short = _short(r, target)
    return _ratio_cell(r) + (f" ({short[2:]})" if short else "")


def _mem_detail(rows: Mapping[str, Summary], a: str, b: str) -> str:
    x, y = _peak_ok(rows.get(a)), _peak_ok(rows.get(b))
    return f"({_num(x, 0)} vs {_num(y, 0)} MiB)" if x and y else ""


def _mark(ok: bool | str | None, detail: str) -> str:
    if ok is None:
        return "— " + detail if detail else "—"
    if ok == NOISE:
        return "≈ " + detail + " (within noise)"
    return ("✓ " if ok else "✗ ") + detail


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


PROFILE_KINDS = (("matmul", "matrix products"), ("attention", "attention"), ("optimizer", "optimizer"),
                 ("casts and copies", "casts and copies"), ("other", "other"))


def profile_table(rows: Sequence[tuple[str, str, Summary]], peak: Mapping[str, float] | None) -> list[str]:
    """Markdown lines: for each profiled row, where its profiled step's time went."""
    lines = ["### Where a training step's time goes\n",
             "One step after the timed ones, run under `torch.profiler` in run 1 of each row (every variant trains "
             "on ours' batch there): the operators' CPU self time by kind, in milliseconds and as a share of "
             "their sum. The profiler's own cost per operator call is inside these times, so the profiled step is "
             "slower than a timed one and is not timed. The last column: the matrix products' FLOPs over the real "
             "tokens the rows hold (a shared prompt once, padding not counted, gradient checkpointing's second "
             "forward of the decoder layers counted) per second of matrix-product time, "
             "against the measured peak of the row's precision: how close the products themselves run to the "
             "hardware, padding and all.\n",
             "| workload | variant | profiled step s | " + " | ".join(t for _, t in PROFILE_KINDS)
             + " | operator calls | matrix products: real-token FLOP/s of the peak |",
             "|---|---|---:|" + "---:|" * len(PROFILE_KINDS) + "---:|---:|"]
    for workload, variant, s in rows:
        p = s.profile or {}
        total = sum(float(p.get(k, 0.0)) for k, _ in PROFILE_KINDS) or 1.0
        cells = [f"{_num(p.get(k, 0.0), 0)} ({100 * float(p.get(k, 0.0)) / total:.0f}%)" for k, _ in PROFILE_KINDS]
        of_peak = "—"
        precision = "bf16" if s.precision.startswith("bf16") else "fp32"
        if p.get("matmul_flops") and p.get("matmul") and peak and peak.get(precision):
            of_peak = f"{_pct(p['matmul_flops'] / (p['matmul'] / 1e3) / peak[precision])} ({precision})"
        lines.append(f"| {WORKLOAD_TITLES[workload]} | {VARIANT_TITLES[variant]} | {_num(p.get('seconds'), 2)} | "
                     + " | ".join(cells) + f" | {_num(p.get('calls'), 0)} | {of_peak} |")
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """RESULTS.md from a report (see :func:`main` for its shape; tests build fake ones)."""
    settings = report["settings"]
    peak = report.get("peak") or None
    dims = ModelDims(**report["dims"]) if report.get("dims") else None
    ref_inline = settings.get("dpo_ref", "inline") == "inline"
    warmup = int(settings.get("warmup", 1))
    # rows[workload][variant]: that variant's runs in run order (one result, not in a list, from older reports)
    runs: dict[str, dict[str, list[Summary]]] = {}
    for workload, variants in report["rows"].items():
        runs[workload] = {v: [summarize(r, workload, warmup, dims, ref_inline) for r in _as_list(results)]
                          for v, results in variants.items()}
    summaries = {w: {v: combine(rs) for v, rs in variants.items()} for w, variants in runs.items()}
    repeats = int(settings.get("repeats", 1))

    machine = report["machine"]
    out: list[str] = []
    w = out.append
    w("# Benchmarks: our phases vs TRL\n")
    w(f"Generated by `make bench` (`benchmarks/bench.py`) on {report['date']}.\n")
    w(f"- Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores "
      f"(torch threads: {machine.get('torch_threads', '?')}), {machine.get('memory_gib', '?')} GiB RAM, "
      f"{machine.get('platform', '')}; CPU flags: {flags_text(machine.get('cpu_flags') or [])}")
    w(f"- Versions: torch {machine.get('torch', '?')}, transformers {machine.get('transformers', '?')}, "
      f"trl {machine.get('trl', '?')}, python {machine.get('python', '?')}")
    w(f"- Model: `{settings.get('model')}`; data: `recipes/quickstart/data` (sft.jsonl, preferences.jsonl, "
      f"ppo_prompts.jsonl); {settings.get('steps')} timed steps after {warmup} warm-up step(s) per run; "
      f"{repeats} run(s) per row, interleaved (every variant's run 1, then every variant's run 2, ...); "
      f"batch {settings.get('batch_size')}; length limits: {settings.get('lengths')}.")
    if report.get("contention"):
        w(f"- Note: {report['contention']}")
    w("")

    w("## Peak matmul throughput\n")
    if peak:
        w("| dtype | best GFLOP/s | sizes tried (n×n @ n×n) |")
        w("|---|---:|---|")
        for dtype in ("fp32", "bf16"):
            detail = peak.get("detail", {}).get(dtype, {})
            sizes = ", ".join(f"{n}: {v / 1e9:.1f}" for n, v in detail.items())
            w(f"| {dtype} | {peak[dtype] / 1e9:.1f} | {sizes} |")
        w("")
        w("`torch.mm` of square matrices, best of several repetitions after a warm-up, torch's default "
          "threads (all cores).\n")
    else:
        w("Not measured (`--no-peak`); MFU columns are empty.\n")

    w("## Results\n")
    if repeats > 1:
        w(f"Throughput: the median of the {repeats} runs. Ratios: the median of run-by-run ratios (run i of ours "
          "against run i of the other side, run close together in time), with their range in brackets.\n")
    w("| workload | ours | ours + grad. ckpt | TRL defaults | TRL tuned | ours / TRL defaults | ours / TRL tuned | "
      "ours + grad. ckpt / TRL defaults | peak RSS MiB: ours / ours + grad. ckpt / TRL defaults / TRL tuned | "
      "ours MFU (fp32 peak, bf16 peak) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workload, rows in summaries.items():
        unit = UNITS[workload]
        cells = [_throughput_cell(rows.get(v), unit) for v in VARIANTS]
        mem = " / ".join(_num(rows[v].maxrss_mib, 0) if v in rows and rows[v].maxrss_mib else "—" for v in VARIANTS)
        ours = rows.get("ours")
        mfu = "—"
        if ours is not None and ours.ok and ours.flops_per_s and peak:
            mfu = f"{_pct(ours.flops_per_s / peak['fp32'])}, {_pct(ours.flops_per_s / peak['bf16'])}"
        elif workload in RL_WORKLOADS:
            mfu = "n/a (generation)"
        each = runs[workload]
        w(f"| {WORKLOAD_TITLES[workload]} | {' | '.join(cells)} | "
          f"{_ratio_cell(pair_ratio(each.get('ours'), each.get('trl-defaults')))}"
          f" | {_ratio_cell(pair_ratio(each.get('ours'), each.get('trl-tuned')))}"
          f" | {_ratio_cell(pair_ratio(each.get('ours-ckpt'), each.get('trl-defaults')))} | {mem} | {mfu} |")
    w("")

    amx = has_amx(machine)
    mfu_goal = mfu_target(peak, amx)
    mfu_words = (f"≥{TARGET_MFU_AMX:.0%} of the bf16 peak (this CPU has AMX)" if amx
                 else f"≥{TARGET_MFU_BEST:.0%} of the better of the fp32 and bf16 peaks (no AMX on this CPU)")
    rl_targets = ", ".join(f"{WORKLOAD_TITLES[wl]} {t}×" for wl, t in TARGET_VS_TUNED_RL.items())
    w("## Targets\n")
    w(f"Targets: ≥{TARGET_VS_DEFAULTS}× TRL defaults (ours, and ours with gradient checkpointing), "
      f"≥{TARGET_VS_TUNED}× TRL tuned for SFT/RM/DPO ({rl_targets}), peak RSS no higher than TRL's at the same "
      "checkpointing setting (ours vs TRL tuned, which both do not checkpoint; ours + grad. ckpt vs TRL defaults, "
      f"which both do), and for SFT/RM/DPO model FLOP/s {mfu_words}. Computed from the numbers above: ✓ met "
      "(median ratio), ✗ missed in every run, ≈ median short of the target but some run reached it (within "
      "noise: not met); — where a number is missing. A miss says by how much the median falls short; where the "
      "time goes is below, per training step (profiled) and per rollout batch (generation, scoring, training).\n")
    w("| workload | ours ≥1.3× TRL defaults | ours ≥ target × TRL tuned | ours + grad. ckpt ≥1.3× TRL defaults | "
      "memory: ours ≤ TRL tuned | memory: ours + grad. ckpt ≤ TRL defaults | model FLOP/s of peak |")
    w("|---|---|---|---|---|---|---|")
    for workload, rows in summaries.items():
        each = runs[workload]
        t = check_targets(workload, each, peak, amx)
        ours = rows.get("ours")
        r_def, r_tuned = pair_ratio(each.get("ours"), each.get("trl-defaults")), pair_ratio(each.get("ours"),
                                                                                             each.get("trl-tuned"))
        r_ckpt = pair_ratio(each.get("ours-ckpt"), each.get("trl-defaults"))

        mfu_detail = ""
        if workload in MFU_WORKLOADS and ours is not None and ours.ok and ours.flops_per_s and mfu_goal:
            got = ours.flops_per_s / mfu_goal[1]
            short = f", {100 * (1 - got / mfu_goal[0]):.0f}% short" if got < mfu_goal[0] else ""
            mfu_detail = f"({_pct(got)}, target {mfu_goal[0]:.0%}{short})"
        elif workload not in MFU_WORKLOADS:
            mfu_detail = "(not a target for online RL)"
        goal = target_vs_tuned(workload)
        tuned_detail = (f"{_ratio_cell(r_tuned)} " if r_tuned else "") + f"(target {goal}×{_short(r_tuned, goal)})"
        w(f"| {WORKLOAD_TITLES[workload]} | {_mark(t['vs_defaults'], _vs_cell(r_def, TARGET_VS_DEFAULTS))} | "
          f"{_mark(t['vs_tuned'], tuned_detail)} | "
          f"{_mark(t['ckpt_vs_defaults'], _vs_cell(r_ckpt, TARGET_VS_DEFAULTS))} | "
          f"{_mark(t['memory'], _mem_detail(rows, 'ours', 'trl-tuned'))} | "
          f"{_mark(t['memory_ckpt'], _mem_detail(rows, 'ours-ckpt', 'trl-defaults'))} | "
          f"{_mark(t['mfu'], mfu_detail)} |")
    w("")

    w("## Details per row\n")
    w("| workload | variant | throughput | each run | s/step: mean (min–max) | precision | grad. ckpt | "
      "model GFLOP/s | MFU fp32 / bf16 | peak RSS MiB | allocator | phase's own metrics.jsonl figure |")
    w("|---|---|---:|---|---|---|---|---:|---|---:|---|---:|")
    for workload, rows in summaries.items():
        for variant in VARIANTS:
            s = rows.get(variant)
            if s is None:
                continue
            if not s.ok:
                w(f"| {WORKLOAD_TITLES[workload]} | {VARIANT_TITLES[variant]} | {_cell_error(s.error)} | | | | | | | "
                  f"{_num(s.maxrss_mib, 0) if s.maxrss_mib else '—'} | | |")
                continue
            secs = s.seconds or []
            step = f"{sum(secs) / len(secs):.2f} ({min(secs):.2f}–{max(secs):.2f})" if secs else "—"
            gflops = _num(s.flops_per_s / 1e9) if s.flops_per_s else "—"
            mfu = (f"{_pct(s.flops_per_s / peak['fp32'])} / {_pct(s.flops_per_s / peak['bf16'])}"
                   if s.flops_per_s and peak else "—")
            own = f"{_num(s.metrics_throughput)} {UNITS[workload]}" if s.metrics_throughput else ""
            ckpt = "—" if s.gradient_checkpointing is None else ("on" if s.gradient_checkpointing else "off")
            each_run = " / ".join(_num(x) for x in s.runs or []) + (f" ({s.failed_runs} failed)" if s.failed_runs
                                                                    else "")
            w(f"| {WORKLOAD_TITLES[workload]} | {VARIANT_TITLES[variant]} | {_num(s.throughput)} {UNITS[workload]} | "
              f"{each_run} | {step} | {s.precision or '—'} | {ckpt} | {gflops} | {mfu} | {_num(s.maxrss_mib, 0)} | "
              f"{s.allocator or '—'} | {own} |")
    w("")

    profile_rows = [(wl, v, s) for wl in summaries for v in VARIANTS
                    if (s := summaries[wl].get(v)) is not None and s.ok and s.profile]
    if profile_rows:
        for line in profile_table(profile_rows, peak):
            w(line)
        w("")

    rl = [wl for wl in RL_WORKLOADS if wl in summaries]
    if rl:
        w("### Online RL: where a rollout batch's time goes\n")
        w("| workload | variant | generation | scoring (reward model) | training (log-probs, values, updates) |")
        w("|---|---|---:|---:|---:|")
        for workload in rl:
            for variant in VARIANTS:
                s = summaries[workload].get(variant)
                if s is not None and s.ok and s.split:
                    w(f"| {WORKLOAD_TITLES[workload]} | {VARIANT_TITLES[variant]} | {_pct(s.split['generate'])} | "
                      f"{_pct(s.split['score'])} | {_pct(s.split['train'])} |")
        w("")

    w("## How measured\n")
    for line in how_measured(settings, dims):
        w(line)
    w("")
    w("## TRL configurations\n")
    configs = report.get("trl_settings") or {}
    for workload in summaries:
        ran = configs.get(workload, {})
        shared = next((c.get("workload") for c in ran.values() if c.get("workload")), None)
        tuned = (ran.get("trl-tuned") or {}).get("tuned")
        if shared:
            w(f"- {WORKLOAD_TITLES[workload]} ({TRL_TRAINERS[workload]}), both columns: "
              + ", ".join(f"`{k}={v}`" for k, v in shared.items()))
        if tuned:
            w(f"- {WORKLOAD_TITLES[workload]}, TRL tuned also: " + ", ".join(f"`{k}={v}`" for k, v in tuned.items()))
    w("")
    w("Both TRL columns set the workload itself as ours has it: steps, batch size, length limits, sampling "
      "temperature, no reporting backend (`report_to=none`), `use_cpu=True` on a machine without CUDA, and "
      "`train_sampling_strategy=sequential` over our own training examples put in the order ours trained on "
      "them (matched by token ids), so every SFT/RM/DPO step sees exactly ours' batches and padding (if ours "
      "groups batches by length, TRL gets the same grouped batches). \"TRL defaults\" keeps everything else at "
      "TRL's defaults (notably `gradient_checkpointing=True` and `bf16=True` autocast); \"TRL tuned\" changes "
      "only what its line lists: the precision ours ran with, ours' gradient checkpointing setting, no "
      "logging or checkpoints, ours' learning rate (no effect on speed) and, for RLOO, ours' updates per "
      "rollout batch; and it runs under the same memory allocator as ours (see How measured).\n")
    w("## Online RL: what each side runs\n")
    bs = settings.get("ppo_batch_size", settings.get("batch_size"))
    epochs, minibatches = settings.get("ppo_epochs"), settings.get("num_minibatches")
    critic = settings.get("critic")
    w(f"- **Ours, PPO**: a critic (`critic: {critic}`: "
      + ("a value head on the policy initialised from the reward model's score head" if critic == "shared"
         else "a separate value model initialised from the reward model")
      + "), GAE advantages, a clipped policy and value loss, and a per-token KL penalty to the reference folded "
      f"into the reward; each rollout batch of {bs} prompts × 1 sample is used for `ppo_epochs` × "
      f"`num_minibatches` = {epochs} × {minibatches} optimizer steps.")
    w("- **TRL, RLOO**: no critic or value model; k = `num_generations` = 2 samples per prompt and a "
      "leave-one-out baseline (the other samples' mean reward) instead of a value estimate; KL to the reference "
      f"(`beta`) as in TRL. \"TRL defaults\" uses each batch of {bs} episodes ({bs // 2 if bs else '?'} prompts "
      "× 2) for one optimizer step (`num_iterations=1`); \"TRL tuned\" uses it for as many updates as ours "
      f"(`steps_per_generation={minibatches}`, `num_iterations={epochs}`).")
    k = settings.get("group_size", GROUP_SIZE)
    w(f"- **GRPO and RLOO rows: the same algorithm on both sides.** Ours: the PPO phase with `advantage: grpo` "
      f"(KL as a k3 loss term, `kl_penalty: loss`) or `advantage: rloo` (KL in the reward), `critic: none`, "
      f"k = `num_generations` = {k} answers to each of {max(1, (bs or 0) // k)} prompts per rollout batch, so a "
      f"batch holds {bs} episodes as PPO's does; TRL's `GRPOTrainer` / `RLOOTrainer` with `num_generations={k}` "
      f"and {bs} completions per generation batch, `beta` = our `kl_coef` (a reference model on both sides). "
      "\"TRL defaults\" takes one optimizer step per generation batch, \"TRL tuned\" as many as ours "
      f"(`steps_per_generation={minibatches}`, `num_iterations={epochs}`).")
    w("- An episode is one (prompt, sampled answer) used for an update; both sides sample at most "
      f"{settings.get('max_new_tokens')} new tokens at temperature {settings.get('temperature')} from the same "
      "base policy, and score with the same reward model (the base model plus a score head, built once per "
      "bench run).")
    w("")
    notes = report.get("notes") or []
    if notes:
        w("## Notes\n")
        for note in notes:
            w(f"- {note}")
        w("")
    return "\n".join(out)


def how_measured(settings: Mapping[str, Any], dims: ModelDims | None) -> list[str]:
    ref_inline = settings.get("dpo_ref", "inline") == "inline"
    lines = [
        "- Each row runs in its own fresh Python process; peak RSS is `getrusage(RUSAGE_SELF).ru_maxrss` of that "
        "process at its end (model loading, data preparation and training included), or, where a profiled step "
        "follows the timed ones, just before that step (the profiler's records are not training's memory).",
        f"- Timing excludes model loading, data preparation and the first {settings.get('warmup', 1)} (warm-up) "
        f"optimizer step(s); the next {settings.get('steps')} steps are timed with `time.perf_counter()`. TRL: a "
        "`TrainerCallback` at `on_step_begin` / `on_step_end` (the data loader's collation happens before "
        "`on_step_begin`, logging and saving after `on_step_end`). Ours: the same region, through the phases' step "
        "hook (`alignment.run.step_hook`) in the child process (collation before it, logging after it); for PPO from "
        "the start of `rollout` to the end of `ppo_update`. The run is stopped right after the last timed step "
        "(no final evaluation or save is timed or run).",
        "- \"ours + grad. ckpt\" is ours with one recipe line changed, `train.gradient_checkpointing: true` "
        "(non-reentrant activation checkpointing, as TRL's default): it trades a second forward per layer for "
        "memory, so its memory is compared with TRL defaults (which checkpoint) and ours' with TRL tuned (which "
        "does not, like ours).",
        "- Memory allocator (the details table's column): ours and TRL tuned run under the allocator `align` "
        "itself picks, tcmalloc when it is installed (`alignment/allocator.py`: `align` re-executes itself with it "
        "in `LD_PRELOAD`; the bench does the same for these rows' processes); TRL defaults under the system "
        "malloc, as `python train.py` gets it. `ALIGN_ALLOCATOR=system make bench` runs every row on the system "
        "malloc.",
        "- Throughput = units over the timed steps / their summed wall time. SFT units are real (non-padding) "
        "tokens: the sum of `attention_mask` of the batch the step trains on (TRL: counted from the inputs of "
        "`training_step`). RM and DPO: preference pairs. PPO/RLOO: episodes (prompt + sampled answer) per rollout "
        "batch; a PPO \"step\" is a whole rollout batch (generation, scoring, all its updates).",
        "- The last column of the details table is the phase's own `perf/*` value from its `metrics.jsonl` "
        "(mean of the timed steps), a cross-check; its window also covers the batch's collation.",
        f"- DPO reference log-probs are computed **{'inside' if ref_inline else 'outside (before)'}** the timed "
        f"region on both sides: ours `precompute_ref={'false' if ref_inline else 'true'}`, TRL "
        f"`precompute_ref_log_probs={'False' if ref_inline else 'True'}`"
        + (" (a frozen reference copy runs one forward per step)." if ref_inline
           else " (precomputed before training)."),
        "- Model FLOPs per optimizer step (real tokens only; padding, recomputation by gradient checkpointing and "
        "the optimizer are not counted): training = 6·N_body·Σt + 6·N_head·H + 12·L·d_attn·Σt², forward only = "
        "2·N_body·Σt + 2·N_head·H + 4·L·d_attn·Σt², summed over the step's sequences of real length t. N_body = "
        "the decoder layers' matmul weights (q, k, v, o, gate, up, down; no embeddings), N_head = vocab × hidden "
        "(the LM head, tied with the embedding but still a matmul), L = layers, d_attn = heads × head_dim; the "
        "attention term is PaLM's (full t×t scores, not halved for the causal mask). H = positions whose next "
        "token is a training target, the only positions where the LM head runs (ours via `alignment.logits`, "
        "TRL 1.16 via its fused LM head): assistant tokens for ours and TRL tuned SFT, every token for TRL "
        "defaults SFT (its loss covers the whole conversation), response tokens for DPO. "
        "SFT: training. RM: training with H = 0 plus 6·hidden per token for the 1-output score head. DPO: "
        "training" + (" plus one reference forward." if ref_inline else "."),
    ]
    if dims is not None:
        lines.append(f"- For this model: L = {dims.layers}, hidden = {dims.hidden}, d_attn = {dims.attn_dim}, "
                     f"N_body = {dims.body_params:,}, N_head = {dims.head_params:,} (vocab {dims.vocab:,}).")
    lines.append("- Achieved FLOP/s = Σ model FLOPs of the timed steps / their wall time; MFU = achieved / peak "
                 "matmul FLOP/s, against both the fp32 and the bf16 peak. PPO has no MFU (generation dominates).")
    lines.append("- RM and DPO count each pair as its two sequences, as TRL runs it. Ours computes a pair's shared "
                 "prompt once (`share_prompt`, on by default), so for ours these are the model's FLOPs of the work "
                 "done, not the FLOPs the hardware ran: the hardware ran fewer, by the prompt's share of the pair's "
                 "tokens.")
    return lines


# --------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5,
                   help="timed optimizer steps (PPO: rollout batches) per run (default 5)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs per row, interleaved across variants; ratios are medians of run-by-run ratios "
                        "(default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps before them (default 1)")
    p.add_argument("--only", type=_csv(WORKLOADS), default=list(WORKLOADS),
                   help=f"workloads to run, comma separated (default all: {','.join(WORKLOADS)})")
    p.add_argument("--variants", type=_csv(VARIANTS), default=list(VARIANTS),
                   help=f"columns to run (default all: {','.join(VARIANTS)})")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="model for every row (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dpo-ref", choices=("inline", "precomputed"), default="inline",
                   help="DPO reference log-probs inside the timed step (inline) or precomputed before training")
    p.add_argument("--bf16", choices=("auto", "true", "false"), default=None,
                   help="override our recipes' train.bf16 (default: the recipes' value, 'auto', which measures "
                        "bf16 against fp32 at start-up); TRL tuned follows the precision ours ran with")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the markdown report (default benchmarks/RESULTS.md)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help="scratch space: outputs, logs, raw results.json (default runs/bench)")
    p.add_argument("--no-peak", action="store_true", help="skip the peak matmul measurement (no MFU)")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the profiled step after the timed ones (SFT/RM/DPO, run 1 of each row)")
    p.add_argument("--keep", action="store_true", help="keep the scratch model outputs (logs are always kept)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds before a row is killed (default 3600)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def _csv(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)} (got {text!r})")
        return [x for x in allowed if x in items]  # canonical order
    return parse


def plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """The runs, in order: for each workload, run 1 of every variant, then run 2 of every variant, ...: each
    ratio pairs runs made minutes apart, so a machine that slows for a while slows both sides of a pair."""
    return [(w, v, r) for w in args.only for r in range(1, args.repeats + 1) for v in args.variants]


def workload_settings(model: str) -> dict[str, Any]:
    """Batch size, length limits and sampling from our quickstart recipes: the same for every column."""
    from alignment.config import load_config
    from alignment.phases import PHASES

    cfgs = {w: load_config(PHASES[w].config, RECIPES / f"{w}.yaml", {"model": model, "tracking.backends": []})
            for w in WORKLOADS if w == phase_of(w)}
    # Each workload runs at its own recipe's batch size, ours and TRL's alike (PPO's is prompts per rollout).
    sizes = {w: c.train.batch_size for w, c in cfgs.items()}
    ppo = cfgs["ppo"]
    return {
        "batch_size": (str(sizes["sft"]) if len(set(sizes.values())) == 1
                       else ", ".join(f"{w.upper()} {n}" for w, n in sizes.items())),
        "ppo_batch_size": sizes["ppo"],
        "lengths": (f"SFT max_length {cfgs['sft'].data.max_length}, RM/DPO max_length {cfgs['rm'].data.max_length}, "
                    f"PPO max_new_tokens {ppo.generation.max_new_tokens}"),
        "max_new_tokens": ppo.generation.max_new_tokens,
        "temperature": ppo.generation.temperature,
        "ppo_epochs": ppo.ppo_epochs,
        "num_minibatches": ppo.num_minibatches,
        "critic": ppo.critic,
        "group_size": GROUP_SIZE,
    }


# The flags that decide which precision is fast: AMX runs bf16 matmuls several times faster than fp32;
# avx512_bf16 without AMX converts, and bf16 can then be slower than fp32.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> list[str]:
    """The speed-relevant CPU flags of this machine (of SPEED_FLAGS), for every printed speed figure."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in SPEED_FLAGS if f in have]
    except OSError:
        pass
    return []


def flags_text(flags: list[str]) -> str:
    return " ".join(flags) or "none of " + "/".join(SPEED_FLAGS)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory, "cpu_flags": cpu_flags(),
                            "platform": platform.platform(terse=True), "python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl"):
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = "not installed"
    return info


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def child_env(variant: str, env: Mapping[str, str]) -> dict[str, str]:
    """A row's environment: TRL defaults get the system malloc, every other row the allocator `align` picks
    (tcmalloc when installed, unless ALIGN_ALLOCATOR says otherwise); see :mod:`alignment.allocator`."""
    env = allocator.without(env)  # bench.py itself may run under align's tcmalloc
    if variant == "trl-defaults":
        return env
    return allocator.plan(env) or env


def run_child(spec: dict[str, Any], name: str, workdir: Path, timeout: int) -> dict[str, Any]:
    """Run ``python -m benchmarks.workloads SPEC`` and return its result (a failure becomes ok=False)."""
    (workdir / "specs").mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    result_path = workdir / "results" / f"{name}.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    spec = {**spec, "result": str(result_path), "output_dir": str(workdir / "outputs" / name)}
    spec_path = workdir / "specs" / f"{name}.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    log_path = workdir / "logs" / f"{name}.log"
    env = child_env(str(spec.get("variant")), {**os.environ, **CHILD_ENV})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    last = ""
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.workloads", str(spec_path)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if line.strip():
                    last = line.strip()
                for part in line.split("\r"):  # progress bars end without a newline
                    at = part.find("[bench]")
                    if at >= 0:
                        print(part[at:].rstrip(), flush=True)
            rc = proc.wait()
        finally:
            killer.cancel()
    if result_path.exists():
        return json.loads(result_path.read_text())
    reason = f"killed after {timeout} s" if rc in (-9, 137) else f"exit code {rc}: {last[:200]}"
    return {"ok": False, "error": f"{reason} (log: {log_path})"}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        allocator.plan(os.environ)  # a bad ALIGN_ALLOCATOR is one line now, not a failure in every row
    except AlignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = plan(args)
    settings = {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "model": args.model,
                "dpo_ref": args.dpo_ref,
                "bf16": args.bf16 or "recipe (auto)", **workload_settings(args.model)}
    names = list(dict.fromkeys(f"{w}/{v}" for w, v, _ in rows))
    print(f"[bench] {len(names)} rows ({', '.join(names)}) x {args.repeats} run(s), interleaved; {args.steps} timed "
          f"steps after {args.warmup} warm-up; batch {settings['batch_size']}; {settings['lengths']}; DPO reference "
          f"{args.dpo_ref}; model {args.model}", flush=True)
    if args.dry_run:
        print(f"[bench] dry run: would write {args.out} (scratch: {args.workdir}); nothing ran")
        return 0

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    load = load_average()
    report: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(), "settings": settings, "peak": None, "dims": None,
        "rows": {}, "trl_settings": {}, "notes": [],
    }
    base = {"model": args.model, "steps": args.steps, "warmup": args.warmup, "dpo_ref": args.dpo_ref,
            "recipes": str(RECIPES), "bf16": args.bf16}
    started = time.perf_counter()

    if not args.no_peak:
        print("[bench] peak matmul FLOP/s (fp32, bf16) ...", flush=True)
        peak = run_child({**base, "workload": "peak", "variant": "-"}, "peak", workdir, args.timeout)
        if peak.get("ok"):
            report["peak"] = {"fp32": peak["fp32"], "bf16": peak["bf16"], "detail": peak["detail"]}
            report["machine"]["torch_threads"] = peak.get("threads")
            print(f"[bench] peak: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s",
                  flush=True)
        else:
            report["notes"].append(f"peak measurement failed: {peak.get('error')}")

    reward_model = None
    if any(wl in RL_WORKLOADS for wl in args.only):
        print("[bench] building the reward model for online RL (base model + a score head) ...", flush=True)
        built = run_child({**base, "workload": "make_rm", "variant": "-"}, "make_rm", workdir, args.timeout)
        reward_model = built.get("path") if built.get("ok") else None
        if reward_model is None:
            report["notes"].append(f"could not build the PPO reward model: {built.get('error')}")

    for i, (workload, variant, repeat) in enumerate(rows, 1):
        name = f"{workload}-{variant}" + (f"-run{repeat}" if args.repeats > 1 else "")
        title = f"{WORKLOAD_TITLES[workload]} · {VARIANT_TITLES[variant]}" + (
            f" · run {repeat}/{args.repeats}" if args.repeats > 1 else "")
        print(f"[bench] [{i}/{len(rows)}] {title} ...", flush=True)
        t0 = time.perf_counter()
        spec = {**base, "workload": workload, "variant": variant, "reward_model": reward_model,
                "profile": workload in PROFILED_WORKLOADS and repeat == 1 and not args.no_profile}
        ours_runs = report["rows"].get(workload, {}).get("ours") or []
        ours_result = ours_runs[-1] if ours_runs else None  # this repeat's, run just before
        if ours_result and ours_result.get("ok"):  # TRL tuned uses the precision ours picked
            spec["ours_bf16"] = str(ours_result.get("precision", "")).startswith("bf16")
            spec["batch_keys"] = ours_result.get("batch_keys")  # TRL trains on the very same batches
        if workload in RL_WORKLOADS and reward_model is None:
            result = {"ok": False, "error": "no reward model (see notes)"}
        else:
            result = run_child(spec, name, workdir, args.timeout)
        report["rows"].setdefault(workload, {}).setdefault(variant, []).append(result)
        if result.get("dims") and report["dims"] is None:
            report["dims"] = result["dims"]
        if result.get("threads") and not report["machine"].get("torch_threads"):  # --no-peak: from the rows
            report["machine"]["torch_threads"] = result["threads"]
        if result.get("trl_settings"):
            report["trl_settings"].setdefault(workload, {})[variant] = result["trl_settings"]
        for note in result.get("notes", []):
            if note not in report["notes"]:
                report["notes"].append(note)
        dims = ModelDims(**report["dims"]) if report["dims"] else None
        s = summarize(result, workload, args.warmup, dims, args.dpo_ref == "inline")
        took = time.perf_counter() - t0
        if s.ok:
            print(f"[bench] [{i}/{len(rows)}] {title}: {_num(s.throughput)} {UNITS[workload]}, peak RSS "
                  f"{_num(s.maxrss_mib, 0)} MiB ({took:.0f} s)", flush=True)
        else:
            print(f"[bench] [{i}/{len(rows)}] {title}: FAILED: {s.error} ({took:.0f} s)", flush=True)

    load_end = load_average()
    if load is not None and load_end is not None and max(load, load_end) > 0.5 * (os.cpu_count() or 1):
        report["contention"] = (f"the 1-minute load average was {load:.1f} at the start and {load_end:.1f} at the "
                                f"end on {os.cpu_count()} cores: other work may have slowed every row.")
    report["wall_seconds"] = time.perf_counter() - started
    (workdir / "results.json").write_text(json.dumps(report, indent=2))
    text = render_markdown(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    print()
    print(text)
    print(f"[bench] wrote {args.out} in {report['wall_seconds'] / 60:.1f} min; raw numbers and logs in {workdir}")
    failed = [f"{w}/{v}" for w, vs in report["rows"].items() for v, rs in vs.items()
              if not all(r.get("ok") for r in rs)]
    if failed:
        print(f"[bench] WARNING: failed rows: {', '.join(failed)} (see {workdir / 'logs'})")
    if not args.keep:
        shutil.rmtree(workdir / "outputs", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

