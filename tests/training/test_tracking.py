"""What W&B is told: the recipe's tracking values win, then W&B's environment variables, then our defaults;
the phases of one pipeline run share a group, with the phase kind as job_type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from alignment.cli import main
from alignment.config import SFTConfig, TrackingConfig, load_config, to_dict
from alignment.errors import AlignError
from alignment.tracking import MetricsLogger, pipeline_group, wandb_init_args

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart"
WANDB_VARS = ("WANDB_PROJECT", "WANDB_NAME", "WANDB_DIR", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE",
              "WANDB_TAGS")


class _FakeRun:
    id = "fake-run-id"

    def __init__(self) -> None:
        self.artifacts: list[Any] = []

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_artifact(self, artifact: Any) -> None:
        self.artifacts.append(artifact)

    def finish(self) -> None:
        pass


@pytest.fixture()
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replaces ``wandb.init`` with a recorder of its keyword arguments; clears the W&B identity variables."""
    import wandb

    calls: list[dict[str, Any]] = []

    def init(**kwargs: Any) -> _FakeRun:
        kwargs["run"] = _FakeRun()  # what the run was sent, for the tests that look
        calls.append(kwargs)
        return kwargs["run"]

    for name in WANDB_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(wandb, "init", init)
    return calls


def _tracking(**values: Any) -> dict[str, Any]:
    return to_dict(TrackingConfig(**values))


# --- the rule, on the function that derives the arguments -------------------------------------------------
def test_defaults_without_environment(tmp_path):
    args = wandb_init_args(_tracking(), tmp_path / "runs" / "sft", "runs/sft", "sft", environ={})
    assert args == {"project": "alignment", "entity": None, "name": "runs/sft", "dir": str(tmp_path / "runs" / "sft"),
                    "group": None, "job_type": "sft", "tags": None}


def test_environment_wins_over_defaults(tmp_path):
    env = {"WANDB_PROJECT": "env-project", "WANDB_NAME": "env-name", "WANDB_DIR": str(tmp_path / "wb"),
           "WANDB_ENTITY": "env-team", "WANDB_RUN_GROUP": "env-group", "WANDB_JOB_TYPE": "env-job",
           "WANDB_TAGS": "a, b,,c"}
    args = wandb_init_args(_tracking(), tmp_path / "out", "runs/sft", "sft", environ=env)
    assert args == {"project": "env-project", "entity": "env-team", "name": "env-name", "dir": str(tmp_path / "wb"),
                    "group": "env-group", "job_type": "env-job", "tags": ["a", "b", "c"]}


def test_recipe_values_win_over_environment(tmp_path):
    env = {"WANDB_PROJECT": "env-project", "WANDB_NAME": "env-name", "WANDB_ENTITY": "env-team",
           "WANDB_RUN_GROUP": "env-group", "WANDB_JOB_TYPE": "env-job", "WANDB_TAGS": "a"}
    tracking = _tracking(project="p", run_name="n", entity="e", group="g", job_type="j", tags=["t"])
    args = wandb_init_args(tracking, tmp_path / "out", "runs/sft", "sft", environ=env)
    assert {k: args[k] for k in ("project", "name", "entity", "group", "job_type", "tags")} == {
        "project": "p", "name": "n", "entity": "e", "group": "g", "job_type": "j", "tags": ["t"]}


def test_empty_environment_variable_counts_as_unset(tmp_path):
    args = wandb_init_args(_tracking(), tmp_path, "runs/sft", "sft", environ={"WANDB_PROJECT": " ", "WANDB_TAGS": ""})
    assert args["project"] == "alignment" and args["tags"] is None


def test_tracking_config_refuses_empty_values_and_keeps_written_project():
    with pytest.raises(AlignError) as err:
        load_config(SFTConfig, None, {"data.train": "x.jsonl", "tracking.project": ""})
    assert err.value.field == "tracking.project"
    with pytest.raises(AlignError) as err:
        load_config(SFTConfig, None, {"data.train": "x.jsonl", "tracking.tags": ["ok", " "]})
    assert err.value.field == "tracking.tags"
    assert load_config(SFTConfig, None, {"data.train": "x.jsonl"}).tracking.project is None  # not written
    cfg = load_config(SFTConfig, QUICKSTART / "sft.yaml", {"data.train": "x.jsonl"})
    assert cfg.tracking.project == "alignment-quickstart"  # written: wins over WANDB_PROJECT


def test_pipeline_group_needs_a_pipeline_that_lists_the_phase(tmp_path):
    (tmp_path / "sft").mkdir()
    assert pipeline_group(tmp_path / "sft") is None
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({"phases": [{"name": "sft", "kind": "sft"}]}))
    assert pipeline_group(tmp_path / "sft") == tmp_path.name
    assert pipeline_group(tmp_path / "other") is None  # a folder beside the pipeline, not one of its phases
    (tmp_path / "pipeline.yaml").write_text("phases: [unclosed\n")
    assert pipeline_group(tmp_path / "sft") is None


# --- what MetricsLogger passes to wandb.init -----------------------------------------------------------------
def test_logger_passes_environment_over_defaults(tmp_path, recorded, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "env-project")
    monkeypatch.setenv("WANDB_NAME", "env-name")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    cfg = load_config(SFTConfig, None, {"data.train": "x.jsonl", "output_dir": str(tmp_path / "runs" / "sft")})
    MetricsLogger(tmp_path / "runs" / "sft", ["wandb"], cfg.tracking.project, "runs/sft", to_dict(cfg)).close()
    (call,) = recorded
    assert call["project"] == "env-project" and call["name"] == "env-name"
    assert call["dir"] == str(tmp_path / "wandb-dir") and (tmp_path / "wandb-dir").is_dir()
    assert call["job_type"] == "sft" and call["group"] is None
    assert (tmp_path / "runs" / "sft" / "wandb_run_id").read_text() == "fake-run-id"  # still beside the outputs


def test_logger_keeps_recipe_values_over_environment(tmp_path, recorded, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "env-project")
    monkeypatch.setenv("WANDB_NAME", "env-name")
    cfg = load_config(SFTConfig, None, {"data.train": "x.jsonl", "tracking.project": "mine",
                                        "tracking.run_name": "my-run", "tracking.job_type": "warmup"})
    MetricsLogger(tmp_path, ["wandb"], cfg.tracking.project, "my-run", to_dict(cfg)).close()
    (call,) = recorded
    assert (call["project"], call["name"], call["job_type"], call["dir"]) == ("mine", "my-run", "warmup", str(tmp_path))


def test_real_offline_run_gets_group_job_type_and_tags(tmp_path, monkeypatch):
    """The arguments as a real (offline) W&B run takes them, under WANDB_DIR."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_RUN_GROUP", "env-group")
    monkeypatch.setenv("WANDB_TAGS", "x,y")
    for name in ("WANDB_PROJECT", "WANDB_NAME", "WANDB_JOB_TYPE", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    cfg = load_config(SFTConfig, None, {"data.train": "x.jsonl"})
    logger = MetricsLogger(tmp_path / "out", ["wandb"], cfg.tracking.project, "t/out", to_dict(cfg))
    try:
        run = logger._wandb
        assert (run.project, run.name, run.group, run.job_type) == ("alignment", "t/out", "env-group", "sft")
        assert tuple(run.tags) == ("x", "y")
        logger.log({"loss": 1.0}, 1)
    finally:
        logger.close()
    assert list((tmp_path / "wb" / "wandb").glob("offline-run-*/*.wandb"))
    assert not (tmp_path / "out" / "wandb").exists()


# --- a pipeline: one group, job_type per phase -----------------------------------------------------------------
def test_pipeline_phases_share_a_group_with_job_type_per_phase(tmp_path, tiny_model_dir, sft_file,
                                                               toy_preferences, recorded):
    common = {"data.max_length": 64, "train.max_steps": 1, "train.batch_size": 4, "train.bf16": "false",
              "train.save_every": 0, "train.eval_every": 0, "tracking.backends": ["wandb"]}
    recipe = {"name": "tiny", "output_dir": str(tmp_path / "exp-7"), "model": str(tiny_model_dir),
              "phases": [{"name": "sft", "kind": "sft", "recipe": str(QUICKSTART / "sft.yaml"),
                          "overrides": {"data.train": str(sft_file), **common}},
                         {"name": "reward", "kind": "rm", "recipe": str(QUICKSTART / "rm.yaml"),
                          "overrides": {"data.train": str(toy_preferences), **common}}]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(recipe))
    assert main(["run", str(path)]) == 0
    assert [(c["group"], c["job_type"], c["name"]) for c in recorded] == [
        ("exp-7", "sft", "exp-7/sft"), ("exp-7", "rm", "exp-7/reward"), ("exp-7", "report", "exp-7/report")]
    assert {c["project"] for c in recorded} == {"alignment-quickstart"}  # the recipes write it
    # each phase's saved model, as a reference artifact of its run; the pipeline's report in the last run
    models = [(a.name, a.type, a.metadata["phase"]) for c in recorded[:2] for a in c["run"].artifacts]
    assert models == [("exp-7-sft", "model", "sft"), ("exp-7-reward", "model", "rm")]
    (report,) = recorded[2]["run"].artifacts
    assert (report.name, report.type) == ("exp-7-report", "report")
