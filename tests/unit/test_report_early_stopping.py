"""The pipeline report's "Early stopping" table and closing lines, and the model card's test-split and
early-stopping sections, from the files the phases leave (early_stopping.json, test_metrics.json)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from alignment.config import SFTConfig, load_config
from alignment.model_card import card_text
from alignment.report import early_stopping_lines, early_stopping_rows, write_report


def _phase_files(run_dir: Path) -> SimpleNamespace:
    """A pipeline of three training phases: sft stopped early, dpo kept its best model without stopping, rm ran
    without early stopping (no file: no row)."""
    (run_dir / "sft").mkdir(parents=True)
    (run_dir / "sft" / "early_stopping.json").write_text(json.dumps({
        "metric": "eval/loss", "mode": "min", "patience": 2, "min_delta": 0.0, "best_step": 20, "best_value": 1.23456,
        "stopped_at_step": 40, "evaluations": [{"step": s, "value": 1.3} for s in (10, 20, 30, 40)]}))
    (run_dir / "dpo").mkdir()
    (run_dir / "dpo" / "early_stopping.json").write_text(json.dumps({
        "metric": "eval/rewards/accuracies", "mode": "max", "patience": 3, "min_delta": 0.0, "best_step": 12,
        "best_value": 0.75, "stopped_at_step": None, "evaluations": [{"step": s, "value": 0.7} for s in (6, 12, 24)]}))
    (run_dir / "rm").mkdir()
    phases = [SimpleNamespace(name=n, kind=k) for n, k in (("sft", "sft"), ("rm", "rm"), ("dpo", "dpo"))]
    return SimpleNamespace(name="es", model="base", phases=phases)


def test_the_report_shows_each_phases_early_stopping_point(tmp_path):
    cfg = _phase_files(tmp_path)
    rows = early_stopping_rows(tmp_path, cfg)
    assert [(r["phase"], r["best_step"], r["best_value"], r["stopped_at_step"], r["last_step"]) for r in rows] == [
        ("sft", 20, 1.23456, 40, 40), ("dpo", 12, 0.75, None, 24)]
    assert early_stopping_lines(rows) == [
        "early stopping: sft (sft): eval/loss (min) best 1.2346 at step 20 (the saved model); stopped: step 40",
        "early stopping: dpo (dpo): eval/rewards/accuracies (max) best 0.7500 at step 12 (the saved model); "
        "stopped: did not stop (ran to step 24)"]
    report = write_report(tmp_path, cfg, {}, verdicts=[]).read_text()
    assert "<h2>Early stopping</h2>" in report and 'id="early-stopping"' in report
    assert ('<tr><td>sft (sft)</td><td>eval/loss (min)</td><td class="num">20</td><td class="num">1.2346</td>'
            "<td>step 40</td></tr>") in report
    assert "<td>dpo (dpo)</td><td>eval/rewards/accuracies (max)</td>" in report
    assert "<td>rm (rm)</td><td>eval" not in report


def test_no_early_stopping_no_table(tmp_path):
    cfg = SimpleNamespace(name="plain", model="base", phases=[SimpleNamespace(name="sft", kind="sft")])
    (tmp_path / "sft").mkdir()
    assert early_stopping_rows(tmp_path, cfg) == []
    assert "Early stopping" not in write_report(tmp_path, cfg, {}, verdicts=[]).read_text()


def test_the_model_card_lists_test_metrics_and_the_early_stopping_point(tmp_path):
    _phase_files(tmp_path)
    out = tmp_path / "sft"
    (out / "model").mkdir()
    (out / "test_metrics.json").write_text(json.dumps({"test/loss": 1.5, "examples": 7, "step": 40}))
    cfg = load_config(SFTConfig, None, {"model": "base", "data.train": "sft.jsonl", "output_dir": str(out)})
    card = card_text("sft", cfg, out / "model")
    assert "## Test split" in card and "on 7 held-out test examples" in card and "| `test/loss` | 1.5 |" in card
    assert "## Early stopping" in card
    assert ("On `eval/loss` (min): training stopped at step 40: no improvement in 2 evaluations; this is the model of "
            "step 20 (eval/loss 1.235, the best evaluated).") in card
    # a phase without either file: neither section
    cfg.output_dir = str(tmp_path / "rm")
    (tmp_path / "rm" / "model").mkdir()
    bare = card_text("rm", cfg, tmp_path / "rm" / "model")
    assert "## Test split" not in bare and "## Early stopping" not in bare
