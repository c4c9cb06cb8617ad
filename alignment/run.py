"""What every training phase does around its loop, in one place.

A :class:`Run` owns the parts that would otherwise be repeated in each phase and drift apart: log lines on
rank 0 under the phase's tag, resuming from the newest checkpoint (or clearing an earlier run's),
config.yaml and the metrics tracker, "is this step due" for logging, held-out evaluation and checkpoints,
and saving a checkpoint with pruning of the old ones.

Step hooks are how code outside the phases (the benchmark) sees each optimizer step without patching the
phase's functions: ``with step_hook(hook): run_sft(cfg)`` calls ``hook.begin(step)`` before the step's
work and ``hook.end(step)`` after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from alignment import distributed as dist
from alignment import log as _log
from alignment import packing
from alignment.early_stopping import EarlyStopping
from alignment.training import Engine, clear_checkpoints, find_resume_checkpoint, iterate_steps, prune_checkpoints


@dataclasses.dataclass
class Step:
    """One optimizer step as a step hook sees it (PPO: one rollout batch and all its updates)."""

    phase: str  # "sft", "rm", "dpo", "ppo"
    number: int  # 1-based: the step that is being taken
    engine: Engine  # the trained model's engine (PPO: the policy's)
    batches: list[dict[str, Any]] | None = None  # this process's micro-batches (sft, rm, dpo)
    rollout: Any = None  # PPO: the alignment.ppo.Rollout, set once it is generated and scored


class StepHook(Protocol):
    def begin(self, step: Step) -> None: ...

    def end(self, step: Step) -> None: ...


_HOOKS: list[StepHook] = []

TEST_METRICS_FILE = "test_metrics.json"


# The recipe settings that decide which examples are held out; with the test examples' hash, a checkpoint's
# record of them (see split_state) must match the resuming run's.
SPLIT_SETTINGS = ("data.split", "train.seed", "data.validation", "data.test")
# Where a checkpoint whose trainer_state.json belongs to transformers (KTO's) keeps its split record.
SPLIT_FILE = "align_split.json"


def split_state(cfg: Any, test_keys: Iterable[str]) -> dict[str, Any]:
    """What decides a run's held-out parts, for its checkpoints' trainer state: the split settings and a hash of
    the test examples (``test_keys``: one key per test example, e.g. its normalised conversation or pair).
    A run may resume a checkpoint only under the same record (:meth:`Run.start`): under another split the
    checkpoint's weights may have trained on what is now the test part. ``split_scheme``: how rows were placed
    (:data:`~alignment.data.splits.SCHEME`); a record without one was written under scheme 1."""
    from alignment.data.splits import SCHEME

    keys = sorted(set(test_keys))
    return {"data.split": dict(cfg.data.split), "train.seed": cfg.train.seed, "data.validation": cfg.data.validation,
            "data.test": cfg.data.test, "split_scheme": SCHEME, "test_examples": len(keys),
            "test_keys": hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]}


@contextlib.contextmanager
def step_hook(hook: StepHook) -> Iterator[StepHook]:
    """Call ``hook`` around every training step of the phases run inside this block."""
    _HOOKS.append(hook)
    try:
        yield hook
    finally:
        _HOOKS.remove(hook)


class Run:
    """One phase's run: ``Run(cfg, "sft")`` right after the process group is up, ``start`` once the engine
    exists, then ``steps`` / ``step`` / the ``*_due`` checks / ``checkpoint`` in the loop, ``close`` at the end.

    ``resume_from`` replaces the checkpoint lookup for trainers with their own checkpoint layout (KTO's)."""

    def __init__(self, cfg: Any, tag: str, *, resume_from: Path | None | str = "auto") -> None:
        self.cfg = cfg
        self.tag = tag
        self.out = Path(cfg.output_dir)
        self.main = dist.is_main()
        self.resume_from: Path | None = (find_resume_checkpoint(self.out, cfg.train.resume)
                                         if resume_from == "auto" else resume_from)  # type: ignore[assignment]
        self.total_steps = 0
        self.tracker: Any = None
        self.early_stopping: EarlyStopping | None = None
        self.split: dict[str, Any] | None = None

    def log(self, message: str) -> None:
        """A line on rank 0, under the phase's tag; at WARNING when it says WARNING, so ``align -q`` keeps it."""
        if self.main:
            level = logging.WARNING if "WARNING" in message else logging.INFO
            _log.get_logger("run").log(level, f"[{self.tag}] {message}")

    # --- start and end -------------------------------------------------------------------------------
    def start(self, engine: Engine | None, total_steps: int, others: dict[str, Engine] | None = None, *,
              start_step: int | None = None, early_stopping: EarlyStopping | None = None,
              split: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume from ``resume_from`` (or clear an earlier run's checkpoints), write config.yaml, open the
        tracker. Returns the trainer state saved with the checkpoint ({"step": 0} for a fresh run).

        ``start_step`` instead of an engine: the trainer resumes itself (KTO); only the step is needed.
        ``early_stopping``: its state is saved with every checkpoint and restored from the one resumed.
        ``split``: :func:`split_state` of this run, saved with every checkpoint; a checkpoint saved under another
        is refused (before its weights are read)."""
        from alignment.config import save_config, to_dict
        from alignment.tracking import MetricsLogger

        self.total_steps = total_steps
        self.early_stopping = early_stopping
        self.split = split
        state: dict[str, Any] = {"step": 0}
        if self.resume_from is not None and split is not None:
            self._check_split(self.resume_from, split)
        if self.resume_from is not None:
            if engine is not None:
                state = engine.load_checkpoint(self.resume_from, self._parts(others))
                packing.restore(state.get("packing", {}))  # generate packed exactly where the saved run did
                if early_stopping is not None:
                    early_stopping.load_state(state.get("early_stopping"))
            elif start_step is not None:
                state = {"step": start_step}
            self.log(f"resumed from {self.resume_from} at step {state['step']}")
        else:
            clear_checkpoints(self.out)
        if self.main:
            save_config(self.cfg, self.out / "config.yaml")
        name = self.cfg.tracking.run_name or "/".join(self.out.parts[-2:])
        self.tracker = MetricsLogger(self.out, self.cfg.tracking.backends, self.cfg.tracking.project, name,
                                     to_dict(self.cfg), enabled=self.main, resume_step=state["step"],
                                     job_type=self.tag)  # KTO trains under the dpo config: its own tag
        return state

    def _check_split(self, checkpoint: Path, split: dict[str, Any]) -> None:
        """Refuse a checkpoint written under other held-out parts: one message naming what changed."""
        from alignment.errors import AlignError

        saved = json.loads((checkpoint / "trainer_state.json").read_text()).get("split")
        if saved is None and (checkpoint / SPLIT_FILE).exists():
            saved = json.loads((checkpoint / SPLIT_FILE).read_text())
        if saved is None:  # written before checkpoints recorded their split
            self.log(f"{checkpoint} does not record its data split; resuming without checking it")
            return
        changed = [f"{key} {saved.get(key)!r} -> {split[key]!r}" for key in SPLIT_SETTINGS
                   if saved.get(key) != split[key]]
        scheme, now = saved.get("split_scheme", 1), split["split_scheme"]
        if scheme != now:  # the same settings and files, cut another way by another version of align
            from alignment.data.splits import SCHEME_CHANGES

            since = "; ".join(SCHEME_CHANGES[v] for v in range(scheme + 1, now + 1) if v in SCHEME_CHANGES)
            changed.append(f"the split scheme {scheme} -> {now}: the checkpoint was written by "
                           + (f"an older version of align, and since then {since}" if scheme < now
                              else "a newer version of align"))
        if not changed and saved.get("test_keys") != split["test_keys"]:
            changed.append(f"the test examples ({saved.get('test_examples')} -> {split['test_examples']} examples, "
                           "not the same ones: the data files changed)")
        if changed:
            way_back = ("resume it with the version of align that wrote it" if len(changed) == 1 and scheme != now
                        else "restore the split settings and data files the checkpoint was trained with to resume it")
            raise AlignError(f"will not resume from {checkpoint}: the held-out split changed since it was written "
                             f"({'; '.join(changed)}), so its weights may have trained on what is now test data. "
                             f"Start afresh with train.resume=never, or {way_back}", field="train.resume")

    def close(self) -> None:
        """Wait for every process (rank 0 may still be saving), then log the saved model and close the tracker."""
        dist.barrier()
        if self.tracker is not None:
            # every phase saves its final model to <output_dir>/model before closing; a non-main rank's
            # tracker is disabled and ignores it
            self.tracker.log_model(self.out / "model", {"phase": self.tag, "base_model": str(self.cfg.model)})
            self.tracker.close()

    # --- the loop ------------------------------------------------------------------------------------
    def steps(self, start: int) -> Iterator[int]:
        """The 0-based steps from ``start``, with a progress bar on rank 0."""
        return iterate_steps(start, self.total_steps, self.tag)

    @contextlib.contextmanager
    def step(self, number: int, engine: Engine, batches: list[dict[str, Any]] | None = None) -> Iterator[Step]:
        """Around one step's work, for the step hooks; ``number`` is 1-based."""
        step = Step(self.tag, number, engine, batches)
        for hook in _HOOKS:
            hook.begin(step)
        yield step
        for hook in _HOOKS:
            hook.end(step)

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.tracker.log(values, step)

    def record_test(self, held_out: dict[str, float], examples: int, step: int) -> dict[str, float]:
        """The saved model's metrics on the test set, ``held_out`` being the validation metric functions applied
        to it (``eval/x`` names): logged as ``test/x`` to metrics.jsonl and the tracker, and written with the
        number of test examples and the step to ``<output_dir>/test_metrics.json``. Returns the ``test/``
        metrics ({} without test data, when an earlier run's file is removed so no report shows stale
        numbers). SFT, RM and DPO call it after training."""
        path = self.out / TEST_METRICS_FILE
        if not held_out:
            if self.main and path.exists():
                path.unlink()
            return {}
        test = {"test/" + k.removeprefix("eval/"): v for k, v in held_out.items()}
        self.metrics(test, step)
        if self.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**test, "examples": examples, "step": step}, indent=2) + "\n")
        return test

    def log_due(self, done: int) -> bool:
        return done % self.cfg.train.log_every == 0 or done == self.total_steps

    def eval_due(self, done: int) -> bool:
        """Held-out evaluation inside the loop; the final one is the phase's own, after it."""
        return self._due(done, self.cfg.train.eval_every)

    def save_due(self, done: int) -> bool:
        """A checkpoint inside the loop; the finished model is saved after it."""
        return self._due(done, self.cfg.train.save_every)

    def _due(self, done: int, every: int) -> bool:
        return bool(every) and done % every == 0 and done != self.total_steps

    def checkpoint(self, engine: Engine, done: int, state: dict[str, Any] | None = None,
                   others: dict[str, Engine] | None = None) -> None:
        """``checkpoints/step-N`` (the trainer state: the step and ``state``), then keep only the newest."""
        state = {"step": done, **(state or {})}
        if self.early_stopping is not None:
            state["early_stopping"] = self.early_stopping.state()
        if self.split is not None:
            state["split"] = self.split
        if packing.verdicts():
            state["packing"] = packing.verdicts()
        engine.save_checkpoint(self.out / "checkpoints" / f"step-{done}", state, self._parts(others))
        prune_checkpoints(self.out, self.cfg.train.keep_checkpoints)

    def _parts(self, others: dict[str, Engine] | None) -> dict[str, Any] | None:
        """The checkpoint's parts beside the trained engine: ``others``, and the early-stopping best weights
        (written inside the same atomic save, so a checkpoint never lacks the best model it names)."""
        if self.early_stopping is None:
            return others
        return {**(others or {}), EarlyStopping.FOLDER: self.early_stopping}
