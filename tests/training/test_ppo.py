"""PPO on tiny models: a policy paid for one token learns to emit it; a reward model drives a run;
resume equals an uninterrupted run; 2-process ZeRO-2 and ZeRO-3 runs stay in step."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignment.config import PPOConfig, SFTConfig, load_config
from alignment.data.chat import IGNORE_INDEX
from alignment.tracking import read_metrics
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]
WORDS = ["yes", "no", "maybe", "sure"]


@pytest.fixture(scope="session")
def chatty_policy(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model after a short SFT that answers one of four words: a policy with a spread-out
    distribution that PPO can sharpen."""
    from alignment.sft import run_sft

    root = tmp_path_factory.mktemp("chatty")
    rows = [{"messages": [{"role": "user", "content": f"Say something {i}"},
                          {"role": "assistant", "content": WORDS[i % 4]}]} for i in range(200)]
    data = write_jsonl(root / "sft.jsonl", rows)
    cfg = load_config(SFTConfig, None, {"model": str(tiny_model_dir), "output_dir": str(root / "sft"),
                                        "data.train": str(data), "data.max_length": 64, "train.max_steps": 60,
                                        "train.batch_size": 16, "train.lr": 3e-3, "train.bf16": "false",
                                        "train.eval_every": 0, "train.save_every": 0,
                                        "tracking.backends": ["none"]})
    return run_sft(cfg)


@pytest.fixture()
def prompts_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say something {i}"} for i in range(1000, 1064)])


def _overrides(policy: Path, prompts: Path, out: Path, **extra) -> dict:
    base = {"model": str(policy), "output_dir": str(out), "data.train": str(prompts), "train.batch_size": 16,
            "train.lr": 2e-3, "train.max_steps": 12, "train.warmup_ratio": 0.0, "train.bf16": "false",
            "train.save_every": 0, "generation.max_new_tokens": 6, "generation.temperature": 1.0,
            "missing_eos_penalty": 0.0, "kl_coef": 0.01, "tracking.backends": ["none"]}
    return {**base, **extra}


def _yes_reward(tokenizer):
    yes = tokenizer("yes", add_special_tokens=False)["input_ids"][0]

    def reward(prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        return torch.tensor([1.0 if yes in r else 0.0 for r in responses])
    return reward


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_policy_learns_the_paid_token(tmp_path, chatty_policy, prompts_file, critic):
    from alignment.modeling import load_tokenizer
    from alignment.ppo import run_ppo

    out = tmp_path / critic
    cfg = load_config(PPOConfig, None, _overrides(chatty_policy, prompts_file, out, critic=critic))
    run_ppo(cfg, reward_fn=_yes_reward(load_tokenizer(chatty_policy)))
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    first, last = rows[0]["objective/scores"], sum(r["objective/scores"] for r in rows[-3:]) / 3
    assert first < 0.5 and last >= 0.8, [r["objective/scores"] for r in rows]
    for key in ("objective/kl", "objective/entropy", "policy/clipfrac", "policy/approxkl", "val/vf_loss",
                "val/clipfrac", "rollout/response_length", "perf/episodes_per_second", "time/generate",
                "time/score", "time/train"):
        assert key in rows[-1], key
    assert rows[-1]["objective/kl"] > 0  # the policy moved away from the reference
    assert (out / "model" / "model.safetensors").exists()


def test_reward_model_drives_ppo_and_resume_matches(tmp_path, chatty_policy, prompts_file):
    """A reward model from `align rm` (with its reward_stats.json), LoRA policy with the adapter-disabled
    reference; a run resumed from its step-2 checkpoint matches the uninterrupted run."""
    from alignment.cli import main

    rows = [{"prompt": f"Say something {i}", "chosen": "yes", "rejected": w} for i in range(60) for w in WORDS[1:2]]
    prefs = write_jsonl(tmp_path / "prefs.jsonl", rows)
    rm_recipe = tmp_path / "rm.yaml"
    rm_recipe.write_text(json.dumps({"phase": "rm", "model": str(chatty_policy), "output_dir": str(tmp_path / "rm"),
                                     "data": {"train": str(prefs), "max_length": 64},
                                     "train": {"max_steps": 6, "batch_size": 8, "lr": 2e-3, "bf16": "false"},
                                     "tracking": {"backends": ["none"]}}))
    assert main(["rm", "--config", str(rm_recipe)]) == 0

    def recipe(out: Path) -> Path:
        path = tmp_path / f"ppo-{out.name}.yaml"
        o = _overrides(chatty_policy, prompts_file, out, **{"train.max_steps": 4, "train.save_every": 2,
                                                              "train.keep_checkpoints": 5, "lora.enabled": True,
                                                              "lora.r": 4, "adaptive_kl": True})
        o["reward_model"] = str(tmp_path / "rm")
        nested: dict = {"phase": "ppo"}
        for key, value in o.items():
            node = nested
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        path.write_text(json.dumps(nested))
        return path

    full = tmp_path / "full"
    assert main(["ppo", "--config", str(recipe(full))]) == 0
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-2", part / "checkpoints" / "step-2")
    assert main(["ppo", "--config", str(recipe(part))]) == 0
    a = {r["step"]: r for r in read_metrics(full / "metrics.jsonl")}
    b = {r["step"]: r for r in read_metrics(part / "metrics.jsonl")}
    assert sorted(b) == [3, 4]  # only the resumed steps ran
    for step in (3, 4):
        for key in ("objective/scores", "objective/kl", "policy/loss", "val/vf_loss", "objective/kl_coef"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-6), (step, key)
    assert a[1]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # adapter off == policy before any update
    assert (full / "model" / "adapter_config.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stage, advantage", [("zero2", "gae"), ("zero3", "gae"), ("zero3", "rloo")])
def test_ppo_deepspeed_two_processes(tmp_path, chatty_policy, prompts_file, stage, advantage):
    out = tmp_path / stage
    from alignment.modeling import resolve_model

    extra = {"advantage": advantage, "num_generations": 2, "train.batch_size": 4} if advantage != "gae" else {}
    o = _overrides(chatty_policy, prompts_file, out, **{"train.max_steps": 3, "train.batch_size": 8, **extra})
    o["reward_model"] = str(resolve_model(chatty_policy))  # a fresh score head on the policy: any RM will do
    nested: dict = {"phase": "ppo"}
    for key, value in o.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    recipe = tmp_path / "ppo.yaml"
    recipe.write_text(json.dumps(nested))
    proc = subprocess.run([sys.executable, "-m", "alignment.cli", "ppo", "--config", str(recipe), "--deepspeed",
                           stage, "--num-processes", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "processes=2" in proc.stdout
    assert f"advantage {advantage}" in proc.stdout
    # rloo's two answers per prompt share a row (the check before training ran collectively under ZeRO-3)
    assert ("each prompt's 2 answers runs as one row" in proc.stdout + proc.stderr) is (advantage == "rloo")
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(out / "model"))


def test_rule_reward_alone_teaches_a_rule(tmp_path, chatty_policy, prompts_file):
    """No reward model: the policies file is the reward, and the sampled answers come to follow it."""
    from alignment.ppo import run_ppo

    rules = tmp_path / "policies.yaml"
    rules.write_text("policies:\n  - name: says_yes\n    description: The answer says yes.\n"
                     "    must_match: ['yes']\n")
    out = tmp_path / "rules"
    cfg = load_config(PPOConfig, None, _overrides(chatty_policy, prompts_file, out, policies=str(rules),
                                                  rule_reward_weight=1.0))
    run_ppo(cfg)
    rows = read_metrics(out / "metrics.jsonl")
    first, last = rows[0]["adherence/says_yes"], sum(r["adherence/says_yes"] for r in rows[-3:]) / 3
    assert first < 0.5 and last >= 0.8, [r["adherence/says_yes"] for r in rows]
    # the reward is the rule reward alone: +1 for a yes, -1 otherwise
    for r in rows:
        assert r["objective/rule_reward"] == pytest.approx(2 * r["adherence/says_yes"] - 1, abs=1e-5)
        assert r["objective/rewards"] == pytest.approx(r["objective/rule_reward"], abs=1e-5)


def test_align_ppo_runs_with_the_rules_as_the_whole_reward(tmp_path, tiny_model_dir, prompts_file):
    """`align ppo` checks the recipe's files before training; with no reward model there is none to check."""
    import json

    from alignment.cli import main

    rules = tmp_path / "policies.yaml"
    rules.write_text("policies:\n  - name: says_yes\n    description: The answer says yes.\n"
                     "    must_match: ['yes']\n")
    recipe = tmp_path / "ppo.yaml"
    recipe.write_text(json.dumps({"phase": "ppo", "model": str(tiny_model_dir), "output_dir": str(tmp_path / "out"),
                                  "data": {"train": str(prompts_file)}, "policies": str(rules),
                                  "rule_reward_weight": 1.0, "advantage": "rloo", "num_generations": 2,
                                  "generation": {"max_new_tokens": 4},
                                  "train": {"batch_size": 2, "max_steps": 1, "bf16": "false", "save_every": 0},
                                  "tracking": {"backends": ["none"]}}))
    assert main(["ppo", "--config", str(recipe)]) == 0
    assert "adherence/says_yes" in read_metrics(tmp_path / "out" / "metrics.jsonl")[0]


def test_rule_reward_needs_its_rules(prompts_file, tmp_path):
    from alignment.errors import AlignError

    with pytest.raises(AlignError, match="policies"):
        load_config(PPOConfig, None, {"model": "x", "data.train": str(prompts_file), "rule_reward_weight": 1.0})
    with pytest.raises(AlignError, match=">= 0"):
        load_config(PPOConfig, None, {"model": "x", "data.train": str(prompts_file), "rule_reward_weight": -1.0})


# --------------------------------------------------------------------------------------------------
# Critic-free estimators (advantage: grpo | dr_grpo | rloo | reinforce_pp)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("advantage", ["rloo", "grpo", "dr_grpo", "reinforce_pp"])
def test_critic_free_estimators_learn_the_paid_token(tmp_path, chatty_policy, prompts_file, advantage):
    """Four answers per prompt, no value model: each estimator turns the same reward into a policy that says yes."""
    from alignment.modeling import load_tokenizer
    from alignment.ppo import run_ppo

    out = tmp_path / advantage
    cfg = load_config(PPOConfig, None, _overrides(chatty_policy, prompts_file, out, advantage=advantage,
                                                  num_generations=4, **{"train.batch_size": 4}))
    assert cfg.critic == "none"
    run_ppo(cfg, reward_fn=_yes_reward(load_tokenizer(chatty_policy)))
    rows = read_metrics(out / "metrics.jsonl")
    first, last = rows[0]["objective/scores"], sum(r["objective/scores"] for r in rows[-3:]) / 3
    assert first < 0.5 and last >= 0.8, [r["objective/scores"] for r in rows]
    assert "val/vf_loss" not in rows[-1]  # no critic was trained
    assert rows[-1]["perf/episodes_per_second"] > 0


@pytest.mark.parametrize("dynamic", [False, True], ids=["grpo", "dapo"])
def test_group_estimator_with_kl_in_the_loss_resumes_exactly(tmp_path, chatty_policy, prompts_file, dynamic):
    """GRPO-style: k3 KL as a loss term, clip-higher (and DAPO's dynamic sampling); a run resumed at step 2
    matches the uninterrupted one, the extra generation rounds included."""
    from alignment.modeling import load_tokenizer
    from alignment.ppo import run_ppo

    def run(out: Path) -> list[dict]:
        cfg = load_config(PPOConfig, None, _overrides(
            chatty_policy, prompts_file, out, advantage="grpo", num_generations=2, kl_penalty="loss",
            kl_coef=0.1, clip_range_high=0.28, dynamic_sampling=dynamic,
            **{"train.batch_size": 4, "train.max_steps": 4, "train.save_every": 2, "train.keep_checkpoints": 5}))
        run_ppo(cfg, reward_fn=_yes_reward(load_tokenizer(chatty_policy)))
        return read_metrics(out / "metrics.jsonl")

    full = run(tmp_path / "full")
    assert all("policy/kl_loss" in r for r in full)
    assert all(0 <= r["rollout/informative_prompts"] <= 1 for r in full)
    if dynamic:  # two answers of a 1-in-4 "yes": most pairs score alike, so more rounds were sampled
        assert max(r["rollout/sampling_rounds"] for r in full) >= 2
    else:
        assert "rollout/sampling_rounds" not in full[0]
    assert full[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollout is the reference's
    assert full[-1]["policy/kl_loss"] > 0
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-2", part / "checkpoints" / "step-2")
    resumed = {r["step"]: r for r in run(part)}
    assert sorted(resumed) == [3, 4]
    for row in full[2:]:
        for key in ("objective/scores", "objective/kl", "policy/loss", "policy/kl_loss",
                    "rollout/informative_prompts"):
            assert resumed[row["step"]][key] == pytest.approx(row[key], rel=1e-4, abs=1e-6), (row["step"], key)


def _samples(scores: list[float], tag: str):
    from alignment.ppo import Samples

    n = len(scores)
    return Samples(prompts=[[i] for i in range(n)], responses=[[ord(tag), i] for i in range(n)],
                   finished=torch.ones(n, dtype=torch.bool), texts=[f"{tag}{i}" for i in range(n)],
                   raw_scores=torch.tensor(scores), scores=torch.tensor(scores), rule_terms=None)


@pytest.mark.parametrize("max_rounds, texts, rounds", [
    # round 1 keeps its second prompt; round 2 adds its first; full, so no round 3 is sampled
    (3, ["a2", "a3", "b0", "b1"], 2),
    # one round only: the kept prompt, then the dropped one fills the batch
    (1, ["a2", "a3", "a0", "a1"], 1),
])
def test_dynamic_sampling_keeps_prompts_whose_answers_differ(prompts_file, max_rounds, texts, rounds):
    from alignment.ppo import dynamic_sampling

    cfg = load_config(PPOConfig, None, {"model": "x", "data.train": str(prompts_file), "advantage": "rloo",
                                        "num_generations": 2, "train.batch_size": 2, "dynamic_sampling": True,
                                        "dynamic_sampling_max_rounds": max_rounds})
    rounds_asked = []
    more = {1: _samples([1.0, 0.0, 5.0, 5.0], "b"), 2: _samples([0.0, 1.0, 1.0, 0.0], "c")}

    def sample_more(r: int):
        rounds_asked.append(r)
        return more[r]

    batch, n = dynamic_sampling(_samples([0.5, 0.5, 0.0, 1.0], "a"), sample_more, cfg)
    assert (batch.texts, n) == (texts, rounds)
    assert rounds_asked == list(range(1, rounds))
    by_text = {"a0": 0.5, "a1": 0.5, "a2": 0.0, "a3": 1.0, "b0": 1.0, "b1": 0.0}
    assert batch.scores.tolist() == [by_text[t] for t in texts]  # every field follows its answer
    assert [r[0] for r in batch.responses] == [ord(t[0]) for t in texts]


@pytest.mark.parametrize("overrides, field", [
    ({"advantage": "rloo"}, "num_generations"),
    ({"advantage": "grpo", "num_generations": 2, "critic": "shared"}, "critic"),
    ({"advantage": "gae", "critic": "none"}, "critic"),
    ({"num_generations": 0}, "num_generations"),
    ({"advantage": "rloo", "num_generations": 3, "train.batch_size": 3, "num_minibatches": 2}, "num_minibatches"),
    ({"clip_range_high": 0.1}, "clip_range_high"),
    ({"dynamic_sampling": True}, "dynamic_sampling"),
    ({"advantage": "reinforce_pp", "dynamic_sampling": True}, "dynamic_sampling"),
    ({"advantage": "rloo", "num_generations": 2, "dynamic_sampling": True, "dynamic_sampling_max_rounds": 0},
     "dynamic_sampling_max_rounds"),
])
def test_estimator_settings_that_would_train_the_wrong_thing_are_refused(prompts_file, overrides, field):
    from alignment.errors import AlignError

    with pytest.raises(AlignError) as err:
        load_config(PPOConfig, None, {"model": "x", "data.train": str(prompts_file), **overrides})
    assert field in str(err.value)


def test_estimator_defaults_follow_their_papers(prompts_file):
    def cfg(**o):
        return load_config(PPOConfig, None, {"model": "x", "data.train": str(prompts_file), **o})

    gae_cfg = cfg()
    assert (gae_cfg.critic, gae_cfg.whiten_advantages, gae_cfg.loss_aggregation) == ("separate", True, "token_mean")
    grpo = cfg(advantage="grpo", num_generations=4)
    assert (grpo.critic, grpo.whiten_advantages, grpo.loss_aggregation) == ("none", False, "seq_mean_token_mean")
    assert cfg(advantage="dr_grpo", num_generations=4).loss_aggregation == "seq_mean_token_sum_norm"
    assert cfg(advantage="rloo", num_generations=2).whiten_advantages is False
    assert cfg(advantage="reinforce_pp").whiten_advantages is True


def test_rule_weights_shape_the_reward_and_log_each_rule(tmp_path, chatty_policy, prompts_file):
    """Two rules weighted 3:1 with a critic-free estimator: the per-rule reward curves add up to the rule
    reward, each is its weight share times (2 * adherence - 1), and the heavier rule is learned."""
    from alignment.ppo import run_ppo

    rules = tmp_path / "policies.yaml"
    rules.write_text("policies:\n"
                     "  - name: says_yes\n    description: The answer says yes.\n    must_match: ['yes']\n"
                     "  - name: not_maybe\n    description: Never maybe.\n    must_not_match: ['maybe']\n")
    out = tmp_path / "weighted"
    cfg = load_config(PPOConfig, None, _overrides(
        chatty_policy, prompts_file, out, policies=str(rules), rule_reward_weight=1.0, advantage="rloo",
        # 8 prompts x 4 answers a step: with 4 prompts the tiny policy (~20% yes) had groups without a yes for
        # several steps on some seeds, learning in 12 steps on 3 of 5; with 8 it learned on 4 of 4 (42, 3, 5, 7)
        num_generations=4, **{"train.batch_size": 8, "rule_weights.says_yes": 3.0, "rule_weights.not_maybe": 1.0}))
    run_ppo(cfg)
    rows = read_metrics(out / "metrics.jsonl")
    for r in rows:
        assert r["rule_reward/says_yes"] == pytest.approx(0.75 * (2 * r["adherence/says_yes"] - 1), abs=1e-5)
        assert r["rule_reward/not_maybe"] == pytest.approx(0.25 * (2 * r["adherence/not_maybe"] - 1), abs=1e-5)
        assert r["objective/rule_reward"] == pytest.approx(r["rule_reward/says_yes"] + r["rule_reward/not_maybe"],
                                                           abs=1e-5)
    first, last = rows[0]["adherence/says_yes"], sum(r["adherence/says_yes"] for r in rows[-3:]) / 3
    assert first < 0.5 and last >= 0.8, [r["adherence/says_yes"] for r in rows]


def test_rule_weight_for_a_missing_rule_is_refused_before_anything_is_written(tmp_path, chatty_policy,
                                                                            prompts_file):
    from alignment.errors import AlignError
    from alignment.ppo import run_ppo

    rules = tmp_path / "policies.yaml"
    rules.write_text("policies:\n  - name: says_yes\n    description: The answer says yes.\n    must_match: ['yes']\n")
    out = tmp_path / "typo"
    cfg = load_config(PPOConfig, None, _overrides(chatty_policy, prompts_file, out, policies=str(rules),
                                                  rule_reward_weight=1.0, **{"rule_weights.says_yess": 2.0}))
    with pytest.raises(AlignError, match="says_yess"):
        run_ppo(cfg)
    assert not out.exists()
    with pytest.raises(AlignError, match="rule_reward_weight"):
        load_config(PPOConfig, None, {"model": "x", "data.train": str(prompts_file), "policies": str(rules),
                                      "rule_weights.says_yes": 2.0})


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_rollout_log_probs_and_values_come_in_minibatch_chunks_equal_to_one_pass(tmp_path, chatty_policy,
                                                                                  prompts_file, monkeypatch,
                                                                                  critic):
    """The rollout's evaluation pass runs in as many chunks of rows as the update has minibatches (so it needs
    no more memory than the update), and what it returns is what one pass over the whole batch gives, row for
    row: the policy's log-probs and values, and, before the first update, the reference's (the same weights)."""
    from alignment import ppo
    from alignment.modeling import load_tokenizer

    widest, checked = [], []
    real_pass, real_update = ppo.response_pass, ppo.ppo_update

    def response_pass(model, inputs, response_mask, temperature, hidden=False):
        widest.append(inputs["input_ids"].shape[0])
        return real_pass(model, inputs, response_mask, temperature, hidden)

    def update(policy, critic_engine, critic_scores, batch, cfg, kl_coef=0.0):
        if not checked:  # the first rollout: nothing has been updated yet
            m = batch.response_mask
            policy.module.eval()
            with torch.no_grad():
                # one plain forward over the whole batch, left-padded prompts and a mask, as `generate` sees it
                assert batch.group == 1  # PPO: one answer per prompt, a row each
                prompts = batch.prompts
                prompt_lens = [len(x) for x in prompts]
                p = max(prompt_lens)
                ids = torch.full((len(prompts), p), 0, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, prompt in enumerate(prompts):
                    ids[i, p - len(prompt):], mask[i, p - len(prompt):] = torch.tensor(prompt), 1
                full = torch.cat([ids, batch.responses], dim=1)
                full_mask = torch.cat([mask, m.long()], dim=1)
                inputs = {"input_ids": full, "attention_mask": full_mask,
                          "position_ids": (full_mask.cumsum(1) - 1).clamp(min=0), "use_cache": False}
                model = policy.module.policy if critic == "shared" else policy.module
                out = model(**inputs, output_hidden_states=True)
                r = batch.responses.shape[1]
                logits = out.logits[:, p - 1 : -1].float() / cfg.generation.temperature
                logps = torch.log_softmax(logits, -1).gather(-1, batch.responses.unsqueeze(-1)).squeeze(-1)
                if critic == "shared":
                    values = policy.module.values(out.hidden_states[-1][:, p - 1 : -1])
                else:
                    critic_engine.module(**inputs)
                    values = critic_scores.per_token()[:, p - 1 : -1].float()
                assert logits.shape[1] == r
            policy.module.train()
            torch.testing.assert_close(batch.old_logps * m, logps * m, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(batch.values, values * m, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(batch.ref_logps * m, batch.old_logps * m, rtol=1e-4, atol=1e-5)
            checked.append(batch.responses.shape[0])
        return real_update(policy, critic_engine, critic_scores, batch, cfg, kl_coef)

    monkeypatch.setattr(ppo, "response_pass", response_pass)
    monkeypatch.setattr(ppo, "ppo_update", update)
    cfg = load_config(PPOConfig, None, _overrides(chatty_policy, prompts_file, tmp_path / "out", critic=critic,
                                                  **{"train.batch_size": 8, "train.max_steps": 1,
                                                     "num_minibatches": 2}))
    ppo.run_ppo(cfg, reward_fn=_yes_reward(load_tokenizer(chatty_policy)))
    assert checked == [8]
    assert max(widest) == 4  # no pass of the run, rollout or update, computed log-probs for more than 4 rows


def test_rollout_rows_are_prompt_then_response_right_padded_with_labels_on_the_response():
    """Each row is its prompt then its response, padded on the right; the labels mark the response tokens only,
    and a minibatch is cut to its own longest row; per_row puts the response tokens' values back in (B, R) rows."""
    from alignment.ppo import minibatch, per_row, rollout_rows

    rows = rollout_rows([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], pad=0)
    assert rows["input_ids"].tolist() == [[5, 6, 7, 1, 2], [8, 3, 4, 9, 0]]
    assert rows["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    i = IGNORE_INDEX
    assert rows["labels"].tolist() == [[i, i, i, 1, 2], [i, 3, 4, 9, i]]
    part = minibatch(rows, torch.tensor([1]))
    assert part["input_ids"].tolist() == [[8, 3, 4, 9]] and part["labels"].tolist() == [[i, 3, 4, 9]]
    response_mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert per_row(torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0]), response_mask).tolist() == [
        [10.0, 20.0, 0.0], [30.0, 40.0, 50.0]]


# --------------------------------------------------------------------------------------------------
# A prompt's answers as one row (share_prompt)
# --------------------------------------------------------------------------------------------------
class _Policy:  # what response_pass and shared_prompt_works use of an Engine
    def __init__(self, model: torch.nn.Module) -> None:
        self.module, self.ds, self.eval, self.train = model, None, model.eval, model.train

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()


def _group(tokenizer, k: int = 3) -> tuple[list[list[int]], list[list[int]]]:
    """Two chat prompts of different lengths, k answers of different lengths to each, consecutive."""
    prompts, answers = [], []
    for g, text in enumerate(["Say something", "Say something else entirely, please"]):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)
        ids = tokenizer(ids, add_special_tokens=False)["input_ids"]
        for j in range(k):
            prompts.append(ids)
            answers.append(tokenizer(" ".join(WORDS[: 1 + (g + j) % 4]) + " ok", add_special_tokens=False)[
                "input_ids"])
    return prompts, answers


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_prompt_group_as_one_row_gives_each_answer_its_own_rows_log_probs_and_gradients(chatty_policy,
                                                                                            attention):
    """Each answer in a shared group row gets the log-probs it gets in a row of its own, and the same gradients, in
    float32, with either attention (eager adds its mask to the scores); the group row really is shorter."""
    from alignment.batching import pad_sequences
    from alignment.config import ModelOptions
    from alignment.modeling import load_causal_lm, load_tokenizer
    from alignment.ppo import minibatch, response_pass, rollout_rows, shared_prompt_works

    tokenizer = load_tokenizer(str(chatty_policy))
    model = load_causal_lm(str(chatty_policy), options=ModelOptions(attn_implementation=attention))
    assert model.config._attn_implementation == attention
    prompts, answers = _group(tokenizer)
    mask = pad_sequences(answers, 0)[1].float()  # (6, R)
    results = []
    for group in (1, 3):
        rows = rollout_rows(prompts, answers, tokenizer.pad_token_id, group)
        model.zero_grad()
        out = response_pass(model, minibatch(rows, torch.arange(rows["input_ids"].shape[0])), mask, 0.7)
        (out.logps * torch.arange(1.0, 7.0)[:, None]).sum().backward()  # a different weight per answer
        results.append((out.logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()},
                        rows["input_ids"].numel()))
    (plain, plain_grads, plain_size), (shared, shared_grads, shared_size) = results
    assert (plain * mask).abs().sum() > 0 and shared_size < plain_size
    torch.testing.assert_close(shared * mask, plain * mask, rtol=1e-5, atol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-5)  # sums in another order
    works, gap = shared_prompt_works(_Policy(model), lambda read: read(model), prompts[::3], 3,
                                     tokenizer.pad_token_id, 0.7)
    assert works and gap < 1e-4


def test_group_rows_are_refused_for_a_model_that_reads_them_differently(tiny_model_dir):
    """A sliding-window model: the custom mask does not carry the window, so a shared row would see more than the
    answer's own row; the check before training catches it."""
    from transformers import MistralConfig, MistralForCausalLM

    from alignment.modeling import load_tokenizer
    from alignment.ppo import shared_prompt_works

    tokenizer = load_tokenizer(str(tiny_model_dir))
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                           pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = MistralForCausalLM(config)
    prompts, _ = _group(tokenizer)
    works, gap = shared_prompt_works(_Policy(model), lambda read: read(model), prompts[::3], 3,
                                     tokenizer.pad_token_id, 1.0)
    assert not works and gap > 0.05


@pytest.mark.parametrize("advantage", ["rloo", "gae"])
def test_with_one_minibatch_a_step_trains_alike_in_both_layouts(tmp_path, chatty_policy, prompts_file, caplog,
                                                                advantage):
    """RLOO, and PPO with a shared critic and 4 answers per prompt, with the whole rollout batch in one minibatch:
    the shared layout and a row per answer sample the same answers, compute the same losses and values and end with
    the same weights (the minibatch composition is the only thing sharing changes, and one minibatch has none to
    change); the log names the layout."""
    from safetensors.torch import load_file

    from alignment.modeling import load_tokenizer
    from alignment.ppo import run_ppo

    caplog.set_level(logging.INFO)
    rows, weights = {}, {}
    for share in (False, True):
        out = tmp_path / str(share)
        cfg = load_config(PPOConfig, None, _overrides(
            chatty_policy, prompts_file, out, advantage=advantage, num_generations=4, share_prompt=share,
            num_minibatches=1, ppo_epochs=1, **({"critic": "shared"} if advantage == "gae" else {}),
            **{"train.batch_size": 4, "train.max_steps": 1}))
        assert cfg.share_prompt is share
        run_ppo(cfg, reward_fn=_yes_reward(load_tokenizer(chatty_policy)))
        rows[share] = read_metrics(out / "metrics.jsonl")[0]
        weights[share] = load_file(str(out / "model" / "model.safetensors"))
    assert "shared prompt: each prompt's 4 answers runs as one row" in caplog.text
    keys = ["objective/scores", "objective/kl", "objective/entropy", "policy/loss", "rollout/response_length"]
    for key in keys + (["val/vf_loss", "val/mean"] if advantage == "gae" else []):
        assert rows[True][key] == pytest.approx(rows[False][key], rel=1e-4, abs=1e-6), key
    changed = 0
    for name, w in weights[False].items():
        torch.testing.assert_close(weights[True][name], w, rtol=1e-4, atol=1e-6)
        changed += 1
    assert changed


def test_share_prompt_defaults_and_refusals(prompts_file):
    from alignment.errors import AlignError

    def cfg(**o):
        return load_config(PPOConfig, None, {"model": "x", "data.train": str(prompts_file), **o})

    assert cfg(advantage="rloo", num_generations=4, **{"train.batch_size": 4}).share_prompt is True
    assert cfg().share_prompt is False  # one answer per prompt: nothing to share
    assert cfg(advantage="gae", num_generations=2, critic="shared").share_prompt is True
    assert cfg(advantage="gae", num_generations=2).share_prompt is False  # a separate critic: a row per answer
    assert cfg(advantage="rloo", num_generations=2, num_minibatches=2, **{"train.batch_size": 3}).share_prompt is False
    for overrides in ({"share_prompt": True},
                      {"share_prompt": True, "num_generations": 2},
                      {"share_prompt": True, "advantage": "rloo", "num_generations": 2, "num_minibatches": 2,
                       "train.batch_size": 3}):
        with pytest.raises(AlignError) as err:
            cfg(**overrides)
        assert "share_prompt" in str(err.value)


# --------------------------------------------------------------------------------------------------
# Rollout engines (generation.engine): the seam a GPU inference engine plugs into
# --------------------------------------------------------------------------------------------------
class CopySampler:
    """An engine that holds its own copy of the weights, as a colocated inference engine does: it samples with
    ``decode`` on that copy and sees the policy only through ``sync``."""

    reads_policy = False

    def __init__(self, cfg, keep_syncing: bool = True) -> None:
        self.model = None
        self.syncs = 0
        self.keep_syncing = keep_syncing

    def sync(self, module) -> None:
        import copy

        self.syncs += 1
        if self.model is None:
            self.model = copy.deepcopy(module).eval()
        elif self.keep_syncing:
            self.model.load_state_dict(module.state_dict())

    def sample(self, module, input_ids, attention_mask, **settings):
        from alignment.generation import decode

        assert module is None  # the training module is not handed to an engine with its own weights
        return decode(self.model, input_ids, attention_mask, **settings)


def copy_sampler(cfg) -> CopySampler:  # an entry point's target
    return CopySampler(cfg)


@pytest.mark.parametrize("critic", ["shared", "none"])
def test_an_engine_with_its_own_weights_synced_after_each_update_trains_as_the_local_one(
        tmp_path, chatty_policy, prompts_file, critic):
    """A plug-in engine gets the policy's weights before the first rollout and after every update, so the run
    (rollouts, metrics, final weights) is the local engine's, step for step; an engine left with the first
    weights samples other answers (the comparison can fail). Resumed from a checkpoint, the engine starts from
    the resumed weights and the run goes on as the uninterrupted one."""
    from safetensors.torch import load_file

    from alignment import samplers
    from alignment.modeling import load_tokenizer
    from alignment.ppo import run_ppo

    made: list[CopySampler] = []
    samplers.register_sampler("copy", lambda cfg: made.append(CopySampler(cfg)) or made[-1])
    samplers.register_sampler("stale", lambda cfg: made.append(CopySampler(cfg, keep_syncing=False)) or made[-1])
    extra = {"train.max_steps": 4, "critic": critic, "train.save_every": 2, "train.keep_checkpoints": 2}
    if critic == "none":
        extra.update(advantage="rloo", num_generations=2, **{"train.batch_size": 8})
    reward = _yes_reward(load_tokenizer(chatty_policy))
    resumed = tmp_path / "resumed"
    try:
        for engine in ("local", "copy", "stale"):
            cfg = load_config(PPOConfig, None, _overrides(chatty_policy, prompts_file, tmp_path / engine,
                                                          **extra, **{"generation.engine": engine}))
            run_ppo(cfg, reward_fn=reward)
        (resumed / "checkpoints").mkdir(parents=True)
        shutil.copytree(tmp_path / "copy" / "checkpoints" / "step-2", resumed / "checkpoints" / "step-2")
        cfg = load_config(PPOConfig, None, _overrides(chatty_policy, prompts_file, resumed,
                                                      **extra, **{"generation.engine": "copy"}))
        run_ppo(cfg, reward_fn=reward)
    finally:
        samplers.unregister_sampler("copy")
        samplers.unregister_sampler("stale")
    # before the first rollout, then after every update but the last; resumed: at the start, after step 3
    assert [s.syncs for s in made] == [4, 4, 2]
    runs = {e: read_metrics(tmp_path / e / "metrics.jsonl") for e in ("local", "copy", "stale", "resumed")}
    assert "time/sync" in runs["copy"][0] and "time/sync" not in runs["local"][0]
    keys = ("objective/scores", "objective/kl", "policy/loss", "rollout/response_length")
    assert [[r[k] for k in keys] for r in runs["copy"]] == [[r[k] for k in keys] for r in runs["local"]]
    local, copied = (load_file(str(tmp_path / e / "model" / "model.safetensors")) for e in ("local", "copy"))
    assert all(torch.equal(local[k], copied[k]) for k in local)
    # the stale engine's first rollout is the same (same weights), its later ones are not
    assert runs["stale"][0]["objective/scores"] == runs["local"][0]["objective/scores"]
    assert [[r[k] for k in keys] for r in runs["stale"]] != [[r[k] for k in keys] for r in runs["local"]]
    assert [r["step"] for r in runs["resumed"]] == [3, 4]
    for a, b in zip(runs["resumed"], runs["local"][2:]):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a["step"], k)


def test_an_unknown_engine_is_refused_before_anything_is_written_and_plug_ins_are_found(
        tmp_path, prompts_file, monkeypatch):
    from importlib.metadata import EntryPoint

    from alignment import samplers
    from alignment.errors import AlignError
    from alignment.ppo import run_ppo

    out = tmp_path / "out"
    cfg = load_config(PPOConfig, None, _overrides(Path("nowhere"), prompts_file, out, **{"generation.engine": "vllm"}))
    with pytest.raises(AlignError, match="no rollout engine named 'vllm' here \\(available: local\\)") as err:
        run_ppo(cfg, reward_fn=lambda p, r: torch.zeros(len(r)))
    assert err.value.field == "generation.engine" and not out.exists()
    # an installed package's entry point under alignment.samplers is found by its name
    group = samplers.ENTRY_POINT_GROUP
    installed = [EntryPoint(name="copy", value=f"{__name__}:copy_sampler", group=group),
                 EntryPoint(name="broken", value="no_such_package_here:factory", group=group),
                 EntryPoint(name="twice", value=f"{__name__}:copy_sampler", group=group),
                 EntryPoint(name="twice", value="another_package:factory", group=group)]
    monkeypatch.setattr(samplers, "entry_points", lambda group: installed if group == samplers.ENTRY_POINT_GROUP
                        else [])
    assert samplers.sampler_names() == ["broken", "copy", "local", "twice"]
    sampler = samplers.make_sampler("copy", cfg)
    assert type(sampler).__name__ == "CopySampler" and not sampler.reads_policy
    assert samplers.make_sampler("local", cfg).reads_policy
    with pytest.raises(AlignError, match="'broken' \\(no_such_package_here:factory\\) failed to load: "
                                         "ModuleNotFoundError"):
        samplers.make_sampler("broken", cfg)
    with pytest.raises(AlignError, match="2 installed packages publish a rollout engine named 'twice'"):
        samplers.make_sampler("twice", cfg)
    with pytest.raises(ValueError, match="built-in"):
        samplers.register_sampler("local", copy_sampler)
    samplers.register_sampler("mute", lambda cfg: object())
    try:
        with pytest.raises(AlignError, match="reads_policy"):
            samplers.make_sampler("mute", cfg)
    finally:
        samplers.unregister_sampler("mute")
