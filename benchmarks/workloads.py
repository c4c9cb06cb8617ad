"""One benchmark row in a fresh process: ``python -m benchmarks.workloads SPEC.json`` (started by bench.py).

The spec names a workload (sft, rm, dpo, ppo; or the helpers peak and make_rm) and a variant (ours,
ours-ckpt, trl-defaults, trl-tuned). The row runs ``warmup + steps`` optimizer steps (PPO: rollout batches), timing
each one from the outside, then, when the spec asks for a profile, one more step under torch's profiler, then stops
at once (no final evaluation or save), and writes a JSON result with per-step seconds and unit counts, the profiled
step's time per kind of operator, the peak RSS of this process and the settings used.

How the steps are timed without touching the code being measured:
- ours: a step hook (:func:`alignment.run.step_hook`) sees each step begin and end (PPO: from ``rollout`` to the
  end of ``ppo_update``);
- TRL: a ``TrainerCallback`` records ``on_step_begin`` / ``on_step_end``, and a subclass counts the units in
  ``training_step`` (RLOO: in ``_generate_and_score_completions``, timing ``_generate`` and
  ``_calculate_rewards`` for the generation / scoring split).
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.bench import RL_WORKLOADS, ModelDims, phase_of, recipe_overrides

SPEC: dict[str, Any] = {}


class StepsDone(Exception):
    """Raised once the last timed step has been recorded, to stop a run without its final eval/save."""


class StepClock:
    """Per-step wall time and unit counts; ``total`` steps (warm-up included), then, with ``profile``, one more
    step under torch's profiler (not timed: the profiler's cost per operator call would slow it), then
    :class:`StepsDone`."""

    def __init__(self, total: int, warmup: int, profile: bool = False) -> None:
        self.total, self.warmup = total, warmup
        self.wants_profile = profile
        self.steps: list[dict[str, float]] = []
        self.profile: dict[str, float] | None = None  # the profiled step's counts, seconds and ms per kind
        self.maxrss_mib: float | None = None  # peak RSS before the profiled step (its records are not training's)
        self.current: dict[str, float] | None = None
        self._t0 = 0.0
        self._profiler: Any = None

    @property
    def runs(self) -> int:
        """Steps the run must reach: the timed ones and the profiled one."""
        return self.total + int(self.wants_profile)

    @property
    def done(self) -> bool:
        return len(self.steps) >= self.total and (not self.wants_profile or self.profile is not None)

    def begin(self) -> None:
        if self.done:
            raise StepsDone
        self.current = {"items": 0.0, "tokens": 0.0, "tokens_sq": 0.0}
        if len(self.steps) >= self.total:  # the profiled step
            from torch.profiler import ProfilerActivity, profile

            self.maxrss_mib = peak_rss_mib()
            self._profiler = profile(activities=[ProfilerActivity.CPU])
            self._profiler.__enter__()
        self._t0 = time.perf_counter()

    def abandon_profile(self) -> bool:
        """After a failure: True when the timed steps were all done (only the profiled step failed), with the
        profiler stopped; the timed steps then stand."""
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            self._profiler = None
        return self.wants_profile and len(self.steps) >= self.total and self.profile is None

    def add(self, **counts: float) -> None:
        if self.current is None:  # units counted outside a timed step (e.g. TRL's precompute): ignore
            return
        for key, value in counts.items():
            self.current[key] = self.current.get(key, 0.0) + float(value)

    def end(self) -> None:
        assert self.current is not None, "end() without begin()"
        self.current["seconds"] = time.perf_counter() - self._t0
        if self._profiler is not None:
            from benchmarks.profiling import TRAINING_KINDS, self_ms_by_kind

            self._profiler.__exit__(None, None, None)
            self.profile = {**self.current, **self_ms_by_kind(self._profiler, TRAINING_KINDS)}
            self._profiler = self.current = None
            print(f"[bench]   step {self.total + 1}: {self.profile['seconds']:.2f} s (profiled, not timed)", flush=True)
            return
        self.steps.append(self.current)
        self.current = None
        n = len(self.steps)
        tag = " (warm-up, not timed)" if n <= self.warmup else ""
        print(f"[bench]   step {n}/{self.total}: {self.steps[-1]['seconds']:.2f} s{tag}", flush=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def batch_counts(batch: dict[str, Any]) -> dict[str, float]:
    """Real tokens, the sum of squared sequence lengths (for attention FLOPs), the positions whose next
    token is a training target (where the LM head runs: ours and TRL both skip the others) and rows."""
    ids = batch["input_ids"]
    if batch.get("labels") is not None:
        from alignment.data.chat import IGNORE_INDEX

        targets = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    elif batch.get("completion_mask") is not None:  # TRL DPO: labels are built from the completion mask
        targets = float(batch["completion_mask"][:, 1:].sum())
    else:
        targets = 0.0
    rows = None  # tokens the rows really hold, where that differs from the sequences they stand for
    if batch.get("sequence_lengths") is not None:  # pairs with a shared prompt: the two rows they stand for
        lengths = batch["sequence_lengths"].tolist()
        if batch.get("rejected_last") is not None:  # the row ends with the rejected segment
            rows = float((batch["rejected_last"] + 1).sum())
    elif batch.get("attention_mask") is not None:
        lengths = batch["attention_mask"].sum(dim=1).tolist()
    elif batch.get("position_ids") is not None:  # packed rows: one segment per example (positions restart at 0)
        lengths = []
        for row in batch["position_ids"]:
            starts = (row == 0).nonzero().flatten().tolist() + [row.shape[0]]
            lengths += [b - a for a, b in zip(starts[:-1], starts[1:])]
    else:
        lengths = [ids.shape[1]] * ids.shape[0]
    return {"tokens": float(sum(lengths)), "tokens_sq": float(sum(t * t for t in lengths)), "targets": targets,
            "sequences": float(len(lengths) if batch.get("sequence_lengths") is not None else ids.shape[0]),
            "row_tokens": float(sum(lengths)) if rows is None else rows}


def seq_key(ids: Any) -> str:
    """A short fingerprint of one sequence's token ids (to hand TRL the very batches ours trained on)."""
    return hashlib.sha1(",".join(str(int(i)) for i in ids).encode()).hexdigest()[:16]


def batch_keys(batch: dict[str, Any], workload: str) -> list[str] | None:
    """One key per example of a right-padded batch (SFT: the sequence; RM/DPO: chosen and rejected)."""
    if batch.get("chosen_last") is not None:  # one row per pair with a shared prompt: take the two rows apart
        keys = []
        for row, p, c, r in zip(batch["input_ids"].tolist(), batch["prompt_lengths"].tolist(),
                                batch["chosen_last"].tolist(), batch["rejected_last"].tolist()):
            rejected = row[:p] + row[c + 1 : r + 1]  # the rejected segment, never empty, follows the chosen one
            keys.append(f"{seq_key(row[: c + 1])}:{seq_key(rejected)}")
        return keys
    mask = batch.get("attention_mask")
    if mask is None:  # packed rows: examples are not rows
        return None
    seqs = [seq_key(row[: int(n)].tolist()) for row, n in zip(batch["input_ids"], mask.sum(dim=1))]
    if workload == "sft":
        return seqs
    half = len(seqs) // 2
    return [f"{c}:{r}" for c, r in zip(seqs[:half], seqs[half:])]


def units(workload: str, counts: dict[str, float]) -> float:
    """SFT counts tokens; RM and DPO count pairs (a batch holds chosen rows then rejected rows)."""
    return counts["tokens"] if workload == "sft" else counts["sequences"] / 2


# --------------------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------------------
def ours_config(workload: str, checkpointing: bool | None = None) -> Any:
    """The quickstart recipe of a phase with the bench's overrides (steps, output, no tracking); with
    ``checkpointing`` set, ``train.gradient_checkpointing`` too (the "ours + grad. ckpt" column)."""
    from alignment.config import load_config
    from alignment.phases import PHASES

    total = SPEC["warmup"] + SPEC["steps"] + int(bool(SPEC.get("profile")))
    overrides: dict[str, Any] = {
        "model": SPEC["model"], "output_dir": SPEC["output_dir"], "tracking.backends": [],
        # one step more than timed (and profiled): the wrapper stops the run when that step begins
        "train.max_steps": total + 1, "train.eval_every": 0, "train.save_every": 0, "train.resume": "never",
        "train.log_every": 1,
    }
    if SPEC.get("bf16"):
        overrides["train.bf16"] = SPEC["bf16"]
    if checkpointing is not None:
        overrides["train.gradient_checkpointing"] = checkpointing
    if workload == "dpo":
        overrides["precompute_ref"] = SPEC["dpo_ref"] == "precomputed"
    phase = phase_of(workload)
    if phase == "ppo":
        overrides["reward_model"] = SPEC["reward_model"]
        recipe = load_config(PHASES[phase].config, Path(SPEC["recipes"]) / "ppo.yaml", {"model": SPEC["model"]})
        overrides.update(recipe_overrides(workload, recipe.train.batch_size))
    return load_config(PHASES[phase].config, Path(SPEC["recipes"]) / f"{phase}.yaml", overrides)


def run_ours(workload: str, variant: str, clock: StepClock, result: dict[str, Any]) -> None:
    from alignment.phases import PHASES

    cfg = ours_config(workload, checkpointing=True if variant == "ours-ckpt" else None)
    result["gradient_checkpointing"] = cfg.train.gradient_checkpointing

    class Timer:
        """Times each training step through the phases' step hook (PPO: rollout through its updates)."""

        def begin(self, step: Any) -> None:
            result["precision"] = "bf16 autocast" if step.engine.bf16 else "fp32"
            counts = []
            if step.batches is not None:
                counts = [batch_counts(b) for b in step.batches]
                keys = [batch_keys(b, workload) for b in step.batches]
                if variant == "ours" and all(k is not None for k in keys) and not clock.done:
                    result.setdefault("batch_keys", []).append([k for ks in keys for k in ks])
            clock.begin()
            for c in counts:
                clock.add(items=units(workload, c), tokens=c["tokens"], tokens_sq=c["tokens_sq"],
                          targets=c["targets"], row_tokens=c["row_tokens"])

        def end(self, step: Any) -> None:
            if step.rollout is not None:
                batch = step.rollout
                clock.add(items=batch.responses.shape[0], tokens=float(batch.tokens),
                          generate=batch.timing.get("generate", 0.0), score=batch.timing.get("score", 0.0))
            clock.end()

    from alignment.run import step_hook

    try:
        with step_hook(Timer()):
            PHASES[phase_of(workload)].run(cfg)
    except StepsDone:
        pass
    else:
        raise RuntimeError(f"the phase finished after {len(clock.steps)} of {clock.total} steps")

    from alignment.tracking import read_metrics

    key = {"sft": "perf/tokens_per_second", "rm": "perf/pairs_per_second", "dpo": "perf/pairs_per_second",
           "ppo": "perf/episodes_per_second"}[phase_of(workload)]
    by_step = {row["step"]: row[key] for row in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if key in row}
    result["metrics_throughput"] = [by_step.get(step) for step in range(1, clock.total + 1)]


# --------------------------------------------------------------------------------------------------
# TRL
# --------------------------------------------------------------------------------------------------
def _clock_callback(clock: StepClock, group: int) -> Any:
    """on_step_begin .. on_step_end of every ``group`` optimizer steps (RLOO tuned: a whole rollout batch)."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step % group == 0:
                clock.begin()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step % group == 0:
                clock.end()
                if clock.done:
                    raise StepsDone

    return Clock()


def _ordered(n_examples: int, cfg: Any, steps: int) -> list[int]:
    """Example indices our Schedule (plain random order) gives its first ``steps`` steps."""
    from alignment.training import Schedule

    schedule = Schedule.create(n_examples, cfg.train, 1)
    return [i for step in range(steps) for mb in schedule.micro_batches(step, 0) for i in mb]


def in_ours_order(items: list[tuple[str, Any]], cfg: Any, steps: int, result: dict[str, Any]) -> list[Any]:
    """``items`` (key, record) in the order ours trained on them (the keys its run recorded), plus one spare
    batch; without those keys, in our Schedule's plain random order (noted in the report)."""
    fallback = [items[i][1] for i in _ordered(len(items), cfg, steps + 1)]
    wanted = SPEC.get("batch_keys")
    if wanted:
        index = dict(items)
        if all(k in index for step in wanted[:steps] for k in step) and len(wanted) >= steps:
            return [index[k] for step in wanted[:steps] for k in step] + fallback[-cfg.train.batch_size:]
        result["notes"].append(f"{SPEC['workload']}: ours' batches could not be matched to the data; TRL read "
                               "batches in our Schedule's random order instead (padding may differ).")
    else:
        result["notes"].append(f"{SPEC['workload']}: ours did not run first; TRL read batches in our Schedule's "
                               "random order (without length grouping), which may pad differently from ours.")
    return fallback


def sft_items(cfg: Any, tokenizer: Any, pretokenized: bool) -> list[tuple[str, dict[str, Any]]]:
    """Our SFT training examples (same dedup, split, truncation and drops) keyed by their token ids: as
    conversations for TRL to tokenize, or pre-tokenized with our assistant-token mask (``assistant_masks``,
    so TRL's loss covers exactly our targets)."""
    from alignment.data.chat import IGNORE_INDEX, tokenize_sft
    from alignment.sft import load_sft_records

    train, _val, _ = load_sft_records(cfg)
    items = []
    for record in train:
        examples, _ = tokenize_sft(tokenizer, [record], cfg.data.max_length)
        if examples:
            ex = examples[0]
            row = ({"input_ids": ex.input_ids, "assistant_masks": [int(lb != IGNORE_INDEX) for lb in ex.labels]}
                   if pretokenized else record)
            items.append((seq_key(ex.input_ids), row))
    return items


def pair_items(cfg: Any, tokenizer: Any) -> list[tuple[str, dict[str, Any]]]:
    """Our preference pairs (same split, truncation and drops) as TRL's conversational prompt/chosen/rejected
    rows, keyed by their token ids."""
    from alignment.data.preferences import load_pairs, tokenize_pairs

    train, _val, _ = load_pairs(cfg.data, cfg.train.seed)
    items = []
    for ex in train:
        pairs, _ = tokenize_pairs(tokenizer, [ex], cfg.data.max_length)
        if pairs:
            key = f"{seq_key(pairs[0].chosen_ids)}:{seq_key(pairs[0].rejected_ids)}"
            items.append((key, {"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected}))
    return items


def prompt_records(cfg: Any) -> list[dict[str, Any]]:
    """Our PPO prompts as TRL's conversational ``prompt`` rows."""
    from alignment.data import deduplicate, load_dataset_file, to_conversation

    ds, info = load_dataset_file(cfg.data.train, "prompts")
    ds, _ = deduplicate(ds, "prompts", info.variant, cfg.data.dedup)
    return [{"prompt": to_conversation(r, "prompts", info.variant)["prompt"]} for r in ds]


def _trl_precision(cfg: Any) -> bool:
    """bf16 for TRL tuned: what ours ran with in this bench, else our rule (`use_bf16`) evaluated here."""
    if SPEC.get("ours_bf16") is not None:
        return bool(SPEC["ours_bf16"])
    from alignment.training import use_bf16

    return use_bf16(cfg.train.bf16)


def run_trl(workload: str, variant: str, clock: StepClock, result: dict[str, Any]) -> None:
    import datasets
    import trl

    from alignment.modeling import load_tokenizer, resolve_model

    cfg = ours_config(workload)  # the same data, batch, lengths and seed as ours
    model_path = str(resolve_model(cfg.model))
    tokenizer = load_tokenizer(cfg.model)
    tuned = variant == "trl-tuned"
    total = clock.runs  # the timed steps and the profiled one: every one of them on ours' batches
    bs = cfg.train.batch_size
    # The workload itself: identical for both TRL columns.
    common: dict[str, Any] = {"per_device_train_batch_size": bs, "report_to": "none", "seed": cfg.train.seed}
    import torch

    if not torch.cuda.is_available():
        # Without it transformers refuses TRL's default bf16=True on a CPU-only machine ("Your setup doesn't
        # support bf16/gpu. You need to assign use_cpu"); it changes nothing else on such a machine.
        common["use_cpu"] = True
        result["notes"].append("On a CPU-only machine TRL's default `bf16=True` makes transformers refuse to start "
                               "(\"Your setup doesn't support bf16/gpu. You need to assign use_cpu\"), so both TRL "
                               "columns set `use_cpu=True`; it changes nothing else on such a machine.")
    # TRL tuned: as ours runs (precision, checkpointing, learning rate), and nothing but training.
    extra: dict[str, Any] = {}
    if tuned:
        extra = {"bf16": _trl_precision(cfg), "gradient_checkpointing": cfg.train.gradient_checkpointing,
                 "logging_strategy": "no", "save_strategy": "no", "learning_rate": cfg.train.lr}
    group = 1

    if workload == "sft":
        common.update(max_length=cfg.data.max_length, train_sampling_strategy="sequential")
        config_cls, trainer_cls = trl.SFTConfig, trl.SFTTrainer
        data = datasets.Dataset.from_list(in_ours_order(sft_items(cfg, tokenizer, tuned), cfg, total, result))
        result["notes"].append(
            "SFT loss: ours on assistant tokens only. TRL defaults gets the conversations (`messages`) and, as TRL "
            "does by default, trains on every token (`assistant_only_loss` would need `{% generation %}` markers "
            "that the SmolLM2 chat template lacks), so its LM head runs on more positions. TRL tuned gets the same "
            "examples pre-tokenized by our tokenizer with our assistant mask as `assistant_masks`, so its loss "
            "covers exactly our targets.")
    elif workload == "rm":
        common.update(max_length=cfg.data.max_length, train_sampling_strategy="sequential")
        config_cls, trainer_cls = trl.RewardConfig, trl.RewardTrainer
        data = datasets.Dataset.from_list(in_ours_order(pair_items(cfg, tokenizer), cfg, total, result))
    elif workload == "dpo":
        common.update(max_length=cfg.data.max_length, train_sampling_strategy="sequential", beta=cfg.beta,
                      loss_type=["sigmoid"], precompute_ref_log_probs=SPEC["dpo_ref"] == "precomputed")
        config_cls, trainer_cls = trl.DPOConfig, trl.DPOTrainer
        data = datasets.Dataset.from_list(in_ours_order(pair_items(cfg, tokenizer), cfg, total, result))
    else:
        # PPO: RLOO with 2 samples per prompt, as many episodes per batch as ours (bs prompts x 1 answer);
        # GRPO / RLOO: ours' num_generations and the same episodes (bs prompts x k answers).
        k = cfg.num_generations if workload != "ppo" else 2
        episodes = bs * cfg.num_generations
        common.update(max_completion_length=cfg.generation.max_new_tokens, temperature=cfg.generation.temperature,
                      top_p=cfg.generation.top_p, top_k=0, num_generations=k, beta=cfg.kl_coef,
                      per_device_train_batch_size=episodes)
        if tuned:  # the same updates per rollout batch as ours: ppo_epochs x num_minibatches
            extra.update(per_device_train_batch_size=episodes // cfg.num_minibatches,
                         steps_per_generation=cfg.num_minibatches, num_iterations=cfg.ppo_epochs)
            group = cfg.num_minibatches * cfg.ppo_epochs
        config_cls, trainer_cls = ((trl.GRPOConfig, trl.GRPOTrainer) if workload == "grpo"
                                   else (trl.RLOOConfig, trl.RLOOTrainer))
        data = datasets.Dataset.from_list(prompt_records(cfg))
        tokenizer.padding_side = "left"

    settings = {**common, **extra}
    args = config_cls(output_dir=SPEC["output_dir"], max_steps=total * group, **settings)
    result["trl_settings"] = {"workload": {k: v for k, v in common.items() if k not in ("report_to", "seed")},
                              "tuned": extra}
    result["precision"] = "bf16 autocast" if args.bf16 else "fp32"
    result["gradient_checkpointing"] = bool(args.gradient_checkpointing)

    if workload in RL_WORKLOADS:
        class Counting(trainer_cls):  # type: ignore[valid-type,misc]
            def _generate(self, *a: Any, **k: Any) -> Any:
                t0 = time.perf_counter()
                out = super()._generate(*a, **k)
                clock.add(generate=time.perf_counter() - t0)
                return out

            def _calculate_rewards(self, *a: Any, **k: Any) -> Any:
                t0 = time.perf_counter()
                out = super()._calculate_rewards(*a, **k)
                clock.add(score=time.perf_counter() - t0)
                return out

            def _generate_and_score_completions(self, *a: Any, **k: Any) -> Any:
                out = super()._generate_and_score_completions(*a, **k)
                clock.add(items=out["completion_ids"].shape[0],
                          tokens=float(out["prompt_mask"].sum() + out["completion_mask"].sum()))
                return out

        trainer = Counting(model=model_path, reward_funcs=SPEC["reward_model"], args=args, train_dataset=data,
                           processing_class=tokenizer, callbacks=[_clock_callback(clock, group)])
    else:
        class Counting(trainer_cls):  # type: ignore[valid-type,misc,no-redef]
            def training_step(self, model: Any, inputs: Any, *a: Any, **k: Any) -> Any:
                c = batch_counts(inputs)
                clock.add(items=units(workload, c), tokens=c["tokens"], tokens_sq=c["tokens_sq"],
                          targets=c["targets"], row_tokens=c["row_tokens"])
                return super().training_step(model, inputs, *a, **k)

        trainer = Counting(model=model_path, args=args, train_dataset=data, processing_class=tokenizer,
                           callbacks=[_clock_callback(clock, group)])
    try:
        trainer.train()
    except StepsDone:
        pass
    else:
        raise RuntimeError(f"TRL finished after {len(clock.steps)} of {clock.total} steps")


# --------------------------------------------------------------------------------------------------
# Helpers: peak FLOP/s, the PPO reward model
# --------------------------------------------------------------------------------------------------
def measure_peak(result: dict[str, Any], sizes: tuple[int, ...] = (1024, 2048, 3072)) -> None:
    """Best ``torch.mm`` FLOP/s in fp32 and bf16 over a few square sizes, torch's default threads."""
    import torch

    detail: dict[str, dict[int, float]] = {"fp32": {}, "bf16": {}}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for n in sizes:
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            torch.mm(a, b)  # warm-up
            best = float("inf")
            for _ in range(5 if n <= 2048 else 3):
                t0 = time.perf_counter()
                torch.mm(a, b)
                best = min(best, time.perf_counter() - t0)
            detail[name][n] = 2.0 * n**3 / best
        print(f"[bench]   {name}: " + ", ".join(f"{n}: {v / 1e9:.1f} GFLOP/s" for n, v in detail[name].items()),
              flush=True)
    result.update(fp32=max(detail["fp32"].values()), bf16=max(detail["bf16"].values()), detail=detail,
                  threads=torch.get_num_threads())


def make_reward_model(result: dict[str, Any]) -> None:
    """The base model with a fresh one-score head (our `load_reward_model`), saved like `align rm` does."""
    from alignment.modeling import load_reward_model, load_tokenizer, save_model
    from alignment.reward import save_reward_stats
    from alignment.training import set_seed

    set_seed(0)
    tokenizer = load_tokenizer(SPEC["model"])
    model = load_reward_model(SPEC["model"])
    model.config.pad_token_id = tokenizer.pad_token_id
    out = Path(SPEC["output_dir"]) / "model"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, tokenizer, out)
    save_reward_stats(out, 0.0, 1.0, 0)
    result["path"] = str(out)


def model_dims(model: str) -> dict[str, int] | None:
    from alignment.modeling import resolve_model

    try:
        return asdict(ModelDims.from_config(json.loads((resolve_model(model) / "config.json").read_text())))
    except (ValueError, OSError):
        return None


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def main(spec_path: str) -> int:
    SPEC.update(json.loads(Path(spec_path).read_text()))
    workload, variant = SPEC["workload"], SPEC["variant"]
    result: dict[str, Any] = {"ok": False, "workload": workload, "variant": variant, "notes": []}
    clock = StepClock(SPEC["warmup"] + SPEC["steps"], SPEC["warmup"], profile=bool(SPEC.get("profile")))
    try:
        if workload == "peak":
            measure_peak(result)
        elif workload == "make_rm":
            make_reward_model(result)
        else:
            result["dims"] = model_dims(SPEC["model"])
            if variant.startswith("ours"):
                run_ours(workload, variant, clock, result)
            else:
                run_trl(workload, variant, clock, result)
            result["steps"] = clock.steps
            if clock.profile is not None:
                result["profile"] = clock.profile
        result["ok"] = True
    except Exception as exc:  # reported as "failed: reason" in the table, with the traceback in the log
        traceback.print_exc()
        reason = f"{type(exc).__name__}: {exc}".strip()
        result["steps"] = clock.steps
        if clock.abandon_profile():  # only the profiled step failed: the measurement stands without its profile
            result["notes"].append(f"{workload} {variant}: the profiled step failed ({reason}); its timed steps stand")
            result["ok"] = True
        else:
            result["error"] = reason
    import torch

    from alignment.allocator import describe

    result["allocator"] = describe()
    result.setdefault("threads", torch.get_num_threads())  # every row's, for the header when the peak is skipped
    result["maxrss_mib"] = clock.maxrss_mib or peak_rss_mib()
    Path(SPEC["result"]).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
