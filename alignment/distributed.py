"""Processes, DeepSpeed configs and the launcher.

``align sft --deepspeed zero2 --num-processes 2`` re-runs the same command under DeepSpeed's launcher
(``python -m deepspeed.launcher.runner``), which starts N workers with RANK/WORLD_SIZE set; each
worker joins the process group (gloo on CPU, nccl on CUDA). With ``--hostfile`` the launcher starts
workers on several nodes (pdsh/ssh; every node needs this project installed at the same path and a
shared filesystem for the output directory).

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alignment.errors import AlignError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "deepspeed_configs"
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


def init_process_group() -> None:
    """Join the process group when launched with several processes (no-op for one process)."""
    if world_size() == 1 or torch.distributed.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    if not torch.cuda.is_available():
        clean_shm_at_exit()


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
        return CONFIG_DIR / f"{name_or_path}.json"
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
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    env["ALIGN_WORKER"] = "1"
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
