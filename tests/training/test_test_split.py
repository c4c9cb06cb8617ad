"""The held-out test split on a tiny model: SFT scores its saved model on exactly the test examples (none of
them trained on), RM and DPO log `test/rewards/accuracies`, and a pipeline's report shows the Test split
table."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from alignment.cli import main
from alignment.config import DPOConfig, RMConfig, SFTConfig, load_config
from alignment.tracking import read_metrics
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart"
THREE_WAY = {"train": 0.7, "validation": 0.15, "test": 0.15}


def _write(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / f"{recipe['phase']}-{Path(recipe['output_dir']).name}.yaml"
    path.write_text(json.dumps(recipe))  # JSON is valid YAML
    return path


def _saved_model_loss(model_dir: Path, records: list[dict]) -> float:
    """Token-mean next-token NLL over the assistant tokens of ``records``, recomputed from scratch."""
    from alignment.data.chat import IGNORE_INDEX, tokenize_sft
    from alignment.modeling import load_causal_lm, load_tokenizer

    tokenizer, model = load_tokenizer(model_dir), load_causal_lm(model_dir).eval()
    examples, _ = tokenize_sft(tokenizer, records, 96)
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
            logits = model(input_ids=ids).logits.float()  # (1, T, V)
            nll += float(F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="sum"))
            tokens += int((labels[0, 1:] != IGNORE_INDEX).sum())
    return nll / tokens


def test_sft_scores_the_saved_model_on_exactly_the_test_examples(tmp_path, tiny_model_dir, sft_file, capsys):
    from alignment.sft import load_sft_splits

    out = tmp_path / "sft"
    recipe = {"phase": "sft", "model": str(tiny_model_dir), "output_dir": str(out),
              "data": {"train": str(sft_file), "max_length": 96, "split": THREE_WAY},
              "train": {"max_steps": 4, "batch_size": 4, "lr": 3e-3, "eval_every": 2, "bf16": "false"},
              "tracking": {"backends": ["none"]}}
    assert main(["sft", "--config", str(_write(tmp_path, recipe))]) == 0
    printed = capsys.readouterr().out

    cfg = load_config(SFTConfig, out / "config.yaml")
    train, val, test, _ = load_sft_splits(cfg)
    keys = {name: {json.dumps(r["messages"]) for r in part} for name, part in
            (("train", train), ("validation", val), ("test", test))}
    assert test and not keys["test"] & keys["train"] and not keys["test"] & keys["validation"]
    assert len(train) + len(val) + len(test) == 48

    saved = json.loads((out / "test_metrics.json").read_text())
    assert saved["examples"] == len(test) and saved["step"] == 4
    assert abs(saved["test/loss"] - _saved_model_loss(out / "model", test)) < 1e-4
    logged = [r for r in read_metrics(out / "metrics.jsonl") if "test/loss" in r]
    assert [(r["step"], r["test/loss"]) for r in logged] == [(4, saved["test/loss"])]
    last = [line for line in printed.splitlines() if line.startswith("[sft]")][-1]
    assert f"test loss {saved['test/loss']:.4f} on {len(test)} examples" in last

    # the same recipe without a test fraction removes the earlier file: no stale numbers in a report
    recipe["data"]["split"] = {"train": 0.85, "validation": 0.15}
    recipe["train"]["resume"] = "never"
    assert main(["sft", "--config", str(_write(tmp_path, recipe))]) == 0
    assert not (out / "test_metrics.json").exists()


def test_rm_scores_a_test_file_and_drops_its_prompts_from_training(tmp_path, tiny_model_dir, toy_preferences,
                                                                    capsys):
    from alignment.data.preferences import load_pair_splits

    rows = [json.loads(line) for line in toy_preferences.read_text().splitlines()]
    test_file = write_jsonl(tmp_path / "test.jsonl", rows[:10])  # these prompts are in the training file too
    out = tmp_path / "rm"
    recipe = {"phase": "rm", "model": str(tiny_model_dir), "output_dir": str(out),
              "data": {"train": str(toy_preferences), "test": str(test_file), "max_length": 96,
                       "split": {"train": 0.8, "validation": 0.2}},
              "train": {"max_steps": 6, "batch_size": 8, "lr": 2e-3, "eval_every": 3, "bf16": "false"},
              "tracking": {"backends": ["none"]}}
    assert main(["rm", "--config", str(_write(tmp_path, recipe))]) == 0
    printed = capsys.readouterr().out

    cfg = load_config(RMConfig, out / "config.yaml")
    train, val, test, info = load_pair_splits(cfg.data, cfg.train.seed)
    assert len(test) == 10 and info.test_prompts_dropped == 10
    test_prompts = {json.dumps(ex.prompt) for ex in test}
    assert not any(json.dumps(ex.prompt) in test_prompts for ex in train + val)
    saved = json.loads((out / "test_metrics.json").read_text())
    assert saved["examples"] == 10 and 0.0 <= saved["test/rewards/accuracies"] <= 1.0
    logged = [r for r in read_metrics(out / "metrics.jsonl") if "test/rewards/accuracies" in r]
    assert logged and logged[-1]["test/rewards/accuracies"] == saved["test/rewards/accuracies"]
    assert "10 train/validation pairs with a test prompt removed" in printed
    last = [line for line in printed.splitlines() if line.startswith("[rm]")][-1]
    assert f"test accuracy {saved['test/rewards/accuracies']:.3f}" in last


def test_dpo_logs_test_rewards_accuracies_with_a_precomputed_reference(tmp_path, tiny_model_dir, toy_preferences,
                                                                       capsys):
    from alignment.data.preferences import load_pair_splits

    out = tmp_path / "dpo"
    recipe = {"phase": "dpo", "model": str(tiny_model_dir), "output_dir": str(out),
              "data": {"train": str(toy_preferences), "max_length": 96, "split": THREE_WAY},
              "train": {"max_steps": 3, "batch_size": 8, "lr": 1e-3, "eval_every": 0, "bf16": "false"},
              "precompute_ref": True, "tracking": {"backends": ["none"]}}
    assert main(["dpo", "--config", str(_write(tmp_path, recipe))]) == 0
    printed = capsys.readouterr().out
    cfg = load_config(DPOConfig, out / "config.yaml")
    _, _, test, _ = load_pair_splits(cfg.data, cfg.train.seed)
    saved = json.loads((out / "test_metrics.json").read_text())
    assert saved["examples"] == len(test) > 0
    for key in ("test/loss", "test/rewards/accuracies", "test/rewards/margins"):
        assert key in saved
    logged = [r for r in read_metrics(out / "metrics.jsonl") if "test/rewards/accuracies" in r]
    assert [r["test/loss"] for r in logged] == [saved["test/loss"]]
    assert "test accuracy" in [line for line in printed.splitlines() if line.startswith("[dpo]")][-1]


def test_pipeline_report_shows_the_test_split_table(tmp_path, tiny_model_dir, sft_file, capsys):
    overrides = {"data.train": str(sft_file), "data.max_length": 96, "data.split": THREE_WAY,
                 "train.max_steps": 2, "train.batch_size": 4, "train.eval_every": 0, "train.bf16": "false",
                 "tracking.backends": ["none"]}
    recipe = {"name": "tiny", "output_dir": str(tmp_path / "runs"), "model": str(tiny_model_dir),
              "phases": [{"name": "sft", "kind": "sft", "recipe": str(QUICKSTART / "sft.yaml"),
                          "overrides": overrides}]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(recipe))
    assert main(["run", str(path)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "runs" / "sft" / "test_metrics.json").read_text())
    final_val = [r["eval/loss"] for r in read_metrics(tmp_path / "runs" / "sft" / "metrics.jsonl")
                 if "eval/loss" in r][-1]
    report = (tmp_path / "runs" / "report.html").read_text()
    assert "<h2>Test split</h2>" in report and 'id="test-split"' in report
    row = f'<td class="num">{final_val:.4f}</td><td class="num">{saved["test/loss"]:.4f}</td>'
    assert row in report
    assert (f"[pipeline] test split: sft (sft, {saved['examples']} examples): loss {saved['test/loss']:.4f} "
            f"(validation {final_val:.4f})") in printed


def test_pipeline_report_and_model_card_show_the_early_stopping_point(tmp_path, tiny_model_dir, sft_file, capsys):
    overrides = {"data.train": str(sft_file), "data.max_length": 96, "data.split": THREE_WAY,
                 "train.max_steps": 4, "train.batch_size": 4, "train.eval_every": 1, "train.save_every": 0,
                 "train.lr": 3e-3, "train.bf16": "false", "train.early_stopping": {"patience": 1, "min_delta": 10.0},
                 "tracking.backends": ["none"]}  # no evaluation improves by 10: stops at the second one
    recipe = {"name": "tiny", "output_dir": str(tmp_path / "runs"), "model": str(tiny_model_dir),
              "phases": [{"name": "sft", "kind": "sft", "recipe": str(QUICKSTART / "sft.yaml"),
                          "overrides": overrides}]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(recipe))
    assert main(["run", str(path)]) == 0
    printed = capsys.readouterr().out
    phase = tmp_path / "runs" / "sft"
    stopping = json.loads((phase / "early_stopping.json").read_text())
    assert stopping["best_step"] == 1 and stopping["stopped_at_step"] == 2
    best = f"{stopping['best_value']:.4f}"
    report = (tmp_path / "runs" / "report.html").read_text()
    assert "<h2>Early stopping</h2>" in report and report.index("<h2>Test split</h2>") < report.index(
        "<h2>Early stopping</h2>")
    assert (f'<tr><td>sft (sft)</td><td>eval/loss (min)</td><td class="num">1</td><td class="num">{best}</td>'
            "<td>step 2</td></tr>") in report
    assert (f"[pipeline] early stopping: sft (sft): eval/loss (min) best {best} at step 1 (the saved model); "
            "stopped: step 2") in printed
    # the model card beside the saved model: its test scores and where training stopped
    card = (phase / "model" / "README.md").read_text()
    test = json.loads((phase / "test_metrics.json").read_text())
    assert f"| `test/loss` | {test['test/loss']:.4g} |" in card and f"on {test['examples']} held-out" in card
    assert "training stopped at step 2: no improvement in 1 evaluations; this is the model of step 1" in card
