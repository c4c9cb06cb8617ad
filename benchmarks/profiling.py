"""Where a piece of measured work spends its time: torch.profiler's self time per operator, summed by the kind of
operation (matrix products, attention, ...). Shared by the training bench (one profiled step per row) and the
generation bench (decode steps)."""

from __future__ import annotations

from typing import Any

# A kinds table: (kind, operator names); an operator matches a name exactly or, for names longer than three
# characters, by prefix (aten::_scaled_dot_product_flash_attention_for_cpu_backward is "scaled_dot_product...").
Kinds = tuple[tuple[str, tuple[str, ...]], ...]

# A training step's kinds. Matrix products of the backward pass are aten::mm too; the optimizer is fused AdamW,
# gradient clipping's _foreach_ ops and the optimizer's own Python (ours and TRL alike: "Optimizer.step#AdamW.step").
TRAINING_KINDS: Kinds = (
    ("matmul", ("mm", "addmm", "bmm", "matmul", "linear")),
    ("attention", ("scaled_dot_product", "efficient_attention", "flash_attention", "softmax")),
    ("optimizer", ("fused_adamw", "fused_adam", "foreach_", "Optimizer.")),
    ("casts and copies", ("to", "to_copy", "copy_", "clone", "contiguous")),
)


def kind_of(op: str, kinds: Kinds) -> str:
    """The kind of a profiler operator name (``aten::_softmax`` -> "attention"), "other" when none matches."""
    name = op.removeprefix("aten::").removeprefix("mkldnn::").lstrip("_")
    for kind, names in kinds:
        if name in names or any(name.startswith(n) for n in names if len(n) > 3):
            return kind
    return "other"


def self_ms_by_kind(prof: Any, kinds: Kinds) -> dict[str, float]:
    """A finished ``torch.profiler.profile``'s self CPU time per kind in milliseconds (every kind present, "other"
    last), plus "calls": the operator calls recorded."""
    out: dict[str, float] = {kind: 0.0 for kind, _ in kinds}
    out["other"] = 0.0
    calls = 0.0
    for event in prof.key_averages():
        out[kind_of(event.key, kinds)] += event.self_cpu_time_total / 1e3
        calls += event.count
    out["calls"] = calls
    return out
