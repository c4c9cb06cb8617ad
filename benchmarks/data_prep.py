"""Data preparation at scale: SFT tokenization and packing on 50k conversations, ours against the libraries.

    python benchmarks/data_prep.py [--examples 50000] [--max-length 512]

Rows, each timed once on the same synthetic conversations (the embedded model's tokenizer):
- tokenize: one tokenizer call per example (what SFT did before), ours (``tokenize_sft``: the fast tokenizer
  called on chunks of 2,048), and ``datasets.map(num_proc=2)`` over the per-example function (the field's
  usual route; its cache is left off so every run tokenizes, as the first run of a recipe does);
- pack: the quadratic first fit in data order SFT had, the same first fit on a max tree over the bins
  (``first_fit``: the same bins), ours (``pack``: that tree, longest examples first), and TRL's ``pack_dataset``
  (best fit decreasing), with the Arrow round trip it needs.
Outputs are checked against each other (the same tokens and labels; the same bins for the two first fits) and
the table shows each row's time as a ratio to the library's row, and the packed rows' fill.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment.data.chat import tokenize_messages, tokenize_sft  # noqa: E402
from alignment.sft import first_fit  # noqa: E402
from benchmarks.bench import flags_text, machine_info  # noqa: E402

WORDS = ("claim policy deductible coverage the a of to we you your insurance adjuster flood storm premium rate "
         "water damage roof car accident receipt photo form review team days window renewal notice").split()


def conversations(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` conversations, a fifth of them two exchanges long, answers of 10-250 words."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    out = []
    for _ in range(n):
        turns = 2 if rng.random() < 0.2 else 1
        messages = []
        for _ in range(turns):
            messages += [{"role": "user", "content": text(5, 60)}, {"role": "assistant", "content": text(10, 250)}]
        out.append({"messages": messages})
    return out


def quadratic_first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """The packing SFT had: every example scans the open bins from the first."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=50_000)
    p.add_argument("--max-length", type=int, default=512)
    a = p.parse_args(argv)

    import datasets
    from trl.data_utils import pack_dataset

    from alignment.modeling import load_tokenizer

    datasets.disable_caching()
    datasets.disable_progress_bars()
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    records = conversations(a.examples)
    n, width = a.examples, a.max_length

    t_serial, serial = timed(lambda: [tokenize_messages(tokenizer, r["messages"], width) for r in records])
    t_ours, (ours, _) = timed(lambda: tokenize_sft(tokenizer, records, width))

    def by_map() -> datasets.Dataset:
        def one(row: dict[str, Any]) -> dict[str, Any]:
            ex = tokenize_messages(tokenizer, row["messages"], width)
            return {"input_ids": ex.input_ids, "labels": ex.labels}

        return datasets.Dataset.from_list(records).map(one, num_proc=2, remove_columns=["messages"])

    t_map, mapped = timed(by_map)
    kept = [ex for ex in serial if any(label != -100 for label in ex.labels)]
    same = (len(ours) == len(kept)
            and all(x.input_ids == y.input_ids and x.labels == y.labels for x, y in zip(ours, kept))
            and mapped["input_ids"] == [ex.input_ids for ex in serial])

    lengths = [len(ex.input_ids) for ex in ours]
    t_quad, quad = timed(lambda: quadratic_first_fit(lengths, width))
    t_fit, fit = timed(lambda: first_fit(lengths, width))

    def decreasing() -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # what alignment.sft.pack does
        return first_fit([lengths[i] for i in order], width)

    t_ffd, ffd = timed(decreasing)

    def trl() -> datasets.Dataset:
        ds = datasets.Dataset.from_dict({"input_ids": [ex.input_ids for ex in ours],
                                         "labels": [ex.labels for ex in ours]})
        return pack_dataset(ds, width, strategy="bfd")

    t_trl, packed = timed(trl)
    tokens = sum(lengths)
    trl_rows = len(packed)
    trl_tokens = sum(len(r) for r in packed["input_ids"])

    info = machine_info()
    print(f"# Data preparation, {n:,} conversations, max_length {width}, {tokens:,} tokens")
    print(f"{info['cpu']}, {info['cores']} cores; CPU flags: {flags_text(info['cpu_flags'])}; "
          f"transformers {info['transformers']}, trl {info['trl']}, datasets {datasets.__version__}\n")
    print("| step | implementation | seconds | vs library | rows | fill |")
    print("|---|---|---|---|---|---|")
    for name, seconds in (("one call per example (before)", t_serial), ("ours: chunks of 2,048", t_ours),
                          ("datasets.map, num_proc=2", t_map)):
        print(f"| tokenize | {name} | {seconds:.1f} | {seconds / t_map:.2f}x | {n:,} | |")
    for name, seconds, rows, fill_tokens in (
            ("first fit, quadratic (before)", t_quad, len(quad), tokens),
            ("first fit, max tree (same bins)", t_fit, len(fit), tokens),
            ("ours: first fit decreasing, max tree", t_ffd, len(ffd), tokens),
            ("TRL pack_dataset (bfd)", t_trl, trl_rows, trl_tokens)):
        print(f"| pack | {name} | {seconds:.2f} | {seconds / t_trl:.2f}x | {rows:,} | "
              f"{fill_tokens / (rows * width):.1%} |")
    print(f"\ntokenized outputs identical across the three: {same}; "
          f"both first fits give the same bins: {quad == fit}")
    return 0 if same and quad == fit else 1


if __name__ == "__main__":
    raise SystemExit(main())
