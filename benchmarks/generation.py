"""Generation speed: the engine (``alignment.generation.decode``) against ``model.generate``, one run.

    python benchmarks/generation.py [--batches 8,32] [--new-tokens 64] [--repeats 2]

The embedded model answers held-out quickstart prompts at each batch size, greedy and sampled (temperature
0.8, top-p 0.95), in fp32 and under bf16 autocast; each cell is the median of ``--repeats`` timed runs after
one warm-up, the two paths interleaved. Tokens/s counts the tokens of the answers up to their stop token
(what a user gets), so time spent on rows that already ended counts against a path. Greedy answers are
checked to be the same tokens on both paths.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from alignment.data.chat import generation_eos_ids  # noqa: E402
from alignment.generation import decode  # noqa: E402
from alignment.training import autocast  # noqa: E402
from benchmarks.bench import flags_text, machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "recipes" / "quickstart" / "data" / "heldout_prompts.jsonl"


def answered(new: torch.Tensor, stops: torch.Tensor) -> int:
    """Tokens up to and including each row's first stop (all of the row when it has none)."""
    hit = torch.isin(new, stops)
    first = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.full_like(hit[:, 0], new.shape[1],
                                                                              dtype=torch.long))
    return int(first.sum())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="8,32")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", default="smollm2-135m-instruct")
    a = p.parse_args(argv)

    from alignment.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer(a.model)
    model = load_causal_lm(a.model).eval()
    stops = torch.tensor(generation_eos_ids(tok, model.generation_config))
    prompts = [json.loads(line)["messages"] for line in PROMPTS.read_text().splitlines() if line.strip()]
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
    tok.padding_side = "left"
    rows = []
    same_greedy = True
    for batch in [int(b) for b in a.batches.split(",")]:
        chunk = (texts * (batch // len(texts) + 1))[:batch]
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        for precision in ("fp32", "bf16"):
            for temperature in (0.0, 0.8):
                top_p = 0.95 if temperature else 1.0
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
                                                     top_p=top_p if temperature else None, top_k=None,
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
                rows.append((batch, precision, "greedy" if temperature == 0 else "sampled", speed["generate"],
                             speed["engine"], min(times["engine"]), max(times["engine"])))
    info = machine_info()
    print(f"# Generation, {a.model}, up to {a.new_tokens} new tokens, median of {a.repeats} runs")
    print(f"{info['cpu']}, {info['cores']} cores, torch threads {torch.get_num_threads()}; "
          f"CPU flags: {flags_text(info['cpu_flags'])}; torch {info['torch']}, transformers {info['transformers']}\n")
    print("| batch | precision | decoding | generate tok/s | engine tok/s | engine / generate | engine s (min-max) |")
    print("|---|---|---|---|---|---|---|")
    for batch, precision, mode, g, e, lo, hi in rows:
        print(f"| {batch} | {precision} | {mode} | {g:.0f} | {e:.0f} | {e / g:.2f}x | {lo:.1f}-{hi:.1f} |")
    print(f"\ngreedy answers identical on both paths: {same_greedy}")
    return 0 if same_greedy else 1


if __name__ == "__main__":
    raise SystemExit(main())
