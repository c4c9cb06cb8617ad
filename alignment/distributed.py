"""Processes, DeepSpeed configs and the launcher.

How processes start (every path runs the same training; tested in tests/training/test_launchers.py):

- ``align sft --num-processes N`` (with or without ``--deepspeed``, optionally ``--hostfile``) re-runs
  the same command under DeepSpeed's launcher (``python -m deepspeed.launcher.runner``), which starts N
  workers per node (``python -m alignment.cli ...``) with RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/
  MASTER_PORT set. ``--deepspeed`` alone (one process) goes the same way, because DeepSpeed reads that
  environment. With ``--hostfile`` the launcher starts workers on several nodes (pdsh/ssh; every node
  needs this project installed at the same path and a shared filesystem for the output directory).
- Started by any launcher (``torchrun --nproc-per-node N -m alignment.cli sft ...``,
  ``accelerate launch --multi_gpu`` (torchrun underneath), ``deepspeed --module alignment.cli sft ...``,
  or ours above): the process finds RANK and WORLD_SIZE in its environment and runs its own rank; it
  never launches again (:func:`launched`). A ``--num-processes`` that disagrees with the launcher's
  processes per node is an error, not a guess (:func:`check_launched`).

Every worker joins one process group with ``torch.distributed.init_process_group`` (``env://``: gloo on
CPU, nccl on CUDA); with a DeepSpeed config, ``deepspeed.initialize`` adopts that group. Without DeepSpeed
the training engine (alignment/training.py) is data parallel as torch DDP is: parameters are broadcast from
rank 0 at the start, and every optimizer step averages the gradients over the processes
(:func:`average_gradients`) before clipping. The phases scale their losses so that this average is the
gradient of the global-batch loss, the same as DeepSpeed's and as one process with the whole batch.

Our configs use "auto" values, as the Hugging Face integration does, so batch sizes, gradient
accumulation, clipping and precision come from the recipe; we fill them here, in one place.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from alignment.errors import AlignError


def packaged_dir(name: str) -> Path:
    """A data folder that ships with the package (``recipes``, ``deepspeed_configs``).

    The repository keeps these folders at its top level; a built wheel carries them inside the package, as
    ``alignment/<name>`` (the package-dir mapping in pyproject.toml), which is what importlib.resources finds
    in an installed copy, as real files (a wheel installs unzipped). A source checkout or an editable install
    has no such folder inside ``alignment/`` (the editable finder cannot import a folder without
    ``__init__.py``), so there the top-level folder next to the package is the one.
    """
    installed = Path(str(files("alignment") / name))
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1] / name


CONFIG_DIR = packaged_dir("deepspeed_configs")
NAMED_CONFIGS = ("zero1", "zero2", "zero3", "zero3_offload")


# --------------------------------------------------------------------------------------------------
# Process group
# --------------------------------------------------------------------------------------------------
def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def launched() -> bool:
    """Whether a launcher started this process (torchrun, accelerate, DeepSpeed's, ours): it set RANK and
    WORLD_SIZE. Such a process runs its own rank and never starts a launcher itself."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def local_world_size() -> int:
    """Processes per node as the launcher set them (torchrun: LOCAL_WORLD_SIZE, DeepSpeed: LOCAL_SIZE)."""
    for key in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        if key in os.environ:
            return int(os.environ[key])
    return world_size()


def check_launched(num_processes: int | None) -> None:
    """In a launched process, ``--num-processes`` (processes per node) must be what the launcher started."""
    if num_processes is not None and num_processes != local_world_size():
        raise AlignError(
            f"--num-processes {num_processes}, but the launcher that started this process runs "
            f"{local_world_size()} per node (WORLD_SIZE={world_size()}); leave --num-processes out under "
            "torchrun, accelerate or deepspeed (the launcher decides), or start the number you meant",
            field="--num-processes",
        )


def prepare_worker() -> None:
    """Before anything imports DeepSpeed: on a machine without CUDA, DeepSpeed must use its CPU
    accelerator (our launcher sets this for its workers; torchrun and the others do not)."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def init_process_group() -> None:
    """Join the process group when launched with several processes (no-op for one process).

    ``torch.distributed`` directly, from the launcher's environment (``env://``: MASTER_ADDR, MASTER_PORT,
    RANK, WORLD_SIZE, which torchrun, accelerate and DeepSpeed's launcher all set), not
    ``deepspeed.init_distributed``: a run without DeepSpeed neither imports it nor needs its CPU
    accelerator, and with DeepSpeed ``deepspeed.initialize`` adopts this group (it wraps an initialised
    torch.distributed, adding its shared-memory CPU all-reduce) exactly as it did its own.
    """
    if world_size() == 1 or torch.distributed.is_initialized():
        return
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK") if k not in os.environ]
    if missing:
        raise AlignError(f"WORLD_SIZE={world_size()} but {', '.join(missing)} not set: start several processes "
                         "with `align ... --num-processes N`, torchrun, accelerate launch or deepspeed")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    from datetime import timedelta

    # 30 minutes, DeepSpeed's default (torch's NCCL default is 10): a rank can wait that long at a barrier
    # while rank 0 saves a large model.
    torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo",
                                         init_method="env://", timeout=timedelta(minutes=30))
    atexit.register(_destroy_process_group)
    if not torch.cuda.is_available():
        clean_shm_at_exit()  # DeepSpeed, if the run uses it, maps its CPU all-reduce file later


def _destroy_process_group() -> None:
    """Leave the process group before the interpreter tears down: a gloo group left to static destructors can
    end a rank that finished its work with "terminate called without an active exception" (exit 250, seen on
    a 2-process ZeRO-3 run after its model was saved), which a launcher reports as a failed run."""
    if torch.distributed.is_initialized():
        try:
            torch.distributed.destroy_process_group()
        except Exception:  # exiting anyway; the other ranks may be gone already
            pass


def clean_shm_at_exit() -> None:
    """Call in every multi-process CPU run that DeepSpeed's communication serves (ours, and TRL's
    through accelerate): see :func:`_remove_shm_buffer`."""
    atexit.register(_remove_shm_buffer)


def _remove_shm_buffer() -> None:
    """DeepSpeed's CPU all-reduce maps a 66 MB shared-memory file per process and never unlinks it,
    so every multi-process CPU run would leave its files in /dev/shm until the machine reboots.
    At exit every rank removes its own (the others' mappings stay valid until they exit)."""
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank()}")
    Path("/dev/shm", name).unlink(missing_ok=True)


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size


def _bucketed(tensors: Sequence[torch.Tensor], op: Callable[[torch.Tensor], Any]) -> None:
    """Apply the in-place collective ``op`` to ``tensors`` as a few flat buffers (one per device and
    dtype, at most BUCKET_BYTES each, in the given order) and copy the results back."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for t in [*group, None]:
            if t is not None and (not bucket or size + t.numel() * t.element_size() <= BUCKET_BYTES):
                bucket.append(t)
                size += t.numel() * t.element_size()
                continue
            flat = torch.cat([b.reshape(-1) for b in bucket])
            op(flat)
            offset = 0
            for b in bucket:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()
            bucket, size = ([t], t.numel() * t.element_size()) if t is not None else ([], 0)


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers, as DDP does when it wraps a model."""
    if not torch.distributed.is_initialized() or world_size() == 1:
        return
    with torch.no_grad():
        _bucketed([t.data for t in [*module.parameters(), *module.buffers()]],
                  lambda flat: torch.distributed.broadcast(flat, src=0))


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Replace every gradient with its mean over the processes: DDP's result, in flat buckets.

    Called once per optimizer step, after the last micro-batch's backward and before clipping, so that
    every rank clips and applies the same gradient and the weights stay identical. A parameter that
    got a gradient on some ranks only counts as zero on the others (as under DDP); one with no gradient
    anywhere keeps none, so the optimizer skips it as it would in one process.
    """
    if not torch.distributed.is_initialized() or world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has_grad = torch.tensor([float(p.grad is not None) for p in params], device=device())
    torch.distributed.all_reduce(has_grad)
    grads = []
    for p, count in zip(params, has_grad.tolist()):
        if count:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    world = torch.distributed.get_world_size()

    def mean(flat: torch.Tensor) -> None:
        flat.div_(world)  # before the sum, as DDP does (less overflow in half precision)
        torch.distributed.all_reduce(flat)

    _bucketed(grads, mean)


def even_shard(n: int, batch_size: int, lengths: Sequence[int] | None = None) -> list[list[int]]:
    """This process's share of ``n`` items, in batches, with the same number of batches on every process.

    Under ZeRO-3 every forward gathers parameters collectively, so a rank that ran one forward fewer
    would leave the others waiting forever. Short ranks are padded with -1: a slot whose result the
    caller drops (it runs item 0 there). With ``lengths``, items are taken longest first, so each
    batch holds items of similar length and pads little.
    """
    per_rank = math.ceil(n / world_size())
    items = sorted(range(n), key=lambda i: -lengths[i]) if lengths is not None else list(range(n))
    mine = items[rank() :: world_size()]
    mine += [-1] * (per_rank - len(mine))
    return [mine[start : start + batch_size] for start in range(0, per_rank, batch_size)]


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few scalars over processes."""
    if not torch.distributed.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: float) -> float:
    """The largest of one scalar over processes."""
    if not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


# --------------------------------------------------------------------------------------------------
# DeepSpeed configs
# --------------------------------------------------------------------------------------------------
def resolve_config_path(name_or_path: str) -> Path:
    if name_or_path in NAMED_CONFIGS:
        path = CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():  # an install that lost its data files: say so rather than a bare FileNotFoundError
            raise AlignError(f"the named DeepSpeed config '{name_or_path}' is missing from this installation "
                             f"({path}); reinstall the package, or pass the path of a DeepSpeed JSON file",
                             field="deepspeed")
        return path
    path = Path(name_or_path)
    if path.is_file():
        return path
    raise AlignError(
        f"DeepSpeed config '{name_or_path}' is neither a named config ({', '.join(NAMED_CONFIGS)}) nor a file",
        field="deepspeed",
    )


def load_config(name_or_path: str) -> dict[str, Any]:
    path = resolve_config_path(name_or_path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AlignError(f"invalid JSON: {exc.msg}", file=path, line=exc.lineno) from None


def fill_auto(config: dict[str, Any], *, micro_batch: int, grad_accum: int, max_grad_norm: float | None,
              bf16_weights: bool) -> dict[str, Any]:
    """Replace "auto" values with the recipe's; an explicit value that disagrees is an error."""
    world = world_size()
    wanted = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world,
        "gradient_clipping": 0.0 if max_grad_norm is None else max_grad_norm,  # DeepSpeed's 0: no clipping
    }
    config = json.loads(json.dumps(config))
    for key, value in wanted.items():
        current = config.get(key, "auto")
        if current == "auto":
            config[key] = value
        elif current != value:
            raise AlignError(
                f"DeepSpeed config sets {key}={current} but the recipe implies {value}; "
                "use \"auto\" in the DeepSpeed config or change the recipe",
                field=key,
            )
    for precision in ("bf16", "fp16"):
        section = config.setdefault(precision, {"enabled": False})
        if section.get("enabled") == "auto":
            section["enabled"] = bf16_weights if precision == "bf16" else False
    zero = config.setdefault("zero_optimization", {"stage": 0})
    for key, value in list(zero.items()):
        if value == "auto":
            # Bucket sizes: DeepSpeed's defaults are sized for big GPUs; these suit any model here.
            zero[key] = {"reduce_bucket_size": 5e7, "stage3_prefetch_bucket_size": 5e7,
                         "stage3_param_persistence_threshold": 1e5}.get(key, value)
    config.setdefault("steps_per_print", 10**9)  # our own logging reports progress
    return config


# --------------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], num_processes: int, hostfile: str | None) -> int:
    """Re-run ``align <argv>`` on ``num_processes`` processes per node through DeepSpeed's launcher."""
    if launched():
        raise AlignError(f"this process already runs under a launcher (RANK={rank()}, WORLD_SIZE={world_size()}); "
                         "starting another one inside it would run every rank's share again")
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--no_local_rank",
           "--master_port", str(free_port())]
    if hostfile:
        if not Path(hostfile).is_file():
            raise AlignError("hostfile not found", file=hostfile)
        cmd += ["--hostfile", hostfile]
    else:
        cmd += ["--master_addr", "127.0.0.1"]
    cmd += ["--num_gpus", str(num_processes), "--module", "alignment.cli", *argv]
    return subprocess.call(cmd, env=env)
