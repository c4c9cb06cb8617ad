"""Early stopping with the best model kept (`train.early_stopping`), shared by the phases with their own loop
and a validation set: sft, rm and dpo.

After each held-out evaluation :meth:`EarlyStopping.update` compares the recipe's metric with the best value so
far; an improvement (better by more than ``min_delta``) makes this the best model and copies its weights, and
``patience`` evaluations in a row without one stop training. :meth:`EarlyStopping.conclude` then puts the best
weights back into the model, so the phase's final evaluation, its diagnostics and its saved ``<output>/model``
all describe the best model, and writes ``<output>/early_stopping.json``.

The best weights: a copy of the trained parameters (all of them in full fine-tuning, the adapter and any new
head under LoRA: ``Engine.trained_state``) in CPU memory on rank 0. That is the simplest correct choice: no
file to write at every improvement and keep in step with the checkpoints, no GPU memory, and every process has
the same weights (data parallel), so restoring is rank 0's copy and a broadcast (ZeRO-3: the parameters are
gathered for the copy as ``save_model`` does, and re-partitioned from rank 0's values when restoring). It
costs one CPU copy of the trained parameters; for a large full fine-tune that is the model's size in RAM.

Resuming: the tracking state (best value and step, evaluations without improvement, every evaluation) goes
into the checkpoint's trainer state, and the best weights into the checkpoint folder itself (``best.pt`` under
``early_stopping/``), written inside the same atomic save as the engine's state (:class:`~alignment.run.Run`
passes this object to the engine's checkpoint as one more part). A resumed run therefore ends with the same
model and the same early_stopping.json as an uninterrupted one.

Every process takes the same decisions: the phases' metrics are all-reduced already, and the value compared is
rank 0's, handed to every rank, so no rounding difference can ever split the ranks (a split would hang ZeRO-3's
collective gather).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from alignment import distributed as dist
from alignment.config import EarlyStoppingConfig
from alignment.errors import AlignError

REPORT_FILE = "early_stopping.json"  # in the phase's output folder: read by the pipeline report and the model card


class _Run(Protocol):  # what is used of alignment.run.Run (which imports this module)
    out: Path

    def log(self, message: str) -> None: ...

    def metrics(self, values: dict[str, float], step: int) -> None: ...


class EarlyStopping:
    FOLDER = "early_stopping"  # the part of a checkpoint that holds the best weights

    def __init__(self, cfg: EarlyStoppingConfig, run: _Run) -> None:
        assert cfg.metric is not None and cfg.mode is not None, "resolved by the phase's config"
        self.cfg, self.run = cfg, run
        self.metric: str = cfg.metric
        self.mode: str = cfg.mode
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.since_best = 0  # evaluations in a row without improvement
        self.evaluations: list[dict[str, Any]] = []  # {"step", "value"} of every evaluation
        self.stopped_at: int | None = None
        self._weights: dict[str, torch.Tensor] | None = None  # the best model's trained parameters; rank 0 only
        self._weights_step: int | None = None  # the step of the weights read from a checkpoint

    @classmethod
    def create(cls, cfg: Any, run: _Run, validation: int) -> EarlyStopping | None:
        """None when the recipe has no ``train.early_stopping`` (an earlier run's early_stopping.json is then
        removed, so no report or model card describes a stopping point this model never had); refuses a run
        with no validation example (the recipe asked for a split, but the data was too small to give one)."""
        if cfg.train.early_stopping is None:
            if dist.is_main():
                (run.out / REPORT_FILE).unlink(missing_ok=True)
            return None
        if validation == 0:
            raise AlignError("needs validation data, and the validation split came out empty: set "
                             "data.validation, or a larger validation ratio in data.split",
                             field="train.early_stopping")
        return cls(cfg.train.early_stopping, run)

    # --- decisions -----------------------------------------------------------------------------------
    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        if self.mode == "min":
            return value < self.best_value - self.cfg.min_delta
        return value > self.best_value + self.cfg.min_delta

    def _record(self, engine: Any, metrics: dict[str, float], step: int, keep: bool) -> bool:
        # rank 0's value on every rank (adding zeros is exact): the same decision everywhere
        (value,) = dist.all_reduce_sum([float(metrics.get(self.metric, math.nan)) if dist.is_main() else 0.0])
        self.evaluations.append({"step": step, "value": _plain(value)})
        if not self._improves(value):
            self.since_best += 1
            return False
        self.best_value, self.best_step, self.since_best = value, step, 0
        if keep:
            self._snapshot(engine)
        return True

    def update(self, engine: Any, metrics: dict[str, float], step: int) -> bool:
        """After the held-out evaluation at ``step``: whether to stop training now."""
        self._record(engine, metrics, step, keep=True)
        if self.since_best >= self.cfg.patience:
            self.stopped_at = step
            return True
        return False

    def end_step(self, total_steps: int) -> int:
        """The last step trained."""
        return self.stopped_at if self.stopped_at is not None else total_steps

    def conclude(self, engine: Any, evaluate: Callable[[], dict[str, float]], total_steps: int) -> dict[str, float]:
        """After the loop: the best model back in ``engine``, and its held-out metrics (``evaluate()``'s). A run
        that did not stop early evaluates its last model as one more candidate first (the loop evaluates only
        before the last step); its metrics are logged when the best model is an earlier one, whose evaluation
        is then the one returned. Writes ``early_stopping.json`` and says which model is kept."""
        final: dict[str, float] | None = None
        if self.stopped_at is None:
            final = evaluate()
            self._record(engine, final, total_steps, keep=False)  # the last model is in place: nothing to copy
            if self.best_step != total_steps and self.best_step is not None:
                self.run.metrics(final, total_steps)
                final = None
        if final is None:
            self._restore(engine)
            final = evaluate()
        self._report()
        return final

    def _report(self) -> None:
        kept = (f"best at step {self.best_step} ({self.metric} {self.best_value:.4g})" if self.best_step is not None
                else f"the last one (no finite {self.metric} was measured)")
        how = (f"stopped at step {self.stopped_at} (no {self.metric} improvement in {self.cfg.patience} "
               "evaluations)" if self.stopped_at is not None else "did not stop early")
        self.run.log(f"early stopping: {how}; final model = {kept}")
        if dist.is_main():
            report = {"metric": self.metric, "mode": self.mode, "patience": self.cfg.patience,
                      "min_delta": self.cfg.min_delta, "best_step": self.best_step,
                      "best_value": _plain(self.best_value), "stopped_at_step": self.stopped_at,
                      "evaluations": self.evaluations}
            self.run.out.mkdir(parents=True, exist_ok=True)
            (self.run.out / REPORT_FILE).write_text(json.dumps(report, indent=2))

    # --- the best weights ----------------------------------------------------------------------------
    def _snapshot(self, engine: Any) -> None:
        with engine.gathered():  # ZeRO-3: every rank takes part in the gather; rank 0 keeps the copy
            if dist.is_main():
                self._weights = {k: v.to("cpu", copy=True) for k, v in engine.trained_state().items()}

    def _restore(self, engine: Any) -> None:
        """Rank 0's best weights into the model on every rank."""
        if self.best_step is None:
            return  # nothing better was ever measured: keep the model as it is
        module = engine.module
        zero3 = engine.ds is not None and engine.ds.zero_optimization_stage() == 3
        gathered: Any = contextlib.nullcontext()
        if zero3:
            import deepspeed

            # rank 0 writes the whole parameters; on leaving they are partitioned from rank 0's values
            gathered = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0)
        with gathered, torch.no_grad():
            if dist.is_main():
                if self._weights is None:
                    raise RuntimeError(f"early stopping lost the weights of step {self.best_step}")
                params = dict(module.named_parameters())
                for name, saved in self._weights.items():
                    params[name].copy_(saved)
        if not zero3:
            dist.broadcast_parameters(module)  # the other ranks (data parallel) get rank 0's weights

    # --- checkpoints ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The tracking state, for the checkpoint's trainer_state.json."""
        return {"metric": self.metric, "mode": self.mode, "best_value": _plain(self.best_value),
                "best_step": self.best_step, "since_best": self.since_best, "evaluations": self.evaluations}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Continue from a checkpoint's tracking state (none: the checkpoint's run had no early stopping)."""
        if state is None or (state["metric"], state["mode"]) != (self.metric, self.mode):
            if state is not None:
                self.run.log(f"early stopping: the checkpoint tracked {state['metric']} ({state['mode']}); "
                             f"tracking {self.metric} ({self.mode}) from here")
            self.best_value = self.best_step = self._weights = None
            return
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.since_best, self.evaluations = state["since_best"], list(state["evaluations"])
        # only rank 0 reads best.pt, but every rank must refuse: a rank that went on would wait at the next
        # collective for a rank 0 that has left (until the group's timeout, or for ever under some launchers)
        missing = dist.is_main() and self.best_step is not None and self._weights_step != self.best_step
        if dist.all_reduce_max(float(missing)):
            raise AlignError(f"this checkpoint's early-stopping state names the best model of step {self.best_step} "
                             f"but holds no weights for it ({self.FOLDER}/best.pt): resume from another checkpoint "
                             "or start afresh (train.resume: never)", field="train.resume")

    # The checkpoint part protocol of alignment.training.Engine (save_checkpoint / load_checkpoint call these
    # on each part with its folder inside the checkpoint being written or read).
    def _write_state(self, folder: Path) -> None:
        if dist.is_main() and self._weights is not None:
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"step": self.best_step, "weights": self._weights}, folder / "best.pt")

    def _read_state(self, folder: Path) -> None:
        self._weights, self._weights_step = None, None
        if dist.is_main() and (folder / "best.pt").exists():
            saved = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
            self._weights, self._weights_step = saved["weights"], saved["step"]


def _plain(value: float | None) -> float | None:
    """JSON has no NaN or infinity: None for them."""
    return value if value is not None and math.isfinite(value) else None
