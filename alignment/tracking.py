"""Metrics: always to ``metrics.jsonl``, and to Weights & Biases and/or TensorBoard when asked.

W&B runs online when an API key is configured (``WANDB_API_KEY`` or a ``wandb login`` netrc entry)
and offline otherwise; offline runs land in ``<output>/wandb`` and ``wandb sync`` uploads them later.
Only rank 0 logs.
"""

from __future__ import annotations

import json
import math
import netrc
import os
from pathlib import Path
from typing import Any


def wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in rc.hosts)


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
        project: str,
        run_name: str,
        config: dict[str, Any],
        enabled: bool = True,
        resume_step: int = 0,
    ) -> None:
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
            self._wandb = wandb.init(
                project=project,
                name=run_name,
                config=config,
                dir=str(output_dir),
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
