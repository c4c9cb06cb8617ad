"""Reward modeling (`align rm`): setup, one step, the loop, save, diagnose.

A one-score head on the SFT model (or any causal LM), trained with the pairwise Bradley-Terry loss
on preference pairs. After training, the held-out diagnostics (accuracy, score distributions, length
bias, calibration) end in a plain verdict, and the score mean and std on the training responses are
saved next to the model for PPO's reward normalisation.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from alignment import distributed as dist
from alignment.batching import (
    Collate,
    collate_pairs,
    mask_for,
    pair_layout,
    pair_lengths,
    shared_prompt_gap,
    step_share,
    step_weight,
)
from alignment.config import RMConfig
from alignment.data.chat import IGNORE_INDEX
from alignment.data.preferences import (
    TokenizedPair,
    describe,
    describe_test,
    load_pair_splits,
    tokenize_pairs,
    weight_summary,
)
from alignment.early_stopping import EarlyStopping
from alignment.evaluation.rm_diagnostics import diagnose, verdict
from alignment.logits import causal_mask
from alignment.losses import bradley_terry_loss, reward_model_metrics
from alignment.modeling import (
    apply_lora,
    count_parameters,
    disable_dropout,
    load_reward_model,
    load_tokenizer,
    save_model,
)
from alignment.reward import LastTokenScores, save_reward_stats
from alignment.run import Run, split_state
from alignment.training import (
    Engine,
    Schedule,
    deepspeed_config,
    describe_bf16,
    set_seed,
    use_bf16,
)


# --------------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------------
def pair_scores(engine: Engine, scorer: LastTokenScores, batch: dict[str, torch.Tensor]) -> tuple[
        torch.Tensor, torch.Tensor]:
    """(B,) chosen and (B,) rejected scores from one forward over the batch: (2B, T) rows from
    :func:`~alignment.batching.collate_pairs`, or (B, W) rows with a shared prompt from
    :func:`~alignment.batching.collate_shared_pairs`."""
    device = dist.device()
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    if "chosen_last" not in batch:
        engine.forward(input_ids=ids, attention_mask=causal_mask(mask), use_cache=False)
        scores = scorer.take(mask)  # (2B,)
        half = scores.shape[0] // 2
        return scores[:half], scores[half:]
    engine.forward(input_ids=ids, attention_mask=mask_for(engine.module, mask),
                   position_ids=batch["position_ids"].to(device), use_cache=False)
    per_token = scorer.per_token().float()  # (B, W)
    rows = torch.arange(ids.shape[0], device=device)
    return per_token[rows, batch["chosen_last"].to(device)], per_token[rows, batch["rejected_last"].to(device)]


# mean |score difference| the two layouts may show, in units of the mean |score| when that is above 1: bf16
# autocast moves a score by about 0.01 (the default model, fresh head); a mask the model does not follow, far more
SHARED_PROMPT_TOLERANCE = 0.05


@torch.no_grad()
def shared_prompt_works(engine: Engine, scorer: LastTokenScores, pairs: list[TokenizedPair], pad_id: int) -> tuple[
        bool, float]:
    """Whether the model scores a shared-prompt row as it scores the pair's two rows, on ``pairs`` (one batch):
    an attention implementation that ignores a custom mask, a sliding window the mask does not carry, or positions
    the model does not read from ``position_ids`` would score differently. Every process reaches the same verdict.
    Returns (verdict, gap)."""
    engine.eval()
    scale = 1.0
    try:
        def measure(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            nonlocal scale
            scores = torch.cat(pair_scores(engine, scorer, batch))  # (2B,)
            if "chosen_last" not in batch:  # bf16 noise grows with the scores
                scale = max(1.0, float(scores.abs().mean()))
            return scores / scale
        gap = shared_prompt_gap(measure, pairs, pad_id)
    finally:
        engine.train()
    return gap <= SHARED_PROMPT_TOLERANCE, gap


def train_step(engine: Engine, scorer: LastTokenScores, micro_batches: list[dict[str, torch.Tensor]],
               cfg: RMConfig) -> dict[str, float]:
    """One optimizer step; the loss is the mean over every pair of the step (all micro-batches and processes),
    weighted by the pairs' ``weight``: ``sum_i w_i * loss_i / sum_i w_i`` (all weights 1: the plain mean).
    The reward metrics are plain means over the pairs."""
    world = dist.world_size()
    total = step_weight(micro_batches)
    sums = {"loss": 0.0, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/accuracies": 0.0}
    for batch in micro_batches:
        chosen, rejected = pair_scores(engine, scorer, batch)
        margin = batch["margin"].to(chosen.device) if cfg.use_margin else None
        loss = bradley_terry_loss(chosen, rejected, margin=margin, center_coef=cfg.center_coef,
                                  weights=batch["weight"].to(chosen.device))
        share = step_share(batch, total, world)
        engine.backward(loss * share)
        sums["loss"] += float(loss.detach()) * share  # summed over processes and divided by world below
        m = reward_model_metrics(chosen.detach(), rejected.detach())
        for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies"):
            sums[key] += m[key]
    lr = engine.lr()
    grad_norm = engine.step()
    n = len(micro_batches) * world
    totals = dict(zip(sums, dist.all_reduce_sum(list(sums.values()))))
    out = {"train/loss": totals.pop("loss") / world, **{k: v / n for k, v in totals.items()}}
    out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    return {**out, "train/grad_norm": grad_norm, "train/lr": lr}


@torch.no_grad()
def score_pairs(engine: Engine, scorer: LastTokenScores, pairs: list[TokenizedPair], batch_size: int,
                pad_id: int, collate: Collate = collate_pairs) -> tuple[list[float], list[float]]:
    """Scores of every pair, computed across processes (each rank a slice; every rank runs the same
    number of forwards so ZeRO-3's collective parameter gathers stay in step). ``collate``: the batch layout."""
    if not pairs:
        return [], []
    engine.eval()
    chosen, rejected = [0.0] * len(pairs), [0.0] * len(pairs)
    for idx in dist.even_shard(len(pairs), batch_size, pair_lengths(pairs, collate)):
        batch = collate([pairs[max(i, 0)] for i in idx], pad_id)
        c, r = pair_scores(engine, scorer, batch)
        for j, i in enumerate(idx):
            if i >= 0:
                chosen[i], rejected[i] = float(c[j]), float(r[j])
    engine.train()
    return dist.all_reduce_sum(chosen), dist.all_reduce_sum(rejected)


STATS_PAIRS = 128  # training pairs scored for the reward statistics PPO normalises with


def stats_sample(pairs: list[TokenizedPair], seed: int) -> list[TokenizedPair]:
    """At most STATS_PAIRS training pairs, a seeded random choice. The mean and std of 256 scores are
    as good for normalising PPO's rewards as those of every pair (the mean's standard error is std/16),
    and scoring a large training set after training would cost a third of an epoch."""
    if len(pairs) <= STATS_PAIRS:
        return pairs
    import random

    return [pairs[i] for i in sorted(random.Random(seed).sample(range(len(pairs)), STATS_PAIRS))]


def _response_length(labels: list[int]) -> int:
    return sum(1 for x in labels if x != IGNORE_INDEX)


# --------------------------------------------------------------------------------------------------
# Setup, loop, save, diagnose
# --------------------------------------------------------------------------------------------------
def run_rm(cfg: RMConfig) -> Path:
    dist.init_process_group()
    run = Run(cfg, "rm")
    out = run.out
    set_seed(cfg.train.seed)

    tokenizer = load_tokenizer(cfg.model, cfg.model_options)
    train_ex, val_ex, test_ex, info = load_pair_splits(cfg.data, cfg.train.seed, out if dist.is_main() else None,
                                                       cfg.model)
    train_pairs, train_stats = tokenize_pairs(tokenizer, train_ex, cfg.data.max_length)
    val_pairs, _ = tokenize_pairs(tokenizer, val_ex, cfg.data.max_length)
    test_pairs, _ = tokenize_pairs(tokenizer, test_ex, cfg.data.max_length)
    run.log(f"data: {info.kind} ({info.variant}), {info.rows} rows -> {info.pairs} pairs, "
        f"{info.duplicates_removed} duplicates removed; train "
        f"{describe(train_stats, cfg.data.max_length, weight_summary(train_ex))}; "
        f"validation {len(val_pairs)} pairs{describe_test(test_ex, test_pairs, info)}")
    early = EarlyStopping.create(cfg, run, len(val_pairs))

    model = load_reward_model(cfg.model, options=cfg.model_options)
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, task_type="SEQ_CLS")
    if cfg.disable_dropout and (n := disable_dropout(model)):
        run.log(f"dropout turned off in {n} places (disable_dropout: false keeps it)")
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    bf16 = use_bf16(cfg.train.bf16)
    schedule = Schedule.create(len(train_pairs), cfg.train, dist.world_size(),
                               pair_lengths(train_pairs))
    ds_config = deepspeed_config(cfg.deepspeed, cfg.train, bf16)
    engine = Engine(model, cfg.train, schedule.total_steps, bf16, ds_config)
    scorer = LastTokenScores(engine.module)
    precision = describe_bf16(cfg.train.bf16, bf16)
    run.log(f"model {cfg.model}: {trainable:,} trainable of {total:,} parameters; {precision}; "
        f"processes={dist.world_size()}; deepspeed={cfg.deepspeed or 'off'}; steps={schedule.total_steps}")

    pad = tokenizer.pad_token_id
    collate = pair_layout(cfg.share_prompt, train_pairs[: cfg.train.batch_size],
                          lambda pairs: shared_prompt_works(engine, scorer, pairs, pad), run.log, "score")
    schedule = schedule.grouped_by(pair_lengths(train_pairs, collate))
    split = split_state(cfg, (json.dumps([ex.prompt, ex.chosen, ex.rejected]) for ex in test_ex))
    start_step = run.start(engine, schedule.total_steps, early_stopping=early, split=split)["step"]

    def held_out_metrics(pairs: list[TokenizedPair] = val_pairs) -> dict[str, float]:
        c, r = score_pairs(engine, scorer, pairs, cfg.train.batch_size, pad, collate)
        if not c:
            return {}
        m = reward_model_metrics(torch.tensor(c), torch.tensor(r))
        return {"eval/" + k: v for k, v in m.items()}

    engine.train()
    window_start, window_pairs = time.perf_counter(), 0
    for step in run.steps(start_step):
        done = step + 1
        batches = [collate([train_pairs[i] for i in idx], pad)
                   for idx in schedule.micro_batches(step, dist.rank())]
        with run.step(done, engine, batches):
            metrics = train_step(engine, scorer, batches, cfg)
        window_pairs += sum(b["margin"].shape[0] for b in batches) * dist.world_size()
        if not math.isfinite(metrics["train/loss"]):
            raise FloatingPointError(f"loss became {metrics['train/loss']} at step {done}; lower train.lr")
        if run.log_due(done):
            elapsed = time.perf_counter() - window_start
            metrics.update({"train/epoch": schedule.epoch_of(done), "perf/pairs_per_second": window_pairs / elapsed})
            run.metrics(metrics, done)
            window_start, window_pairs = time.perf_counter(), 0
        if run.eval_due(done):
            run.metrics(held := held_out_metrics(), done)
            if early is not None and early.update(engine, held, done):
                break
        if run.save_due(done):
            run.checkpoint(engine, done)
    end_step = schedule.total_steps
    if early is not None:  # the best model evaluated back in place: the diagnostics and statistics are its own
        early.conclude(engine, held_out_metrics, schedule.total_steps)
        end_step = early.end_step(schedule.total_steps)

    # --- diagnose on held-out pairs; score statistics on the training responses ----------------
    vc, vr = score_pairs(engine, scorer, val_pairs, cfg.train.batch_size, pad, collate)
    tc, tr = score_pairs(engine, scorer, stats_sample(train_pairs, cfg.train.seed), cfg.train.batch_size, pad,
                         collate)
    train_scores = torch.tensor(tc + tr)
    mean, std = float(train_scores.mean()), float(train_scores.std().clamp(min=1e-6))
    diagnostics = None
    if vc:
        diagnostics = diagnose(vc, vr, [_response_length(p.chosen_labels) for p in val_pairs],
                               [_response_length(p.rejected_labels) for p in val_pairs])
        run.metrics({"eval/" + k: v for k, v in reward_model_metrics(torch.tensor(vc), torch.tensor(vr)).items()},
                    end_step)

    # the test pairs, scored once with the model about to be saved (never seen by training or early stopping)
    test = run.record_test(held_out_metrics(test_pairs), len(test_pairs), end_step)

    with engine.gathered():
        if run.main:
            save_model(engine.module, tokenizer, out / "model")
    if run.main:
        save_reward_stats(out / "model", mean, std, len(train_scores))
        if diagnostics is not None:
            text, fit = verdict(diagnostics)
            diagnostics.update({"verdict": text, "fit_for_ppo": fit, "train_score_mean": mean,
                                "train_score_std": std, "scores": {"chosen": vc, "rejected": vr}})
            (out / "diagnostics.json").write_text(json.dumps(diagnostics, indent=2))
            run.log(f"held-out: accuracy {diagnostics['accuracy']:.3f}, chosen {diagnostics['chosen_mean']:+.2f}"
                  f" ± {diagnostics['chosen_std']:.2f}, rejected {diagnostics['rejected_mean']:+.2f} ± "
                    f"{diagnostics['rejected_std']:.2f}, prefers longer {diagnostics['prefers_longer']:.2f} "
                    f"(data {diagnostics['data_prefers_longer']:.2f}), ECE {diagnostics['ece']:.3f}")
            run.log(f"verdict: {text}")
        else:
            run.log("no held-out pairs: no diagnostics (set data.validation or data.split)")
        tested = (f"; test accuracy {test['test/rewards/accuracies']:.3f}, margin "
                  f"{test['test/rewards/margins']:+.3f} on {len(test_pairs)} pairs" if test else "")
        run.log(f"saved {out / 'model'}; training score mean {mean:+.3f}, std {std:.3f}{tested}")
    scorer.remove()
    run.close()
    return out / "model"
