"""Matrix products of a few rows on the CPU, with the weights packed once for the whole of a generation.

A decode step multiplies a handful of rows (one new token per answer) by every weight matrix of the model.
torch's ``F.linear`` runs such products far from the CPU's limits: on a 2-core AMD EPYC, the 135M-parameter
default model's layer matrices ran at 11 GB/s of weights at 8 rows, a third of the memory bandwidth, and its
49,152 x 576 output layer took 17 ms where the same product on weights reordered into oneDNN's blocked layout took
4.5 ms (README, Generation). So while :func:`packed_linears` is active, every ``torch.nn.Linear`` of the model
multiplies with a packed copy of its weight (``torch.ops.mkldnn``, the kernels ``torch.compile`` itself uses for
frozen CPU linears), made once when the context is entered and dropped when it is left: the model's own
parameters are neither changed nor replaced, so a model trained between two generations is packed afresh.

Packing is used only where it is measured faster: on the first use per weight shape, precision and number of rows
in a process, the plain and the packed product are timed in alternation (:func:`packing_pays`); a training run
saves these verdicts with its checkpoints and a resumed run takes them back (:func:`verdicts`, :func:`restore`).
It is skipped on GPUs, for parameters sharded by DeepSpeed ZeRO-3, for precisions other than fp32 and bf16, and
where torch was built without oneDNN. The products agree with ``F.linear`` to rounding (their sums run in
another order), so greedy answers can differ from ``model.generate``'s only where two tokens tie to within
rounding.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

# how much faster the packed product must be to be used: near 1 the verdict would flip with the machine's load
PACKING_NEEDED = 1.1
_VERDICTS: dict[tuple[tuple[int, int], torch.dtype, int], float] = {}  # (shape, dtype, rows) -> plain / packed
_LOCK = threading.RLock()
_ACTIVE: dict[int, list[Any]] = {}  # id(model) -> [entries, patched modules]


def available() -> bool:
    """Whether this torch has oneDNN's packed linear (x86 and Arm CPU builds do)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise"))


def pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` (out, in) reordered for oneDNN's product with about ``rows`` rows (any number works)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x`` (..., in) with the :func:`pack`-ed weight, in the packed dtype."""
    return torch.ops.mkldnn._linear_pointwise(x.to(packed.dtype), packed, bias, "none", [], "")


def _timed(fn: Any, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


def packing_pays(shape: tuple[int, int], dtype: torch.dtype, rows: int) -> bool:
    """Whether the packed product of ``rows`` rows by a weight of ``shape`` (out, in) in ``dtype`` is at least
    :data:`PACKING_NEEDED` times as fast as ``F.linear`` on this CPU; measured once per process and arguments.

    Both are timed in alternation, five rounds of a few calls, and each keeps its best round, so another process
    taking the cores for a moment slows one round, not the verdict."""
    key = (shape, dtype, rows)
    if key not in _VERDICTS:
        # a generator of its own: the global one seeds the sampling that follows (generate seeds, then packs)
        rng = torch.Generator().manual_seed(0)
        weight = torch.randn(shape, generator=rng).to(dtype)
        x = torch.randn(rows, shape[1], generator=rng).to(dtype)
        packed = pack(weight, rows)
        ways = {"plain": lambda: torch.nn.functional.linear(x, weight),
                "packed": lambda: packed_linear(x, packed, None)}
        for fn in ways.values():
            fn()  # warm-up
        best = {name: float("inf") for name in ways}
        for _ in range(5):
            for name, fn in ways.items():
                best[name] = min(best[name], _timed(fn, 3))
        _VERDICTS[key] = best["plain"] / max(best["packed"], 1e-12)
    return _VERDICTS[key] >= PACKING_NEEDED


def verdicts() -> dict[str, float]:
    """The probe's measurements in this process, as ``{"out x in/dtype/rows": plain time / packed time}``: saved with
    a training run's checkpoints so that a resumed run packs exactly where the interrupted one did (a probe rerun
    under other load could decide otherwise, and packed products round differently)."""
    return {f"{o}x{i}/{str(d).removeprefix('torch.')}/{rows}": ratio for ((o, i), d, rows), ratio in _VERDICTS.items()}


def restore(saved: dict[str, float]) -> None:
    """Take :func:`verdicts` saved by an earlier process as this process's own measurements."""
    for key, ratio in saved.items():
        shape, dtype, rows = key.split("/")
        out, inputs = shape.split("x")
        _VERDICTS[((int(out), int(inputs)), getattr(torch, dtype), int(rows))] = float(ratio)


def _linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    # exactly nn.Linear: a subclass (a quantised or adapter layer) computes something else; a module that already
    # has its own forward attribute was patched by someone else, who would lose it on restore
    return [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in m.__dict__]


def _dtype(linears: list[torch.nn.Linear]) -> torch.dtype | None:
    """The precision the products run in (bf16 under CPU autocast, else the weights'), or None to not pack."""
    weights = [m.weight for m in linears]
    if not weights or not available():
        return None
    if any(w.device.type != "cpu" or hasattr(w, "ds_id") or w.dim() != 2 for w in weights):
        return None  # a GPU needs no packing; ZeRO-3 shards are not whole matrices outside a gather
    if torch.is_autocast_enabled("cpu"):
        autocast = torch.get_autocast_dtype("cpu")
        return autocast if autocast == torch.bfloat16 else None
    dtypes = {w.dtype for w in weights}
    if len(dtypes) != 1 or not dtypes <= {torch.float32, torch.bfloat16}:
        return None
    return dtypes.pop()


def _main_shape(linears: list[torch.nn.Linear]) -> tuple[int, int]:
    """The weight shape holding the most parameters over the model's linears: where most product time goes."""
    total: dict[tuple[int, int], int] = {}
    for m in linears:
        shape = (m.weight.shape[0], m.weight.shape[1])
        total[shape] = total.get(shape, 0) + m.weight.numel()
    return max(total, key=lambda s: total[s])


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, rows: int) -> Iterator[bool]:
    """Within the context, the ``torch.nn.Linear`` layers of ``model`` multiply with packed copies of their weights
    (about ``rows`` rows per product), in the precision the context is entered under (bf16 under CPU autocast,
    else the weights' own); yields whether it packed. For inference only (the packed products have no gradient).

    Re-entrant, also from several threads: the outermost entry packs and the last exit restores the layers, so a
    function that packs for one call can be called inside a caller that packed for many."""
    with _LOCK:
        state = _ACTIVE.get(id(model))
        if state is not None:
            state[0] += 1
        else:
            linears = _linears(model)
            dtype = _dtype(linears)
            patched: list[torch.nn.Linear] = []
            if dtype is not None and packing_pays(_main_shape(linears), dtype, rows):
                # every weight packed before any layer is patched: a failure leaves the model as it was
                by_weight: dict[int, torch.Tensor] = {}  # tied weights (the output layer and embedding) pack once
                for m in linears:
                    weight = m.weight.detach()
                    if weight.data_ptr() not in by_weight:
                        by_weight[weight.data_ptr()] = pack(weight.to(dtype), rows)
                for m in linears:
                    bias = None if m.bias is None else m.bias.detach().to(dtype)
                    # an instance attribute: nn.Module.__call__ (and its hooks) call it in place of Linear.forward
                    m.forward = functools.partial(packed_linear, packed=by_weight[m.weight.data_ptr()], bias=bias)
                    patched.append(m)
            state = _ACTIVE[id(model)] = [1, patched]
    try:
        yield bool(state[1])
    finally:
        with _LOCK:
            state[0] -= 1
            if state[0] == 0:
                for m in state[1]:
                    del m.forward
                del _ACTIVE[id(model)]
