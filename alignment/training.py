"""Pieces every training phase shares: precision choice, optimizer and schedule, data order,
the engine (plain torch or DeepSpeed ZeRO), and checkpoints that resume exactly.

The data order is a pure function of (seed, step): epoch ``e`` uses a permutation drawn from a
generator seeded with ``seed + e``, and step ``s`` reads a fixed slice of it. Resuming therefore
needs only the step number, and a resumed run reads exactly the batches the uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignment import distributed as dist
from alignment.config import TrainConfig
from alignment.log import get_logger

_log = get_logger("train")

# --------------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------------
_BF16_SPEEDUP: float | None = None  # fp32 time / bf16 time of the probe (None: not measured yet)
_BF16_NEEDED = 1.25  # how much faster bf16 must be: near 1 the verdict would flip with the machine's load


def bf16_is_fast() -> bool:
    """Measure whether bf16 matmuls beat fp32 on this CPU (fast bf16 units), once per process.

    fp32 and bf16 are timed in alternation, five rounds, and each keeps its best round: another
    process taking the cores for a moment slows one round, not the verdict (a single timing once
    picked bf16 on a busy machine where it is 1.6x slower).
    """
    global _BF16_SPEEDUP
    if _BF16_SPEEDUP is None:
        # its own generator: phases seed the global one and then ask, and only the first phase of a process
        # measures, so drawing from the global one made a phase's samples depend on what ran before it
        a = torch.randn(768, 768, generator=torch.Generator().manual_seed(0))
        best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
        operands = {dtype: a.to(dtype) for dtype in best}
        for x in operands.values():
            x @ x  # warm-up
        for _ in range(5):
            for dtype, x in operands.items():
                start = time.perf_counter()
                for _ in range(4):
                    x @ x
                best[dtype] = min(best[dtype], time.perf_counter() - start)
        _BF16_SPEEDUP = best[torch.float32] / best[torch.bfloat16]
    return _BF16_SPEEDUP > _BF16_NEEDED


def describe_bf16(setting: str, bf16: bool) -> str:
    """The precision a phase logs: the choice and, when ``auto`` measured it on this CPU, what was measured, so
    two machines that chose differently can be told apart from their logs."""
    if setting != "auto" or torch.cuda.is_available() or _BF16_SPEEDUP is None:
        return f"bf16={bf16}"
    return (f"bf16={bf16} (auto: a bf16 matmul ran {_BF16_SPEEDUP:.2f}x as fast as fp32 here; "
            f"bf16 is chosen above {_BF16_NEEDED}x)")


def use_bf16(setting: str) -> bool:
    if setting == "true":
        return True
    if setting == "false":
        return False
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bf16_is_fast()


def autocast(enabled: bool) -> Any:
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=enabled)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# Optimizer and schedule
# --------------------------------------------------------------------------------------------------
def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW on trainable parameters; no weight decay on biases and norms (1-D tensors).

    ``fused``: one kernel per parameter for the whole update (CPU and CUDA float tensors) instead of a
    handful of element-wise passes over the weights and both moments; the same arithmetic.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    params = decay + no_decay
    fused = fused and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                             **({"fused": True} if fused else {}))


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warm-up reaching the peak on the last
    warm-up step, then cosine/linear decay to 0 or constant.

    Ours rather than transformers' ``get_scheduler``, whose warm-up starts at 0: the first step then trains
    nothing, and in the quickstart's 24-step DPO that one lost step took held-out adherence from 89.4% to 74.2%
    (measured on the same data and seed). KTO gets this schedule too (alignment.kto), so every phase warms up
    alike."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int, kind: str) -> Any:
    """The LR scheduler of every phase: :func:`lr_factor` over ``total`` optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, kind))


GROUP_STEPS = 16  # steps whose examples are sorted by length together (group_by_length)


@dataclass
class Schedule:
    """How many steps a run has and which examples each micro-batch of each step reads."""

    num_examples: int
    batch_size: int  # per process per micro-batch
    grad_accum: int
    world: int
    seed: int
    total_steps: int
    steps_per_epoch: int
    lengths: list[int] | None = None  # per example; set to group similar lengths into one step
    _cached: tuple[int, list[int]] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def create(cls, num_examples: int, cfg: TrainConfig, world: int,
               lengths: Sequence[int] | None = None) -> Schedule:
        """``lengths`` (tokens per example) turn on length grouping when ``cfg.group_by_length``."""
        per_step = cfg.batch_size * cfg.grad_accum * world
        steps_per_epoch = max(1, math.ceil(num_examples / per_step))
        total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))
        grouped = list(lengths) if lengths is not None and cfg.group_by_length else None
        if grouped is not None and len(grouped) != num_examples:
            raise ValueError(f"{len(grouped)} lengths for {num_examples} examples")
        return cls(num_examples, cfg.batch_size, cfg.grad_accum, world, cfg.seed, total, steps_per_epoch, grouped)

    def grouped_by(self, lengths: Sequence[int]) -> Schedule:
        """The same schedule grouping by ``lengths`` instead (when it groups at all): for a phase that learns
        which batch layout it runs, and so how wide each example is, only after the schedule sized the run."""
        if self.lengths is None:
            return self
        if len(lengths) != self.num_examples:
            raise ValueError(f"{len(lengths)} lengths for {self.num_examples} examples")
        return replace(self, lengths=list(lengths))

    def _order(self, epoch: int) -> list[int]:
        """The epoch's example order, computed once per epoch (every step of it reads from it)."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._compute_order(epoch))
        return self._cached[1]

    def _compute_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_examples, generator=g).tolist()
        per_step = self.batch_size * self.grad_accum * self.world
        need = self.steps_per_epoch * per_step
        while len(order) < need:  # wrap around so every process gets full micro-batches
            order += order[: need - len(order)]
        if self.lengths is None:
            return order
        # Sort each group of GROUP_STEPS steps by length, cut it into steps, shuffle the steps: every
        # step pads little, and the run does not go from long to short examples.
        lengths, group = self.lengths, per_step * GROUP_STEPS
        steps = []
        for start in range(0, need, group):
            chunk = sorted(order[start : start + group], key=lambda i: -lengths[i])
            steps += [chunk[j : j + per_step] for j in range(0, len(chunk), per_step)]
        return [i for s in torch.randperm(len(steps), generator=g).tolist() for i in steps[s]]

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """Example indices of each micro-batch that process ``rank`` runs at optimizer step ``step``."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        order = self._order(epoch)
        per_step = self.batch_size * self.grad_accum * self.world
        chunk = order[offset * per_step : (offset + 1) * per_step]
        mine = chunk[rank :: self.world]
        return [mine[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.grad_accum)]

    def examples_read(self, start: int, stop: int) -> set[int]:
        """Indices of the examples that steps ``start`` .. ``stop - 1`` read, on every process."""
        return {i for step in range(start, stop) for rank in range(self.world)
                for batch in self.micro_batches(step, rank) for i in batch}

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch


# --------------------------------------------------------------------------------------------------
# Engine: plain torch or DeepSpeed, one interface
# --------------------------------------------------------------------------------------------------
class Engine:
    """Owns the model, optimizer and LR schedule; hides whether DeepSpeed runs them.

    ``backward`` takes a loss already normalised for the whole optimizer step (see the phases'
    loss normalisation), so neither path divides by the accumulation count again.
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, total_steps: int, bf16: bool,
                 deepspeed_config: dict[str, Any] | None) -> None:
        self.cfg = cfg
        self.total_steps = total_steps
        self.bf16 = bf16
        self.deepspeed = deepspeed_config is not None
        if not self.deepspeed:
            model = model.to(dist.device())  # before the optimizer: a fused one needs the final device
            if dist.world_size() > 1:  # data parallel without DeepSpeed: see step()
                dist.init_process_group()  # a no-op where the phase has joined already
                dist.broadcast_parameters(model)  # every rank starts from rank 0's weights, as under DDP
        optimizer = build_optimizer(model, cfg, fused=not self.deepspeed)
        warmup = int(cfg.warmup_ratio * total_steps)
        scheduler = lr_schedule(optimizer, total_steps, warmup, cfg.scheduler)
        if self.deepspeed:
            import deepspeed

            # The loss is pre-normalised per optimizer step, so undo DeepSpeed's own 1/accumulation.
            self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config
            )
            self.model = self.ds.module
            self._autocast = bf16 and not self.ds.bfloat16_enabled()
        else:
            self.ds = None
            self.model = model  # already on its device (moved before the optimizer was built)
            self.optimizer, self.scheduler = optimizer, scheduler
            self._autocast = bf16

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def autocast(self) -> Any:
        return autocast(self._autocast)

    def forward(self, **batch: Any) -> Any:
        with self.autocast():
            return (self.ds if self.ds is not None else self.model)(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward for one micro-batch; call :meth:`step` after the last micro-batch of a step."""
        if self.ds is not None:
            # DeepSpeed divides by gradient_accumulation_steps; our loss is already per-step.
            self.ds.backward(loss * self.cfg.grad_accum)
            if not self.ds.is_gradient_accumulation_boundary():
                self.ds.step()  # only counts the micro-step; the update happens at the boundary
        else:
            loss.backward()

    def step(self) -> float:
        """Finish an optimizer step; returns the gradient norm before clipping."""
        if self.ds is not None:
            self.ds.step()
            norm = self.ds.get_global_grad_norm()
            return float(norm) if norm is not None else float("nan")
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Several processes without DeepSpeed: average the accumulated gradients over ranks here, once per
        # step and before clipping, which is exactly what DDP computes (and what DeepSpeed does): the
        # phases scale their losses for an average (SFT multiplies by world / global tokens), so every rank
        # applies the gradient of the whole global batch and the weights stay identical. Not a
        # DistributedDataParallel wrapper: the phases call the decoder and the output layer directly
        # (alignment/logits.py), bypassing the wrapper's forward that arms DDP's reducer, and accumulation
        # would need no_sync; an explicit all-reduce sees every gradient however it was made. (Unlike DDP
        # it does not overlap the communication with the backward pass.)
        dist.average_gradients(params)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)  # inf: measures the norm, scales by 1
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    # ---------------------------------------------------------------------------------------------
    # Checkpoints
    # ---------------------------------------------------------------------------------------------
    def save_checkpoint(self, directory: Path, state: dict[str, Any],
                        others: dict[str, Engine] | None = None) -> None:
        """Write ``directory`` atomically: model, optimizer, schedule, RNG per rank, trainer state.

        ``others`` are further engines of the same run (PPO's critic), saved in subfolders by name.
        """
        tmp = directory.with_name(directory.name + ".tmp")
        if dist.is_main() and tmp.exists():
            shutil.rmtree(tmp)
        dist.barrier()
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            for folder, engine in {"": self, **(others or {})}.items():
                engine._write_state(tmp / folder)
            torch.save(_rng_state(), tmp / f"rng_rank{dist.rank()}.pt")
        except (OSError, RuntimeError) as exc:
            if not _write_failed(exc):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint stays the one to resume from
            from alignment.errors import AlignError

            free = shutil.disk_usage(tmp.parent).free / 2**30
            raise AlignError(f"could not write the checkpoint ({exc}); {free:.1f} GiB free on that disk now. "
                             "Free some space (or set output_dir elsewhere) and run the same command again: it "
                             "resumes from the last checkpoint written", file=directory) from exc
        dist.barrier()
        if dist.is_main():
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            if directory.exists():
                shutil.rmtree(directory)
            tmp.rename(directory)
        dist.barrier()

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The parameters training changes: all of them in full fine-tuning, the adapter (and any new head)
        with LoRA. The frozen base is the starting model the recipe names, so a checkpoint need not hold it
        (a 7B base is ~28 GB in fp32 per save; its LoRA adapter a few MB)."""
        return {name: p.detach() for name, p in self.model.named_parameters() if p.requires_grad}

    def _write_state(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.ds is not None:
            self.ds.save_checkpoint(str(folder), tag="ds", client_state={}, exclude_frozen_parameters=True)
        elif dist.is_main():
            torch.save({"model": self.trained_state(), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict()}, folder / "engine.pt")

    def _read_state(self, folder: Path) -> None:
        if self.ds is not None:
            # Frozen parameters are not in the checkpoint (see _write_state); they come from the start model.
            self.ds.load_checkpoint(str(folder), tag="ds", load_optimizer_states=True,
                                    load_lr_scheduler_states=True, load_module_strict=False)
            return
        blob = torch.load(folder / "engine.pt", map_location=dist.device(), weights_only=True)
        wanted, saved = set(self.trained_state()), set(blob["model"])
        if wanted != saved:
            from alignment.errors import AlignError

            differ = sorted(wanted ^ saved)
            raise AlignError(f"this checkpoint's trained parameters are not this run's ({len(differ)} differ, e.g. "
                             f"{differ[0]}): it comes from another setup (LoRA on/off, other target modules)",
                             file=folder / "engine.pt", field="train.resume")
        self.model.load_state_dict(blob["model"], strict=False)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])

    def load_checkpoint(self, directory: Path, others: dict[str, Engine] | None = None) -> dict[str, Any]:
        for folder, engine in {"": self, **(others or {})}.items():
            engine._read_state(directory / folder)
        rng_file = directory / f"rng_rank{dist.rank()}.pt"
        if rng_file.exists():
            _set_rng_state(torch.load(rng_file, weights_only=True))
        return json.loads((directory / "trainer_state.json").read_text())

    def gathered(self) -> Any:
        """Context in which every parameter is whole on every rank (ZeRO-3 shards gathered), so the
        model can be saved or copied as a normal module; a no-op otherwise."""
        if self.ds is not None and self.ds.zero_optimization_stage() == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)
        import contextlib

        return contextlib.nullcontext()


def _write_failed(exc: BaseException) -> bool:
    """Whether saving failed because the file could not be written (a full disk, a lost mount): an OSError, or
    torch's archive writer finding fewer bytes on disk than it wrote."""
    text = str(exc)
    return isinstance(exc, OSError) or "unexpected pos" in text or "failed writing file" in text


def _rng_state() -> dict[str, Any]:
    """Every generator's state in types ``torch.load(weights_only=True)`` reads (numpy's key array as a tensor)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                   int(has_gauss), float(gauss)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (``*.tmp`` leftovers of a killed save are ignored)."""
    found = [p for p in Path(output_dir).glob("checkpoints/step-*") if p.is_dir() and not p.name.endswith(".tmp")
             and (p / "trainer_state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def find_resume_checkpoint(output_dir: Path, resume: str) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        found = checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").exists():
        from alignment.errors import AlignError

        raise AlignError(f"'{resume}' is not a checkpoint directory (no trainer_state.json)", field="train.resume")
    return path


def clear_checkpoints(output_dir: Path) -> None:
    """A run that starts from step 0 replaces an earlier run's checkpoints, so `resume: auto` can never
    later pick up a checkpoint of a different run."""
    if dist.is_main() and (Path(output_dir) / "checkpoints").exists():
        _log.info(f"[train] starting afresh: removing earlier checkpoints in {output_dir}/checkpoints")
        shutil.rmtree(Path(output_dir) / "checkpoints")
    dist.barrier()


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    if not dist.is_main() or keep <= 0:
        return
    for old in checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def deepspeed_config(name: str | None, train: TrainConfig, bf16: bool, micro_batch: int | None = None,
                     grad_accum: int | None = None) -> dict[str, Any] | None:
    """The named DeepSpeed config with its "auto" values filled from the recipe (None without one)."""
    if not name:
        return None
    return dist.fill_auto(dist.load_config(name), micro_batch=micro_batch or train.batch_size,
                          grad_accum=grad_accum or train.grad_accum, max_grad_norm=train.max_grad_norm,
                          bf16_weights=bf16 and torch.cuda.is_available())


def iterate_steps(start: int, total: int, desc: str) -> Iterator[int]:
    """Optimizer steps with a progress bar on rank 0."""
    from tqdm.auto import tqdm

    bar = tqdm(range(start, total), initial=start, total=total, desc=desc, disable=not dist.is_main(),
               dynamic_ncols=True)
    yield from bar
