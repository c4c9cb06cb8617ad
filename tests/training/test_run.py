"""The Run every phase shares: step cadence, checkpoint + prune, config.yaml and resume, log lines on rank 0,
and the step hook that lets the benchmark time steps without patching a phase."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from alignment.config import DPOConfig, PPOConfig, SFTConfig, load_config
from alignment.errors import AlignError
from alignment.run import Run, step_hook
from alignment.training import Engine, checkpoints
from tests.conftest import write_jsonl


def _cfg(tmp_path: Path, sft_file: Path, **train) -> SFTConfig:
    overrides = {"model": "x", "output_dir": str(tmp_path / "out"), "data.train": str(sft_file),
                 "tracking.backends": ["none"], **{f"train.{k}": v for k, v in train.items()}}
    return load_config(SFTConfig, None, overrides)


@pytest.mark.parametrize("every, total, due", [
    (3, 10, [3, 6, 9]),  # the last step is the phase's own (final eval, the saved model), not a "due" one
    (5, 10, [5]),
    (0, 10, []),  # 0 turns it off
])
def test_eval_and_save_are_due_every_n_steps_but_never_at_the_end(tmp_path, sft_file, every, total, due):
    run = Run(_cfg(tmp_path, sft_file, eval_every=every, save_every=every, resume="never"), "sft")
    run.total_steps = total
    assert [d for d in range(1, total + 1) if run.eval_due(d)] == due
    assert [d for d in range(1, total + 1) if run.save_due(d)] == due


def test_logging_is_due_every_n_steps_and_at_the_last(tmp_path, sft_file):
    run = Run(_cfg(tmp_path, sft_file, log_every=4, resume="never"), "sft")
    run.total_steps = 10
    assert [d for d in range(1, 11) if run.log_due(d)] == [4, 8, 10]


def _engine(cfg: SFTConfig) -> Engine:
    torch.manual_seed(0)
    return Engine(torch.nn.Linear(3, 2), cfg.train, 10, False, None)


def test_checkpoints_are_pruned_and_a_new_run_resumes_from_the_newest(tmp_path, sft_file, capsys, monkeypatch):
    from alignment import packing

    cfg = _cfg(tmp_path, sft_file, keep_checkpoints=2, save_every=1, resume="auto", bf16="false")
    run = Run(cfg, "sft")
    assert run.resume_from is None
    monkeypatch.setattr(packing, "_VERDICTS", {((96, 32), torch.bfloat16, 8): 1.4})  # generation's packing probe
    engine = _engine(cfg)
    assert run.start(engine, 10) == {"step": 0}
    assert (run.out / "config.yaml").exists()
    for done in (1, 2, 3):
        with torch.no_grad():
            engine.module.weight.add_(1.0)
        run.checkpoint(engine, done, {"extra": done})
    assert [p.name for p in checkpoints(run.out)] == ["step-2", "step-3"]  # keep_checkpoints: 2
    run.close()

    again = Run(cfg, "sft")
    assert again.resume_from == run.out / "checkpoints" / "step-3"
    fresh = _engine(cfg)
    packing._VERDICTS.clear()  # a new process, which has not probed
    state = again.start(fresh, 10)
    assert state["step"] == 3 and state["extra"] == 3  # the phase's own state comes back with the step
    # and the packing verdicts the run generated under: the resumed process packs where the saved one did
    assert packing._VERDICTS == {((96, 32), torch.bfloat16, 8): 1.4}
    assert torch.equal(fresh.module.weight, engine.module.weight)
    assert "[sft] resumed from" in capsys.readouterr().out
    again.close()


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 102208 vs 102102"),  # torch, disk full
    OSError(28, "No space left on device"),
])
def test_a_disk_that_fills_during_a_save_leaves_the_last_checkpoint_and_one_clear_error(
        tmp_path, sft_file, monkeypatch, failure):
    cfg = _cfg(tmp_path, sft_file, save_every=1, resume="auto", bf16="false")
    run = Run(cfg, "sft")
    engine = _engine(cfg)
    run.start(engine, 10)
    run.checkpoint(engine, 1)
    saved = engine.module.weight.detach().clone()
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if str(f).endswith("engine.pt"):
            real_save(obj, f, *a, **k)  # half a file lands, as when the disk fills mid-write
            raise failure
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with torch.no_grad():
        engine.module.weight.add_(1.0)
    with pytest.raises(AlignError, match="could not write the checkpoint .*GiB free on that disk.*resumes") as err:
        run.checkpoint(engine, 2)
    assert err.value.file == str(run.out / "checkpoints" / "step-2")
    assert [p.name for p in (run.out / "checkpoints").iterdir()] == ["step-1"]  # no step-2, no step-2.tmp
    run.close()
    monkeypatch.setattr(torch, "save", real_save)

    again = Run(cfg, "sft")
    fresh = _engine(cfg)
    assert again.start(fresh, 10)["step"] == 1
    assert torch.equal(fresh.module.weight, saved)
    again.close()


def test_an_error_that_is_not_a_failed_write_is_not_disguised_as_one(tmp_path, sft_file, monkeypatch):
    cfg = _cfg(tmp_path, sft_file, save_every=1, resume="auto", bf16="false")
    run = Run(cfg, "sft")
    engine = _engine(cfg)
    run.start(engine, 10)

    def broken(*a, **k):
        raise RuntimeError("a bug in the optimizer state")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="a bug in the optimizer state"):
        run.checkpoint(engine, 1)
    run.close()


def test_a_fresh_run_clears_an_earlier_runs_checkpoints(tmp_path, sft_file):
    cfg = _cfg(tmp_path, sft_file, save_every=1, resume="auto", bf16="false")
    run = Run(cfg, "sft")
    run.start(_engine(cfg), 10)
    run.checkpoint(run_engine := _engine(cfg), 1)
    assert checkpoints(run.out)
    del run_engine
    never = Run(_cfg(tmp_path, sft_file, resume="never", bf16="false"), "sft")
    assert never.resume_from is None
    never.start(_engine(cfg), 10)
    assert checkpoints(never.out) == []


def test_log_lines_carry_the_tag_on_rank_0_only(tmp_path, sft_file, capsys, monkeypatch):
    run = Run(_cfg(tmp_path, sft_file, resume="never"), "dpo")
    run.log("held-out: accuracy 1.000")
    assert capsys.readouterr().out == "[dpo] held-out: accuracy 1.000\n"
    run.main = False
    run.log("not printed")
    assert capsys.readouterr().out == ""


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def begin(self, step) -> None:
        self.events.append(("begin", step.phase, step.number, None if step.batches is None else len(step.batches)))

    def end(self, step) -> None:
        rows = None if step.rollout is None else step.rollout.responses.shape[0]
        self.events.append(("end", step.phase, step.number, rows))


def test_a_step_hook_sees_every_sft_step_with_its_micro_batches(tmp_path, tiny_model_dir, sft_file):
    from alignment.sft import run_sft

    cfg = load_config(SFTConfig, None, {"model": str(tiny_model_dir), "output_dir": str(tmp_path / "sft"),
                                        "data.train": str(sft_file), "data.max_length": 64,
                                        "train.max_steps": 3, "train.batch_size": 2, "train.grad_accum": 2,
                                        "train.bf16": "false", "train.eval_every": 0, "train.save_every": 0,
                                        "tracking.backends": ["none"]})
    with step_hook(Recorder()) as hook:
        run_sft(cfg)
    # grad_accum 2: two micro-batches per optimizer step, begin before and end after each step
    assert hook.events == [(e, "sft", n, 2 if e == "begin" else None) for n in (1, 2, 3) for e in ("begin", "end")]
    seen = len(hook.events)
    run_sft(dataclasses.replace(cfg, output_dir=str(tmp_path / "again")))
    assert len(hook.events) == seen  # outside the block the hook is gone


def test_a_step_hook_sees_each_ppo_rollout(tmp_path, tiny_model_dir):
    from alignment.ppo import run_ppo

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say something {i}"} for i in range(8)])
    cfg = load_config(PPOConfig, None, {"model": str(tiny_model_dir), "output_dir": str(tmp_path / "ppo"),
                                        "data.train": str(prompts), "train.batch_size": 2, "train.max_steps": 2,
                                        "train.bf16": "false", "train.save_every": 0, "advantage": "rloo",
                                        "critic": "none", "num_generations": 2,
                                        "generation.max_new_tokens": 4, "tracking.backends": ["none"]})

    def reward(prompts, responses):
        return torch.tensor([float(len(r)) for r in responses])

    with step_hook(Recorder()) as hook:
        run_ppo(cfg, reward_fn=reward)
    # 2 prompts x 2 answers per rollout batch, seen whole at the end of the step
    assert hook.events == [("begin", "ppo", 1, None), ("end", "ppo", 1, 4),
                           ("begin", "ppo", 2, None), ("end", "ppo", 2, 4)]


def test_kto_starts_its_run_through_run(tmp_path, monkeypatch):
    """KTO keeps transformers' checkpoint layout; Run takes its resume point and writes config.yaml."""
    cfg = load_config(DPOConfig, None, {"model": "x", "output_dir": str(tmp_path / "kto"),
                                        "data.train": str(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a",
                                                                                              "completion": "b",
                                                                                              "label": True}])),
                                        "tracking.backends": ["none"]})
    ckpt = tmp_path / "kto" / "checkpoints" / "checkpoint-4"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text('{"global_step": 4}')
    from alignment.kto import find_checkpoint

    run = Run(cfg, "kto", resume_from=find_checkpoint(run_out := Path(cfg.output_dir), "auto"))
    assert run.resume_from == ckpt
    assert run.start(None, 0, start_step=4) == {"step": 4}
    assert (run_out / "config.yaml").exists() and ckpt.exists()  # resuming keeps the checkpoint
    run.close()


def test_no_phase_keeps_its_own_copy_of_the_run_scaffolding():
    """The loop scaffolding lives in Run: no phase opens its own tracker or prunes checkpoints itself."""
    root = Path(__file__).resolve().parents[2] / "alignment"
    for phase in ("sft", "rm", "dpo", "kto", "ppo"):
        text = (root / f"{phase}.py").read_text()
        for copy in ("MetricsLogger(", "prune_checkpoints(", "clear_checkpoints(", "print if main",
                     "save_config("):
            assert copy not in text, (phase, copy)
        assert f'Run(cfg, "{phase}"' in text
