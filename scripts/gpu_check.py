"""Short training runs on every launch path and ZeRO stage, on this machine's GPUs (or, with --cpu, on CPU).

Run through ``scripts/gpu_check.sh``. Each check is one ``align`` command of a few optimizer steps on the
quickstart data: SFT under ZeRO-2 and ZeRO-3 and without DeepSpeed, SFT started by torchrun and by
DeepSpeed's launcher, a reward model, DPO and PPO under ZeRO-2 and ZeRO-3. The table gives each check's
exit code, wall time and last logged loss; the script exits 1 when any check failed. On CUDA it uses every
GPU (one process each, nccl) and the embedded SmolLM2-135M-Instruct; ``--cpu`` uses 2 processes (gloo) and
a tiny model built from a config, to check the script itself where no GPU is at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart"
sys.path.insert(0, str(REPO))


def tiny_model(out: Path) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer (what the tests use)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from alignment.default_model import ensure_default_model

    if (out / "config.json").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(str(ensure_default_model()))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def machine(cuda: bool) -> str:
    import torch

    if cuda:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} x {names[0]}, CUDA {torch.version.cuda}, torch {torch.__version__}"
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"CPU {platform.processor() or platform.machine()} ({', '.join(wanted) or 'no avx2'}), " \
           f"{os.cpu_count()} cores, torch {torch.__version__}"


def last_loss(out: Path) -> str:
    path = out / "metrics.jsonl"
    if not path.exists():
        return "-"
    for line in reversed(path.read_text().splitlines()):
        row = json.loads(line)
        for key in ("train/loss", "loss", "ppo/loss/total", "objective/scores"):
            if key in row:
                return f"{key}={row[key]:.4f}"
    return "-"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="run on CPU (gloo, 2 processes, a tiny model)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per check (PPO: rollout batches)")
    p.add_argument("--timeout", type=int, default=300, help="seconds per check")
    args = p.parse_args()
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        print("no CUDA device: run with --cpu to check the script on CPU", file=sys.stderr)
        return 2
    nproc = max(1, torch.cuda.device_count()) if cuda else 2
    args.out.mkdir(parents=True, exist_ok=True)
    model = "smollm2-135m-instruct" if cuda else str(tiny_model(args.out / "tiny-model"))
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    if not cuda:
        env["DS_ACCELERATOR"] = "cpu"
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    from alignment.distributed import free_port

    common = ["tracking.backends=[none]", f"train.max_steps={args.steps}", "train.save_every=0",
              "train.eval_every=0"]
    out = args.out

    def phase(kind: str, name: str, *extra: str) -> list[str]:
        return [kind, "--config", str(QUICKSTART / f"{kind}.yaml"), f"output_dir={out / name}", *common, *extra]

    align = [sys.executable, "-m", "alignment.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
                str(free_port()), "-m", "alignment.cli"]
    ds_launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--master_port",
                   str(free_port()), "--no_local_rank", "--module", "alignment.cli"]
    n = ["--num-processes", str(nproc)]
    sft = str(out / "sft-zero2" / "model")
    rm = str(out / "rm-zero2" / "model")
    checks = [
        ("sft zero2 (align)", align + phase("sft", "sft-zero2", f"model={model}") + n + ["--deepspeed", "zero2"]),
        ("sft zero3 (align)", align + phase("sft", "sft-zero3", f"model={model}") + n + ["--deepspeed", "zero3"]),
        ("sft no DeepSpeed (align)", align + phase("sft", "sft-plain", f"model={model}") + n),
        ("sft zero2 (torchrun)", torchrun + phase("sft", "sft-torchrun", f"model={model}") + ["--deepspeed", "zero2"]),
        ("sft zero2 (deepspeed launcher)", ds_launcher + phase("sft", "sft-dslauncher", f"model={model}")
         + ["--deepspeed", "zero2"]),
        ("rm zero2", align + phase("rm", "rm-zero2", f"model={sft}") + n + ["--deepspeed", "zero2"]),
        ("dpo zero2", align + phase("dpo", "dpo-zero2", f"model={sft}") + n + ["--deepspeed", "zero2"]),
        ("dpo zero3", align + phase("dpo", "dpo-zero3", f"model={sft}") + n + ["--deepspeed", "zero3"]),
        ("ppo zero2", align + phase("ppo", "ppo-zero2", f"model={sft}", f"reward_model={rm}",
                                    "generation.max_new_tokens=32") + n + ["--deepspeed", "zero2"]),
        ("ppo zero3", align + phase("ppo", "ppo-zero3", f"model={sft}", f"reward_model={rm}",
                                    "generation.max_new_tokens=32") + n + ["--deepspeed", "zero3"]),
    ]
    print(f"[gpu_check] {machine(cuda)}; {nproc} processes per check; model {model}; logs in {out}", flush=True)
    rows = []
    started = time.perf_counter()
    for title, cmd in checks:
        log = out / (title.replace(" ", "_").replace("(", "").replace(")", "") + ".log")
        t0 = time.perf_counter()
        with log.open("w") as f:
            try:
                rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    timeout=args.timeout).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        seconds = time.perf_counter() - t0
        target = next((Path(a.split("=", 1)[1]) for a in cmd if a.startswith("output_dir=")), out)
        rows.append({"check": title, "rc": rc, "seconds": round(seconds, 1), "loss": last_loss(target),
                     "log": str(log)})
        state = "ok" if rc == 0 else f"FAILED ({rc}; log {log})"
        print(f"[gpu_check] {title}: {state} in {seconds:.0f} s, {rows[-1]['loss']}", flush=True)
    total = time.perf_counter() - started
    width = max(len(r["check"]) for r in rows)
    print(f"\n{'check':<{width}}  result  seconds  last logged loss")
    for r in rows:
        print(f"{r['check']:<{width}}  {'ok' if r['rc'] == 0 else 'FAILED':<6}  {r['seconds']:>7.0f}  {r['loss']}")
    print(f"total {total:.0f} s on {machine(cuda)}")
    (out / "gpu_check.json").write_text(json.dumps({"machine": machine(cuda), "processes": nproc, "rows": rows,
                                                    "seconds": total}, indent=2))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
