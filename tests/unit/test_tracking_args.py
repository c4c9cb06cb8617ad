"""The MLflow backend as a recipe names it and as its run is derived: the same precedence as W&B (the recipe's
value, then MLflow's environment variable, then our default), with no MLflow import needed to decide it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alignment.config import SFTConfig, TrackingConfig, load_config, to_dict
from alignment.errors import AlignError
from alignment.tracking import artifact_name, flatten, mlflow_init_args, mlflow_store


def _recipe(tmp_path: Path, backends: str) -> Path:
    (tmp_path / "t.jsonl").write_text('{"text": "hello"}\n', encoding="utf-8")
    path = tmp_path / "sft.yaml"
    path.write_text(f"data:\n  train: t.jsonl\ntracking:\n  backends: {backends}\n", encoding="utf-8")
    return path


def test_a_recipe_with_the_mlflow_backend_validates(tmp_path):
    cfg = load_config(SFTConfig, _recipe(tmp_path, "[mlflow, tensorboard]"))
    assert cfg.tracking.backends == ["mlflow", "tensorboard"]


def test_an_unknown_backend_is_refused_with_a_suggestion(tmp_path):
    with pytest.raises(AlignError) as info:
        load_config(SFTConfig, _recipe(tmp_path, "[wandb, mlflo]"))
    assert info.value.field == "tracking.backends[1]"
    assert "did you mean 'mlflow'" in str(info.value)
    with pytest.raises(AlignError) as info:
        load_config(SFTConfig, _recipe(tmp_path, "[neptune]"))
    assert info.value.field == "tracking.backends[0]" and "mlflow" in str(info.value)  # the choices are named


def _tracking(**values) -> dict:
    return to_dict(TrackingConfig(**values))


def test_mlflow_defaults_a_local_store_in_the_output_dir(tmp_path):
    args = mlflow_init_args(_tracking(), tmp_path / "runs" / "sft", "runs/sft", "sft", environ={})
    assert args == {"tracking_uri": (tmp_path / "runs" / "sft" / "mlruns").as_uri(), "experiment": "alignment",
                    "run_name": "runs/sft", "tags": {"job_type": "sft"}}


def test_mlflow_phases_of_a_pipeline_share_its_store_and_group(tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "pipeline.yaml").write_text(yaml.safe_dump({"phases": [{"name": "sft", "kind": "sft"}]}))
    args = mlflow_init_args(_tracking(), tmp_path / "exp" / "sft", "exp/sft", "sft", environ={})
    assert args["tracking_uri"] == (tmp_path / "exp" / "mlruns").as_uri() == mlflow_store(tmp_path / "exp").as_uri()
    assert args["tags"] == {"group": "exp", "job_type": "sft"}


def test_mlflow_environment_wins_over_defaults_and_the_recipe_over_both(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "sqlite:///elsewhere.db", "MLFLOW_EXPERIMENT_NAME": "env-exp"}
    args = mlflow_init_args(_tracking(), tmp_path, "runs/sft", "sft", environ=env)
    assert (args["tracking_uri"], args["experiment"]) == ("sqlite:///elsewhere.db", "env-exp")
    written = _tracking(project="mine", run_name="my-run", group="g", job_type="warmup", tags=["a", "b"])
    args = mlflow_init_args(written, tmp_path, "runs/sft", "sft", environ=env)
    assert (args["experiment"], args["run_name"]) == ("mine", "my-run")
    assert args["tags"] == {"group": "g", "job_type": "warmup", "a": "", "b": ""}
    assert args["tracking_uri"] == "sqlite:///elsewhere.db"  # the recipe has no store field: env or ours


def test_flatten_gives_dotted_string_params():
    assert flatten({"model": "m", "train": {"lr": 0.001, "steps": 3}, "lora": {"targets": ["q", "v"]}, "x": None,
                    "empty": {}}) == {"model": "m", "train.lr": "0.001", "train.steps": "3",
                                      "lora.targets": '["q", "v"]', "x": "null", "empty": "{}"}


def test_artifact_names_are_what_wandb_accepts():
    assert artifact_name("exp-7/sft") == "exp-7-sft"
    assert artifact_name("my run: v2/ppo") == "my-run-v2-ppo"


def test_only_rank_0_opens_a_backend(tmp_path):
    """Other ranks get a disabled logger: no run, no file, and tables and models are dropped without importing
    W&B or MLflow."""
    from alignment.tracking import MetricsLogger

    logger = MetricsLogger(tmp_path / "out", ["wandb", "mlflow"], None, "exp/sft", {"phase": "sft"}, enabled=False)
    logger.log({"loss": 1.0}, 1)
    logger.log_table("eval/answers", ["a"], [[1]])
    (tmp_path / "model").mkdir()
    logger.log_model(tmp_path / "model")
    logger.log_files(tmp_path / "model", "m", "model")
    logger.close()
    assert not logger.remote and not (tmp_path / "out").exists()
