"""What the tracking backends actually store beyond metrics: a W&B offline run's tables and artifacts (read back
from the run's own ``.wandb`` log and files), an MLflow ``mlruns/`` store's params, metric history, tags, tables,
artifacts and logged model (read back through ``MlflowClient``), and both from a real pipeline run."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from alignment.cli import main
from alignment.config import SFTConfig, TrackingConfig, load_config
from alignment.config import to_dict as config_dict
from alignment.evaluation.records import (
    AnswerRecord,
    BaselineRef,
    EvalReport,
    ModelResult,
    RewardComparison,
    RewardSummary,
    VsBaseline,
)
from alignment.pipeline import EvaluationConfig, PhaseStep, PipelineConfig
from alignment.tracking import MetricsLogger, eval_tables, log_pipeline

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart"


# --- reading a W&B offline run ---------------------------------------------------------------------------------
def wandb_records(run_dir: Path) -> list[Any]:
    """The protobuf records of an offline run's ``run-<id>.wandb``: W&B's LevelDB-style log (a 7-byte header, then
    32 KiB blocks of chunks, each with a 7-byte header: CRC, length, type full/first/middle/last). W&B 0.31 ships
    no Python reader of its own; this is the format ``wandb sync`` uploads from."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def flushed_run(parent: Path) -> Path:
    """The one offline run under ``parent/wandb``, once W&B has written all of it: ``run.finish()`` returns before
    W&B's service has flushed the ``.wandb`` log (seen under load: the last history row and the artifacts
    missing), and ``wandb.teardown()`` waits for it, as the process's exit does before a ``wandb sync``."""
    import wandb

    wandb.teardown()
    (run_dir,) = (parent / "wandb").glob("offline-run-*")
    assert wandb_records(run_dir)[-1].WhichOneof("record_type") == "exit"  # complete: the exit record is last
    return run_dir


def wandb_artifacts(run_dir: Path) -> dict[str, Any]:
    return {r.artifact.name: r.artifact for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "artifact"}


def wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for r in wandb_records(run_dir):
        if r.WhichOneof("record_type") == "history":
            rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in r.history.item})
    return rows


def md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


@pytest.fixture()
def wandb_offline(tmp_path, monkeypatch) -> Path:
    """Offline W&B with its staging area (where offline artifacts' files are copied until `wandb sync`) in tmp."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    for name in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_TAGS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "wandb-data"


@pytest.fixture()
def mlflow_env(monkeypatch) -> None:
    """No MLflow store or experiment from the environment; MLFLOW_ALLOW_FILE_STORE unset, and unset again after."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.setenv(name, "x")  # so that undo restores "absent", whatever the test's code set
        monkeypatch.delenv(name)


def _model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "README.md").write_text("# card\n")
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    return model


def sample_report() -> EvalReport:
    """Two models on two prompts, one rule, a reward model: enough to fill every column of the tables."""
    base = ModelResult("base", "runs/x/base", role="baseline", adherence={"signoff": 0.5, "all": 0.5},
                       mean_length_tokens=10.0, reward=RewardSummary(mean=0.1),
                       answers=[AnswerRecord("p1", "hi. Thanks", {"signoff": True}, 3, 10, True, rm_score=0.3),
                                AnswerRecord("p2", "hey", {"signoff": False}, 2, 3, False, rm_score=-0.1)])
    sft = ModelResult("sft", "runs/x/sft/model", adherence={"signoff": 1.0, "all": 1.0}, mean_length_tokens=12.0,
                      reward=RewardSummary(mean=0.7),
                      vs_baseline=VsBaseline("base", rm=RewardComparison(win_rate=0.75)),
                      answers=[AnswerRecord("p1", "hello. Thanks", {"signoff": True}, 4, 13, True, 0.9, 0.65),
                               AnswerRecord("p2", "ok. Thanks", {"signoff": True}, 4, 10, True, 0.5, 0.65)])
    return EvalReport(results=[base, sft], prompts=2, policies=["signoff"], baseline=BaselineRef("base", base.model))


def test_eval_tables_hold_every_answer_and_every_models_scores():
    tables = eval_tables(sample_report())
    columns, rows = tables["answers"]
    assert columns == ["model", "model_path", "prompt", "answer", "check/signoff", "passed_all", "tokens",
                       "finished", "rm_score", "rm_p_a", "judge_p_a"]
    assert rows[1] == ["base", "runs/x/base", "p2", "hey", False, False, 2, False, -0.1, None, None]
    assert rows[2] == ["sft", "runs/x/sft/model", "p1", "hello. Thanks", True, True, 4, True, 0.9, 0.65, None]
    columns, rows = tables["models"]
    assert columns == ["model", "model_path", "role", "adherence/signoff", "adherence/all", "mean_length_tokens",
                       "unfinished", "rm_mean", "rm_win_rate", "judge_win_rate"]
    assert rows == [["base", "runs/x/base", "baseline", 0.5, 0.5, 10.0, 0, 0.1, None, None],
                    ["sft", "runs/x/sft/model", "model", 1.0, 1.0, 12.0, 0, 0.7, 0.75, None]]


def _config(tmp_path: Path, **tracking: Any) -> dict[str, Any]:
    overrides = {"data.train": "x.jsonl", **{f"tracking.{k}": v for k, v in tracking.items()}}
    return config_dict(load_config(SFTConfig, None, overrides))


# --- W&B offline ------------------------------------------------------------------------------------------------
def test_wandb_offline_run_holds_tables_files_and_model_reference(tmp_path, wandb_offline):
    model = _model_dir(tmp_path)
    report = tmp_path / "report.html"
    report.write_text("<h1>Run exp-7</h1>")
    logger = MetricsLogger(tmp_path / "out", ["wandb"], None, "exp-7/sft", _config(tmp_path))
    try:
        logger.log({"train/loss": 2.5}, 1)
        logger.log({"train/loss": 1.5}, 2)
        columns, rows = eval_tables(sample_report())["answers"]
        logger.log_table("eval/answers", columns, rows)
        logger.log_files(report, "exp-7-report", "report")
        logger.log_model(model, {"phase": "sft"})
        report.write_text("rewritten after logging")  # the offline artifact keeps the logged bytes
    finally:
        logger.close()
    run_dir = flushed_run(tmp_path / "out")

    history = wandb_history(run_dir)
    assert [(h["_step"], h["train/loss"]) for h in history if "train/loss" in h] == [(1, 2.5), (2, 1.5)]
    (table_row,) = [h for h in history if "eval/answers/_type" in h]
    assert table_row["eval/answers/_type"] == "table-file" and table_row["eval/answers/nrows"] == 4
    table = json.loads((run_dir / "files" / table_row["eval/answers/path"]).read_text())
    assert table["columns"] == columns
    assert table["data"][2] == ["sft", "runs/x/sft/model", "p1", "hello. Thanks", True, True, 4, True, 0.9, 0.65,
                                None]

    artifacts = wandb_artifacts(run_dir)
    files = artifacts["exp-7-report"]
    assert files.type == "report"
    (entry,) = files.manifest.contents
    assert entry.path == "report.html" and entry.size == len("<h1>Run exp-7</h1>")
    staged = Path(entry.local_path)  # copied into W&B's staging area at log time, for the later upload
    assert staged.is_relative_to(wandb_offline) and staged.read_text() == "<h1>Run exp-7</h1>"

    model_artifact = artifacts["exp-7-sft"]
    assert model_artifact.type == "model"
    assert json.loads(model_artifact.metadata) == {"path": str(model.resolve()), "phase": "sft"}
    refs = {e.path: e for e in model_artifact.manifest.contents}
    assert set(refs) == {"config.json", "README.md", "model.safetensors"}
    weights = refs["model.safetensors"]
    assert weights.ref == (model / "model.safetensors").resolve().as_uri() and not weights.local_path  # not copied
    assert (weights.size, weights.digest) == (256 * 64, md5_b64(model / "model.safetensors"))


# --- MLflow file store ------------------------------------------------------------------------------------------
def test_mlflow_store_holds_params_metric_history_tags_and_model(tmp_path, mlflow_env):
    from mlflow.tracking import MlflowClient

    model = _model_dir(tmp_path)
    out = tmp_path / "out"
    config = _config(tmp_path, project="proj", tags=["nightly"])
    logger = MetricsLogger(out, ["mlflow"], "proj", "exp-7/sft", config)
    logger.log({"train/loss": 2.5, "train/lr": 1e-3, "eval/acc@1": 0.5, "note": "text is not a metric"}, 1)
    logger.log({"train/loss": 1.5}, 2)
    logger.log_model(model, {"phase": "sft"})
    logger.close()

    client = MlflowClient((out / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("proj")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == (out / "mlflow_run_id").read_text() and run.info.status == "FINISHED"
    assert run.info.run_name == "exp-7/sft"
    assert {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")} == {"job_type": "sft",
                                                                                       "nightly": ""}
    params = run.data.params
    assert params["phase"] == "sft" and params["data.train"] == "x.jsonl" and params["train.lr"] == "2e-05"
    assert params["tracking.tags"] == '["nightly"]' and params["tracking.entity"] == "null"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 1.5)]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/lr")] == [(1, 1e-3)]
    assert "note" not in run.data.metrics and run.data.metrics["eval/acc_1"] == 0.5  # a name MLflow takes

    (logged,) = client.search_logged_models([experiment.experiment_id])
    assert (logged.name, logged.source_run_id, logged.status.to_proto()) == ("exp-7-sft", run.info.run_id, 2)
    assert logged.tags["path"] == str(model.resolve()) and logged.params["phase"] == "sft"
    copied = {Path(f.path).name for f in client.list_logged_model_artifacts(logged.model_id)}
    assert copied == {"config.json", "README.md"}  # the weights stay where the `path` tag points

    # resuming continues the same run: its params stay, metrics go on past the resumed step
    logger = MetricsLogger(out, ["mlflow"], "proj", "exp-7/sft", config, resume_step=2)
    logger.log({"train/loss": 1.0}, 3)
    logger.close()
    (resumed,) = client.search_runs([experiment.experiment_id])
    assert resumed.info.run_id == run.info.run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]


def test_a_model_that_cannot_be_recorded_is_a_warning_not_a_failed_phase(tmp_path, mlflow_env, capsys):
    logger = MetricsLogger(tmp_path / "out", ["mlflow"], None, "exp-7/sft", _config(tmp_path))

    def broken(*args: Any) -> None:
        raise OSError("store is read-only")

    logger._mlflow.log_model = broken  # type: ignore[union-attr]
    logger.log_model(_model_dir(tmp_path))
    logger.close()
    captured = capsys.readouterr()
    assert "not recorded in tracking (OSError: store is read-only)" in captured.out + captured.err


def test_mlflow_missing_is_a_clear_error(tmp_path, mlflow_env, monkeypatch):
    import builtins

    from alignment.errors import AlignError

    real_import = builtins.__import__

    def no_mlflow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("mlflow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(AlignError) as info:
        MetricsLogger(tmp_path, ["mlflow"], None, "r", _config(tmp_path))
    assert info.value.field == "tracking.backends" and "alignment-loop[mlflow]" in str(info.value)


def test_log_pipeline_sends_eval_tables_and_report_to_mlflow(tmp_path, mlflow_env):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "exp-7"
    cfg = PipelineConfig(name="t", output_dir=str(out), phases=[PhaseStep("sft", "sft", "sft.yaml"),
                                                                PhaseStep("eval", "eval")],
                         evaluation=EvaluationConfig(prompts="p.jsonl", policies="rules.yaml"))
    sample_report().write(out / "eval" / "results.json")
    (out / "report.html").write_text("<h1>Run t</h1>")
    # The last training phase's tracking section, with its own run name: the report run keeps its own.
    log_pipeline(out, cfg, TrackingConfig(backends=["mlflow", "tensorboard"], project="proj", run_name="my-sft"),
                 out / "report.html")

    client = MlflowClient((out / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("proj")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "exp-7/report"
    assert (run.data.tags["group"], run.data.tags["job_type"]) == ("exp-7", "report")
    assert run.data.params["evaluation.policies"] == "rules.yaml"
    answers = client.load_table(experiment.experiment_id, "eval/answers.json", [run.info.run_id])
    assert list(answers["answer"]) == ["hi. Thanks", "hey", "hello. Thanks", "ok. Thanks"]
    assert list(answers["check/signoff"]) == [True, False, True, True]
    models = client.load_table(experiment.experiment_id, "eval/models.json", [run.info.run_id])
    assert list(models["adherence/all"]) == [0.5, 1.0] and list(models["rm_win_rate"])[1] == 0.75
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "download")))
    assert (local / "exp-7-report" / "report.html").read_text() == "<h1>Run t</h1>"
    assert json.loads((local / "exp-7-eval-results" / "results.json").read_text())["policies"] == ["signoff"]


def test_log_pipeline_sends_nothing_without_a_remote_backend(tmp_path):
    cfg = PipelineConfig(name="t", output_dir=str(tmp_path), phases=[PhaseStep("sft", "sft", "sft.yaml")])
    log_pipeline(tmp_path, cfg, TrackingConfig(backends=["tensorboard"]), tmp_path / "report.html")
    log_pipeline(tmp_path, cfg, None, tmp_path / "report.html")
    assert list(tmp_path.iterdir()) == []


# --- a real pipeline ---------------------------------------------------------------------------------------------
def test_pipeline_sends_models_eval_and_report_to_both_backends(tmp_path, tiny_model_dir, sft_file, wandb_offline,
                                                                mlflow_env):
    from mlflow.tracking import MlflowClient

    prompts = tmp_path / "prompts.jsonl"
    rows = [json.loads(line) for line in (QUICKSTART / "data" / "heldout_prompts.jsonl").read_text().splitlines()]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    recipe = {"name": "tiny", "output_dir": str(tmp_path / "exp-7"), "model": str(tiny_model_dir),
              "phases": [{"name": "sft", "kind": "sft", "recipe": str(QUICKSTART / "sft.yaml"),
                          "overrides": {"data.train": str(sft_file), "data.max_length": 64, "train.max_steps": 2,
                                        "train.batch_size": 4, "train.bf16": "false", "train.save_every": 0,
                                        "train.eval_every": 0, "tracking.backends": ["wandb", "mlflow"]}},
                         {"name": "eval", "kind": "eval"}],
              "evaluation": {"prompts": str(prompts), "policies": str(QUICKSTART / "policies.yaml"),
                             "max_new_tokens": 4, "batch_size": 3}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(recipe))
    assert main(["run", str(path)]) == 0
    out = tmp_path / "exp-7"

    # MLflow: one store for the pipeline, the phase and the report runs of one group
    client = MlflowClient((out / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("alignment-quickstart")  # the recipe's tracking.project
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"exp-7/sft", "exp-7/report"}
    assert {n: (r.data.tags["group"], r.data.tags["job_type"]) for n, r in runs.items()} == {
        "exp-7/sft": ("exp-7", "sft"), "exp-7/report": ("exp-7", "report")}
    assert [m.step for m in client.get_metric_history(runs["exp-7/sft"].info.run_id, "train/loss")] == [1, 2]
    (logged,) = client.search_logged_models([experiment.experiment_id])
    assert logged.tags["path"] == str((out / "sft" / "model").resolve())
    answers = client.load_table(experiment.experiment_id, "eval/answers.json", [runs["exp-7/report"].info.run_id])
    assert len(answers) == 2 * 3 and set(answers["model"]) == {"base", "sft"}  # base and sft, 3 prompts each

    # W&B: the phase's run has the model reference, the report run the tables and the report
    report_run = flushed_run(out)
    (phase_run,) = (out / "sft" / "wandb").glob("offline-run-*")
    model = wandb_artifacts(phase_run)["exp-7-sft"]
    assert model.type == "model" and "model.safetensors" in {e.path for e in model.manifest.contents}
    artifacts = wandb_artifacts(report_run)
    assert artifacts["exp-7-report"].type == "report" and artifacts["exp-7-eval-results"].type == "evaluation"
    (table_row,) = [h for h in wandb_history(report_run) if "eval/answers/_type" in h]
    table = json.loads((report_run / "files" / table_row["eval/answers/path"]).read_text())
    assert len(table["data"]) == 6
