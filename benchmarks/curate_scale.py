"""`align data curate` at scale: time and peak memory of each step on synthetic prompts.

    python benchmarks/curate_scale.py [--sizes 5000 50000] [--clusters 50] [--seeds 100] [--top-k 20]

Each size runs in a fresh process (so one size's memory does not hide the next's), step after step as the
command runs them: near duplicates (MinHash LSH, word 3-grams, threshold 0.8), TF-IDF + SVD embeddings (fit and
transform), clustering (KMeans, MiniBatchKMeans above 10,000 records) and retrieval (seeds x records cosine
similarities, top-k per seed). Memory is the process's resident set sampled every 5 ms during the step: the peak,
and how far it rose above the step's start. The prompts: 20 topics of 40 words each, 8-40 words per prompt with
common words mixed in, 5% of them near duplicates (a word changed) of an earlier prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMMON = "the a of to and in is it you that for on are with as be at have this from my how do i can what".split()


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    topics = [[f"t{t}w{w}" for w in range(40)] for t in range(20)]
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < 0.05:
            words = rng.choice(out).split()
            words[rng.randrange(len(words))] = "changed"
            out.append(" ".join(words))
            continue
        vocab = rng.choice(topics)
        out.append(" ".join(rng.choice(vocab) if rng.random() < 0.6 else rng.choice(COMMON)
                            for _ in range(rng.randint(8, 40))))
    return out


class PeakRSS:
    """The resident set's peak while the block runs, sampled from /proc/self/statm by a thread."""

    def __enter__(self) -> PeakRSS:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def __exit__(self, *exc: Any) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.rss())


def child(n: int, clusters: int, n_seeds: int, top_k: int) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    from alignment.data.curate import TfidfEmbedder, cluster, near_duplicates, retrieve

    texts = prompts(n)
    seeds = prompts(n_seeds, seed=1)
    rows = []

    def step(name: str, fn: Any) -> Any:
        t = time.perf_counter()
        with PeakRSS() as mem:
            value = fn()
        rows.append({"size": n, "step": name, "seconds": round(time.perf_counter() - t, 2),
                     "peak_rss_mib": round(mem.peak / 2**20), "rise_mib": round((mem.peak - mem.start) / 2**20)})
        return value

    nd = step("near duplicates (MinHash LSH)", lambda: near_duplicates(texts, 0.8, 3))
    rows[-1]["note"] = f"{n - len(nd.keep)} removed"
    kept = [texts[i] for i in nd.keep]
    embedder = TfidfEmbedder()
    x = step("embed: TF-IDF + SVD (fit, transform)", lambda: embedder.fit(kept).embed(kept))
    rows[-1]["note"] = f"{x.shape[1]} dims"
    step(f"cluster (k={clusters})", lambda: cluster(x, clusters))
    rows[-1]["note"] = "MiniBatchKMeans" if len(kept) > 10_000 else "KMeans"
    found, _ = step(f"retrieve ({n_seeds} seeds, top {top_k})", lambda: retrieve(x, embedder.embed(seeds), top_k))
    rows[-1]["note"] = f"{len(found)} kept"
    return rows


def cpu() -> tuple[str, str]:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "neon", "asimd") if f in flags]
    return model, " ".join(shown) or "none of avx2/fma/avx512f/amx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.clusters, args.seeds, args.top_k)))
        return
    from importlib.metadata import version

    model, flags = cpu()
    print(f"CPU: {model}, {os.cpu_count()} cores; flags: {flags}")
    print("Python " + platform.python_version() + ", " + ", ".join(
        f"{p} {version(p)}" for p in ("numpy", "scikit-learn", "datasketch")))
    print("\n| records | step | seconds | peak RSS (MiB) | rise in step (MiB) | note |\n|---:|---|---:|---:|---:|---|")
    for n in args.sizes:
        result = subprocess.run([sys.executable, __file__, "--child", str(n), "--clusters", str(args.clusters),
                                 "--seeds", str(args.seeds), "--top-k", str(args.top_k)],
                                capture_output=True, text=True, check=True)
        for row in json.loads(result.stdout.strip().splitlines()[-1]):
            print(f"| {row['size']:,} | {row['step']} | {row['seconds']} | {row['peak_rss_mib']} | {row['rise_mib']} "
                  f"| {row.get('note', '')} |", flush=True)


if __name__ == "__main__":
    main()
