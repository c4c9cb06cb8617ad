"""Reference log-probabilities for the KL-regularised phases (DPO, PPO): which model computes them, and
DPO's cache of them.

A reference is one of:
- a frozen copy of the starting model (adapters merged), placed where the policy runs; under ZeRO-3
  sharded like the policy, as TRL's ``prepare_deepspeed`` does;
- the policy itself with its LoRA adapter disabled (no second copy), in eval mode;
- the policy itself before any update, for log-probs precomputed once (DPO's ``precompute_ref``).

What each phase reads from it stays in the phase: DPO sums (or averages) log-probs per sequence
(``alignment.dpo.batch_logps``); PPO takes per-token log-probs at its sampling temperature
(``alignment.ppo.response_pass``). The functions here take that reading as an argument.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch

from alignment import distributed as dist
from alignment.batching import Collate, collate_pairs, pair_lengths
from alignment.config import ModelOptions
from alignment.data.preferences import TokenizedPair
from alignment.modeling import load_causal_lm
from alignment.training import Engine


# --------------------------------------------------------------------------------------------------
# The model that computes reference log-probs
# --------------------------------------------------------------------------------------------------
def load_frozen(model: str, options: ModelOptions | None = None) -> torch.nn.Module:
    """A frozen copy of ``model`` (an adapter merged into its base), in eval mode, on the CPU: pass it to
    :func:`place_reference` once the policy's engine exists. ``options``: the recipe's ``model_options``."""
    return load_causal_lm(model, merge_adapter=True, options=options).eval().requires_grad_(False)


def place_reference(model: torch.nn.Module, ds_config: dict[str, Any] | None) -> torch.nn.Module:
    """Put the frozen reference where the policy runs; under ZeRO-3 shard it the same way."""
    if ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3:
        import deepspeed

        config = copy.deepcopy(ds_config)
        config["zero_optimization"] = {"stage": 3,
                                       "stage3_param_persistence_threshold": 1e4 * model.config.hidden_size}
        config.pop("optimizer", None)
        config.pop("scheduler", None)
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()
        return engine
    return model.to(dist.device())


@contextlib.contextmanager
def reference_model(engine: Engine, frozen: torch.nn.Module | None, adapter: Any | None) -> Iterator[Any]:
    """The module whose forward gives reference log-probs: the ``frozen`` copy when there is one; otherwise
    the policy ``engine`` in eval mode, with the LoRA adapter of ``adapter`` (the policy's PEFT model)
    disabled, or as it is when ``adapter`` is None (the reference before any update). The policy's
    training mode comes back on leaving."""
    if frozen is not None:
        yield frozen
        return
    disabled = adapter.disable_adapter() if adapter is not None else contextlib.nullcontext()
    was_training = engine.module.training
    engine.eval()
    try:
        with disabled:
            yield engine.ds or engine.module
    finally:
        if was_training:
            engine.train()


# --------------------------------------------------------------------------------------------------
# DPO: per-sequence log-probs of preference pairs, cached when precomputed
# --------------------------------------------------------------------------------------------------
PairLogps = Callable[[Any, dict[str, torch.Tensor], Any], tuple[torch.Tensor, torch.Tensor]]
"""(model, collated (2B, T) pair batch, autocast context) -> (B,) chosen and (B,) rejected log-probs."""


class Reference:
    """Reference log-probs of preference pairs, from a cache, the adapter-disabled policy, or a frozen copy."""

    def __init__(self, engine: Engine, frozen: torch.nn.Module | None, use_adapter_off: bool,
                 pair_logps: PairLogps) -> None:
        self.engine, self.frozen, self.adapter_off, self.pair_logps = engine, frozen, use_adapter_off, pair_logps
        self.cache: dict[int, tuple[float, float]] = {}  # pair key -> (chosen, rejected) log-probs

    @torch.no_grad()
    def logps(self, batch: dict[str, torch.Tensor], keys: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) chosen and (B,) rejected reference log-probs of a (2B, T) batch whose pairs have ``keys``."""
        if keys is not None and self.cache:
            missing = [k for k in keys if k not in self.cache]
            if not missing:
                c = torch.tensor([self.cache[k][0] for k in keys], device=dist.device())  # (B,)
                r = torch.tensor([self.cache[k][1] for k in keys], device=dist.device())  # (B,)
                return c, r
            if self.frozen is None and not self.adapter_off:  # the policy has moved: it is no reference
                raise RuntimeError(f"reference log-probs of pairs {missing[:5]} were not precomputed")
        adapter = self.engine.module if self.adapter_off else None
        with reference_model(self.engine, self.frozen, adapter) as model:
            return self.pair_logps(model, batch, self.engine.autocast())


def precompute(reference: Reference, pairs: list[TokenizedPair], batch_size: int, pad: int,
               keys: list[int] | None = None, collate: Collate = collate_pairs) -> dict[int, tuple[float, float]]:
    """Reference log-probs of the pairs at ``keys`` (default: all), split across processes and summed
    back (every rank runs the same number of forwards, so ZeRO-3 gathers stay in step). ``collate``: the layout."""
    from tqdm.auto import tqdm

    keys = list(range(len(pairs))) if keys is None else keys
    chosen, rejected = [0.0] * len(keys), [0.0] * len(keys)
    shards = dist.even_shard(len(keys), batch_size, pair_lengths([pairs[k] for k in keys], collate))
    for idx in tqdm(shards, desc="reference log-probs", disable=not dist.is_main()):
        c, r = reference.logps(collate([pairs[keys[max(i, 0)]] for i in idx], pad))
        for j, i in enumerate(idx):
            if i >= 0:
                chosen[i], rejected[i] = float(c[j]), float(r[j])
    chosen, rejected = dist.all_reduce_sum(chosen), dist.all_reduce_sum(rejected)
    return {k: (chosen[i], rejected[i]) for i, k in enumerate(keys)}


# --------------------------------------------------------------------------------------------------
# PPO: per-token log-probs of sampled responses
# --------------------------------------------------------------------------------------------------
def token_reference(policy: Engine, frozen: torch.nn.Module | None,
                    adapter: Any | None) -> Callable[[Callable[[Any], torch.Tensor]], torch.Tensor]:
    """A function ``reference(read)`` -> ``read(model)`` run on the reference model under the policy's autocast:
    the ``frozen`` copy, or else the policy with ``adapter`` disabled (see :func:`reference_model`). PPO's
    ``read`` returns the (B, R) log-probs of the sampled response tokens."""

    def reference(read: Callable[[Any], torch.Tensor]) -> torch.Tensor:
        with reference_model(policy, frozen, adapter) as model, policy.autocast():
            return read(model)
    return reference
