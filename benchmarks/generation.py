"""Generation speed: the engine (``alignment.generation.decode``) against ``model.generate``, one run.

    python benchmarks/generation.py [--batches 8,32] [--new-tokens 64] [--repeats 2] [--no-profile]
                                    [--sampling-only]

The embedded model answers held-out quickstart prompts at each batch size, greedy, sampled with top-p
(temperature 0.8, top-p 0.95, as the app's candidates) and sampled without it (temperature 1, top-p 1, as PPO's
rollouts), in fp32 and under bf16 autocast; each cell is the median of ``--repeats`` timed runs after
one warm-up, the two paths interleaved. Tokens/s counts the tokens of the answers up to their stop token
(what a user gets), so time spent on rows that already ended counts against a path. Greedy answers are
checked to be the same tokens on both paths.

A targets table follows: the engine at 3x ``generate``'s tokens/s, per batch size, in every precision and decoding.

Then the cost of drawing one token per row alone, on the model's logits for the prompts' first answer token:
``generate``'s way (its temperature and top-p warpers, softmax, ``torch.multinomial``) against the engine's
``next_tokens`` (``--sampling-only``: this table alone, a run of seconds).

Then, unless ``--no-profile`` or ``--sampling-only``, where a decode step's time goes (the engine, greedy, each
batch and precision): the step's wall time (the prompt's prefill left out) against a floor, the time to read
every weight once from memory at the read bandwidth measured here (a decode step must read them all, whatever
the batch), and torch's profiler's self time per kind of operation (matrix products, attention, the KV cache's
growth, casts, the rest) with the operator calls per step, whose fixed cost per call is what a batch of a few
rows mostly pays for on a model this small.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from alignment.data.chat import generation_eos_ids  # noqa: E402
from alignment.generation import decode, next_tokens  # noqa: E402
from alignment.training import autocast  # noqa: E402
from benchmarks import profiling  # noqa: E402
from benchmarks.bench import flags_text, machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "recipes" / "quickstart" / "data" / "heldout_prompts.jsonl"
# (name, temperature, top_p): greedy (evaluation, head-to-head), the app's candidates, PPO's rollouts
DECODINGS = (("greedy", 0.0, 1.0), ("top-p 0.95", 0.8, 0.95), ("sampled", 1.0, 1.0))


# the engine's tokens/s against model.generate's at the same batch, precision and decoding
TARGET_SPEEDUP = 3.0


def targets_table(rows: list[tuple[int, str, str, float, float]], target: float = TARGET_SPEEDUP) -> list[str]:
    """Markdown lines: per batch size, whether the engine reached ``target`` times ``generate``'s tokens/s in every
    precision and decoding measured (rows are (batch, precision, decoding, generate tok/s, engine tok/s)), the
    lowest and highest ratio and, when missed, by how much the lowest falls short."""
    lines = ["| batch | target | engine / generate: lowest (row) | highest (row) | met |", "|---|---|---|---|---|"]
    for batch in sorted({r[0] for r in rows}):
        ratios = sorted((e / g, f"{precision}, {mode}") for b, precision, mode, g, e in rows if b == batch and g > 0)
        if not ratios:
            continue
        (low, low_row), (high, high_row) = ratios[0], ratios[-1]
        met = "✓" if low >= target else f"✗ (the lowest needs {target / low:.2f}x its speed)"
        lines.append(f"| {batch} | ≥{target:g}x | {low:.2f}x ({low_row}) | {high:.2f}x ({high_row}) | {met} |")
    return lines


def answered(new: torch.Tensor, stops: torch.Tensor) -> int:
    """Tokens up to and including each row's first stop (all of the row when it has none)."""
    hit = torch.isin(new, stops)
    first = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.full_like(hit[:, 0], new.shape[1],
                                                                              dtype=torch.long))
    return int(first.sum())


def memory_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second read from memory, best of ``repeats``: the higher of a sum over a ``mib`` MiB buffer
    (read only, as a decode step reads its weights) and a copy counted as one read and one write (a copy that
    first reads its destination moves more, so this side can only understate)."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    best = {"sum": float("inf"), "copy": float("inf")}
    for _ in range(repeats):
        start = time.perf_counter()
        src.sum()
        best["sum"] = min(best["sum"], time.perf_counter() - start)
        start = time.perf_counter()
        dst.copy_(src)
        best["copy"] = min(best["copy"], time.perf_counter() - start)
    nbytes = src.numel() * 4
    return max(nbytes / best["sum"], 2 * nbytes / best["copy"])


def weights_read_per_step(model: torch.nn.Module, bf16: bool) -> int:
    """Bytes of weights a decode step reads: every parameter once (matrices in bf16 under autocast), except an
    input embedding table not shared with the output layer, of which a step reads only the batch's rows."""
    inputs = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    skip = {id(inputs)} if output is None or output.weight is not inputs else set()
    return sum(p.numel() * (2 if bf16 and p.ndim >= 2 else p.element_size())
               for p in model.parameters() if id(p) not in skip)


# Profiler operator name -> the kind of work a decode step does; an operator matching none is "other".
# (mkldnn::_linear_pointwise is the packed product decode uses on CPUs: alignment.packing.)
KINDS: profiling.Kinds = (("matmul", ("mm", "addmm", "bmm", "matmul", "linear", "linear_pointwise")),
                          ("attention", ("scaled_dot_product", "softmax", "efficient_attention", "flash_attention")),
                          ("KV cache growth", ("cat",)),
                          ("casts and copies", ("to", "to_copy", "copy_", "clone", "contiguous")))


def kind_of(op: str) -> str:
    return profiling.kind_of(op, KINDS)


def profile_decode(model: torch.nn.Module, enc: dict, stops: torch.Tensor, pad: int, new_tokens: int,
                   bf16: bool, bandwidth: float) -> dict[str, float]:
    """Greedy decodes of ``enc`` after a warm-up, timed and under torch's profiler: per decode step (a forward of
    one new token per row; the prompt's prefill is measured apart, by a decode of one token, and subtracted), the
    wall time, the weights-read floor, the profiler's self time per :data:`KINDS` entry and the operator calls."""
    from torch.profiler import ProfilerActivity, profile

    def run(tokens: int) -> torch.Tensor:
        return decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=tokens, stop_ids=stops,
                      pad_id=pad)

    def timed(tokens: int) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        new = run(tokens)
        return time.perf_counter() - start, new

    def per_kind(tokens: int) -> dict[str, float]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(tokens)
        return profiling.self_ms_by_kind(prof, KINDS)

    with torch.no_grad(), autocast(bf16):
        run(new_tokens)  # warm-up
        prefill = min(timed(1)[0] for _ in range(2))
        whole, new = timed(new_tokens)
        first, total = per_kind(1), per_kind(new_tokens)
    steps = new.shape[1] - 1  # forwards after the prefill's
    if steps < 1:
        raise ValueError("every row stopped at its first token: no decode step to profile")
    out = {"step ms": 1e3 * max(whole - prefill, 0.0) / steps,
           "floor ms": 1e3 * weights_read_per_step(model, bf16) / bandwidth}
    for kind in total:
        out[kind] = max(total[kind] - first.get(kind, 0.0), 0.0) / steps
    return out


def sampling_ms(logits: torch.Tensor, temperature: float, top_p: float, repeats: int = 20) -> dict[str, float]:
    """Median milliseconds to draw one token per row of float32 ``logits`` (B, V): ``generate``'s way and the
    engine's."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)]
                                  + ([TopPLogitsWarper(top_p)] if top_p < 1 else []))
    ways = {"generate": lambda: torch.multinomial(warpers(None, logits).softmax(dim=-1), num_samples=1),
            "engine": lambda: next_tokens(logits, temperature, top_p)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for rep in range(repeats + 1):
        for name, draw in ways.items():  # interleaved; the first round warms up
            start = time.perf_counter()
            draw()
            if rep:
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def print_header(model: str, what: str) -> None:
    info = machine_info()
    print(f"# Generation, {model}, {what}")
    print(f"{info['cpu']}, {info['cores']} cores, torch threads {torch.get_num_threads()}; "
          f"CPU flags: {flags_text(info['cpu_flags'])}; torch {info['torch']}, transformers {info['transformers']}\n")


def batch_of(tok: Any, texts: list[str], batch: int) -> Any:
    """``batch`` prompts, the held-out ones repeated as often as needed, tokenized with left padding."""
    chunk = (texts * (batch // len(texts) + 1))[:batch]
    return tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)


def print_sampling(model: torch.nn.Module, tok: Any, texts: list[str], batches: list[int]) -> None:
    print("\n## Drawing one token per row (the model's logits for the first answer token, median of 20)\n")
    print("| batch | decoding | generate's draw ms | engine's draw ms | generate / engine |")
    print("|---|---|---|---|---|")
    for batch in batches:
        with torch.no_grad():
            logits = model(**batch_of(tok, texts, batch), logits_to_keep=1).logits[:, -1].float()
        for mode, temperature, top_p in DECODINGS[1:]:
            ms = sampling_ms(logits, temperature, top_p)
            print(f"| {batch} | {mode} (T {temperature}, top-p {top_p}) | {ms['generate']:.1f} | {ms['engine']:.1f} | "
                  f"{ms['generate'] / ms['engine']:.1f}x |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="8,32")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--no-profile", action="store_true", help="skip the profile of a decode step")
    p.add_argument("--sampling-only", action="store_true", help="only the cost of drawing a token, both ways")
    a = p.parse_args(argv)

    from alignment.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer(a.model)
    model = load_causal_lm(a.model).eval()
    stops = torch.tensor(generation_eos_ids(tok, model.generation_config))
    prompts = [json.loads(line)["messages"] for line in PROMPTS.read_text().splitlines() if line.strip()]
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
    tok.padding_side = "left"
    batches = [int(b) for b in a.batches.split(",")]
    if a.sampling_only:
        print_header(a.model, "drawing tokens only")
        print_sampling(model, tok, texts, batches)
        return 0
    rows = []
    same_greedy = True
    for batch in batches:
        enc = batch_of(tok, texts, batch)
        for precision in ("fp32", "bf16"):
            for mode, temperature, top_p in DECODINGS:
                times: dict[str, list[float]] = {"generate": [], "engine": []}
                tokens: dict[str, int] = {}
                for rep in range(a.repeats + 1):
                    for path in ("generate", "engine"):
                        torch.manual_seed(rep)
                        start = time.perf_counter()
                        with torch.no_grad(), autocast(precision == "bf16"):
                            if path == "generate":
                                out = model.generate(**enc, max_new_tokens=a.new_tokens,
                                                     do_sample=temperature > 0,
                                                     temperature=temperature or None,
                                                     top_p=top_p if temperature and top_p < 1 else None,
                                                     top_k=None,
                                                     pad_token_id=tok.pad_token_id, eos_token_id=stops.tolist())
                                new = out[:, enc["input_ids"].shape[1]:]
                            else:
                                new = decode(model, enc["input_ids"], enc["attention_mask"],
                                             max_new_tokens=a.new_tokens, stop_ids=stops, pad_id=tok.pad_token_id,
                                             temperature=temperature, top_p=top_p)
                        seconds = time.perf_counter() - start
                        if rep:  # the first round warms both paths up
                            times[path].append(seconds)
                            tokens[path] = answered(new, stops)
                        if rep == 1 and temperature == 0:
                            if path == "generate":
                                reference = new
                            else:
                                width = max(reference.shape[1], new.shape[1])
                                pad = tok.pad_token_id

                                def widen(x: torch.Tensor, width: int = width, pad: int = pad) -> torch.Tensor:
                                    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=pad)

                                same_greedy &= bool(torch.equal(widen(reference), widen(new)))
                speed = {path: tokens[path] / statistics.median(times[path]) for path in times}
                rows.append((batch, precision, mode, speed["generate"],
                             speed["engine"], min(times["engine"]), max(times["engine"])))
    print_header(a.model, f"up to {a.new_tokens} new tokens, median of {a.repeats} runs")
    print("| batch | precision | decoding | generate tok/s | engine tok/s | engine / generate | engine s (min-max) |")
    print("|---|---|---|---|---|---|---|")
    for batch, precision, mode, g, e, lo, hi in rows:
        print(f"| {batch} | {precision} | {mode} | {g:.0f} | {e:.0f} | {e / g:.2f}x | {lo:.1f}-{hi:.1f} |")
    print(f"\ngreedy answers identical on both paths: {same_greedy}")
    print("\n## Targets\n")
    print("\n".join(targets_table([r[:5] for r in rows])))
    print("\nWhere a target is missed, the profile below says where a decode step's time goes.")
    print_sampling(model, tok, texts, batches)
    if not a.no_profile:
        bandwidth = memory_bandwidth()
        print(f"\n## Where a decode step's time goes (engine, greedy, the prompt's prefill left out; memory read "
              f"bandwidth {bandwidth / 1e9:.1f} GB/s)\n")
        kinds = [k for k, _ in KINDS] + ["other"]
        print("| batch | precision | step ms | weights-read floor ms | " + " | ".join(f"{k} ms" for k in kinds)
              + " | operator calls per step |")
        print("|---|---|---|---|" + "---|" * len(kinds) + "---|")
        for batch in batches:
            enc = batch_of(tok, texts, batch)
            for precision in ("fp32", "bf16"):
                r = profile_decode(model, enc, stops, tok.pad_token_id, a.new_tokens, precision == "bf16", bandwidth)
                print(f"| {batch} | {precision} | {r['step ms']:.1f} | {r['floor ms']:.1f} | "
                      + " | ".join(f"{r.get(k, 0.0):.1f}" for k in kinds) + f" | {r['calls']:.0f} |")
        print("\nProfiler times are self times with the profiler's own cost per call included, so they add up to "
              "more than the step; the floor is the time to read the weights once at the measured bandwidth.")
    return 0 if same_greedy else 1


if __name__ == "__main__":
    raise SystemExit(main())
