"""Reward modeling on a tiny model: learns a separable toy preference to high held-out accuracy,
reads scores at the last real token, saves stats and diagnostics, resumes, and runs on 2 processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignment.cli import main
from alignment.tracking import read_metrics
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, model: Path, data: Path, out: Path, **train) -> Path:
    train_cfg = {"max_steps": 30, "batch_size": 8, "lr": 2e-3, "save_every": 10, "eval_every": 10,
                 "keep_checkpoints": 5, "bf16": "false", "warmup_ratio": 0.0, **train}
    recipe = {"phase": "rm", "model": str(model), "output_dir": str(out),
              "data": {"train": str(data), "max_length": 96, "split": {"train": 0.75, "validation": 0.25}},
              "train": train_cfg, "tracking": {"backends": ["none"]}}
    path = tmp_path / f"rm-{out.name}.yaml"
    path.write_text(json.dumps(recipe))
    return path


def test_rm_learns_separable_preference(tmp_path, tiny_model_dir, toy_preferences, capsys):
    out = tmp_path / "rm"
    assert main(["rm", "--config", str(_recipe(tmp_path, tiny_model_dir, toy_preferences, out))]) == 0
    printed = capsys.readouterr().out
    diag = json.loads((out / "diagnostics.json").read_text())
    assert diag["pairs"] >= 20
    assert diag["accuracy"] >= 0.95
    assert "[rm] verdict: accuracy" in printed
    assert "shared prompt: each pair runs as one row" in printed
    stats = json.loads((out / "model" / "reward_stats.json").read_text())
    assert stats["count"] == 2 * (120 - diag["pairs"]) and stats["std"] > 0
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[0]["rewards/accuracies"] <= 0.8 < rows[-2]["rewards/accuracies"]

    # The saved model scores a fresh pair the same way, read at the last real token.
    from alignment.modeling import load_reward_model, load_tokenizer
    from alignment.reward import LastTokenScores

    model, tok = load_reward_model(out), load_tokenizer(out)
    scorer = LastTokenScores(model)
    prompt = [{"role": "user", "content": "Question 999: can you help me with my bill?"}]
    texts = [tok.apply_chat_template(prompt + [{"role": "assistant", "content": a}], tokenize=False)
             for a in ("Certainly, I can help with my bill. Thank you for asking.", "No. Figure out my bill yourself.")]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        model(**enc)
    scores = scorer.take(enc["attention_mask"])
    assert scores[0] > scores[1]
    # padding must not move the score: the shorter text alone scores the same
    alone = tok(texts[1:], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        model(**alone)
    torch.testing.assert_close(scorer.take(alone["attention_mask"])[0], scores[1], rtol=1e-4, atol=1e-4)


def test_rm_resume_matches_uninterrupted(tmp_path, tiny_model_dir, toy_preferences):
    full = tmp_path / "full"
    assert main(["rm", "--config", str(_recipe(tmp_path, tiny_model_dir, toy_preferences, full, max_steps=8,
                                                 save_every=4))]) == 0
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-4", part / "checkpoints" / "step-4")
    assert main(["rm", "--config", str(_recipe(tmp_path, tiny_model_dir, toy_preferences, part, max_steps=8,
                                                 save_every=4))]) == 0
    a = {r["step"]: r for r in read_metrics(full / "metrics.jsonl") if "train/loss" in r}
    b = {r["step"]: r for r in read_metrics(part / "metrics.jsonl") if "train/loss" in r}
    for step in range(5, 9):
        assert b[step]["train/loss"] == pytest.approx(a[step]["train/loss"], rel=1e-5)
    da, db = (json.loads((d / "diagnostics.json").read_text()) for d in (full, part))
    assert db["chosen_mean"] == pytest.approx(da["chosen_mean"], rel=1e-4)


def test_rm_from_ranked_data_and_lora(tmp_path, tiny_model_dir):
    rows = [{"prompt": f"Rate answers {i}", "responses": ["Great answer.", "Okay answer.", "Bad answer."],
             "ranks": [1, 2, 2]} for i in range(40)]
    data = write_jsonl(tmp_path / "ranked.jsonl", rows)
    out = tmp_path / "ranked"
    recipe = _recipe(tmp_path, tiny_model_dir, data, out, max_steps=4)
    assert main(["rm", "--config", str(recipe), "data.pair_policy=best-vs-rest", "lora.enabled=true",
                 "lora.r=4"]) == 0
    assert (out / "model" / "adapter_config.json").exists()
    from alignment.modeling import load_reward_model

    model = load_reward_model(out)  # adapter merged onto a sequence classifier
    assert model.config.num_labels == 1


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_rm_deepspeed_two_processes(tmp_path, tiny_model_dir, toy_preferences, stage):
    out = tmp_path / stage
    recipe = _recipe(tmp_path, tiny_model_dir, toy_preferences, out, max_steps=4, save_every=2)
    proc = subprocess.run([sys.executable, "-m", "alignment.cli", "rm", "--config", str(recipe), "--deepspeed",
                           stage, "--num-processes", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "processes=2" in proc.stdout
    assert json.loads((out / "diagnostics.json").read_text())["pairs"] > 0
    from alignment.modeling import load_reward_model

    assert load_reward_model(out).config.num_labels == 1


def test_reward_statistics_sample_is_capped_and_seeded():
    from alignment.data.preferences import TokenizedPair
    from alignment.rm import STATS_PAIRS, stats_sample

    pairs = [TokenizedPair([i], [i], [i], [i]) for i in range(300)]
    sample = stats_sample(pairs, seed=1)
    ids = [p.chosen_ids[0] for p in sample]
    assert len(ids) == STATS_PAIRS == len(set(ids)) and ids == sorted(ids)
    assert [p.chosen_ids[0] for p in stats_sample(pairs, seed=1)] == ids  # the same pairs on every rank
    assert [p.chosen_ids[0] for p in stats_sample(pairs, seed=2)] != ids
    assert stats_sample(pairs[:50], seed=1) == pairs[:50]  # small sets: every pair


def _pairs(tokenizer, path: Path):
    from alignment.data.preferences import load_preference_examples, tokenize_pairs

    examples, _ = load_preference_examples(str(path))
    pairs, _ = tokenize_pairs(tokenizer, examples[:6], 96)
    return pairs


class _Engine:  # what pair_scores and shared_prompt_works use of an Engine
    def __init__(self, model: torch.nn.Module) -> None:
        self.module, self.forward, self.eval, self.train = model, model, model.eval, model.train


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_row_scores_and_trains_like_two_rows(tiny_model_dir, toy_preferences, attention):
    """A pair as one row (prompt once, chosen, then rejected behind a mask) gives the scores of its two rows and
    the same gradients, in float32, with either attention (eager adds its mask to the scores); the prompt really
    is computed once (the row is shorter than the two rows)."""
    from alignment.batching import collate_pairs, collate_shared_pairs
    from alignment.config import ModelOptions
    from alignment.modeling import load_reward_model, load_tokenizer
    from alignment.reward import LastTokenScores
    from alignment.rm import pair_scores, shared_prompt_works

    tokenizer = load_tokenizer(str(tiny_model_dir))
    pairs = _pairs(tokenizer, toy_preferences)
    model = load_reward_model(tiny_model_dir, options=ModelOptions(attn_implementation=attention))
    assert model.config._attn_implementation == attention
    model.config.pad_token_id = tokenizer.pad_token_id
    torch.nn.init.normal_(model.score.weight, std=0.5)  # a zero head would make every score equal
    scorer, engine = LastTokenScores(model), _Engine(model)
    grads = []
    for collate in (collate_pairs, collate_shared_pairs):
        batch = collate(pairs, tokenizer.pad_token_id)
        chosen, rejected = pair_scores(engine, scorer, batch)
        (chosen * 1.5 - rejected).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
        if collate is collate_pairs:
            expected = (chosen.detach(), rejected.detach())
        else:
            torch.testing.assert_close(chosen.detach(), expected[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(rejected.detach(), expected[1], rtol=1e-5, atol=1e-5)
            assert batch["input_ids"].numel() < collate_pairs(pairs, tokenizer.pad_token_id)["input_ids"].numel()
    assert expected[0].std() > 0
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-5)  # sums in another order
    works, gap = shared_prompt_works(engine, scorer, pairs, tokenizer.pad_token_id)
    assert works and gap < 1e-4


def test_shared_prompt_is_refused_for_a_model_that_scores_the_row_differently(tmp_path, tiny_model_dir,
                                                                              toy_preferences):
    """A sliding-window model: the custom mask does not carry the window, so the shared row would see more
    than the two rows do; the first-batch check catches it and the pairs stay two rows."""
    from transformers import MistralConfig, MistralForSequenceClassification

    from alignment.modeling import load_tokenizer
    from alignment.reward import LastTokenScores
    from alignment.rm import shared_prompt_works

    tokenizer = load_tokenizer(str(tiny_model_dir))
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4, num_labels=1,
                           pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = MistralForSequenceClassification(config)
    torch.nn.init.normal_(model.score.weight, std=0.5)
    works, gap = shared_prompt_works(_Engine(model), LastTokenScores(model), _pairs(tokenizer, toy_preferences),
                                     tokenizer.pad_token_id)
    assert not works and gap > 0.05
