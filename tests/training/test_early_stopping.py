"""Early stopping with the best model kept (`train.early_stopping`, sft / rm / dpo): a run whose held-out loss
turns worse stops and saves the best evaluated model (the very weights a run stopped at that step makes); a run
that keeps improving does not stop; the last model is kept only when it is the best; a killed run resumed ends
exactly as an uninterrupted one; accuracy (mode max) works for DPO; KTO refuses it.

SFT runs use a constant, high learning rate on the tiny model: held-out loss falls for ~7 steps, then rises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment.cli import main
from alignment.config import DPO_EVAL_METRICS, RM_EVAL_METRICS, SFT_EVAL_METRICS, SFTConfig, load_config
from alignment.errors import AlignError
from alignment.run import step_hook
from alignment.tracking import read_metrics


def _recipe(tmp_path: Path, phase: str, model: Path, data: Path, out: Path, early: dict | None, **train) -> Path:
    lr = {"sft": 3e-2, "rm": 2e-3, "dpo": 5e-4}[phase]
    train_cfg = {"max_steps": 15, "batch_size": 4 if phase == "sft" else 8, "lr": lr, "eval_every": 1,
                 "save_every": 0, "keep_checkpoints": 5, "bf16": "false", "scheduler": "constant",
                 "warmup_ratio": 0.0, "early_stopping": early, **train}
    recipe = {"phase": phase, "model": str(model), "output_dir": str(out),
              "data": {"train": str(data), "max_length": 96, "split": {"train": 0.75, "validation": 0.25}},
              "train": train_cfg, "tracking": {"backends": ["none"]}}
    path = tmp_path / f"{phase}-{out.name}.yaml"
    path.write_text(json.dumps(recipe))  # JSON is valid YAML
    return path


def _report(out: Path) -> dict:
    return json.loads((out / "early_stopping.json").read_text())


def _evals(out: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_metrics(out / "metrics.jsonl") if key in r]


def _eval_keys(out: Path) -> set[str]:
    return {k for r in read_metrics(out / "metrics.jsonl") for k in r if k.startswith("eval/")}


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_sft_stops_when_validation_loss_worsens_and_saves_the_best_model(tmp_path, tiny_model_dir, sft_file, capsys):
    out = tmp_path / "early"
    assert main(["sft", "--config", str(_recipe(tmp_path, "sft", tiny_model_dir, sft_file, out,
                                                {"patience": 3}))]) == 0
    report = _report(out)
    stopped, best = report["stopped_at_step"], report["best_step"]
    assert report["metric"] == "eval/loss" and report["mode"] == "min"
    assert stopped is not None and stopped < 15, report
    assert stopped - best == 3  # three evaluations in a row without improvement
    values = [e["value"] for e in report["evaluations"]]
    assert [e["step"] for e in report["evaluations"]] == list(range(1, stopped + 1))
    assert report["best_value"] == min(values) == values[best - 1]
    assert _eval_keys(out) == set(SFT_EVAL_METRICS)  # the metric names the config accepts are what SFT logs
    # training ended at the stop; the last evaluation logged is the saved (best) model's
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r) == stopped
    evals = _evals(out, "eval/loss")
    assert evals[-2] == (stopped, values[-1])  # the stopping evaluation
    assert evals[-1][0] == stopped and evals[-1][1] == pytest.approx(report["best_value"], rel=1e-6)
    printed = capsys.readouterr().out
    assert (f"[sft] early stopping: stopped at step {stopped} (no eval/loss improvement in 3 evaluations); "
            f"final model = best at step {best} (eval/loss {report['best_value']:.4g})") in printed

    # The saved model is the model at the best step: a run of exactly that many steps (the schedule is
    # constant, so it trains the same steps at the same rates) ends with the same weights and loss.
    ref = tmp_path / "reference"
    assert main(["sft", "--config", str(_recipe(tmp_path, "sft", tiny_model_dir, sft_file, ref, None,
                                                max_steps=best))]) == 0
    _assert_same_weights(out / "model", ref / "model")
    assert _evals(ref, "eval/loss")[-1][1] == pytest.approx(report["best_value"], rel=1e-6)


def test_sft_that_keeps_improving_does_not_stop(tmp_path, tiny_model_dir, sft_file, capsys):
    out = tmp_path / "improving"
    assert main(["sft", "--config", str(_recipe(tmp_path, "sft", tiny_model_dir, sft_file, out, {"patience": 1},
                                                max_steps=6, eval_every=2))]) == 0
    report = _report(out)
    assert report["stopped_at_step"] is None
    assert [e["step"] for e in report["evaluations"]] == [2, 4, 6]  # the last model is a candidate too
    values = [e["value"] for e in report["evaluations"]]
    assert values == sorted(values, reverse=True)
    assert report["best_step"] == 6
    assert "[sft] early stopping: did not stop early; final model = best at step 6" in capsys.readouterr().out
    # one final evaluation, of the last model, which is the one saved
    assert _evals(out, "eval/loss") == [(2, values[0]), (4, values[1]), (6, pytest.approx(values[2], rel=1e-6))]


def test_a_run_that_did_not_stop_still_saves_the_best_model(tmp_path, tiny_model_dir, sft_file, capsys):
    """The last model is evaluated too; when an earlier one was better, that one is put back and saved."""
    out = tmp_path / "overshoot"
    assert main(["sft", "--config", str(_recipe(tmp_path, "sft", tiny_model_dir, sft_file, out, {"patience": 5},
                                                max_steps=9, eval_every=3))]) == 0
    report = _report(out)
    assert report["stopped_at_step"] is None and [e["step"] for e in report["evaluations"]] == [3, 6, 9]
    assert report["best_step"] == 6, report  # the loss rose again by step 9
    last, best = report["evaluations"][-1]["value"], report["best_value"]
    evals = _evals(out, "eval/loss")
    assert evals[-2] == (9, last) and evals[-1][0] == 9  # the last model's evaluation, then the saved model's
    assert evals[-1][1] == pytest.approx(best, rel=1e-6) and last > best
    assert "did not stop early; final model = best at step 6" in capsys.readouterr().out


class Killed(Exception):
    pass


class _Kill:
    """A step hook that kills the run when a step begins."""

    def __init__(self, at: int) -> None:
        self.at = at

    def begin(self, step) -> None:
        if step.number == self.at:
            raise Killed(f"killed at step {step.number}")

    def end(self, step) -> None:
        pass


def test_a_killed_run_resumed_ends_as_an_uninterrupted_one(tmp_path, tiny_model_dir, sft_file):
    from alignment.sft import run_sft

    early = {"patience": 2}
    full = tmp_path / "full"
    assert main(["sft", "--config", str(_recipe(tmp_path, "sft", tiny_model_dir, sft_file, full, early,
                                                eval_every=2, save_every=2))]) == 0
    expected = _report(full)
    assert expected["stopped_at_step"] is not None and expected["best_step"] < expected["stopped_at_step"] - 2

    part = tmp_path / "part"
    recipe = _recipe(tmp_path, "sft", tiny_model_dir, sft_file, part, early, eval_every=2, save_every=2)
    # killed after the checkpoint that follows the best evaluation and one without improvement: the best
    # weights survive only in that checkpoint
    kill_at = expected["best_step"] + 3
    with step_hook(_Kill(kill_at)), pytest.raises(Killed):
        run_sft(load_config(SFTConfig, recipe))
    state = json.loads((part / "checkpoints" / f"step-{kill_at - 1}" / "trainer_state.json").read_text())
    assert state["early_stopping"]["best_step"] == expected["best_step"]
    assert state["early_stopping"]["since_best"] == 1
    assert (part / "checkpoints" / f"step-{kill_at - 1}" / "early_stopping" / "best.pt").exists()
    assert not (part / "model").exists()

    assert main(["sft", "--config", str(recipe)]) == 0  # resume: auto
    assert _report(part) == expected
    _assert_same_weights(full / "model", part / "model")
    a, b = _evals(full, "eval/loss"), _evals(part, "eval/loss")
    assert [step for step, _ in a] == [step for step, _ in b]
    assert [v for _, v in b] == pytest.approx([v for _, v in a], rel=1e-6)


@pytest.mark.slow
def test_every_rank_refuses_a_checkpoint_without_the_best_weights(tmp_path, tiny_model_dir, sft_file):
    """Only rank 0 reads best.pt; a rank that did not refuse with it would wait at the next collective for a
    rank 0 that has left. Two ranks started as torchrun starts them (no launcher to kill the one left waiting)
    both give the one clear error."""
    from alignment.distributed import free_port

    out = tmp_path / "out"
    recipe = _recipe(tmp_path, "sft", tiny_model_dir, sft_file, out, {"patience": 50}, max_steps=5, eval_every=2,
                     save_every=2, batch_size=2)
    assert main(["sft", "--config", str(recipe), "--num-processes", "2"]) == 0
    from alignment.training import checkpoints

    last = checkpoints(out)[-1]  # what resume: auto picks
    assert json.loads((last / "trainer_state.json").read_text())["early_stopping"]["best_step"] is not None
    (last / "early_stopping" / "best.pt").unlink()

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-m", "alignment.cli", "sft", "--config", str(recipe)], cwd=repo,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, text in zip(procs, outputs):
        assert p.returncode == 2, text[-3000:]
        assert "holds no weights for it (early_stopping/best.pt)" in text, text[-3000:]


def test_dpo_stops_on_held_out_accuracy(tmp_path, tiny_model_dir, toy_preferences, capsys):
    out = tmp_path / "dpo"
    assert main(["dpo", "--config", str(_recipe(tmp_path, "dpo", tiny_model_dir, toy_preferences, out,
                                                {"metric": "eval/rewards/accuracies", "patience": 2},
                                                max_steps=12, eval_every=2))]) == 0
    report = _report(out)
    assert report["mode"] == "max"  # the default for an accuracy
    values = [e["value"] for e in report["evaluations"]]
    assert report["best_value"] == max(values) and report["stopped_at_step"] is not None, report
    assert report["stopped_at_step"] - report["best_step"] == 2 * 2  # two evaluations, every 2 steps
    assert _eval_keys(out) == set(DPO_EVAL_METRICS)
    evals = _evals(out, "eval/rewards/accuracies")
    assert evals[-1] == (report["stopped_at_step"], pytest.approx(report["best_value"]))
    assert "[dpo] early stopping: stopped at step" in capsys.readouterr().out


def test_rm_tracks_the_held_out_margin(tmp_path, tiny_model_dir, toy_preferences):
    out = tmp_path / "rm"
    assert main(["rm", "--config", str(_recipe(tmp_path, "rm", tiny_model_dir, toy_preferences, out,
                                               {"metric": "eval/rewards/margins", "patience": 3},
                                               max_steps=4, eval_every=2))]) == 0
    report = _report(out)
    assert report["mode"] == "max" and [e["step"] for e in report["evaluations"]] == [2, 4]
    assert _eval_keys(out) == set(RM_EVAL_METRICS)
    diagnostics = json.loads((out / "diagnostics.json").read_text())  # the saved model's diagnostics
    chosen, rejected = diagnostics["scores"]["chosen"], diagnostics["scores"]["rejected"]
    margin = sum(c - r for c, r in zip(chosen, rejected)) / len(chosen)
    assert margin == pytest.approx(report["best_value"], rel=1e-5, abs=1e-6)


def test_kto_refuses_early_stopping(tmp_path):
    from alignment.config import DPOConfig, EarlyStoppingConfig, PreferenceDataConfig, TrainConfig
    from alignment.kto import run_kto

    cfg = DPOConfig(output_dir=str(tmp_path / "kto"), data=PreferenceDataConfig(train="unpaired.jsonl"),
                    train=TrainConfig(early_stopping=EarlyStoppingConfig()))
    with pytest.raises(AlignError) as info:
        run_kto(cfg)
    assert info.value.field == "train.early_stopping" and "sft, rm and dpo" in info.value.message
