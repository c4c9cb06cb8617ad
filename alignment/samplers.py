"""Where PPO's rollout answers are sampled: the seam a GPU inference engine (vLLM, SGLang) plugs into.

The PPO phase asks a :class:`Sampler` for each rollout batch's answers and recomputes every log-prob it trains on
with the policy itself, so a sampler only returns tokens. ``generation.engine`` names the sampler:

- ``local`` (the default): :func:`alignment.generation.decode` on the very module being trained, inside its
  ZeRO-3 gather and autocast; it needs no weight copies and no syncing.
- a plug-in: a sampler that keeps its own copy of the weights (an inference engine colocated on the training
  GPUs, or a separate server). It says so with ``reads_policy = False``; the phase then calls its
  :meth:`Sampler.sync` with the policy (its full parameters, gathered under ZeRO-3; with LoRA the adapter-wrapped
  model, unmerged) before the first rollout, after a resume, and after every update but the last, and never hands
  it the module while sampling. Every rank calls it, as every rank samples its own prompts; an engine serving
  several ranks from one copy takes the weights from one of them.

A plug-in is a factory ``(PPOConfig) -> Sampler`` registered with :func:`register_sampler` or published by an
installed package under the entry-point group ``alignment.samplers`` (name = the ``generation.engine`` value), so
an engine that needs CUDA can live in its own package and be tested where a GPU is. Only ``local`` ships here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol

import torch

from alignment.errors import AlignError
from alignment.generation import decode

ENTRY_POINT_GROUP = "alignment.samplers"


class Sampler(Protocol):
    """Draws up to ``max_new_tokens`` per row for left-padded prompts; returns (B, N) new tokens, each row up to and
    including its first stop token and ``pad_id`` after it (:func:`alignment.generation.decode`'s contract)."""

    reads_policy: bool
    """True: ``sample`` gets the training module (gathered, under autocast) and reads its live weights. False: the
    sampler holds its own weights, kept current through :meth:`sync`; ``sample`` gets ``None``."""

    def sample(self, module: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
               stop_ids: Sequence[int], pad_id: int, temperature: float, top_p: float) -> torch.Tensor: ...

    def sync(self, module: Any) -> None:
        """Take the policy's current weights (called only when ``reads_policy`` is False)."""


class LocalSampler:
    """The in-process engine on the training module itself."""

    reads_policy = True

    def __init__(self, cfg: Any = None) -> None:
        del cfg  # nothing to configure: the rollout's settings come with each call

    def sample(self, module: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
               stop_ids: Sequence[int], pad_id: int, temperature: float, top_p: float) -> torch.Tensor:
        return decode(module, input_ids, attention_mask, max_new_tokens=max_new_tokens, stop_ids=list(stop_ids),
                      pad_id=pad_id, temperature=temperature, top_p=top_p)

    def sync(self, module: Any) -> None:
        """Nothing to copy: every rollout reads the live weights."""


SamplerFactory = Callable[[Any], Sampler]
_REGISTRY: dict[str, SamplerFactory] = {"local": LocalSampler}


def register_sampler(name: str, factory: SamplerFactory) -> None:
    """Make ``generation.engine: <name>`` build its sampler with ``factory(cfg)`` (cfg: the PPO config)."""
    if name == "local":
        raise ValueError("'local' is the built-in engine; register a plug-in under another name")
    _REGISTRY[name] = factory


def unregister_sampler(name: str) -> None:
    if name == "local":
        raise ValueError("the local sampler cannot be removed")
    _REGISTRY.pop(name, None)


def _installed() -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def sampler_names() -> list[str]:
    """Every engine name ``generation.engine`` accepts here: the registered ones and the installed plug-ins."""
    return sorted(set(_REGISTRY) | set(_installed()))


def make_sampler(name: str, cfg: Any) -> Sampler:
    """The sampler ``generation.engine`` names; an unknown name is refused with the ones this installation has."""
    factory = _REGISTRY.get(name)
    if factory is None:
        plugins = _installed().get(name)
        if not plugins:
            raise AlignError(f"no rollout engine named {name!r} here (available: {', '.join(sampler_names())}); "
                             f"a GPU engine comes as a package publishing the entry point group {ENTRY_POINT_GROUP!r}",
                             field="generation.engine")
        if len(plugins) > 1:  # which one would run would depend on the order packages were installed in
            raise AlignError(f"{len(plugins)} installed packages publish a rollout engine named {name!r} ("
                             + ", ".join(ep.value for ep in plugins) + "); uninstall all but one",
                             field="generation.engine")
        try:
            factory = plugins[0].load()
        except Exception as exc:  # e.g. the engine's package needs CUDA libraries this machine lacks
            raise AlignError(f"the rollout engine {name!r} ({plugins[0].value}) failed to load: "
                             f"{type(exc).__name__}: {exc}", field="generation.engine") from exc
    sampler = factory(cfg)
    missing = [a for a in ("sample", "sync") if not callable(getattr(sampler, a, None))]
    if missing or not isinstance(getattr(sampler, "reads_policy", None), bool):
        raise AlignError(f"the rollout engine {name!r} is not a sampler: it needs sample(), sync() and a "
                         f"reads_policy flag (see alignment/samplers.py)", field="generation.engine")
    return sampler
