"""DPO on a tiny model: the chosen-minus-rejected margin rises; every way of getting the reference
agrees; IPO and SimPO train; negative examples become pairs; resume matches; 2-process ZeRO runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignment.cli import main
from alignment.dpo import LikelihoodWatch
from alignment.tracking import read_metrics
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, model: Path, data: Path, out: Path, **top) -> Path:
    train = {"max_steps": 12, "batch_size": 8, "lr": 5e-4, "save_every": 6, "eval_every": 6,
             "keep_checkpoints": 5, "bf16": "false", "warmup_ratio": 0.0, **top.pop("train", {})}
    recipe = {"phase": "dpo", "model": str(model), "output_dir": str(out), "beta": 0.1,
              "data": {"train": str(data), "max_length": 96, "split": {"train": 0.75, "validation": 0.25}},
              "train": train, "tracking": {"backends": ["none"]}, **top}
    path = tmp_path / f"dpo-{out.name}.yaml"
    path.write_text(json.dumps(recipe))
    return path


def _rows(out: Path) -> list[dict]:
    return read_metrics(out / "metrics.jsonl")


def test_dpo_raises_margin(tmp_path, tiny_model_dir, toy_preferences, capsys):
    out = tmp_path / "dpo"
    assert main(["dpo", "--config", str(_recipe(tmp_path, tiny_model_dir, toy_preferences, out))]) == 0
    assert "shared prompt: each pair runs as one row" in capsys.readouterr().out
    train = [r for r in _rows(out) if "train/loss" in r]
    evals = [r for r in _rows(out) if "eval/rewards/margins" in r]
    assert train[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)  # policy == reference at step 1
    assert train[-1]["rewards/margins"] > 0.5
    assert evals[-1]["eval/rewards/margins"] > evals[0]["eval/rewards/margins"] > 0
    assert evals[-1]["eval/rewards/accuracies"] == 1.0
    assert (out / "model" / "model.safetensors").exists()


def test_reference_paths_agree(tmp_path, tiny_model_dir, toy_preferences):
    """A frozen copy, precomputed log-probs, and (for LoRA) the adapter-disabled model are the same
    reference: at step 1 the policy equals it, and later losses match between the two full runs."""
    runs = {}
    for name, extra in {"frozen": {}, "precomputed": {"precompute_ref": True}}.items():
        out = tmp_path / name
        assert main(["dpo", "--config", str(_recipe(tmp_path, tiny_model_dir, toy_preferences, out,
                                                    train={"max_steps": 4}, **extra))]) == 0
        runs[name] = [r["train/loss"] for r in _rows(out) if "train/loss" in r]
    assert runs["frozen"] == pytest.approx(runs["precomputed"], rel=1e-4)
    # Only what the run reads is precomputed: 4 steps x 8 pairs of the training split, and every held-out pair.
    from alignment.config import DPOConfig, load_config
    from alignment.data.preferences import load_pairs

    cfg = load_config(DPOConfig, str(tmp_path / "dpo-precomputed.yaml"), {})
    train_pairs, val_pairs, _ = load_pairs(cfg.data, cfg.train.seed)
    cache = torch.load(tmp_path / "precomputed" / "reference_logps.pt")["logps"]
    # (the run finishing proves every pair it read was cached: a miss raises; the epoch's wrap-around
    # can repeat a pair, so up to 32 distinct pairs)
    assert 24 <= len([k for k in cache if k < len(train_pairs)]) <= 32 < len(train_pairs)
    assert sorted(k for k in cache if k >= len(train_pairs)) == [len(train_pairs) + i for i in range(len(val_pairs))]
    out = tmp_path / "lora"
    recipe = _recipe(tmp_path, tiny_model_dir, toy_preferences, out, train={"max_steps": 4, "lr": 5e-3},
                     lora={"enabled": True, "r": 4})
    assert main(["dpo", "--config", str(recipe)]) == 0
    rows = [r for r in _rows(out) if "train/loss" in r]
    assert rows[0]["train/loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: adapter off == policy at start
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]
    assert (out / "model" / "adapter_config.json").exists()


@pytest.mark.parametrize("loss,beta", [("ipo", 0.1), ("simpo", 2.0)])
def test_other_losses_train(tmp_path, tiny_model_dir, toy_preferences, loss, beta):
    out = tmp_path / loss
    assert main(["dpo", "--config", str(_recipe(tmp_path, tiny_model_dir, toy_preferences, out, loss=loss,
                                                beta=beta, train={"max_steps": 8}))]) == 0
    rows = [r for r in _rows(out) if "train/loss" in r]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]


def test_negative_examples_become_pairs(tmp_path, tiny_model_dir, capsys):
    rows = []
    for i in range(24):
        prompt = f"Can I get a refund for order {i}?"
        rows.append({"prompt": prompt, "completion": "Refunds are reviewed by our billing team.", "label": True})
        rows.append({"prompt": prompt, "completion": "Yes, guaranteed refund today!", "label": False})
    rows.append({"prompt": "Orphan negative", "completion": "Never say this.", "label": False})
    data = write_jsonl(tmp_path / "unpaired.jsonl", rows)
    out = tmp_path / "neg"
    recipe = _recipe(tmp_path, tiny_model_dir, data, out, negatives="pairs", train={"max_steps": 3})
    assert main(["dpo", "--config", str(recipe)]) == 0
    assert "1 negative examples have no good answer" in capsys.readouterr().out
    from alignment.data.preferences import load_preference_examples

    examples, info = load_preference_examples(str(data))
    assert info.kind == "unpaired" and len(examples) == 24 and info.orphan_negatives == 1
    assert all(e.chosen[0]["content"].startswith("Refunds") for e in examples)


def test_dpo_resume_matches(tmp_path, tiny_model_dir, toy_preferences):
    full = tmp_path / "full"
    recipe = _recipe(tmp_path, tiny_model_dir, toy_preferences, full, precompute_ref=True,
                     train={"max_steps": 8, "save_every": 4})
    assert main(["dpo", "--config", str(recipe)]) == 0
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-4", part / "checkpoints" / "step-4")
    shutil.copy(full / "reference_logps.pt", part / "reference_logps.pt")
    recipe = _recipe(tmp_path, tiny_model_dir, toy_preferences, part, precompute_ref=True,
                     train={"max_steps": 8, "save_every": 4})
    assert main(["dpo", "--config", str(recipe)]) == 0
    a = {r["step"]: r for r in _rows(full) if "train/loss" in r}
    b = {r["step"]: r for r in _rows(part) if "train/loss" in r}
    for step in range(5, 9):
        assert b[step]["train/loss"] == pytest.approx(a[step]["train/loss"], rel=1e-5)


@pytest.mark.parametrize("stale", ["older format", "other pairs", "no test keys", "unreadable"])
def test_dpo_resume_recomputes_a_stale_reference_cache(tmp_path, tiny_model_dir, toy_preferences, capsys, stale):
    """A resumed run uses the saved reference log-probs only when they were computed for the same pairs and hold
    every pair it reads: a cache of an older version (no record of its pairs, here without the test pairs' keys),
    of other pairs (wrong values under the same keys), one recorded for these pairs but without the test pairs'
    keys (it crashed scoring the test part), or one that cannot be read is computed again, and the run still ends
    as the uninterrupted one."""
    def recipe(out: Path) -> str:
        path = _recipe(tmp_path, tiny_model_dir, toy_preferences, out, precompute_ref=True,
                       train={"max_steps": 8, "save_every": 4})
        written = json.loads(path.read_text())
        written["data"]["split"] = {"train": 0.7, "validation": 0.15, "test": 0.15}
        path.write_text(json.dumps(written))
        return str(path)

    full = tmp_path / "full"
    assert main(["dpo", "--config", recipe(full)]) == 0
    saved = torch.load(full / "reference_logps.pt")
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-4", part / "checkpoints" / "step-4")
    if stale == "older format":  # a plain {key: log-probs} without the last test pair (the test keys come last)
        torch.save({k: saved["logps"][k] for k in sorted(saved["logps"])[:-1]}, part / "reference_logps.pt")
    elif stale == "other pairs":
        torch.save({"digest": "0" * 16, "logps": {k: (0.0, 0.0) for k in saved["logps"]}}, part / "reference_logps.pt")
    elif stale == "no test keys":  # the keys are positions in train + validation + test: the test pairs' come last
        from alignment.config import DPOConfig, load_config
        from alignment.data.preferences import load_pair_splits

        cfg = load_config(DPOConfig, recipe(part))
        _, _, test, _ = load_pair_splits(cfg.data, cfg.train.seed)
        assert test
        kept = sorted(saved["logps"])[:-len(test)]
        torch.save({"digest": saved["digest"], "logps": {k: saved["logps"][k] for k in kept}},
                   part / "reference_logps.pt")
    else:
        (part / "reference_logps.pt").write_bytes(b"half a file")
    capsys.readouterr()
    assert main(["dpo", "--config", recipe(part)]) == 0
    assert "reference log-probs computed again" in capsys.readouterr().out
    assert torch.load(part / "reference_logps.pt") == saved
    a = {r["step"]: r for r in _rows(full) if "train/loss" in r}
    b = {r["step"]: r for r in _rows(part) if "train/loss" in r}
    for step in range(5, 9):
        assert b[step]["train/loss"] == pytest.approx(a[step]["train/loss"], rel=1e-5)


def test_the_reference_cache_digest_names_the_reference_model_its_weights_and_settings(tmp_path, tiny_model_dir,
                                                                                      toy_preferences):
    """A cache computed by another reference is never read as this one's: another ref_model, the same folder's
    weights written again (a pipeline's earlier phase trained anew), other model_options, bf16 autocast, row layout."""
    import os

    from alignment.config import DPOConfig, load_config
    from alignment.dpo import _cache_digest

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)

    def digest(bf16: bool = False, shared: bool = True, **top) -> str:
        cfg = load_config(DPOConfig, _recipe(tmp_path, model, toy_preferences, tmp_path / "out", **top))
        return _cache_digest(cfg, [], [], average=False, bf16=bf16, shared=shared)

    first = digest()
    assert digest() == first
    assert digest(ref_model=str(tiny_model_dir)) != first
    assert digest(bf16=True) != first
    assert digest(shared=False) != first
    assert digest(model_options={"attn_implementation": "eager"}) != first
    weights = next(model.glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert digest() != first


def test_likelihood_watch():
    # With a reference: rewards/chosen / beta is the chosen answers' log-likelihood change on the batch.
    watch = LikelihoodWatch(total_steps=30, beta=0.1, uses_reference=True)
    assert watch.update(1, {"rewards/chosen": -0.5, "rewards/margins": 0.5, "logps/chosen": -20.0}) is None  # too early
    assert watch.update(2, {"rewards/chosen": 0.05, "rewards/margins": 0.5, "logps/chosen": -90.0}) is None
    # window mean of the change: (-5 + 0.5 - 0.5) / 3 = -1.67 nats < -1 while margins rose
    message = watch.update(3, {"rewards/chosen": -0.05, "rewards/margins": 0.6, "logps/chosen": -10.0})
    assert message and "lost 1.67 nats" in message
    assert watch.update(4, {"rewards/chosen": -1.0, "rewards/margins": 2.0, "logps/chosen": -30.0}) is None  # once

    # Noisy raw log-probs of different batches (the quickstart's false alarm) do not trigger it.
    calm = LikelihoodWatch(total_steps=30, beta=0.1, uses_reference=True)
    for step, (logp, reward) in enumerate([(-136.0, 0.0), (-148.6, 0.03), (-141.6, 0.06), (-151.5, 0.03)], 1):
        assert calm.update(step, {"rewards/chosen": reward, "rewards/margins": 0.2, "logps/chosen": logp}) is None

    # Reference-free (SimPO): the raw log-probs against the first window.
    free = LikelihoodWatch(total_steps=30, beta=2.0, uses_reference=False)
    for step in range(1, 4):
        assert free.update(step, {"rewards/chosen": 0.0, "rewards/margins": 0.0, "logps/chosen": -1.0}) is None
    for step in range(4, 6):
        assert free.update(step, {"rewards/chosen": 0.0, "rewards/margins": 1.0, "logps/chosen": -3.0}) is None
    assert free.update(6, {"rewards/chosen": 0.0, "rewards/margins": 1.0, "logps/chosen": -3.0})


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_dpo_deepspeed_two_processes(tmp_path, tiny_model_dir, toy_preferences, stage):
    out = tmp_path / stage
    recipe = _recipe(tmp_path, tiny_model_dir, toy_preferences, out, train={"max_steps": 4, "save_every": 2})
    proc = subprocess.run([sys.executable, "-m", "alignment.cli", "dpo", "--config", str(recipe), "--deepspeed",
                           stage, "--num-processes", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "processes=2" in proc.stdout and "reference: frozen copy" in proc.stdout
    rows = [r for r in _rows(out) if "train/loss" in r]
    assert len(rows) == 4 and rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(out / "model"))


def test_rpo_keeps_the_chosen_answers_likely(tmp_path, tiny_model_dir, toy_preferences):
    """The NLL term is logged and added to the loss, and the chosen answers end up more likely than
    with plain DPO from the same start, same data and same seed."""
    from alignment.batching import collate_pairs
    from alignment.dpo import chosen_counts

    plain, rpo = tmp_path / "plain", tmp_path / "rpo"
    assert main(["dpo", "--config", str(_recipe(tmp_path, tiny_model_dir, toy_preferences, plain))]) == 0
    assert main(["dpo", "--config", str(_recipe(tmp_path, tiny_model_dir, toy_preferences, rpo, rpo_alpha=1.0))]) == 0
    plain_rows, rpo_rows = [r for r in _rows(plain) if "train/loss" in r], [r for r in _rows(rpo) if "train/loss" in r]
    assert "train/nll_chosen" not in plain_rows[0]
    for r in rpo_rows:
        assert r["train/loss"] == pytest.approx(r["train/preference_loss"] + r["train/nll_chosen"], rel=1e-4)
    plain_eval = [r for r in _rows(plain) if "eval/logps/chosen" in r][-1]
    rpo_eval = [r for r in _rows(rpo) if "eval/logps/chosen" in r][-1]
    assert rpo_eval["eval/logps/chosen"] > plain_eval["eval/logps/chosen"]

    # the token count behind the per-token NLL is the labelled positions of each chosen answer
    from alignment.data.preferences import TokenizedPair

    pairs = [TokenizedPair([1, 2, 3, 4], [-100, -100, 3, 4], [1, 2, 5], [-100, -100, 5]),
             TokenizedPair([1, 6, 7, 8, 9], [-100, 6, 7, 8, 9], [1, 2], [-100, 2])]
    assert chosen_counts(collate_pairs(pairs, 0)).tolist() == [2, 4]
    from alignment.batching import collate_shared_pairs

    assert chosen_counts(collate_shared_pairs(pairs, 0)).tolist() == [2, 4]


@pytest.mark.parametrize("average, attention", [(False, "sdpa"), (True, "sdpa"), (False, "eager")])
def test_shared_prompt_rows_give_the_log_probs_and_gradients_of_two_rows(tiny_model_dir, toy_preferences, average,
                                                                         attention):
    """One row per pair (prompt once, chosen segment, rejected segment behind a mask) gives each answer's summed or
    averaged log-probs and the same gradients as the pair's two rows, in float32."""
    import contextlib

    from alignment.batching import collate_pairs, collate_shared_pairs
    from alignment.config import ModelOptions
    from alignment.data.preferences import load_preference_examples, tokenize_pairs
    from alignment.dpo import batch_logps
    from alignment.modeling import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    examples, _ = load_preference_examples(str(toy_preferences))
    pairs, _ = tokenize_pairs(tokenizer, examples[:6], 96)
    model = load_causal_lm(str(tiny_model_dir), options=ModelOptions(attn_implementation=attention))
    assert model.config._attn_implementation == attention
    results = []
    for collate in (collate_pairs, collate_shared_pairs):
        chosen, rejected = batch_logps(model, collate(pairs, tokenizer.pad_token_id), average, contextlib.nullcontext())
        (chosen.sum() - 2 * rejected.sum()).backward()
        results.append((chosen.detach(), rejected.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        model.zero_grad(set_to_none=True)
    (c0, r0, g0), (c1, r1, g1) = results
    torch.testing.assert_close(c1, c0, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(r1, r0, rtol=1e-5, atol=1e-4)
    assert (c0 - r0).abs().max() > 0.1  # the answers differ, so a swapped segment would show
    for name, grad in g0.items():
        torch.testing.assert_close(g1[name], grad, rtol=1e-4, atol=1e-5)  # sums in another order
