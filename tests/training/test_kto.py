"""KTO on a tiny model through TRL's KTOTrainer: good answers gain on negative examples, our metric
names land in metrics.jsonl, LoRA saves an adapter, `resume: auto` picks up a checkpoint and matches
the uninterrupted run, and 2-process ZeRO-2 / ZeRO-3 (+LoRA) runs on CPU (slow)."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignment.config import DPOConfig, load_config
from alignment.errors import AlignError
from alignment.kto import find_checkpoint, load_unpaired, rename_metrics, run_kto, weight_hint
from alignment.tracking import read_metrics
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]

TOPICS = ["my bill", "a claim", "my address", "the deductible", "a refund", "my password", "the app",
          "roadside help", "my policy", "a payment"]
GOOD = "Certainly, I can help with {}. Thank you for asking."
BAD = "No. Figure out {} yourself."
HELD_OUT = "Could you explain the waiting period?"


def _unpaired_rows(n_prompts: int = 16) -> list[dict]:
    """Per prompt a polite good answer and a rude negative; every fourth prompt has only the negative
    (an expert wrote what must not be said, nobody wrote the right answer)."""
    rng = random.Random(0)
    rows = []
    for i in range(n_prompts):
        topic = rng.choice(TOPICS)
        prompt = [{"role": "user", "content": f"Question {i}: can you help me with {topic}?"}]
        if i % 4:
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": GOOD.format(topic)}],
                         "label": True})
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": BAD.format(topic)}],
                     "label": False})
    return rows


@pytest.fixture()
def unpaired_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "unpaired.jsonl", _unpaired_rows())


def _config(model: Path, data: Path, out: Path, overrides: dict | None = None, **train) -> DPOConfig:
    recipe = {"phase": "dpo", "model": str(model), "output_dir": str(out), "negatives": "kto", "beta": 0.1,
              "data": {"train": str(data), "max_length": 64, "split": {"train": 0.85, "validation": 0.15}},
              "train": {"max_steps": 10, "batch_size": 4, "lr": 5e-3, "save_every": 0, "eval_every": 5,
                        "bf16": "false", "warmup_ratio": 0.0, "scheduler": "constant", **train},
              "tracking": {"backends": ["none"]}}
    return load_config(DPOConfig, None, _flatten(recipe, overrides))


def _flatten(recipe: dict, overrides: dict | None) -> dict:
    """Dotted keys, as ``key=value`` overrides are (``split`` stays a mapping)."""
    flat: dict = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and key not in ("split",):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(recipe, "")
    flat.update(overrides or {})
    return flat


@torch.no_grad()
def _logp(model, tokenizer, answer: str) -> float:
    """Summed log-prob of ``answer`` after the held-out prompt (chat-templated, as KTOTrainer tokenizes)."""
    from alignment.losses import sequence_logps

    prompt = [{"role": "user", "content": HELD_OUT}]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=True,
                                         return_dict=True)
    ids = torch.tensor([full["input_ids"]])  # (1, T)
    labels = ids.clone()
    labels[:, : len(prompt_ids["input_ids"])] = -100
    logits = model(input_ids=ids).logits  # (1, T, V)
    logps, _ = sequence_logps(logits[:, :-1], labels[:, 1:])
    return float(logps[0])


def _margin(model_dir: Path) -> float:
    from alignment.modeling import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(model_dir, merge_adapter=True).eval(), load_tokenizer(model_dir)
    return _logp(model, tokenizer, GOOD.format("the waiting period")) - _logp(model, tokenizer,
                                                                            BAD.format("the waiting period"))


def test_kto_prefers_good_answers(tmp_path, tiny_model_dir, unpaired_file, capsys):
    from alignment.modeling import load_causal_lm

    out = tmp_path / "kto"
    before = _margin(tiny_model_dir)
    assert run_kto(_config(tiny_model_dir, unpaired_file, out)) == out / "model"
    printed = capsys.readouterr().out
    assert "[kto] data: unpaired (conversational), 28 rows" in printed
    assert f"[kto] saved {out / 'model'}" in printed

    rows = read_metrics(out / "metrics.jsonl")
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(1, 11))
    assert all(math.isfinite(r["train/loss"]) for r in train)
    for key in ("train/lr", "train/grad_norm", "train/epoch", "kl", "rewards/chosen", "rewards/rejected",
                "logps/chosen", "logps/rejected"):
        assert key in train[-1], key
    assert train[-1]["train/lr"] == pytest.approx(5e-3)
    assert any("rewards/margins" in r for r in train)
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in evals] == [5, 10]  # the final step's evaluation is not repeated
    assert "eval/rewards/chosen" in evals[-1] and "eval/kl" in evals[-1]
    assert not any(k.startswith("eval_") or k in ("loss", "learning_rate") for r in rows for k in r)

    trained = load_causal_lm(out / "model")
    start = load_causal_lm(tiny_model_dir)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))
    assert _margin(out / "model") > before + 5.0  # log pi(good) - log pi(rude) on an unseen prompt
    assert (out / "config.yaml").exists()
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").glob("checkpoint-*"))


def test_kto_lora_saves_adapter(tmp_path, tiny_model_dir, unpaired_file):
    from alignment.modeling import load_causal_lm

    out = tmp_path / "lora"
    cfg = _config(tiny_model_dir, unpaired_file, out, {"lora.enabled": True, "lora.r": 4, "lora.save_merged": True},
                  max_steps=4, eval_every=0)
    run_kto(cfg)
    assert (out / "model" / "adapter_config.json").exists()
    assert (out / "merged" / "model.safetensors").exists()
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    # Adapter off == policy at the start: the KL estimate and rewards start at 0.
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert rows[0]["train/loss"] == pytest.approx(0.5, abs=1e-3)
    assert "eval/loss" in read_metrics(out / "metrics.jsonl")[-1]  # eval_every 0: once at the end
    load_causal_lm(out / "model")


def test_kto_resume_continues(tmp_path, tiny_model_dir, unpaired_file):
    def cfg(out: Path, **train) -> DPOConfig:
        return _config(tiny_model_dir, unpaired_file, out, **{"max_steps": 4, "save_every": 2, "keep_checkpoints": 5,
                                                              "eval_every": 0, **train})

    full = tmp_path / "full"
    run_kto(cfg(full))
    assert sorted(p.name for p in (full / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "checkpoint-2", part / "checkpoints" / "checkpoint-2")
    (part / "checkpoints" / "checkpoint-3").mkdir()  # a save cut short: no trainer_state.json
    assert find_checkpoint(part, "auto") == part / "checkpoints" / "checkpoint-2"
    # Every checkpoint records the split it trained under; another one is refused before any weight is read.
    record = json.loads((part / "checkpoints" / "checkpoint-2" / "align_split.json").read_text())
    assert record["data.split"] == {"train": 0.85, "validation": 0.15} and record["split_scheme"] == 2
    other = _config(tiny_model_dir, unpaired_file, part, {"data.split": {"train": 0.7, "validation": 0.3}},
                    max_steps=4, save_every=2, keep_checkpoints=5, eval_every=0)
    with pytest.raises(AlignError, match="held-out split changed.*data.split") as refused:
        run_kto(other)
    assert refused.value.field == "train.resume"
    assert not (part / "checkpoints" / "checkpoint-4").exists()
    run_kto(cfg(part))
    a = {r["step"]: r for r in read_metrics(full / "metrics.jsonl") if "train/loss" in r}
    b = {r["step"]: r for r in read_metrics(part / "metrics.jsonl") if "train/loss" in r}
    assert sorted(b) == [3, 4]  # continued from step 2 and ended at the same final step
    for step in (3, 4):
        assert b[step]["train/loss"] == pytest.approx(a[step]["train/loss"], rel=1e-4)
    state = json.loads((part / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # "never" starts afresh and removes the earlier run's checkpoints.
    run_kto(cfg(part, max_steps=1, save_every=0, resume="never"))
    assert not list((part / "checkpoints").glob("checkpoint-*"))
    assert find_checkpoint(part, "never") is None


def test_split_keeps_prompts_together(tmp_path, tiny_model_dir, unpaired_file):
    rows = _unpaired_rows() + [_unpaired_rows()[0]]  # one exact duplicate
    data = write_jsonl(tmp_path / "dup.jsonl", rows)
    train, val, info = load_unpaired(_config(tiny_model_dir, data, tmp_path / "x",
                                             {"data.split": {"train": 0.5, "validation": 0.5}}))
    assert info.duplicates == 1 and info.train + info.validation == 28
    assert info.desirable == sum(r["label"] for r in train)
    assert not {json.dumps(r["prompt"]) for r in train} & {json.dumps(r["prompt"]) for r in val}
    assert set(train[0]) == {"prompt", "completion", "label"} and train[0]["prompt"][0]["role"] == "user"


def test_rename_metrics_and_weight_hint(tiny_model_dir, unpaired_file):
    assert rename_metrics({"loss": 0.5, "learning_rate": 1e-3, "grad_norm": 2.0, "kl": 0.1, "rewards/chosen": 1.0,
                           "eval_loss": 0.4, "eval_rewards/margins": 0.3, "total_flos": 1.0}) == {
        "train/loss": 0.5, "train/lr": 1e-3, "train/grad_norm": 2.0, "kl": 0.1, "rewards/chosen": 1.0,
        "eval/loss": 0.4, "eval/rewards/margins": 0.3}
    cfg = _config(tiny_model_dir, unpaired_file, Path("unused"))
    assert weight_hint(cfg, 10, 10) is None
    assert "kto_desirable_weight to 3.00..4.00" in weight_hint(cfg, 10, 30)


def test_kto_refuses_what_it_cannot_run(tmp_path, tiny_model_dir, unpaired_file, monkeypatch):
    with pytest.raises(AlignError, match="at least 2 examples"):
        run_kto(_config(tiny_model_dir, unpaired_file, tmp_path / "a", batch_size=1))
    if not torch.cuda.is_available():  # on CPU we set up DeepSpeed's process state, which needs the launcher's ranks
        monkeypatch.delenv("LOCAL_RANK", raising=False)
        with pytest.raises(AlignError, match="launcher"):
            run_kto(_config(tiny_model_dir, unpaired_file, tmp_path / "b", {"deepspeed": "zero2"}))


@pytest.mark.slow
@pytest.mark.parametrize("stage,lora", [("zero2", False), ("zero3", True)])
def test_kto_deepspeed_two_processes(tmp_path, tiny_model_dir, unpaired_file, stage, lora):
    """Two CPU processes through DeepSpeed's launcher (as `align dpo --deepspeed ... --num-processes 2`
    starts them), each running this module's __main__."""
    from alignment.config import save_config
    from alignment.distributed import free_port
    from alignment.modeling import load_causal_lm

    out = tmp_path / stage
    cfg = _config(tiny_model_dir, unpaired_file, out, {"deepspeed": stage, "lora.enabled": lora, "lora.r": 4},
                  max_steps=4, save_every=2, eval_every=2)
    recipe = tmp_path / "kto.yaml"
    save_config(cfg, recipe)
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "deepspeed.launcher.runner", "--no_local_rank", "--master_addr",
                           "127.0.0.1", "--master_port", str(free_port()), "--num_gpus", "2", "--module",
                           "tests.training.test_kto", str(recipe)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"processes=2; deepspeed={stage}" in proc.stdout
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(math.isfinite(r["train/loss"]) for r in rows)
    assert (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists()
    assert (out / "model" / ("adapter_config.json" if lora else "model.safetensors")).exists()
    load_causal_lm(out / "model")


if __name__ == "__main__":  # a worker of test_kto_deepspeed_two_processes
    run_kto(load_config(DPOConfig, sys.argv[1], sys.argv[2:]))


@pytest.mark.parametrize("negatives, trainer", [("auto", "kto"), ("kto", "kto"), ("pairs", "dpo")])
def test_the_phase_reads_and_validates_an_unpaired_file_once(tmp_path, unpaired_file, monkeypatch, negatives, trainer):
    """On the way to DPO or KTO the phase asks for the file up to four times (which kind, any orphan negatives,
    the pairs or the rows): one read and one validation serve them all, and nothing is held after loading."""
    from alignment import phases
    from alignment.data import formats, io
    from alignment.data.preferences import load_pairs

    calls = {"read": 0, "validate": 0}
    read, validate = io._load_records, formats.validate

    def counted_read(path):
        calls["read"] += 1
        return read(path)

    def counted_validate(*args, **kwargs):
        calls["validate"] += 1
        return validate(*args, **kwargs)

    monkeypatch.setattr(io, "_load_records", counted_read)
    monkeypatch.setattr(formats, "validate", counted_validate)
    loaded = {}

    def fake_kto(cfg):
        loaded["kto"] = load_unpaired(cfg)
        loaded["cache_after"] = dict(io._cache or {})
        return tmp_path

    def fake_dpo(cfg):
        loaded["dpo"] = load_pairs(cfg.data, cfg.train.seed)
        loaded["cache_after"] = dict(io._cache or {})
        return tmp_path

    monkeypatch.setattr("alignment.kto.run_kto", fake_kto)
    monkeypatch.setattr("alignment.dpo.run_dpo", fake_dpo)
    cfg = _config(tmp_path / "model", unpaired_file, tmp_path / "out", {"negatives": negatives})
    phases.PHASES["dpo"].run(cfg)
    assert set(loaded) == {trainer, "cache_after"}
    assert calls == {"read": 1, "validate": 1}
    assert loaded["cache_after"] == {} and io._cache is None
    # the same answers as reading afresh
    fresh = load_unpaired(cfg) if trainer == "kto" else load_pairs(cfg.data, cfg.train.seed)
    assert repr(fresh) == repr(loaded[trainer])


def test_one_read_per_file_notices_a_change_and_keeps_no_failure(tmp_path, monkeypatch):
    from alignment.data import io, load_dataset_file

    calls = []
    read = io._load_records
    monkeypatch.setattr(io, "_load_records", lambda path: calls.append(path) or read(path))
    path = write_jsonl(tmp_path / "u.jsonl", _unpaired_rows(4))
    with io.one_read_per_file():
        ds, _ = load_dataset_file(path, "unpaired")
        assert load_dataset_file(path, "unpaired")[0] is ds and len(calls) == 1
        write_jsonl(path, _unpaired_rows(8))  # a new export under the same name is read again
        assert len(load_dataset_file(path, "unpaired")[0]) == len(_unpaired_rows(8)) and len(calls) == 2
        path.write_text('{"prompt": "q", "completion": "a"}\n')
        for _ in range(2):  # a failed validation is raised again, with the same message, never kept
            with pytest.raises(AlignError, match="missing") as e:
                load_dataset_file(path, "unpaired")
            assert e.value.file == str(path) and e.value.field == "label"
        assert len(calls) == 3  # (the records themselves parsed fine: read once)
    load_dataset_file(write_jsonl(tmp_path / "v.jsonl", _unpaired_rows(4)), "unpaired")
    load_dataset_file(tmp_path / "v.jsonl", "unpaired")
    assert len(calls) == 5  # outside the block nothing is kept
