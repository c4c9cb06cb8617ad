"""The training phases in one table: kind -> recipe config class and run function.

`align sft|rm|dpo|ppo`, `align run`, pipelines and the benchmark all read :data:`PHASES`, so a phase is
added in one place. A phase's module is imported only when the phase runs: building the command line or
validating a recipe needs no torch.

This is the layer above the phases: it imports them; they never import each other, only the modules
below them (``tests/unit/test_layers.py`` checks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.config import DPOConfig, PPOConfig, RMConfig, SFTConfig


@dataclass(frozen=True)
class Phase:
    config: type
    """The recipe's config dataclass (a recipe says ``phase: <kind>``)."""
    module: str
    """The module that trains it."""
    run: Callable[[Any], Path]
    """Train in this process from a loaded config; returns the model folder."""
    help: str
    """One line for `align --help`."""
    check_data: Callable[[Any], None]
    """Read and validate the recipe's data files as the phase will (an AlignError naming file, line and
    field), without loading a model: `align` runs it before launching processes."""


def use_kto(cfg: DPOConfig) -> bool:
    """Whether unpaired data trains with KTO instead of DPO pairs (the `negatives` option)."""
    from alignment.data import load_dataset_file, to_conversation
    from alignment.data.preferences import count_orphan_negatives, detect_kind

    kind = detect_kind(cfg.data.train) if cfg.data.kind == "auto" else cfg.data.kind
    if kind != "unpaired" or cfg.negatives == "pairs":
        return False
    if cfg.negatives == "kto":
        return True
    ds, info = load_dataset_file(cfg.data.train, "unpaired")
    return count_orphan_negatives([to_conversation(r, "unpaired", info.variant) for r in ds]) > 0


def _run_sft(cfg: SFTConfig) -> Path:
    from alignment.sft import run_sft

    return run_sft(cfg)


def _run_rm(cfg: RMConfig) -> Path:
    from alignment.rm import run_rm

    return run_rm(cfg)


def _run_dpo(cfg: DPOConfig) -> Path:
    """DPO on pairs; unpaired data whose negatives DPO cannot pair trains with KTO (:func:`use_kto`).

    The data file is read and validated once: :func:`use_kto` keeps what it read for the phase's loader
    (:func:`alignment.data.io.one_read_per_file`), which lets it go once the phase has its examples."""
    from alignment.data.io import one_read_per_file

    with one_read_per_file():
        if use_kto(cfg):
            from alignment.kto import run_kto

            return run_kto(cfg)
        from alignment.dpo import run_dpo

        return run_dpo(cfg)


def _run_ppo(cfg: PPOConfig) -> Path:
    from alignment.ppo import run_ppo

    return run_ppo(cfg)


def _check_sft(cfg: SFTConfig) -> None:
    from alignment.data import load_dataset_file

    for path in filter(None, (cfg.data.train, cfg.data.validation)):
        load_dataset_file(path, "sft")


def _check_pairs(cfg: RMConfig | DPOConfig) -> None:
    from alignment.data.preferences import load_preference_examples

    for path in filter(None, (cfg.data.train, cfg.data.validation)):
        load_preference_examples(path, kind=None if cfg.data.kind == "auto" else cfg.data.kind,
                                 pair_policy=cfg.data.pair_policy)


def _check_dpo(cfg: DPOConfig) -> None:
    if not use_kto(cfg):
        _check_pairs(cfg)
        return
    from alignment.data import load_dataset_file

    for path in filter(None, (cfg.data.train, cfg.data.validation)):
        load_dataset_file(path, "unpaired")  # what KTO reads (pairs need not exist)


def _check_ppo(cfg: PPOConfig) -> None:
    from alignment.data.prompts import load_prompt_file
    from alignment.modeling import resolve_model

    if cfg.reward_model:  # none: the rules are the whole reward
        resolve_model(cfg.reward_model)
    load_prompt_file(cfg.data.train)


PHASES: dict[str, Phase] = {
    "sft": Phase(SFTConfig, "alignment.sft", _run_sft, "supervised fine-tuning", _check_sft),
    "rm": Phase(RMConfig, "alignment.rm", _run_rm, "reward modeling (Bradley-Terry) with held-out diagnostics",
                _check_pairs),
    "dpo": Phase(DPOConfig, "alignment.dpo", _run_dpo, "direct preference optimisation (DPO, IPO, SimPO)",
                 _check_dpo),
    "ppo": Phase(PPOConfig, "alignment.ppo", _run_ppo, "PPO against a reward model with a KL leash to the reference",
                 _check_ppo),
}
