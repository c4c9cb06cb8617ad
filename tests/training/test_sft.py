"""SFT on a tiny model: parameters change, loss finite and falling, resume equals an uninterrupted run,
LoRA saves an adapter (and merged weights) that `align` loads back, and 2-process ZeRO-2/ZeRO-3 runs
save a model that loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment.cli import main
from alignment.config import SFTConfig, load_config
from alignment.tracking import read_metrics

REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, model: Path, data: Path, out: Path, **train) -> Path:
    train_cfg = {"max_steps": 6, "batch_size": 4, "grad_accum": 2, "lr": 3e-3, "save_every": 3,
                 "eval_every": 3, "keep_checkpoints": 5, "bf16": "false", **train}
    recipe = {"phase": "sft", "model": str(model), "output_dir": str(out),
              "data": {"train": str(data), "max_length": 96}, "train": train_cfg,
              "tracking": {"backends": ["none"]}}
    path = tmp_path / f"recipe-{out.name}.yaml"
    path.write_text(json.dumps(recipe))  # JSON is valid YAML
    return path


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def test_sft_trains_and_saves(tmp_path, tiny_model_dir, sft_file):
    out = tmp_path / "run"
    assert main(["sft", "--config", str(_recipe(tmp_path, tiny_model_dir, sft_file, out))]) == 0
    before, after = _weights(tiny_model_dir), _weights(out / "model")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), "every trained tensor should move"
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    losses = [r["train/loss"] for r in rows]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5
    saved = load_config(SFTConfig, out / "config.yaml")
    assert saved.train.lr == 3e-3 and saved.data.train == str(sft_file)
    # the saved folder is a model `align` accepts: the tokenizer and generation config came along
    from alignment.modeling import load_causal_lm, load_tokenizer

    assert load_tokenizer(out).eos_token == "<|im_end|>"
    assert load_causal_lm(out).generation_config.eos_token_id == 2


def test_resume_matches_uninterrupted(tmp_path, tiny_model_dir, sft_file):
    full = tmp_path / "full"
    assert main(["sft", "--config", str(_recipe(tmp_path, tiny_model_dir, sft_file, full))]) == 0
    # A run killed after its step-3 checkpoint: the same checkpoint, nothing after it.
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-3", part / "checkpoints" / "step-3")
    rows = [r for r in read_metrics(full / "metrics.jsonl") if r["step"] <= 3]
    (part / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (part / "checkpoints" / "step-9.tmp").mkdir()  # a save killed half-way is ignored
    assert main(["sft", "--config", str(_recipe(tmp_path, tiny_model_dir, sft_file, part))]) == 0

    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train/loss", "eval/loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5), (ra["step"], key)
    wa, wb = _weights(full / "model"), _weights(part / "model")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_resume_never_starts_fresh(tmp_path, tiny_model_dir, sft_file):
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, tiny_model_dir, sft_file, out)
    assert main(["sft", "--config", str(recipe)]) == 0
    assert main(["sft", "--config", str(recipe), "train.resume=never", "train.max_steps=2"]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r] == [1, 2]


def test_lora_saves_adapter_and_merged(tmp_path, tiny_model_dir, sft_file):
    out = tmp_path / "lora"
    recipe = _recipe(tmp_path, tiny_model_dir, sft_file, out, lr=1e-2)
    assert main(["sft", "--config", str(recipe), "lora.enabled=true", "lora.r=4", "lora.save_merged=true"]) == 0
    assert (out / "model" / "adapter_config.json").exists()
    assert not (out / "model" / "model.safetensors").exists()
    merged = _weights(out / "merged")
    base = _weights(tiny_model_dir)
    assert any(not torch.equal(base[k], merged[k]) for k in base if k in merged)
    from alignment.modeling import load_causal_lm

    model = load_causal_lm(out, merge_adapter=True)  # the phase folder resolves to the adapter
    ids = torch.tensor([[1, 2, 3]])
    expected = load_causal_lm(out / "merged")(ids).logits
    torch.testing.assert_close(model(ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_lora_checkpoint_holds_the_adapter_and_resumes_exactly(tmp_path, tiny_model_dir, sft_file):
    lora = ["lora.enabled=true", "lora.r=4", "lora.dropout=0.0"]
    full = tmp_path / "full"
    assert main(["sft", "--config", str(_recipe(tmp_path, tiny_model_dir, sft_file, full, lr=1e-2)), *lora]) == 0
    blob = torch.load(full / "checkpoints" / "step-3" / "engine.pt", weights_only=True)  # no pickled code
    assert blob["model"] and all("lora_" in name for name in blob["model"])  # the adapter, not the frozen base
    adapter = sum(t.numel() for t in blob["model"].values())
    base = sum(t.numel() for t in _weights(tiny_model_dir).values())
    assert adapter < base / 20
    assert len(blob["optimizer"]["state"]) == len(blob["model"])  # its optimizer state, one entry per tensor

    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-3", part / "checkpoints" / "step-3")
    rows = [r for r in read_metrics(full / "metrics.jsonl") if r["step"] <= 3]
    (part / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["sft", "--config", str(_recipe(tmp_path, tiny_model_dir, sft_file, part, lr=1e-2)), *lora]) == 0
    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    losses = [[r["train/loss"] for r in rows if "train/loss" in r] for rows in (a, b)]
    assert len(losses[0]) == 6 and losses[1] == pytest.approx(losses[0], rel=1e-5)
    wa = load_file(str(full / "model" / "adapter_model.safetensors"))
    wb = load_file(str(part / "model" / "adapter_model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_a_checkpoint_of_another_setup_is_refused(tmp_path, tiny_model_dir, sft_file, capsys):
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, tiny_model_dir, sft_file, out, max_steps=4)
    assert main(["sft", "--config", str(recipe), "lora.enabled=true", "lora.r=4"]) == 0  # checkpoint at step 3
    # the same folder resumed as full fine-tuning: the LoRA checkpoint cannot be this run's state
    assert main(["sft", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "engine.pt" in err and "train.resume" in err and "another setup" in err


def test_packing_trains(tmp_path, tiny_model_dir, sft_file):
    out = tmp_path / "packed"
    recipe = _recipe(tmp_path, tiny_model_dir, sft_file, out)
    assert main(["sft", "--config", str(recipe), "data.packing=true", "data.max_length=256"]) == 0
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]


def test_bad_recipe_is_one_clear_error(tmp_path, tiny_model_dir, sft_file, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"phase: sft\nmodel: {tiny_model_dir}\ndata:\n  train: {sft_file}\ntrain:\n  lrr: 0.1\n")
    assert main(["sft", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:6" in err and "train.lrr" in err and "did you mean 'train.lr'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_two_processes(tmp_path, tiny_model_dir, sft_file, stage):
    out = tmp_path / stage
    recipe = _recipe(tmp_path, tiny_model_dir, sft_file, out, max_steps=4, save_every=2, grad_accum=1)
    cmd = [sys.executable, "-m", "alignment.cli", "sft", "--config", str(recipe), "--deepspeed", stage,
           "--num-processes", "2"]
    shm = Path("/dev/shm")
    buffers_before = set(shm.glob("deepspeed_allreduce_buffer_*"))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "processes=2" in proc.stdout
    # `align` re-executed itself under tcmalloc when installed, and the workers inherited it.
    from alignment.allocator import find_tcmalloc

    assert ("[sft] memory allocator: tcmalloc" if find_tcmalloc() else "[sft] memory allocator: system") in proc.stdout
    # DeepSpeed's CPU all-reduce files (66 MB per process) are removed at exit, not left in /dev/shm.
    assert set(shm.glob("deepspeed_allreduce_buffer_*")) <= buffers_before
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    before = _weights(tiny_model_dir)
    after = {k: v for k, v in model.state_dict().items()}
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert (out / "checkpoints" / "step-2" / "ds").is_dir()
    losses = [r["train/loss"] for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.slow
def test_deepspeed_lora_checkpoint_skips_the_frozen_base_and_resumes(tmp_path, tiny_model_dir, sft_file):
    def run(out: Path, max_steps: int) -> None:
        recipe = _recipe(tmp_path, tiny_model_dir, sft_file, out, max_steps=max_steps, save_every=2, grad_accum=1,
                         lr=1e-2)
        cmd = [sys.executable, "-m", "alignment.cli", "sft", "--config", str(recipe), "--deepspeed", "zero2",
               "--num-processes", "2", "lora.enabled=true", "lora.r=4", "lora.dropout=0.0"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    full = tmp_path / "full"
    run(full, 4)
    states = list((full / "checkpoints" / "step-2" / "ds").glob("*model_states.pt"))
    assert states
    module = torch.load(states[0], weights_only=False)["module"]  # DeepSpeed's own file format
    # the adapter, and DeepSpeed's copy of the tied output embedding (it keeps tied weights whatever their
    # requires_grad); none of the frozen decoder layers
    assert module and [n for n in module if "lora_" not in n] == ["base_model.model.lm_head.weight"]
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-2", part / "checkpoints" / "step-2")
    rows = [r for r in read_metrics(full / "metrics.jsonl") if r["step"] <= 2]
    (part / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(part, 4)
    a, b = ([r["train/loss"] for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r] for out in (full, part))
    assert len(a) == 4 and b == pytest.approx(a, rel=1e-5)
    wa = load_file(str(full / "model" / "adapter_model.safetensors"))
    wb = load_file(str(part / "model" / "adapter_model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_tracking_wandb_offline_and_tensorboard(tmp_path, tiny_model_dir, sft_file, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "tracked"
    recipe = _recipe(tmp_path, tiny_model_dir, sft_file, out, max_steps=2)
    assert main(["sft", "--config", str(recipe), "tracking.backends=[wandb, tensorboard]"]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "an offline run that `wandb sync` can upload"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_multiprocess_launch_validates_data_first(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    recipe = _recipe(tmp_path, tiny_model_dir, bad, tmp_path / "out")
    assert main(["sft", "--config", str(recipe), "--deepspeed", "zero2", "--num-processes", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1" in err and "assistant" in err
    assert not (tmp_path / "out").exists()


def test_full_finetuning_from_a_lora_adapter(tmp_path, tiny_model_dir, sft_file):
    """Starting full fine-tuning from an adapter folder trains the merged weights (nothing frozen)."""
    lora = tmp_path / "lora"
    assert main(["sft", "--config", str(_recipe(tmp_path, tiny_model_dir, sft_file, lora, max_steps=2)),
                 "lora.enabled=true", "lora.r=4"]) == 0
    full = tmp_path / "full-from-adapter"
    assert main(["sft", "--config", str(_recipe(tmp_path, lora, sft_file, full, max_steps=2))]) == 0
    from alignment.modeling import load_causal_lm

    merged = load_causal_lm(lora, merge_adapter=True).state_dict()
    after = _weights(full / "model")
    assert all(not torch.equal(merged[k], after[k]) for k in after if k in merged)


def test_preferred_answers_join_the_training_data(tmp_path, sft_file):
    from alignment.data.preferences import split_pairs
    from alignment.sft import PREFERENCE_HOLDOUT, load_sft_records, preferred_conversations
    from tests.conftest import write_jsonl

    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(40)]
    rows = [{"prompt": p, "chosen": [{"role": "assistant", "content": f"Good answer {i}."}],
             "rejected": [{"role": "assistant", "content": f"Bad answer {i}."}]} for i, p in enumerate(prompts)]
    rows.append({**rows[0], "rejected": [{"role": "assistant", "content": "Another bad answer."}]})  # same chosen
    prefs = write_jsonl(tmp_path / "prefs.jsonl", rows)
    def config(**data: str) -> SFTConfig:
        recipe = tmp_path / f"sft-{len(data)}.yaml"
        recipe.write_text(json.dumps({"phase": "sft", "model": "x", "data": {"train": str(sft_file), **data}}))
        return load_config(SFTConfig, recipe)

    cfg, plain = config(preferred=str(prefs)), config()

    train, val, report = load_sft_records(cfg)
    base_train, base_val, _ = load_sft_records(plain)
    added = train[len(base_train):]
    assert train[:len(base_train)] == base_train and val == base_val, "the curated data is untouched"
    # the pairs the preference phases hold out (same default split and seed) are not trained on
    from alignment.data.preferences import load_preference_examples

    examples, _ = load_preference_examples(str(prefs))
    held_out = {ex.prompt[0]["content"]
                for ex in split_pairs(examples, PREFERENCE_HOLDOUT, cfg.train.seed)["validation"]}
    assert held_out, "the split holds some prompts out"
    assert {r["messages"][0]["content"] for r in added} == {p[0]["content"] for p in prompts} - held_out
    assert all(r["messages"][-1]["content"].startswith("Good answer") for r in added), "only chosen answers"
    assert len(added) == report.preferred_added == len(prompts) - len(held_out), "each answer once"
    assert preferred_conversations(str(prefs), cfg.train.seed) == added


def test_preferred_path_is_relative_to_the_recipe(tmp_path, sft_file):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(json.dumps({"phase": "sft", "model": "x", "data": {"train": str(sft_file),
                                                                         "preferred": "prefs.jsonl"}}))
    (tmp_path / "prefs.jsonl").write_text("")
    cfg = load_config(SFTConfig, recipe)
    assert cfg.data.preferred == str(tmp_path / "prefs.jsonl")
