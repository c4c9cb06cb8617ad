"""Metrics: always to ``metrics.jsonl``, and to Weights & Biases and/or TensorBoard when asked.

W&B runs online when an API key is configured (``WANDB_API_KEY`` or a ``wandb login`` netrc entry)
and offline otherwise; offline runs land in ``<output>/wandb`` (or ``$WANDB_DIR/wandb``) and ``wandb sync``
uploads them later. Only rank 0 logs.

What ``wandb.init`` gets (:func:`wandb_init_args`), per setting: a value the recipe's ``tracking`` section
sets wins; else W&B's own environment variable (``WANDB_PROJECT``, ``WANDB_NAME``, ``WANDB_DIR``,
``WANDB_ENTITY``, ``WANDB_RUN_GROUP``, ``WANDB_JOB_TYPE``, ``WANDB_TAGS``); else our default. The recipe's
fields default to null for exactly this: a null is "not written", so an environment variable can win over the
default without winning over what the user wrote. The defaults: project "alignment", the run name
``<run>/<phase>`` (the output directory's last two parts), the output directory, the phase kind as
``job_type``, and as ``group`` the pipeline's output folder name when the phase runs inside a pipeline, so
the phases of one pipeline run are one group in the W&B UI.
"""

from __future__ import annotations

import json
import math
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PROJECT = "alignment"


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
) -> dict[str, Any]:
    """The identity arguments of ``wandb.init``: project, entity, name, dir, group, job_type, tags.

    ``tracking`` is the recipe's tracking section as a dict (null = not written). Per argument the recipe's
    value wins, then the W&B environment variable, then our default (see the module docstring). The result
    is passed explicitly, since an argument given to ``wandb.init`` beats the environment inside W&B too.
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
        "group": pick("group", "WANDB_RUN_GROUP", pipeline_group(output_dir)),
        "job_type": pick("job_type", "WANDB_JOB_TYPE", default_job_type),
        "tags": list(tags) if tags else None,
    }


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class MetricsLogger:
    """Writes one JSON object per logging step; on resume, drops rows past the resumed step."""

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
    ) -> None:
        """``project`` and ``run_name`` as the caller resolved them (``run_name`` is the derived name unless the
        recipe set one); the recipe's own ``config["tracking"]`` tells which values the user wrote, so the
        W&B environment variables win only over the defaults. ``job_type`` defaults to ``config["phase"]``."""
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._wandb = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [row for row in read_metrics(self.path) if row.get("step", 0) <= resume_step] if resume_step else []
        self.path.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        if "wandb" in backends:
            import wandb

            mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_key() else "offline")
            run_id_file = Path(output_dir) / "wandb_run_id"
            run_id = run_id_file.read_text().strip() if resume_step and run_id_file.exists() else None
            tracking = dict(config.get("tracking") or {})
            if project is not None:
                tracking["project"] = project
            init = wandb_init_args(tracking, output_dir, run_name, job_type or config.get("phase"))
            Path(init["dir"]).mkdir(parents=True, exist_ok=True)  # W&B falls back to a temp dir when missing
            self._wandb = wandb.init(
                **init,
                config=config,
                mode=mode,
                id=run_id,
                resume="allow" if run_id else None,
            )
            run_id_file.write_text(self._wandb.id)
        if "tensorboard" in backends:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
