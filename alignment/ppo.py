"""PPO against a reward model with a KL leash to the reference (`align ppo`).

One rollout batch per step, read top to bottom:
1. generate: sample responses to a batch of prompts (KV cache, left padding; under ZeRO-3 the policy's
   parameters are gathered once for the whole batch, not per token);
2. score: the reward model reads prompt + response (right padded, score at the last real token),
   normalised with the statistics `align rm` saved; responses that never stop are penalised;
3. evaluate: log-probs of the sampled tokens under the policy and the reference (logits divided by the
   sampling temperature), and the critic's values;
4. advantages: per-token rewards = score at the last token - kl_coef * KL, then GAE and whitening; or,
   without a critic, each answer against the other answers to its prompt (`advantage`, `num_generations`);
5. learn: `ppo_epochs` passes over `num_minibatches` minibatches, clipped policy and value losses.
The maths lives in `alignment/ppo_math.py` (pure functions with tests against naive loops).

Model copies held (full fine-tuning / LoRA policy):
- critic: separate -> policy, reference, reward model, critic = 4 / 3 (reference = adapter disabled);
- critic: shared   -> policy (+ value head), reference, reward model = 3 / 2.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignment import distributed as dist
from alignment.batching import mask_for, pad_sequences, prompt_sharing, segment_rows
from alignment.config import PPOConfig
from alignment.data.chat import IGNORE_INDEX
from alignment.logits import causal_mask, labelled_logits, token_logps
from alignment.modeling import (
    apply_lora,
    count_parameters,
    disable_dropout,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    save_model,
)
from alignment.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    aggregate_loss,
    entropy_from_logits,
    gae,
    group_advantages,
    group_mean_baseline,
    informative_groups,
    kl_estimate,
    masked_mean,
    masked_whiten,
    policy_loss,
    response_mask_from_stop,
    returns_to_go,
    rule_reward_terms,
    shaped_rewards,
    value_loss,
)
from alignment.reference import load_frozen, place_reference, token_reference
from alignment.reward import LastTokenScores, load_reward_stats, score_module
from alignment.run import Run
from alignment.samplers import Sampler, make_sampler
from alignment.training import (
    Engine,
    Schedule,
    deepspeed_config,
    describe_bf16,
    set_seed,
    use_bf16,
)

if TYPE_CHECKING:
    from alignment.evaluation.rules import DomainRule


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
class PolicyWithValueHead(torch.nn.Module):
    """The shared critic: a value head on the policy's last hidden state.

    It reads as the causal LM it wraps (forward, decoder, output layer, config), so the log-prob code
    (:func:`response_pass`) treats it as one and asks for the hidden states the value head reads."""

    def __init__(self, policy: torch.nn.Module, head: torch.nn.Linear) -> None:
        super().__init__()
        self.policy, self.value_head = policy, head

    @property
    def config(self) -> Any:
        return self.policy.config

    def get_decoder(self) -> Any:
        return self.policy.get_decoder()

    def get_output_embeddings(self) -> Any:
        return self.policy.get_output_embeddings()

    def forward(self, **kwargs: Any) -> Any:
        return self.policy(**kwargs)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) last hidden states -> (N,) float32 values."""
        return self.value_head(hidden.to(self.value_head.weight.dtype))[..., 0].float()


def load_prompts(cfg: PPOConfig, tokenizer: Any) -> tuple[list[list[int]], int]:
    """Chat-templated prompt ids, cut from the left to max_prompt_length (counted)."""
    from alignment.data.prompts import load_prompt_file

    conversations, _ = load_prompt_file(cfg.data.train, dedup=cfg.data.dedup)  # a blank prompt: AlignError
    out, cut = [], 0
    for messages in conversations:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > cfg.data.max_prompt_length:
            ids, cut = ids[-cfg.data.max_prompt_length :], cut + 1
        out.append(ids)
    return out, cut


# --------------------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------------------
# A rollout's rows are prompt + response, contiguous and right-padded. Right padding needs no attention mask
# (causal attention keeps real tokens from the pads after them), the rows are no wider than the longest
# prompt + response, and the output layer runs on the real response tokens only. The layout it replaced (prompts
# left-padded to the longest prompt, then responses right-padded to the longest response, with a mask) took
# 1.2-1.4x as long for a forward and backward over 8 quickstart rows in bf16 on a 2-core CPU.
#
# With several answers per prompt (num_generations), a row can hold a whole group instead: the prompt once, then
# each answer, which attends to the prompt and to itself only (segment_rows). Each answer token computes what it
# computes in its own row, and the prompt is computed once per group instead of once per answer.
def rollout_rows(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad: int,
                 group: int = 1) -> dict[str, torch.Tensor]:
    """The model inputs of a rollout's answers. ``group`` 1: a row per answer, prompt + response right-padded to
    (B, W), with its (B, W) ``attention_mask``. ``group`` k: a row per prompt, whose k answers are consecutive in
    ``prompts``/``responses``: the prompt but its last token, then one segment per answer that starts with the
    prompt's last token, with a (G, 1, W, W) boolean ``attention_mask`` and ``position_ids`` (see
    :func:`alignment.batching.segment_rows`). ``labels`` mark the response tokens where they stand,
    ``IGNORE_INDEX`` elsewhere; ``lengths`` are the rows' real lengths. In both layouts the labelled tokens come in
    answer order, row by row."""
    if group == 1:
        full, mask = pad_sequences([[*p, *r] for p, r in zip(prompts, responses)], pad)  # (B, W), (B, W)
        starts = torch.tensor([len(p) for p in prompts])[:, None]  # (B, 1)
        response = (torch.arange(full.shape[1])[None, :] >= starts) & mask.bool()  # (B, W)
        return {"input_ids": full, "attention_mask": mask, "labels": torch.where(response, full, IGNORE_INDEX),
                "lengths": mask.sum(dim=1)}
    if len(prompts) % group or any(prompts[g + j] != prompts[g] for g in range(0, len(prompts), group)
                                   for j in range(group)):
        raise ValueError(f"rollout rows: every {group} consecutive answers must share one prompt")
    firsts = range(0, len(prompts), group)
    rows = segment_rows([prompts[g][:-1] for g in firsts],
                        [[[prompts[g][-1], *r] for r in responses[g : g + group]] for g in firsts],
                        [[[IGNORE_INDEX, *r] for r in responses[g : g + group]] for g in firsts], pad)
    return {"input_ids": rows["input_ids"], "attention_mask": rows["attention_mask"],
            "position_ids": rows["position_ids"], "labels": rows["labels"], "lengths": rows["segment_ends"][:, -1]}


def minibatch(rows: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model inputs of the :func:`rollout_rows` at ``index``, cut to their longest real row."""
    width = int(rows["lengths"][index].max())
    out = {k: rows[k][index, :width] for k in ("input_ids", "labels", "position_ids") if k in rows}
    mask = rows["attention_mask"][index]
    out["attention_mask"] = mask[:, :width] if mask.dim() == 2 else mask[:, :, :width, :width]
    return out


def answers_of(rows: torch.Tensor, group: int) -> torch.Tensor:
    """(n,) row indices -> (n * group,) the indices of their answers, row by row."""
    return (rows[:, None] * group + torch.arange(group, device=rows.device)[None, :]).flatten()


def per_row(flat: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(N,) values at the response tokens, row by row -> (B, R), zero past each response."""
    return torch.zeros(response_mask.shape, dtype=flat.dtype, device=flat.device).masked_scatter(
        response_mask.bool(), flat)


@dataclasses.dataclass
class ResponsePass:
    logps: torch.Tensor  # (B, R) log-probs of the response tokens at the sampling temperature
    scaled: torch.Tensor  # (N, V) the temperature-scaled logits that predict the N response tokens
    hidden: torch.Tensor | None  # (N, H) the last hidden states there, when asked for (a shared critic)


def response_pass(model: Any, inputs: dict[str, torch.Tensor], response_mask: torch.Tensor, temperature: float,
                  hidden: bool = False) -> ResponsePass:
    """One forward of ``model`` over :func:`minibatch` inputs: the response tokens' log-probs with the logits
    divided by the sampling temperature (what the sampler drew from). ``response_mask``: (B, R) of those inputs'
    answers, in order."""
    positions = inputs.get("position_ids")
    mask = inputs["attention_mask"] if positions is None else mask_for(model, inputs["attention_mask"])
    out = labelled_logits(model, inputs["input_ids"], inputs["labels"], attention_mask=mask, position_ids=positions,
                          hidden=hidden)
    scaled = dataclasses.replace(out, logits=out.logits.float() / temperature)  # (N, V)
    return ResponsePass(per_row(token_logps(scaled), response_mask), scaled.logits, out.hidden)


SHARED_PROMPT_TOLERANCE = 0.05  # nats: mean |difference| of per-token log-probs the two layouts may show


@torch.no_grad()
def shared_prompt_works(policy: Engine, reference: Callable[[Callable[[Any], torch.Tensor]], torch.Tensor],
                        prompts: list[list[int]], group: int, pad: int, temperature: float) -> tuple[bool, float]:
    """Whether the policy and the reference give a prompt group's shared row (:func:`rollout_rows`) the log-probs
    of the answers' own rows, per answer token: an attention that ignores a custom mask, a sliding window the
    mask does not carry, or positions not read from ``position_ids`` would differ. The answers are made up of
    other prompts' tokens (what they say does not matter, only that both layouts read them alike), so the
    verdict needs no generation and a resumed run reaches the same one. Every process must call it alike (ZeRO-3
    runs its forwards collectively) and reaches the same verdict. Returns (verdict, gap)."""
    device = dist.device()
    n = len(prompts)
    rows_prompts = [p for p in prompts for _ in range(group)]
    answers = [prompts[(g + j + 1) % n][: 4 + 3 * j] or [pad] for g in range(n) for j in range(group)]
    mask = pad_sequences(answers, 0)[1].float().to(device)  # (B, R)

    def measure(rows_per: int) -> torch.Tensor:
        rows = {k: t.to(device) for k, t in rollout_rows(rows_prompts, answers, pad, rows_per).items()}
        inputs = minibatch(rows, torch.arange(rows["input_ids"].shape[0], device=device))
        with policy.autocast():
            mine = response_pass(policy.ds or policy.module, inputs, mask, temperature).logps
        theirs = reference(lambda model: response_pass(model, inputs, mask, temperature).logps)
        return torch.cat([mine, theirs]).float()  # (2B, R)

    policy.eval()
    try:
        plain = measure(1)
        try:
            local = float(((measure(group) - plain).abs() * mask.repeat(2, 1)).sum() / (2 * mask.sum()))
        except (RuntimeError, ValueError, TypeError):
            local = float("inf")
    finally:
        policy.train()
    gap = dist.all_reduce_max(local)
    return gap <= SHARED_PROMPT_TOLERANCE, gap


def critic_values(critic: Engine, scores: LastTokenScores, inputs: dict[str, torch.Tensor],
                  response_mask: torch.Tensor) -> torch.Tensor:
    """A separate critic's (B, R) values: its score at the position before each response token."""
    (critic.ds or critic.module)(input_ids=inputs["input_ids"], attention_mask=causal_mask(inputs["attention_mask"]),
                                 use_cache=False)
    keep = inputs["labels"][:, 1:] != IGNORE_INDEX  # (B, W-1) the position before each response token
    return per_row(scores.per_token()[:, :-1][keep].float(), response_mask)


RewardFn = Callable[[list[list[int]], list[list[int]]], torch.Tensor]
"""(prompt token ids, response token ids up to and incl. the stop) -> (B,) scores: a rule-based reward
(a domain policy check, a unit test) instead of, or in tests in place of, a reward model."""


@dataclasses.dataclass
class Samples:
    """One round of sampled answers, one row per answer (B rows)."""

    prompts: list[list[int]]  # B prompt token ids
    responses: list[list[int]]  # B answer token ids, up to and incl. the stop token
    finished: torch.Tensor  # (B,) bool: stopped before max_new_tokens
    texts: list[str]  # B decoded answers
    raw_scores: torch.Tensor  # (B,) the reward
    scores: torch.Tensor  # (B,) what the estimator sees: normalised, clipped, + rule reward, - missing-EOS penalty
    rule_terms: torch.Tensor | None  # (B, J) rule reward per rule; None without rules

    def take(self, rows: Sequence[int]) -> Samples:
        """The answers at ``rows``, in that order."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.scores.device)
        return Samples(**{f.name: _take_rows(getattr(self, f.name), index, rows) for f in dataclasses.fields(self)})

    def join(self, other: Samples) -> Samples:
        """These answers, then ``other``'s."""
        return Samples(**{f.name: _join_rows(getattr(self, f.name), getattr(other, f.name))
                          for f in dataclasses.fields(self)})


def _take_rows(value: Any, index: torch.Tensor, rows: Sequence[int]) -> Any:
    if value is None:
        return None
    return value[index] if torch.is_tensor(value) else [value[i] for i in rows]


def _join_rows(a: Any, b: Any) -> Any:
    if a is None:
        return None
    return torch.cat([a, b]) if torch.is_tensor(a) else a + b


@dataclasses.dataclass
class Rollout:
    """Everything one PPO update needs from a rollout batch of B answers: the model inputs (:func:`rollout_rows`, a
    row per answer or per prompt group) and per-answer tensors, (B, R) per token, R the longest response."""

    rows: dict[str, torch.Tensor]  # the model inputs, see rollout_rows
    group: int  # answers per row of ``rows``: 1, or num_generations with the prompt shared
    prompts: list[list[int]]  # B prompt token ids
    tokens: int  # prompt + response tokens of the B answers (what a row per answer computes)
    responses: torch.Tensor  # (B, R) response token ids
    response_mask: torch.Tensor  # (B, R) float: 1 on the response tokens up to and incl. the stop
    old_logps: torch.Tensor  # (B, R) the sampling policy's log-probs at the sampling temperature
    ref_logps: torch.Tensor  # (B, R) the reference's
    values: torch.Tensor  # (B, R) the critic's values (zeros without one), masked
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor  # (B, R) the critic's targets
    metrics: dict[str, float]  # rollout metrics: objective/*, rollout/*, rule_reward/*
    texts: list[str]  # B decoded answers
    timing: dict[str, float]  # seconds: generate, score, evaluate


@torch.no_grad()
def sample_answers(policy: Engine, reward: RewardFn, prompts: list[list[int]], cfg: PPOConfig, tokenizer: Any,
                   stop_ids: list[int], stats: dict[str, float] | None, rules: Sequence[DomainRule] | None,
                   timing: dict[str, float], sampler: Sampler) -> Samples:
    """Generate one answer per prompt row with ``sampler`` and score it; adds to ``timing`` (generate, score)."""
    device = dist.device()
    pad = tokenizer.pad_token_id
    prompt_ids, prompt_mask = (t.to(device) for t in pad_sequences(prompts, pad, left=True))  # (B, P), (B, P)

    start = time.perf_counter()
    settings = {"max_new_tokens": cfg.generation.max_new_tokens, "stop_ids": stop_ids, "pad_id": pad,
                "temperature": cfg.generation.temperature, "top_p": cfg.generation.top_p}
    if sampler.reads_policy:
        policy.eval()
        with policy.gathered(), policy.autocast():
            responses = sampler.sample(policy_lm(policy, cfg), prompt_ids, prompt_mask, **settings)  # (B, R)
        policy.train()
    else:  # an engine with its own weights, synced after every update
        responses = sampler.sample(None, prompt_ids, prompt_mask, **settings)
        if responses.ndim != 2 or responses.shape[0] != prompt_ids.shape[0] or responses.shape[1] > settings[
                "max_new_tokens"] or responses.dtype.is_floating_point:
            raise ValueError(f"the rollout engine {cfg.generation.engine!r} returned a {tuple(responses.shape)} "
                             f"{responses.dtype} tensor; expected ({prompt_ids.shape[0]}, at most "
                             f"{settings['max_new_tokens']}) token ids")
        responses = responses.to(device=device, dtype=torch.long)
    keep = response_mask_from_stop(responses, stop_ids).bool()  # (B, R), up to and incl. the stop
    finished = torch.isin(responses, torch.tensor(stop_ids, device=responses.device)).any(dim=1)  # (B,)
    kept = [responses[i][keep[i]].tolist() for i in range(len(prompts))]
    timing["generate"] = timing.get("generate", 0.0) + time.perf_counter() - start

    start = time.perf_counter()
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in kept]
    raw_scores = reward(prompts, kept).to(device).float()  # (B,)
    scores = raw_scores.clone()
    if stats is not None and cfg.normalize_rewards:
        scores = (scores - stats["mean"]) / stats["std"]
    if cfg.reward_clip is not None:
        scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
    rule_terms = None
    if rules and cfg.rule_reward_weight > 0:
        from alignment.evaluation.rules import check_answer

        passed = [list(check_answer(t, rules).values()) for t in texts]
        weights = [cfg.rule_weights.get(rule.name, 1.0) for rule in rules]
        rule_terms = rule_reward_terms(passed, cfg.rule_reward_weight, weights).to(device)  # (B, J)
        scores = scores + rule_terms.sum(dim=1)
    scores = scores - cfg.missing_eos_penalty * (~finished).float()
    timing["score"] = timing.get("score", 0.0) + time.perf_counter() - start
    return Samples(prompts=list(prompts), responses=kept, finished=finished, texts=texts, raw_scores=raw_scores,
                   scores=scores, rule_terms=rule_terms)


def dynamic_sampling(first: Samples, sample_more: Callable[[int], Samples], cfg: PPOConfig) -> tuple[
        Samples, int]:
    """DAPO's dynamic sampling: keep the prompts whose answers got different rewards, sample more rounds
    (``sample_more(round)``) while the batch has fewer of them than it has prompts, at most
    ``cfg.dynamic_sampling_max_rounds`` rounds in all; fill what is still missing with the dropped prompts
    (zero advantage, so the batch keeps its size). Every process runs the same number of rounds (generation
    under ZeRO-3 gathers weights collectively). Returns the batch and the number of rounds."""
    k = cfg.num_generations
    groups = len(first.prompts) // k
    kept: list[Samples] = []
    dropped: list[Samples] = []
    rounds, samples, have = 0, first, 0
    while True:
        rounds += 1
        informative = informative_groups(samples.scores, k).tolist()  # (G,)
        for flag, into in ((True, kept), (False, dropped)):
            rows = [g * k + j for g, ok in enumerate(informative) if ok == flag for j in range(k)]
            if rows:
                into.append(samples.take(rows))
        have += sum(informative)
        short = dist.all_reduce_sum([float(have < groups)])[0] > 0  # any process short: all sample again
        if not short or rounds >= cfg.dynamic_sampling_max_rounds:
            break
        samples = sample_more(rounds)
    batch = functools.reduce(Samples.join, kept + dropped)
    return batch.take(range(groups * k)), rounds


def policy_lm(policy: Engine, cfg: PPOConfig) -> Any:
    """The causal LM being trained (without the shared critic's value head)."""
    return policy.module.policy if cfg.critic == "shared" else policy.module


@torch.no_grad()
def sync_sampler(sampler: Sampler, policy: Engine, cfg: PPOConfig) -> float:
    """Hand an engine with its own weights the policy's current ones (whole parameters, gathered under ZeRO-3;
    with LoRA the adapter-wrapped model, unmerged). Every rank calls it (the gather is collective). Seconds taken."""
    start = time.perf_counter()
    with policy.gathered():
        sampler.sync(policy_lm(policy, cfg))
    return time.perf_counter() - start


@torch.no_grad()
def rollout(policy: Engine, critic: Engine | None, reference: Any, reward: RewardFn,
            critic_scores: LastTokenScores | None, prompts: list[list[int]], cfg: PPOConfig, tokenizer: Any,
            stop_ids: list[int], stats: dict[str, float] | None, kl_coef: float,
            rules: Sequence[DomainRule] | None = None,
            more_prompts: Callable[[int], list[list[int]]] | None = None, group: int = 1,
            sampler: Sampler | None = None) -> Rollout:
    """Generate, score and evaluate one batch of prompts; everything the PPO update needs.

    ``rules``: with ``cfg.rule_reward_weight`` > 0, the rule reward is added to the normalised score.
    ``more_prompts(round)``: the prompt rows of a further generation round (``cfg.dynamic_sampling``).
    ``group``: answers per model row (:func:`rollout_rows`): 1, or ``cfg.num_generations`` to share prompts.
    ``sampler``: what draws the answers (:mod:`alignment.samplers`); the local engine when None."""
    device = dist.device()
    timing: dict[str, float] = {}
    pad = tokenizer.pad_token_id

    # 1-2. generate and score (more rounds with dynamic sampling) ---------------------------------
    if sampler is None:
        sampler = make_sampler("local", cfg)
    samples = sample_answers(policy, reward, prompts, cfg, tokenizer, stop_ids, stats, rules, timing, sampler)
    sampling: dict[str, float] = {}
    if cfg.num_generations > 1:  # how many prompts' answers differ at all: the group estimators' signal
        sampling["rollout/informative_prompts"] = float(
            informative_groups(samples.scores, cfg.num_generations).float().mean())
    if cfg.dynamic_sampling:
        if more_prompts is None:
            raise ValueError("dynamic sampling needs more_prompts")
        samples, rounds = dynamic_sampling(
            samples, lambda r: sample_answers(policy, reward, more_prompts(r), cfg, tokenizer, stop_ids, stats,
                                              rules, timing, sampler), cfg)
        sampling["rollout/sampling_rounds"] = float(rounds)
    responses, response_mask = (t.to(device) for t in pad_sequences(samples.responses, pad))  # (B, R)
    rows = {k: t.to(device) for k, t in rollout_rows(samples.prompts, samples.responses, pad, group).items()}
    finished, scores, raw_scores = samples.finished, samples.scores, samples.raw_scores

    # 3. evaluate: policy and reference log-probs, values ---------------------------------------
    start = time.perf_counter()
    parts: dict[str, list[torch.Tensor]] = {"old": [], "entropy": [], "ref": [], "values": []}
    temperature = cfg.generation.temperature
    policy.eval()
    # In as many chunks of rows as the update has minibatches (the same count on every rank, as ZeRO-3 needs):
    # the update holds that many rows' activations anyway, so this pass needs no more memory than it. Over the
    # whole batch at once it held several float32 tensors of a vocabulary row per response token (the logits,
    # their softmax for the entropy): 0.3 GB each at 16 rows of 96 tokens over a 49,152-token vocabulary.
    for chunk in torch.arange(rows["input_ids"].shape[0], device=device).tensor_split(cfg.num_minibatches):
        part, part_mask = minibatch(rows, chunk), response_mask[answers_of(chunk, group)]
        with policy.autocast():
            out = response_pass(policy.ds or policy.module, part, part_mask, temperature,
                                hidden=cfg.critic == "shared")
            parts["old"].append(out.logps)
            parts["entropy"].append(per_row(entropy_from_logits(out.scaled), part_mask))
            if cfg.critic == "shared":  # the value of the state before each response token
                parts["values"].append(per_row(policy.module.values(out.hidden), part_mask))
            del out
            parts["ref"].append(reference(lambda model, p=part, m=part_mask: response_pass(model, p, m,
                                                                                            temperature).logps))
            if critic is not None:
                parts["values"].append(critic_values(critic, critic_scores, part, part_mask))
    policy.train()
    old_logps, ref_logps = torch.cat(parts["old"]), torch.cat(parts["ref"])  # (B, R)
    entropy = masked_mean(torch.cat(parts["entropy"]), response_mask.float())
    # (B, R) the value of the state before each token; none without a critic
    values = torch.cat(parts["values"]) if parts["values"] else torch.zeros(responses.shape, device=device)
    timing["evaluate"] = time.perf_counter() - start

    # 4. rewards and advantages -----------------------------------------------------------------
    m = response_mask.float()
    advantages, returns, kl = advantages_of(scores, old_logps, ref_logps, values * m, m, cfg, kl_coef)
    lengths = m.sum(dim=1)
    rule_terms = samples.rule_terms
    rule_metrics = {}
    if rule_terms is not None:
        rule_metrics = {"objective/rule_reward": float(rule_terms.sum(dim=1).mean()),
                        **{f"rule_reward/{rule.name}": float(rule_terms[:, j].mean()) for j, rule in enumerate(rules)}}
    return Rollout(
        rows=rows, group=group, prompts=samples.prompts,
        tokens=sum(len(p) + len(r) for p, r in zip(samples.prompts, samples.responses)),
        responses=responses, response_mask=m,
        old_logps=old_logps, ref_logps=ref_logps, values=values * m, advantages=advantages, returns=returns,
        metrics={
            "objective/kl": float((kl * m).sum(dim=1).mean()),
            "objective/entropy": float(entropy),
            "objective/scores": float(raw_scores.mean()),
            "objective/rewards": float(scores.mean()),
            "objective/non_score_reward": float((-kl_coef * kl * m).sum(dim=1).mean()),
            "rollout/response_length": float(lengths.mean()),
            "rollout/unfinished": float((~finished).float().mean()),
            **rule_metrics,
            **sampling,
        },
        texts=samples.texts,
        timing=timing,
    )


def advantages_of(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, values: torch.Tensor,
                  mask: torch.Tensor, cfg: PPOConfig, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor]:
    """(B,) scores and (B, R) rollout tensors -> (B, R) advantages, returns (the critic's targets; the
    advantages again without a critic) and the per-token KL, by ``cfg.advantage``. The answers of a prompt
    are ``cfg.num_generations`` consecutive rows."""
    k = cfg.num_generations
    in_reward = kl_coef if cfg.kl_penalty == "reward" else 0.0
    if cfg.advantage == "gae":
        rewards, kl = shaped_rewards(scores, logps, ref_logps, mask, in_reward, cfg.kl_estimator)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    elif cfg.advantage == "reinforce_pp":
        rewards, kl = shaped_rewards(group_mean_baseline(scores, k), logps, ref_logps, mask, in_reward,
                                     cfg.kl_estimator)
        advantages = returns = returns_to_go(rewards, mask)
    else:  # grpo, dr_grpo, rloo: one sequence reward per answer, its advantage on every token
        _, kl = shaped_rewards(scores, logps, ref_logps, mask, 0.0, cfg.kl_estimator)
        sequence = scores - in_reward * kl.sum(dim=1)  # (B,)
        advantages = returns = group_advantages(sequence, k, cfg.advantage)[:, None] * mask  # (B, R)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    return advantages, returns, kl


def model_reward(reward_model: torch.nn.Module, pad_id: int, autocast: Any) -> RewardFn:
    """Scores from a reward model: prompt + response right-padded, read at the last real token."""
    scores = LastTokenScores(reward_model)
    device = dist.device()

    @torch.no_grad()
    def score(prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        seqs = [p + r for p, r in zip(prompts, responses)]
        ids, mask = (t.to(device) for t in pad_sequences(seqs, pad_id))  # (B, T), (B, T) right padded
        with autocast():
            reward_model(input_ids=ids, attention_mask=causal_mask(mask), use_cache=False)
        return scores.take(mask)
    return score


# --------------------------------------------------------------------------------------------------
# Learn
# --------------------------------------------------------------------------------------------------
def ppo_update(policy: Engine, critic: Engine | None, critic_scores: LastTokenScores | None,
               batch: Rollout, cfg: PPOConfig, kl_coef: float = 0.0) -> dict[str, float]:
    """ppo_epochs passes over num_minibatches minibatches; one optimizer step per minibatch. A minibatch takes
    model rows at random: answers, or whole prompt groups when the rows share prompts."""
    n = batch.rows["input_ids"].shape[0]
    size = n // cfg.num_minibatches
    sums: dict[str, float] = {}
    count = 0
    for _epoch in range(cfg.ppo_epochs):
        order = torch.randperm(n)
        for k in range(cfg.num_minibatches):
            rows = order[k * size : (k + 1) * size].to(batch.responses.device)
            inputs = minibatch(batch.rows, rows)
            idx = answers_of(rows, batch.group)
            m = batch.response_mask[idx]
            with policy.autocast():
                out = response_pass(policy.ds or policy.module, inputs, m, cfg.generation.temperature,
                                    hidden=cfg.critic == "shared")
                if cfg.critic == "shared":
                    values = per_row(policy.module.values(out.hidden), m)
            logps = out.logps
            del out
            pg_loss, pg_stats = policy_loss(logps, batch.old_logps[idx], batch.advantages[idx], m,
                                            cfg.clip_range, cfg.clip_range_high, cfg.loss_aggregation,
                                            cfg.generation.max_new_tokens)
            step_stats = {"policy/loss": pg_loss, **pg_stats}
            loss = pg_loss
            if cfg.kl_penalty == "loss":
                # k3: unlike k1, its gradient pulls towards the reference (E_p[grad log p] = 0 makes k1's zero)
                kl_loss = aggregate_loss(kl_estimate(logps, batch.ref_logps[idx], "k3"), m,
                                         cfg.loss_aggregation, cfg.generation.max_new_tokens)
                loss = loss + kl_coef * kl_loss
                step_stats["policy/kl_loss"] = kl_loss
            if cfg.critic == "separate":
                with critic.autocast():
                    values = critic_values(critic, critic_scores, inputs, m)
            if cfg.critic != "none":
                vf_loss, vf_stats = value_loss(values, batch.values[idx], batch.returns[idx], m,
                                               cfg.clip_range_value)
                step_stats.update({"val/vf_loss": vf_loss, **vf_stats})
            if cfg.critic == "shared":  # the value head trains through the policy's own loss
                loss = loss + cfg.vf_coef * vf_loss
            policy.backward(loss)
            if cfg.critic == "separate":
                critic.backward(vf_loss)
                critic.step()
            policy.step()
            for key, value in step_stats.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            count += 1
    renamed = {"value/clipfrac": "val/clipfrac", "value/mean": "val/mean", "value/error": "val/error"}
    return {renamed.get(k, k): v / count for k, v in sums.items()}


# --------------------------------------------------------------------------------------------------
# Setup, loop, save
# --------------------------------------------------------------------------------------------------
def run_ppo(cfg: PPOConfig, reward_fn: RewardFn | None = None) -> Path:
    """Train; `reward_fn` replaces the reward model with a rule (see RewardFn)."""
    dist.init_process_group()
    run = Run(cfg, "ppo")
    out = run.out
    sampler = make_sampler(cfg.generation.engine, cfg)  # an unknown engine is refused before anything loads
    set_seed(cfg.train.seed)
    device = dist.device()

    tokenizer = load_tokenizer(cfg.model, cfg.model_options)
    prompts, cut = load_prompts(cfg, tokenizer)
    run.log(f"{len(prompts)} prompts" + (f"; {cut} cut to {cfg.data.max_prompt_length} tokens" if cut else ""))
    stop_ids = sorted({tokenizer.eos_token_id, *_generation_eos(cfg.model, tokenizer)})

    # the rules first: a misnamed rule weight is refused before any model loads or any file is written
    policies = None
    if cfg.policies:
        from alignment.evaluation.rules import load_rules

        policies = load_rules(cfg.policies)
        unknown = sorted(set(cfg.rule_weights) - {p.name for p in policies})
        if unknown:
            from alignment.errors import AlignError

            raise AlignError(f"names no rule of {cfg.policies}: {', '.join(unknown)} (its rules: "
                             f"{', '.join(p.name for p in policies)})", field="rule_weights")
        if cfg.rule_reward_weight > 0:
            run.log(f"rule reward: {len(policies)} rules from {cfg.policies}, weight {cfg.rule_reward_weight}")

    # --- models ------------------------------------------------------------------------------
    reward_model, stats = None, None
    if reward_fn is None and not cfg.reward_model and cfg.rule_reward_weight > 0:
        reward_fn = _no_model_reward  # the rules are the whole reward
    if reward_fn is None:
        if not cfg.reward_model:
            from alignment.errors import AlignError

            raise AlignError("is required: a reward model directory from `align rm`", field="reward_model")
        reward_model = load_reward_model(cfg.reward_model, options=cfg.model_options)
        reward_model = reward_model.eval().requires_grad_(False).to(device)
        reward_model.config.pad_token_id = tokenizer.pad_token_id
        stats = load_reward_stats(Path(cfg.reward_model) / "model") or load_reward_stats(Path(cfg.reward_model))
        if cfg.normalize_rewards and stats is None:
            run.log("WARNING: the reward model has no reward_stats.json; scores are used unnormalised")
    policy_model = load_causal_lm(cfg.model, trainable_adapter=cfg.lora.enabled, options=cfg.model_options)
    if cfg.lora.enabled:
        policy_model = apply_lora(policy_model, cfg.lora)
    if cfg.train.gradient_checkpointing:
        policy_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    critic_model = None
    if cfg.critic == "shared":
        head = torch.nn.Linear(policy_model.config.hidden_size, 1, bias=False)
        torch.nn.init.zeros_(head.weight)
        source = score_module(reward_model) if reward_model is not None else None
        if source is not None and source.weight.shape[1] == head.weight.shape[1]:
            head.weight.data.copy_(source.weight.data.float())
        policy_model = PolicyWithValueHead(policy_model, head)
    elif cfg.critic == "separate":
        critic_model = load_reward_model(cfg.reward_model or cfg.model,  # trained in full: float32
                                         options=dataclasses.replace(cfg.model_options, dtype="float32"))
        critic_model.config.pad_token_id = tokenizer.pad_token_id

    if cfg.disable_dropout:
        n = sum(disable_dropout(m) for m in (policy_model, critic_model) if m is not None)
        if n:
            run.log(f"dropout turned off in {n} places (disable_dropout: false keeps it)")
    bf16 = use_bf16(cfg.train.bf16)
    answers = cfg.train.batch_size * cfg.num_generations  # per process and rollout batch
    schedule = Schedule.create(len(prompts), cfg.train, dist.world_size())
    updates = schedule.total_steps * cfg.ppo_epochs * cfg.num_minibatches
    ds_config = deepspeed_config(cfg.deepspeed, cfg.train, bf16,
                                 micro_batch=answers // cfg.num_minibatches, grad_accum=1)
    train_cfg = dataclasses.replace(cfg.train, grad_accum=1)
    policy = Engine(policy_model, train_cfg, updates, bf16, ds_config)
    critic = critic_scores = None
    if critic_model is not None:
        critic_cfg = dataclasses.replace(train_cfg, lr=cfg.critic_lr or cfg.train.lr)
        critic = Engine(critic_model, critic_cfg, updates, bf16, ds_config)
        critic_scores = LastTokenScores(critic.module)
    if cfg.lora.enabled and not cfg.ref_model:  # the policy with its adapter disabled
        frozen, adapter = None, policy_lm(policy, cfg)
    else:
        frozen, adapter = place_reference(load_frozen(cfg.ref_model or cfg.model, cfg.model_options), ds_config), None
    reference = token_reference(policy, frozen, adapter)
    reward = reward_fn or model_reward(reward_model, tokenizer.pad_token_id, policy.autocast)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef))
    trainable, total = count_parameters(policy.module)
    precision = describe_bf16(cfg.train.bf16, bf16)
    run.log(f"policy {cfg.model}: {trainable:,} trainable of {total:,}; advantage {cfg.advantage}, "
        f"{cfg.num_generations} answer(s) per prompt; critic {cfg.critic}; reference "
        f"{'adapter disabled' if cfg.lora.enabled and not cfg.ref_model else 'frozen copy'}; reward "
        f"{'a function' if reward_fn else cfg.reward_model}; {precision}; processes={dist.world_size()}; "
        f"deepspeed={cfg.deepspeed or 'off'}; steps={schedule.total_steps} ({updates} updates)")

    k = cfg.num_generations
    share = prompt_sharing(bool(cfg.share_prompt), lambda: shared_prompt_works(
        policy, reference, prompts[: cfg.train.batch_size], k, tokenizer.pad_token_id, cfg.generation.temperature),
        run.log, "per-token log-prob (nats)", f"each prompt's {k} answers")
    group = k if share else 1

    others = {"critic": critic} if critic is not None else {}
    state = run.start(policy, schedule.total_steps, others)
    start_step = state["step"]
    if "kl_controller" in state:
        kl_ctl.load_state_dict(state["kl_controller"])

    if not sampler.reads_policy:  # the engine's own weights start as the policy's (resumed ones included)
        sync_sampler(sampler, policy, cfg)
    policy.train()
    for step in run.steps(start_step):
        done = step + 1
        started = time.perf_counter()
        (idx,) = schedule.micro_batches(step, dist.rank())
        # the answers to one prompt are consecutive rows: the group estimators compare them
        batch_prompts = [prompts[i] for i in idx for _ in range(cfg.num_generations)]
        with run.step(done, policy) as timed:
            batch = timed.rollout = rollout(policy, critic, reference, reward, critic_scores, batch_prompts, cfg,
                                            tokenizer, stop_ids, stats, kl_ctl.value, policies,
                                            more_prompts=lambda r, s=step: extra_prompts(prompts, cfg, s, r),
                                            group=group, sampler=sampler)
            learn_start = time.perf_counter()
            metrics = ppo_update(policy, critic, critic_scores, batch, cfg, kl_ctl.value)
            timing = {**batch.timing, "train": time.perf_counter() - learn_start}
            if not sampler.reads_policy and done < schedule.total_steps:  # the next rollout's weights
                timing["sync"] = sync_sampler(sampler, policy, cfg)
        kl_ctl.update(batch.metrics["objective/kl"], answers * dist.world_size())
        elapsed = time.perf_counter() - started
        if policies:
            from alignment.evaluation.rules import adherence

            batch.metrics.update({f"adherence/{k}": v for k, v in adherence(batch.texts, policies).items()})
        keys = list(batch.metrics) + list(metrics)
        values = dist.all_reduce_sum([batch.metrics[k] if k in batch.metrics else metrics[k] for k in keys])
        row = {k: v / dist.world_size() for k, v in zip(keys, values)}
        row.update({"objective/kl_coef": kl_ctl.value, "train/lr": policy.lr(),
                    "perf/episodes_per_second": answers * dist.world_size() / elapsed,
                    **{f"time/{k}": v / elapsed for k, v in timing.items()}})
        if not math.isfinite(row["policy/loss"]):
            raise FloatingPointError(f"policy loss became {row['policy/loss']} at step {done}; lower train.lr")
        if run.log_due(done):
            run.metrics(row, done)
        if run.save_due(done):
            run.checkpoint(policy, done, {"kl_controller": kl_ctl.state_dict()}, others)

    with policy.gathered():
        if run.main:
            save_model(policy_lm(policy, cfg), tokenizer, out / "model",
                       out / "merged" if cfg.lora.enabled and cfg.lora.save_merged else None, cfg.model_options)
            run.log(f"saved {out / 'model'}")
    run.close()
    return out / "model"


def extra_prompts(prompts: list[list[int]], cfg: PPOConfig, step: int, round_: int) -> list[list[int]]:
    """The prompt rows of dynamic sampling's round ``round_`` (>= 1) of ``step`` on this process:
    ``train.batch_size`` prompts drawn from the whole set, each ``num_generations`` times. Drawn from a
    generator seeded by (seed, step, round, rank), so a resumed run draws what the uninterrupted one drew."""
    key = ((cfg.train.seed * 1_000_003 + step) * 1_009 + round_) * 1_013 + dist.rank()
    rng = torch.Generator().manual_seed(key % (2**63 - 1))
    idx = torch.randint(len(prompts), (cfg.train.batch_size,), generator=rng).tolist()
    return [prompts[i] for i in idx for _ in range(cfg.num_generations)]


def _no_model_reward(prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
    """Zero for every answer: with a rule reward and no reward model, the rules are all the reward."""
    return torch.zeros(len(responses))


def _generation_eos(model: str, tokenizer: Any) -> list[int]:
    """What generation stops on, from the generation_config.json saved with the model (the tokenizer's EOS
    when there is none): read from disk because the policy is not loaded yet when the stop ids are needed."""
    from transformers import GenerationConfig

    from alignment.data.chat import generation_eos_ids
    from alignment.modeling import resolve_model

    try:
        config = GenerationConfig.from_pretrained(str(resolve_model(model)))
    except OSError:  # no generation_config.json
        config = None
    return generation_eos_ids(tokenizer, config)

