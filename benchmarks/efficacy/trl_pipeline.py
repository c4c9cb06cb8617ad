"""TRL's straightforward pipeline on one domain: ``python -m benchmarks.efficacy.trl_pipeline SPEC.json``.

Started by ``benchmarks/efficacy/run.py`` in a fresh process per domain. ``SFTTrainer`` on the domain's
``sft.jsonl``, then ``DPOTrainer`` from that SFT model on ``prefs.jsonl``, each with ``SFTConfig()`` /
``DPOConfig()`` as TRL documents them: nothing set but where to write, no experiment tracker, and on a
machine without CUDA ``use_cpu=True`` (without it transformers refuses TRL's default ``bf16=True`` there).
A ``--quick`` run caps the steps, batch and length instead, to smoke-test the plumbing.

The spec (JSON) holds ``model``, ``data`` (the domain folder), ``output_dir``, ``quick`` and ``result`` (where
this process writes its JSON result: per-phase seconds, model folders, the settings TRL ran with). A phase
whose folder holds ``complete.json`` is not run again, so a re-run after a failure resumes at the phase that
failed.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

QUICK = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 256, "bf16": False,
         "gradient_checkpointing": False}


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sft_rows(data: Path) -> list[dict[str, Any]]:
    """The SFT conversations, ``messages`` only (metadata columns such as ``topic`` are not TRL's)."""
    return [{"messages": r["messages"]} for r in _rows(data / "sft.jsonl")]


def pref_rows(data: Path) -> list[dict[str, Any]]:
    """The preference pairs in TRL's conversational prompt / chosen / rejected format."""
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in _rows(data / "prefs.jsonl")]


def settings(quick: bool) -> dict[str, Any]:
    """What this run sets on TRL's configs: ``report_to``, ``use_cpu`` where needed, and the quick caps."""
    import torch

    out: dict[str, Any] = {"report_to": "none"}
    if not torch.cuda.is_available():
        out["use_cpu"] = True
    if quick:
        out.update(QUICK)
    return out


def _phase(name: str, folder: Path, result: dict[str, Any], train: Any) -> None:
    """Run ``train(folder)`` unless the phase completed earlier; record its seconds either way."""
    marker = folder / "complete.json"
    if marker.exists():
        result["phases"][name] = json.loads(marker.read_text())["seconds"]
        print(f"[trl] {name}: complete, skipped", flush=True)
        return
    print(f"[trl] {name} ...", flush=True)
    t0 = time.perf_counter()
    train(folder)
    seconds = time.perf_counter() - t0
    marker.write_text(json.dumps({"seconds": seconds}))
    result["phases"][name] = seconds
    print(f"[trl] {name}: {seconds:.0f} s", flush=True)


def run(spec: dict[str, Any], result: dict[str, Any]) -> None:
    import datasets
    import trl
    from transformers import AutoTokenizer

    from alignment.modeling import resolve_model

    data, out = Path(spec["data"]), Path(spec["output_dir"])
    base = str(resolve_model(spec["model"]))
    extra = settings(bool(spec.get("quick")))
    result["settings"] = {"sft": {**extra}, "dpo": {**extra}}
    result["versions"] = {"trl": trl.__version__}

    def train_sft(folder: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(base)
        args = trl.SFTConfig(output_dir=str(folder / "trainer"), **extra)
        result["settings"]["sft"].update(learning_rate=args.learning_rate, epochs=args.num_train_epochs,
                                         batch_size=args.per_device_train_batch_size, bf16=args.bf16,
                                         gradient_checkpointing=args.gradient_checkpointing)
        trainer = trl.SFTTrainer(model=base, args=args, train_dataset=datasets.Dataset.from_list(sft_rows(data)),
                                 processing_class=tokenizer)
        trainer.train()
        trainer.save_model(str(folder / "model"))
        tokenizer.save_pretrained(str(folder / "model"))

    def train_dpo(folder: Path) -> None:
        sft_model = str(out / "sft" / "model")
        tokenizer = AutoTokenizer.from_pretrained(sft_model)
        args = trl.DPOConfig(output_dir=str(folder / "trainer"), **extra)
        result["settings"]["dpo"].update(learning_rate=args.learning_rate, epochs=args.num_train_epochs,
                                         batch_size=args.per_device_train_batch_size, beta=args.beta,
                                         loss_type=args.loss_type, bf16=args.bf16,
                                         gradient_checkpointing=args.gradient_checkpointing)
        trainer = trl.DPOTrainer(model=sft_model, args=args,
                                 train_dataset=datasets.Dataset.from_list(pref_rows(data)),
                                 processing_class=tokenizer)
        trainer.train()
        trainer.save_model(str(folder / "model"))
        tokenizer.save_pretrained(str(folder / "model"))

    for name, train in (("sft", train_sft), ("dpo", train_dpo)):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        _phase(name, folder, result, train)
        result["models"][name] = str(folder / "model")


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result: dict[str, Any] = {"ok": False, "phases": {}, "models": {}}
    try:
        run(spec, result)
        result["ok"] = True
    except Exception as exc:  # the table shows "failed: reason"; the traceback is in the log
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}".strip()
    result["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(spec["result"]).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
