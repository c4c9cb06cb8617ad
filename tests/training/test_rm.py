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
