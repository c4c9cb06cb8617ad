"""Direct preference optimisation (`align dpo`): setup, one step, the loop, save.

The reference model, cheapest first:
- reference-free losses (SimPO) need none;
- ``precompute_ref``: reference log-probabilities of every pair computed once before training (with
  the starting policy itself when the reference is the starting model), cached in the output folder
  so a resumed run reuses them; nothing extra in memory while training;
- LoRA: the same model with its adapter disabled; no second copy;
- otherwise a frozen copy (under ZeRO-3 sharded like the policy, as TRL's ``prepare_deepspeed`` does).
Those models and the cache are in ``alignment/reference.py``, shared with PPO; the log-probs DPO reads
from them (per sequence, summed or averaged) are :func:`batch_logps` here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from alignment import distributed as dist
from alignment.batching import (
    Collate,
    collate_pairs,
    collate_shared_pairs,
    mask_for,
    pair_layout,
    pair_lengths,
    pair_rows,
    shared_prompt_gap,
    step_share,
    step_weight,
)
from alignment.config import DPOConfig
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
from alignment.files import atomic_write
from alignment.logits import labelled_logits, token_logps
from alignment.losses import PREFERENCE_LOSSES, chosen_nll, preference_metrics
from alignment.modeling import (
    apply_lora,
    count_parameters,
    disable_dropout,
    load_causal_lm,
    load_tokenizer,
    save_model,
)
from alignment.reference import Reference, load_frozen, place_reference, precompute
from alignment.run import Run, split_state
from alignment.training import (
    Engine,
    Schedule,
    deepspeed_config,
    describe_bf16,
    set_seed,
    use_bf16,
)


def build_loss(cfg: DPOConfig) -> Any:
    if cfg.loss == "sigmoid":
        return PREFERENCE_LOSSES["sigmoid"](beta=cfg.beta, label_smoothing=cfg.label_smoothing)
    if cfg.loss == "simpo":
        return PREFERENCE_LOSSES["simpo"](beta=cfg.beta, gamma=cfg.simpo_gamma)
    return PREFERENCE_LOSSES[cfg.loss](beta=cfg.beta)


# --------------------------------------------------------------------------------------------------
# Log-probabilities
# --------------------------------------------------------------------------------------------------
def batch_logps(model: Any, batch: dict[str, torch.Tensor], average: bool, autocast: Any) -> tuple[
        torch.Tensor, torch.Tensor]:
    """(B,) chosen and (B,) rejected response log-probs (summed, or per-token means when ``average``).
    The output layer runs on response tokens only (alignment.logits)."""
    device = dist.device()
    ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    positions = batch["position_ids"].to(device) if "position_ids" in batch else None  # shared-prompt rows
    with autocast:
        mask = mask_for(model, mask) if positions is not None else mask
        out = labelled_logits(model, ids, labels, mask, positions)  # (N, V) over the rows
    if positions is not None:  # one row per pair: its chosen segment's tokens, then its rejected segment's
        cols = (labels[:, 1:] != IGNORE_INDEX).nonzero()[:, 1]  # (N,) in labelled_logits' order
        out = dataclasses.replace(out, rows=pair_rows(batch, out.rows, cols), batch_size=2 * ids.shape[0])
    logps, counts = out.per_row_sum(token_logps(out)), out.counts()  # (2B,), (2B,)
    if average:
        logps = logps / counts.clamp(min=1)
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


# --------------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------------
def chosen_counts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) trained-on tokens of each chosen answer (the first half of a collated pair batch), counted the
    way :func:`alignment.logits.labelled_logits` selects them."""
    rows, cols = (batch["labels"][:, 1:] != IGNORE_INDEX).nonzero().unbind(dim=1)  # (N,), (N,)
    b = batch["margin"].shape[0]
    return torch.bincount(pair_rows(batch, rows, cols), minlength=2 * b)[:b].to(dist.device())


SHARED_PROMPT_TOLERANCE = 0.05  # nats: mean |difference| of per-token log-probs the two layouts may show


@torch.no_grad()
def shared_prompt_works(engine: Engine, pairs: list[TokenizedPair], pad: int) -> tuple[bool, float]:
    """Whether the policy gives a shared-prompt row the log-probs of the pair's two rows, on ``pairs`` (one batch),
    per token: an attention that ignores a custom mask, a sliding window the mask does not carry, or positions not
    read from ``position_ids`` would differ. Every process reaches the same verdict. Returns (verdict, gap)."""
    engine.eval()
    try:
        gap = shared_prompt_gap(lambda batch: torch.cat(batch_logps(engine.ds or engine.module, batch, True,
                                                                    engine.autocast())), pairs, pad)
    finally:
        engine.train()
    return gap <= SHARED_PROMPT_TOLERANCE, gap


# The step's losses: weighted means over every pair of the step (the other metrics are plain means).
WEIGHTED_METRICS = ("train/loss", "train/nll_chosen", "train/preference_loss")


def train_step(engine: Engine, reference: Reference | None, loss_fn: Any, micro_batches: list[dict[str, Any]],
               keys: list[list[int]], rpo_alpha: float = 0.0) -> dict[str, float]:
    """One optimizer step; the loss is the mean over every pair of the step (all micro-batches and processes),
    weighted by the pairs' ``weight`` (``sum_i w_i * loss_i / sum_i w_i``), plus ``rpo_alpha`` times the chosen
    answers' per-token NLL, weighted the same way."""
    world = dist.world_size()
    total = step_weight(micro_batches)
    sums: dict[str, float] = {}
    for batch, batch_keys in zip(micro_batches, keys):
        policy_c, policy_r = batch_logps(engine.ds or engine.module, batch, loss_fn.average_logps, engine.autocast())
        ref_c = ref_r = None
        if reference is not None:
            ref_c, ref_r = reference.logps(batch, batch_keys)
        weights = batch["weight"].to(policy_c.device)  # (B,)
        out = loss_fn(policy_c, policy_r, ref_c, ref_r, weights=weights)
        loss = out.loss
        extra = {}
        if rpo_alpha:
            nll = chosen_nll(policy_c, chosen_counts(batch), loss_fn.average_logps, weights)
            loss = loss + rpo_alpha * nll
            extra = {"train/nll_chosen": float(nll.detach()), "train/preference_loss": float(out.loss.detach())}
        share = step_share(batch, total, world)
        engine.backward(loss * share)
        metrics = {"train/loss": float(loss.detach()), **extra,
                   **preference_metrics(out, policy_c.detach(), policy_r.detach())}
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + (v * share if k in WEIGHTED_METRICS else v)
    lr = engine.lr()
    grad_norm = engine.step()
    n = len(micro_batches) * world
    totals = dist.all_reduce_sum(list(sums.values()))
    means = {k: v / (world if k in WEIGHTED_METRICS else n) for k, v in zip(sums, totals)}
    return {**means, "train/grad_norm": grad_norm, "train/lr": lr}


@torch.no_grad()
def evaluate(engine: Engine, reference: Reference | None, loss_fn: Any, pairs: list[TokenizedPair],
             keys: list[int], batch_size: int, pad: int, collate: Collate = collate_pairs) -> dict[str, float]:
    """Held-out preference metrics (same names, `eval/` prefix), over all processes. ``eval/loss`` is weighted by
    the pairs' ``weight`` as in training (0 when every held-out pair weighs 0); the rest are plain means."""
    if not pairs:
        return {}
    engine.eval()
    sums: dict[str, float] = {}
    for shard in dist.even_shard(len(pairs), batch_size, pair_lengths(pairs, collate)):
        idx = [max(i, 0) for i in shard]
        real = torch.tensor([float(i >= 0) for i in shard])  # (B,) 0 for padding slots
        batch = collate([pairs[i] for i in idx], pad)
        policy_c, policy_r = batch_logps(engine.ds or engine.module, batch, loss_fn.average_logps, engine.autocast())
        ref_c = ref_r = None
        if reference is not None:
            ref_c, ref_r = reference.logps(batch, [keys[i] for i in idx])
        out = loss_fn(policy_c, policy_r, ref_c, ref_r)
        per_pair = {"loss": out.losses, "rewards/chosen": out.chosen_rewards,
                    "rewards/rejected": out.rejected_rewards,
                    "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
                    "logps/chosen": policy_c, "logps/rejected": policy_r}
        loss_weight = real * batch["weight"]  # (B,) the pair's weight; 0 for padding slots
        for k, v in per_pair.items():
            w = loss_weight if k == "loss" else real
            sums[k] = sums.get(k, 0.0) + float((v.detach().float().cpu() * w).sum())
        sums["n"] = sums.get("n", 0.0) + float(real.sum())
        sums["w"] = sums.get("w", 0.0) + float(loss_weight.sum())
    engine.train()
    totals = dict(zip(sums, dist.all_reduce_sum(list(sums.values()))))
    n, w = totals.pop("n"), totals.pop("w")
    result = {f"eval/{k}": v / n for k, v in totals.items()}
    result["eval/loss"] = totals["loss"] / w if w > 0 else 0.0
    result["eval/rewards/margins"] = result["eval/rewards/chosen"] - result["eval/rewards/rejected"]
    return result


class LikelihoodWatch:
    """Warn once when chosen log-probs fall while margins rise: DPO is then pushing both responses
    down, the rejected faster, a failure users report (Pal et al. 2024, "Smaug"; Razin et al. 2024).

    With a reference, ``rewards/chosen / beta`` is the change of the chosen answers' log-likelihood
    against the reference on the very examples of the batch, so batches of different lengths compare
    fairly; without one (SimPO) the raw ``logps/chosen`` is compared with the first steps. Both are
    averaged over a window of steps, since single batches are noisy.
    """

    def __init__(self, total_steps: int, beta: float, uses_reference: bool) -> None:
        self.window = max(3, total_steps // 10)
        self.beta, self.uses_reference = beta, uses_reference
        self.history: list[tuple[float, float]] = []
        self.warned = False

    def update(self, step: int, metrics: dict[str, float]) -> str | None:
        change = metrics["rewards/chosen"] / self.beta if self.uses_reference else metrics["logps/chosen"]
        self.history.append((change, metrics["rewards/margins"]))
        if self.warned or len(self.history) < (1 if self.uses_reference else 2) * self.window:
            return None
        recent = self.history[-self.window :]
        first = self.history[: self.window]
        chosen = sum(c for c, _ in recent) / self.window
        margin = sum(m for _, m in recent) / self.window
        base_chosen = 0.0 if self.uses_reference else sum(c for c, _ in first) / self.window
        base_margin = 0.0 if self.uses_reference else sum(m for _, m in first) / self.window
        if chosen < base_chosen - 1.0 and margin > base_margin:
            self.warned = True
            return (f"over the last {self.window} steps the chosen answers lost {base_chosen - chosen:.2f} nats of "
                    f"log-likelihood while margins rose to {margin:.3f}: DPO is lowering the chosen answers too. "
                    "Consider a lower train.lr, a higher beta, or loss: ipo.")
        return None


# --------------------------------------------------------------------------------------------------
# Setup, loop, save
# --------------------------------------------------------------------------------------------------
def run_dpo(cfg: DPOConfig) -> Path:
    """DPO on preference pairs (unpaired data is paired by prompt). `align dpo` sends unpaired data with
    negatives to KTO instead: see :func:`alignment.phases.use_kto`."""
    dist.init_process_group()
    run = Run(cfg, "dpo")
    out = run.out
    set_seed(cfg.train.seed)
    loss_fn = build_loss(cfg)

    tokenizer = load_tokenizer(cfg.model, cfg.model_options)
    train_ex, val_ex, test_ex, info = load_pair_splits(cfg.data, cfg.train.seed, out if dist.is_main() else None,
                                                       cfg.model)
    train_pairs, stats = tokenize_pairs(tokenizer, train_ex, cfg.data.max_length)
    val_pairs, _ = tokenize_pairs(tokenizer, val_ex, cfg.data.max_length)
    test_pairs, _ = tokenize_pairs(tokenizer, test_ex, cfg.data.max_length)
    if info.orphan_negatives:
        run.log(f"{info.orphan_negatives} negative examples have no good answer to pair with and are not "
            "used (negatives: kto would train on them)")
    run.log(f"data: {info.kind} ({info.variant}), {info.rows} rows -> {info.pairs} pairs; "
        f"train {describe(stats, cfg.data.max_length, weight_summary(train_ex))}; validation {len(val_pairs)} pairs"
        f"{describe_test(test_ex, test_pairs, info)}; loss {cfg.loss}, "
        f"beta {cfg.beta}")
    early = EarlyStopping.create(cfg, run, len(val_pairs))

    model = load_causal_lm(cfg.model, trainable_adapter=cfg.lora.enabled, options=cfg.model_options)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora.enabled:
            model.enable_input_require_grads()
    if cfg.disable_dropout and (n := disable_dropout(model)):
        run.log(f"dropout turned off in {n} places (disable_dropout: false keeps it)")
    separate_ref = cfg.ref_model is not None and cfg.ref_model != cfg.model
    frozen = None
    if loss_fn.needs_reference and (separate_ref or not cfg.lora.enabled) and not (
            cfg.precompute_ref and not separate_ref):
        frozen = load_frozen(cfg.ref_model or cfg.model, cfg.model_options)
    trainable, total = count_parameters(model)
    bf16 = use_bf16(cfg.train.bf16)
    schedule = Schedule.create(len(train_pairs), cfg.train, dist.world_size(),
                               pair_lengths(train_pairs))
    ds_config = deepspeed_config(cfg.deepspeed, cfg.train, bf16)
    engine = Engine(model, cfg.train, schedule.total_steps, bf16, ds_config)
    if frozen is not None:
        frozen = place_reference(frozen, ds_config)
    reference = Reference(engine, frozen, cfg.lora.enabled and not separate_ref,
                          lambda m, batch, autocast: batch_logps(m, batch, loss_fn.average_logps, autocast)) \
        if loss_fn.needs_reference else None
    where = ("none (reference-free)" if reference is None else "precomputed" if cfg.precompute_ref else
             "adapter disabled" if frozen is None else "frozen copy")
    precision = describe_bf16(cfg.train.bf16, bf16)
    run.log(f"model {cfg.model}: {trainable:,} trainable of {total:,} parameters; reference: {where}; "
        f"{precision}; processes={dist.world_size()}; deepspeed={cfg.deepspeed or 'off'}; steps={schedule.total_steps}")

    resume_from = run.resume_from
    pad = tokenizer.pad_token_id
    collate = pair_layout(cfg.share_prompt, train_pairs[: cfg.train.batch_size],
                          lambda pairs: shared_prompt_works(engine, pairs, pad), run.log, "per-token log-prob (nats)")
    schedule = schedule.grouped_by(pair_lengths(train_pairs, collate))
    val_keys = [len(train_pairs) + i for i in range(len(val_pairs))]
    test_keys = [len(train_pairs) + len(val_pairs) + i for i in range(len(test_pairs))]
    if reference is not None and cfg.precompute_ref:
        cache_file = out / "reference_logps.pt"
        # Before any update (a resumed run loads its checkpoint later): the policy is still the reference (or the
        # frozen copy is). Only the pairs the run reads (a run shorter than an epoch reads fewer), and the
        # held-out ones (test too).
        pairs = train_pairs + val_pairs + test_pairs
        keys = sorted(schedule.examples_read(0, schedule.total_steps)) + val_keys + test_keys
        digest = _cache_digest(cfg, pairs, keys, loss_fn.average_logps, bf16, collate is collate_shared_pairs)
        cached, why = _read_reference_cache(cache_file, digest, keys) if resume_from is not None else (None, "")
        # every process decides alike: one computing them alone would wait forever in precompute's all-reduce
        if dist.all_reduce_sum([float(cached is None)])[0] and cached is not None:
            cached, why = None, f"another process could not use its {cache_file.name}"
        if cached is None:
            if why:
                run.log(f"reference log-probs computed again: {why}")
            cached = precompute(reference, pairs, cfg.train.batch_size, pad, keys, collate)
            if run.main:
                out.mkdir(parents=True, exist_ok=True)
                # whole or not at all: a run killed while writing it leaves the one before
                atomic_write(cache_file, lambda f: torch.save({"digest": digest, "logps": cached}, f))
        reference.cache = cached
        if frozen is not None:
            reference.frozen = frozen = None  # free the copy
    split = split_state(cfg, (json.dumps([ex.prompt, ex.chosen, ex.rejected]) for ex in test_ex))
    start_step = run.start(engine, schedule.total_steps, early_stopping=early, split=split)["step"]

    def held_out(pairs: list[TokenizedPair] = val_pairs, keys: list[int] = val_keys) -> dict[str, float]:
        return evaluate(engine, reference, loss_fn, pairs, keys, cfg.train.batch_size, pad, collate)

    watch = LikelihoodWatch(schedule.total_steps, cfg.beta, loss_fn.needs_reference)

    engine.train()
    window_start, window_pairs = time.perf_counter(), 0
    for step in run.steps(start_step):
        done = step + 1
        idx_lists = schedule.micro_batches(step, dist.rank())
        batches = [collate([train_pairs[i] for i in idx], pad) for idx in idx_lists]
        with run.step(done, engine, batches):
            metrics = train_step(engine, reference, loss_fn, batches, idx_lists, cfg.rpo_alpha)
        window_pairs += sum(len(idx) for idx in idx_lists) * dist.world_size()
        if not math.isfinite(metrics["train/loss"]):
            raise FloatingPointError(f"loss became {metrics['train/loss']} at step {done}; lower train.lr")
        warning = watch.update(done, metrics)
        if warning:
            run.log(f"WARNING at step {done}: {warning}")
            metrics["warnings/chosen_logps_falling"] = 1.0
        if run.log_due(done):
            elapsed = time.perf_counter() - window_start
            metrics.update({"train/epoch": schedule.epoch_of(done), "perf/pairs_per_second": window_pairs / elapsed})
            run.metrics(metrics, done)
            window_start, window_pairs = time.perf_counter(), 0
        if run.eval_due(done):
            run.metrics(held := held_out(), done)
            if early is not None and early.update(engine, held, done):
                break
        if run.save_due(done):
            run.checkpoint(engine, done)

    # the model saved: with early stopping the best one evaluated, put back in place
    final = early.conclude(engine, held_out, schedule.total_steps) if early else held_out()
    end_step = early.end_step(schedule.total_steps) if early else schedule.total_steps
    run.metrics(final, end_step)
    # the test pairs, scored once with the model about to be saved (never seen by training or early stopping)
    test = run.record_test(held_out(test_pairs, test_keys), len(test_pairs), end_step)
    with engine.gathered():
        if run.main:
            save_model(engine.module, tokenizer, out / "model",
                       out / "merged" if cfg.lora.enabled and cfg.lora.save_merged else None, cfg.model_options)
    if final:
        run.log(f"held-out: accuracy {final['eval/rewards/accuracies']:.3f}, margin "
                f"{final['eval/rewards/margins']:+.3f}, logps chosen {final['eval/logps/chosen']:.2f} / rejected "
                f"{final['eval/logps/rejected']:.2f}")
    tested = (f"; test accuracy {test['test/rewards/accuracies']:.3f}, margin {test['test/rewards/margins']:+.3f},"
              f" loss {test['test/loss']:.4f} on {len(test_pairs)} pairs" if test else "")
    run.log(f"saved {out / 'model'}{tested}")
    run.close()
    return out / "model"


def _cache_digest(cfg: DPOConfig, pairs: list[TokenizedPair], keys: list[int], average: bool, bf16: bool,
                  shared: bool) -> str:
    """What the reference log-probs cache was computed from: the reference model (its name and, for a folder, its
    weight files' sizes and times, so a model trained again in the same folder counts as another), how it was
    loaded (``model_options``) and run (``bf16`` autocast, ``shared``-prompt rows, which round differently), how
    log-probs are pooled, and the tokens of every pair
    at ``keys`` (a key is a position in train + validation + test: the same position holds another pair once the
    data, the split or the tokenization changes)."""
    import hashlib

    from alignment.config import to_dict

    reference = str(cfg.ref_model or cfg.model)  # the frozen copy, or the policy before any update
    h = hashlib.sha256(json.dumps([reference, _weights_stamp(reference), to_dict(cfg.model_options), bool(bf16),
                                   bool(average), cfg.data.max_length, bool(shared)]).encode())
    for k in keys:
        p = pairs[k]
        h.update(json.dumps([k, p.chosen_ids, p.chosen_labels, p.rejected_ids, p.rejected_labels]).encode())
    return h.hexdigest()[:16]


def _weights_stamp(model: str) -> list[list[Any]]:
    """Name, size and modification time of a model folder's config and weight files (adapter ones too); [] for a
    model named on the hub."""
    path = Path(model)
    if (path / "model").is_dir() and not (path / "config.json").exists():
        path = path / "model"  # a finished phase's folder
    if not path.is_dir():
        return []
    files = sorted(f for f in path.iterdir() if f.is_file() and (
        f.suffix in (".safetensors", ".bin", ".pt") or f.name in ("config.json", "adapter_config.json")))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _read_reference_cache(path: Path, digest: str, keys: list[int]) -> tuple[
        dict[int, tuple[float, float]] | None, str]:
    """A resumed run's cache when it was computed for exactly these pairs (``digest``) and holds the log-probs of
    every pair at ``keys`` (train, validation and test), only those; else None and why not."""
    if not path.exists():
        return None, f"{path.name} is missing"
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as e:  # a truncated or foreign file: computing them again is the remedy
        first = (str(e).strip().splitlines() or [""])[0]
        return None, f"{path.name} could not be read ({type(e).__name__}: {first})"
    if not isinstance(saved, dict) or "digest" not in saved:
        return None, f"{path.name} does not record what it was computed from (written by an older version)"
    if saved["digest"] != digest:
        return None, (f"{path.name} was computed for other pairs or another reference (the data, its split, the "
                      "reference model or its settings changed)")
    logps = saved.get("logps")
    missing = [k for k in keys if not isinstance(logps, dict) or k not in logps]
    if missing:
        return None, f"{path.name} lacks the log-probs of {len(missing)} of the {len(keys)} pairs the run reads"
    return {k: logps[k] for k in keys}, ""
