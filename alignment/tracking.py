"""Metrics: always to ``metrics.jsonl``, and to Weights & Biases, MLflow and/or TensorBoard when asked.

W&B runs online when an API key is configured (``WANDB_API_KEY`` or a ``wandb login`` netrc entry)
and offline otherwise; offline runs land in ``<output>/wandb`` (or ``$WANDB_DIR/wandb``) and ``wandb sync``
uploads them later. Only rank 0 logs, to every backend.

What ``wandb.init`` gets (:func:`wandb_init_args`), per setting: a value the recipe's ``tracking`` section
sets wins; else W&B's own environment variable (``WANDB_PROJECT``, ``WANDB_NAME``, ``WANDB_DIR``,
``WANDB_ENTITY``, ``WANDB_RUN_GROUP``, ``WANDB_JOB_TYPE``, ``WANDB_TAGS``); else our default. The recipe's
fields default to null for exactly this: a null is "not written", so an environment variable can win over the
default without winning over what the user wrote. The defaults: project "alignment", the run name
``<run>/<phase>`` (the output directory's last two parts), the output directory, the phase kind as
``job_type``, and as ``group`` the pipeline's output folder name when the phase runs inside a pipeline, so
the phases of one pipeline run are one group in the W&B UI.

MLflow (:func:`mlflow_init_args`) follows the same rule with its own variables: the store is
``MLFLOW_TRACKING_URI`` when set, else a local file store ``mlruns/`` in the pipeline's output folder (a
standalone phase: in its output directory); the experiment is the recipe's ``project``, else
``MLFLOW_EXPERIMENT_NAME``, else "alignment"; the run name as for W&B; the group, job type and tags become run
tags (``group``, ``job_type``, one tag per recipe tag). Params are the flattened recipe.

Beyond metrics, one interface for every backend (callers never branch on which ones are on):
:meth:`MetricsLogger.log_table` (W&B: a ``wandb.Table``; MLflow: ``log_table``), :meth:`MetricsLogger.log_files`
(a file or folder as an artifact) and :meth:`MetricsLogger.log_model` (the saved model folder, by reference:
W&B records every file's path, size and checksum without copying the weights; MLflow gets a logged model
that points at the folder, with its small files copied). :func:`log_pipeline` sends a pipeline's evaluation
answers, per-model scores and report as one run of the pipeline's group.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from alignment.errors import AlignError

DEFAULT_PROJECT = "alignment"
REMOTE_BACKENDS = ("wandb", "mlflow")  # the backends that receive tables and artifacts
SMALL_FILE = 16 * 2**20  # MLflow copies the model folder's files up to this size; weights stay where they are
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")


def wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in rc.hosts)


def _env(name: str, environ: Mapping[str, str]) -> str | None:
    """An environment variable, with an empty value read as unset (``WANDB_PROJECT= align ...``)."""
    value = environ.get(name, "").strip()
    return value or None


def pipeline_group(output_dir: str | Path) -> str | None:
    """The pipeline's output folder name when ``output_dir`` is one of its phases' folders, else None.

    A pipeline writes its resolved ``pipeline.yaml`` into its output folder before any phase runs, and each
    phase trains in ``<pipeline output>/<phase name>``; read from the folder layout rather than passed in the
    phase's config so that a ``WANDB_RUN_GROUP`` still wins over it (a value in the config is the user's, and
    beats the environment) and a phase relaunched on several processes finds the same group.
    """
    out = Path(output_dir)
    marker = out.parent / "pipeline.yaml"
    if not marker.is_file():
        return None
    try:
        data = yaml.safe_load(marker.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    phases = data.get("phases") if isinstance(data, dict) else None
    if not isinstance(phases, list) or not any(isinstance(p, dict) and p.get("name") == out.name for p in phases):
        return None  # a pipeline.yaml that is not ours, or a folder that is not one of its phases
    return out.parent.resolve().name


def wandb_init_args(
    tracking: dict[str, Any],
    output_dir: str | Path,
    default_name: str,
    default_job_type: str | None,
    environ: Mapping[str, str] | None = None,
    default_group: str | None = None,
) -> dict[str, Any]:
    """The identity arguments of ``wandb.init``: project, entity, name, dir, group, job_type, tags.

    ``tracking`` is the recipe's tracking section as a dict (null = not written). Per argument the recipe's
    value wins, then the W&B environment variable, then our default (see the module docstring). The result
    is passed explicitly, since an argument given to ``wandb.init`` beats the environment inside W&B too.
    ``default_group``: the group when neither sets one; None: the pipeline's, when this is one of its phases.
    """
    env = os.environ if environ is None else environ

    def pick(field: str, variable: str, default: Any) -> Any:
        value = tracking.get(field)
        if value is not None:
            return value
        return _env(variable, env) or default

    tags = tracking.get("tags")
    if tags is None:
        raw = _env("WANDB_TAGS", env)
        # W&B's own reading of WANDB_TAGS: comma-separated, blanks dropped.
        tags = [t.strip() for t in raw.split(",") if t.strip()] if raw else None
    return {
        "project": pick("project", "WANDB_PROJECT", DEFAULT_PROJECT),
        "entity": pick("entity", "WANDB_ENTITY", None),
        "name": pick("run_name", "WANDB_NAME", default_name),
        "dir": _env("WANDB_DIR", env) or str(output_dir),
        "group": pick("group", "WANDB_RUN_GROUP", default_group or pipeline_group(output_dir)),
        "job_type": pick("job_type", "WANDB_JOB_TYPE", default_job_type),
        "tags": list(tags) if tags else None,
    }


def mlflow_store(output_dir: str | Path) -> Path:
    """The default local store: ``mlruns/`` in the pipeline's folder for its phases (one store, so the phases
    of a pipeline are one experiment side by side), else in ``output_dir``."""
    out = Path(output_dir).resolve()
    return (out.parent if pipeline_group(out) else out) / "mlruns"


def mlflow_init_args(
    tracking: dict[str, Any],
    output_dir: str | Path,
    default_name: str,
    default_job_type: str | None,
    environ: Mapping[str, str] | None = None,
    default_group: str | None = None,
) -> dict[str, Any]:
    """Where and as what an MLflow run is created: tracking_uri, experiment, run_name, tags.

    The precedence of :func:`wandb_init_args`: the recipe's value, then MLflow's environment variable
    (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``), then our default. The W&B variables do not apply.
    """
    env = os.environ if environ is None else environ
    group = tracking.get("group") or default_group or pipeline_group(output_dir)
    job_type = tracking.get("job_type") or default_job_type
    tags = {"group": group, "job_type": job_type}
    tags.update({tag: "" for tag in tracking.get("tags") or []})  # a label without a value, as in the UI
    return {
        "tracking_uri": _env("MLFLOW_TRACKING_URI", env) or mlflow_store(output_dir).as_uri(),
        "experiment": tracking.get("project") or _env("MLFLOW_EXPERIMENT_NAME", env) or DEFAULT_PROJECT,
        "run_name": tracking.get("run_name") or default_name,
        "tags": {k: v for k, v in tags.items() if v is not None},
    }


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested recipe as MLflow params: dotted keys, string values (lists and maps of leaves as JSON)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        elif isinstance(value, str):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def artifact_name(text: str) -> str:
    """A W&B artifact name (letters, digits, ``-_.``) from a run name such as ``exp-7/sft``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def _mlflow_key(name: str) -> str:
    """A metric, param or tag name as MLflow accepts it (letters, digits, ``_-. :/``); W&B takes any, MLflow raises."""
    return re.sub(r"[^\w\-. :/]", "_", name)


class _Mlflow:
    """One MLflow run through ``MlflowClient`` (no fluent global state, so a caller's own active run is left
    alone), created with :func:`mlflow_init_args`; resumed by id like the W&B run."""

    def __init__(self, init: dict[str, Any], config: dict[str, Any], run_id: str | None) -> None:
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise AlignError("'mlflow' is a backend here, but MLflow is not installed: "
                             "pip install 'alignment-loop[mlflow]' (or mlflow-skinny)",
                             field="tracking.backends") from None
        self._metric = Metric
        uri = init["tracking_uri"]
        if "://" not in uri or uri.startswith("file:"):
            # MLflow 3.7+ refuses a new file store unless opted in; a local mlruns/ folder is what this
            # backend promises without a server. A user's own MLFLOW_ALLOW_FILE_STORE still wins.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(init["experiment"])
        self.experiment_id = (experiment.experiment_id if experiment is not None
                              else self.client.create_experiment(init["experiment"]))
        if run_id is not None and self._exists(run_id):
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:  # a fresh run, or an id from another store (MLFLOW_TRACKING_URI changed between the two)
            tags = {_mlflow_key(k): v for k, v in init["tags"].items()}
            run = self.client.create_run(self.experiment_id, run_name=init["run_name"], tags=tags)
            self.run_id = run.info.run_id
        self.run_name = init["run_name"]
        # MLflow params are write-once: a resumed run keeps the values it started with.
        logged = self.client.get_run(self.run_id).data.params
        params = [(k, v[:6000]) for k, v in ((_mlflow_key(k), v) for k, v in flatten(config).items())
                  if k not in logged]  # 6000: MLflow's longest param value
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params[i:i + 100]])

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.experiment_id == self.experiment_id
        except MlflowException:
            return False

    def log(self, row: dict[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(_mlflow_key(k), float(v), now, step) for k, v in row.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        data = {c: [row[i] for row in rows] for i, c in enumerate(columns)}
        self.client.log_table(self.run_id, data=data, artifact_file=f"{key}.json")

    def log_files(self, path: Path, name: str) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), name)
        else:
            self.client.log_artifact(self.run_id, str(path), name)

    def log_model(self, path: Path, name: str, metadata: dict[str, Any]) -> None:
        model = self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=self.run_id, model_type="huggingface",
            tags={"path": str(path.resolve())}, params={k: str(v) for k, v in metadata.items()})
        # The config and tokenizer travel with it; the weights stay in the folder the `path` tag names.
        for file in sorted(p for p in path.iterdir() if p.is_file()):
            if file.suffix not in _WEIGHTS and file.stat().st_size <= SMALL_FILE:
                self.client.log_model_artifact(model.model_id, str(file))
        self.client.finalize_logged_model(model.model_id, "READY")

    def close(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")


class MetricsLogger:
    """Writes one JSON object per logging step; on resume, drops rows past the resumed step.

    Tables, files and models go to the W&B and MLflow runs when those backends are on, and nowhere otherwise:
    ``metrics.jsonl`` is for numbers, and the files they would name are already on disk."""

    def __init__(
        self,
        output_dir: str | Path,
        backends: list[str],
        project: str | None,
        run_name: str,
        config: dict[str, Any],
        enabled: bool = True,
        resume_step: int = 0,
        job_type: str | None = None,
        group: str | None = None,
    ) -> None:
        """``project`` and ``run_name`` as the caller resolved them (``run_name`` is the derived name unless the
        recipe set one); the recipe's own ``config["tracking"]`` tells which values the user wrote, so the
        W&B environment variables win only over the defaults. ``job_type`` defaults to ``config["phase"]``;
        ``group`` is the default group (None: the pipeline's, for one of its phases)."""
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.run_name = run_name
        self._wandb = None
        self._mlflow: _Mlflow | None = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [row for row in read_metrics(self.path) if row.get("step", 0) <= resume_step] if resume_step else []
        self.path.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        tracking = dict(config.get("tracking") or {})
        if project is not None:
            tracking["project"] = project
        job_type = job_type or config.get("phase")
        if "wandb" in backends:
            import wandb

            mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_key() else "offline")
            run_id_file = Path(output_dir) / "wandb_run_id"
            run_id = run_id_file.read_text().strip() if resume_step and run_id_file.exists() else None
            init = wandb_init_args(tracking, output_dir, run_name, job_type, default_group=group)
            Path(init["dir"]).mkdir(parents=True, exist_ok=True)  # W&B falls back to a temp dir when missing
            self._wandb = wandb.init(
                **init,
                config=config,
                mode=mode,
                id=run_id,
                resume="allow" if run_id else None,
            )
            run_id_file.write_text(self._wandb.id)
        if "mlflow" in backends:
            run_id_file = Path(output_dir) / "mlflow_run_id"
            run_id = run_id_file.read_text().strip() if resume_step and run_id_file.exists() else None
            init = mlflow_init_args(tracking, output_dir, run_name, job_type, default_group=group)
            self._mlflow = _Mlflow(init, config, run_id)
            run_id_file.write_text(self._mlflow.run_id)
        if "tensorboard" in backends:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    @property
    def remote(self) -> bool:
        """Whether a backend that takes tables and artifacts is on (so callers can skip building them)."""
        return self._wandb is not None or self._mlflow is not None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        if self._mlflow is not None:
            self._mlflow.log(row, step)
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table under ``key`` (``eval/answers``): a ``wandb.Table``; MLflow's ``<key>.json`` table artifact."""
        if not self.enabled:
            return
        columns, data = list(columns), [[_cell(v) for v in row] for row in rows]
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Table(columns=columns, data=data)})
        if self._mlflow is not None:
            self._mlflow.log_table(key, columns, data)

    def log_files(self, path: str | Path, name: str, kind: str, metadata: dict[str, Any] | None = None) -> None:
        """A file or folder as an artifact: W&B's ``name`` of type ``kind`` (files copied, so the upload of an
        offline run has them); MLflow's artifacts under ``name``."""
        path = Path(path)
        if not self.enabled or not path.exists():
            return
        if self._wandb is not None:
            import wandb

            artifact = wandb.Artifact(artifact_name(name), type=kind, metadata=metadata)
            if path.is_dir():
                artifact.add_dir(str(path))
            else:
                artifact.add_file(str(path))
            self._wandb.log_artifact(artifact)
        if self._mlflow is not None:
            self._mlflow.log_files(path, artifact_name(name))

    def log_model(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        """The saved model folder, named after the run (``exp-7/sft``: ``exp-7-sft``), by reference: W&B records
        each file's path, size and checksum (``file://`` references: no copy of the weights, offline too);
        MLflow gets a logged model of the run whose ``path`` tag names the folder, its small files copied."""
        path = Path(path)
        if not self.enabled or not path.is_dir():
            return
        name = artifact_name(self.run_name)
        meta = {"path": str(path.resolve()), **(metadata or {})}
        try:
            if self._wandb is not None:
                import wandb

                artifact = wandb.Artifact(name, type="model", metadata=meta)
                artifact.add_reference(path.resolve().as_uri())
                self._wandb.log_artifact(artifact)
            if self._mlflow is not None:
                self._mlflow.log_model(path, name, meta)
        except Exception as e:  # noqa: BLE001 - the model is saved; a failed record of it must not fail the
            # phase (a pipeline would train it again), as with the model card
            _warn(f"the model was saved, but not recorded in tracking ({type(e).__name__}: {e})")

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
        if self._mlflow is not None:
            self._mlflow.close()
        if self._tb is not None:
            self._tb.close()


# --- a pipeline's evaluation and report --------------------------------------------------------------------
def eval_tables(report: Any) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """An :class:`alignment.evaluation.records.EvalReport` as two tables: ``answers`` (one row per model and
    prompt: the answer, each rule's check, the judges' scores) and ``models`` (one row per model: adherence
    per rule, lengths, reward and win rates against the baseline)."""
    rules = list(report.policies)
    answers: list[list[Any]] = []
    models: list[list[Any]] = []
    for result in report.results:
        for a in result.answers:
            checks = [a.checks.get(rule) for rule in rules]
            answers.append([result.label, result.model, a.prompt, a.answer, *checks,
                            all(a.checks.values()) if a.checks else None, a.tokens, a.finished, a.rm_score,
                            a.rm_p_a, a.judge.p_a if a.judge is not None else None])
        vs, reward = result.vs_baseline, result.reward
        models.append([result.label, result.model, result.role, *[result.adherence.get(r) for r in rules],
                       result.adherence.get("all"), result.mean_length_tokens, result.unfinished,
                       reward.mean if reward else None,
                       vs.rm.win_rate if vs is not None and vs.rm is not None else None,
                       vs.judge.win_rate if vs is not None and vs.judge is not None else None])
    answer_columns = ["model", "model_path", "prompt", "answer", *[f"check/{r}" for r in rules], "passed_all",
                      "tokens", "finished", "rm_score", "rm_p_a", "judge_p_a"]
    model_columns = ["model", "model_path", "role", *[f"adherence/{r}" for r in rules], "adherence/all",
                     "mean_length_tokens", "unfinished", "rm_mean", "rm_win_rate", "judge_win_rate"]
    return {"answers": (answer_columns, answers), "models": (model_columns, models)}


def log_pipeline(out: str | Path, cfg: Any, tracking: Any, report: str | Path) -> None:
    """One run of the pipeline's group (job type "report", named ``<pipeline folder>/report``) with each eval
    phase's answers and scores as tables, its ``results.json`` and the report as artifacts.

    ``tracking``: the recipe tracking section of the pipeline's training phases (a pipeline has none of its
    own); nothing is sent unless it names W&B or MLflow. Its ``run_name`` is that phase's, so the report run keeps
    its own name. Rewritten on every run, like the report.
    """
    from alignment.config import to_dict
    from alignment.evaluation.records import EvalReport

    if tracking is None or not any(b in REMOTE_BACKENDS for b in tracking.backends):
        return
    out = Path(out)
    folder = out.resolve().name
    config = {**to_dict(cfg), "tracking": {**to_dict(tracking), "run_name": None}}  # not the phase's run name
    try:
        logger = MetricsLogger(out, [b for b in tracking.backends if b in REMOTE_BACKENDS], tracking.project,
                               f"{folder}/report", config, job_type="report", group=folder)
        try:
            for step in cfg.phases:
                results = out / step.name / "results.json"
                if step.kind != "eval" or not results.is_file():
                    continue
                for table, (columns, rows) in eval_tables(EvalReport.read(results)).items():
                    logger.log_table(f"{step.name}/{table}", columns, rows)
                logger.log_files(results, f"{folder}-{step.name}-results", "evaluation")
            logger.log_files(report, f"{folder}-report", "report")
        finally:
            logger.close()
    except Exception as e:  # noqa: BLE001 - every phase is complete and the report written: copies of them
        # that did not reach the tracker are a warning, not a failed pipeline
        _warn(f"the report and evaluation tables were not sent to tracking ({type(e).__name__}: {e})")


def _warn(message: str) -> None:
    from alignment.log import get_logger

    get_logger("tracking").warning(f"[tracking] warning: {message}")


def _cell(value: Any) -> Any:
    """A table cell: a non-finite score as null rather than :func:`_plain`'s string, so a W&B column keeps
    one type."""
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
