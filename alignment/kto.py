"""KTO on unpaired data (`align dpo` with `negatives: kto`): setup, TRL's loop, save.

Experts write negative examples, answers that must never be given, often for prompts that have no
good answer on file. DPO needs a pair per prompt; KTO (Ethayarajh et al. 2024, "KTO: Model Alignment
as Prospect Theoretic Optimization", Eq. 7) scores each answer on its own against a reference point:

    r(x, y)  = log pi(y|x) - log pi_ref(y|x)
    z_ref    = max(0, KL(pi || pi_ref)), estimated on mismatched (x, y') pairs of the batch
    loss     = w_D (1 - sigmoid(beta (r - z_ref)))   for a good answer (label true)
             + w_U (1 - sigmoid(beta (z_ref - r)))   for a negative example (label false)

The loop is TRL's ``KTOTrainer`` (the field's library first); this file adds what TRL lacks:
our strict data layer (every record validated up front, dedup, a split that never puts one prompt on
both sides), our recipe mapped onto ``KTOConfig`` in one place, checkpoints under
``<output>/checkpoints``, our metric names in ``metrics.jsonl`` / W&B, and our model folder layout.

TRL's KTOTrainer reads the training data in order (its KL estimate pairs each example with its
neighbour's completion), so we shuffle the rows once, deterministically by ``train.seed``; otherwise a
file sorted by label would train on all good answers first.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import ProgressCallback, TrainerCallback

from alignment import distributed as dist
from alignment.config import DPOConfig, refuse_test
from alignment.data import deduplicate, iter_records, load_dataset_file, split_dataset, to_conversation
from alignment.data.dedup import normalise_strings
from alignment.data.io import one_read_per_file, release_reads
from alignment.errors import AlignError
from alignment.modeling import count_parameters, load_causal_lm, load_tokenizer, save_model
from alignment.run import SPLIT_FILE, Run, split_state
from alignment.tracking import MetricsLogger
from alignment.training import deepspeed_config, describe_bf16, lr_schedule, set_seed, use_bf16

# TRL / transformers log key -> our shared metric name; TRL's own KTO keys (rewards/*,
# logps/*, logits/*, kl, entropy) pass through as they are, with `eval/` in front of held-out ones.
METRIC_NAMES = {
    "loss": "train/loss",
    "learning_rate": "train/lr",
    "grad_norm": "train/grad_norm",
    "epoch": "train/epoch",
    "train_runtime": "perf/train_runtime",
    "train_samples_per_second": "perf/samples_per_second",
    "train_steps_per_second": "perf/steps_per_second",
    "eval_runtime": "perf/eval_runtime",
    "eval_samples_per_second": "perf/eval_samples_per_second",
    "eval_steps_per_second": "perf/eval_steps_per_second",
}
# train_loss: TRL's mean over the whole run, wrong after a resume; eval_num_tokens: the training token count again
DROPPED = {"total_flos", "train_loss", "eval_num_tokens"}


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
def _read_unpaired(path: str, dedup: str) -> tuple[datasets.Dataset, Any, int]:
    ds, info = load_dataset_file(path, "unpaired")
    ds, removed = deduplicate(ds, info.kind, info.variant, dedup)
    return ds, info, removed


def _conversations(ds: datasets.Dataset, variant: str) -> list[dict[str, Any]]:
    """``{"prompt": [msgs], "completion": [msgs], "label": bool}`` rows: TRL's conversational unpaired format."""
    return [to_conversation(record, "unpaired", variant) for _, record in iter_records(ds)]


@dataclass(frozen=True)
class UnpairedLoaded:
    """What loading the unpaired data did (the phase's data log line)."""

    variant: str  # the file's column layout (see alignment.data.formats)
    rows: int  # records read, before de-duplication
    duplicates: int  # records removed as duplicates
    train: int
    validation: int
    desirable: int  # training rows labelled good
    undesirable: int  # training rows labelled bad


def load_unpaired(cfg: DPOConfig, curation_dir: Path | None = None) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]], UnpairedLoaded]:
    """Train and validation rows (train shuffled by ``train.seed``) and what was done to get them.

    The file is read and validated once: inside the DPO phase's :func:`~alignment.data.io.one_read_per_file`
    block, what :func:`~alignment.phases.use_kto` read is used, and let go once the rows are made. ``data.curate``
    curates the training file after de-duplication (report and plot in ``curation_dir`` when given)."""
    with one_read_per_file():
        ds, info, removed = _read_unpaired(cfg.data.train, cfg.data.dedup)
        rows = len(ds) + removed
        if cfg.data.curate is not None:
            from alignment.data.curate import curate_dataset

            ds, _ = curate_dataset(ds, "unpaired", info.variant, cfg.data.curate, source=cfg.data.train,
                                   policy_model=cfg.model, report_dir=curation_dir)
        if cfg.data.validation:
            val_ds, val_info, _ = _read_unpaired(cfg.data.validation, cfg.data.dedup)
            train, val = _conversations(ds, info.variant), _conversations(val_ds, val_info.variant)
        else:
            # Key on the normalised prompt, so a string prompt and the same prompt as messages land together, and
            # on its whitespace-normalised text (split scheme 2), so "What is X?" and "What is X? " do too; a
            # prompt with normal whitespace keeps the key, and the part, it had before.
            def prompt_key(record: dict[str, Any]) -> str:
                prompt = to_conversation(record, "unpaired", info.variant)["prompt"]
                return json.dumps(normalise_strings(prompt), sort_keys=True)

            parts = split_dataset(ds, cfg.data.split, cfg.train.seed, key=prompt_key)
            train = _conversations(parts["train"], info.variant)
            val = _conversations(parts["validation"], info.variant) if "validation" in parts else []
        release_reads()
    random.Random(cfg.train.seed).shuffle(train)
    desirable = sum(r["label"] for r in train)
    return train, val, UnpairedLoaded(info.variant, rows, removed, len(train), len(val), desirable,
                                      len(train) - desirable)


def weight_hint(cfg: DPOConfig, desirable: int, undesirable: int) -> str | None:
    """KTO paper, Eq. 8: keep w_D n_D / (w_U n_U) in [1, 4/3]; say which weight would get there."""
    if not desirable or not undesirable:
        return None
    ratio = cfg.kto_desirable_weight * desirable / (cfg.kto_undesirable_weight * undesirable)
    if 1.0 <= ratio <= 4 / 3:
        return None
    low = undesirable * cfg.kto_undesirable_weight / desirable
    return (f"w_D n_D / (w_U n_U) = {ratio:.2f}, outside [1, 1.33] (KTO paper, Eq. 8); with these counts set "
            f"kto_desirable_weight to {low:.2f}..{low * 4 / 3:.2f}")


# --------------------------------------------------------------------------------------------------
# Tracking
# --------------------------------------------------------------------------------------------------
def rename_metrics(logs: dict[str, float]) -> dict[str, float]:
    """TRL's log keys to ours: ``loss`` -> ``train/loss``, ``eval_rewards/chosen`` -> ``eval/rewards/chosen``."""
    out = {}
    for key, value in logs.items():
        if key in DROPPED:
            continue
        if key in METRIC_NAMES:
            out[METRIC_NAMES[key]] = value
        elif key.startswith("eval_"):
            out["eval/" + key[len("eval_"):]] = value
        else:
            out[key] = value
    return out


class TrackerCallback(TrainerCallback):
    """Forwards the trainer's logs into our MetricsLogger at the optimizer step, and stops on a bad loss."""

    def __init__(self, tracker: MetricsLogger) -> None:
        self.tracker = tracker
        self.last_eval_step = -1
        self.last_eval: dict[str, float] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        metrics = rename_metrics(logs or {})
        loss = metrics.get("train/loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {state.global_step}; lower train.lr")
        if "eval/loss" in metrics:
            self.last_eval_step, self.last_eval = state.global_step, metrics
        if metrics:
            self.tracker.log(metrics, state.global_step)


class SplitRecord(TrainerCallback):
    """Writes the run's split record (:func:`alignment.run.split_state`) into every checkpoint transformers
    saves, beside its trainer_state.json (whose fields transformers' TrainerState owns), so a resume under
    other held-out parts is refused as in the other phases."""

    def __init__(self, split: dict[str, Any]) -> None:
        self.split = split

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            tmp = folder / (SPLIT_FILE + ".tmp")
            tmp.write_text(json.dumps(self.split, indent=2) + "\n", encoding="utf-8")
            tmp.replace(folder / SPLIT_FILE)


class QuietProgress(ProgressCallback):
    """transformers' progress bar without a dict printed at every log step (metrics.jsonl has them)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        return None


# --------------------------------------------------------------------------------------------------
# Recipe -> KTOConfig
# --------------------------------------------------------------------------------------------------
def _with_our_schedule(trainer_class: type, kind: str) -> type:
    """``trainer_class`` with the learning-rate schedule of our other phases (:func:`alignment.training.lr_factor`,
    whose warm-up does not begin with a step at learning rate 0) in place of transformers' own."""

    class Trainer(trainer_class):  # type: ignore[misc, valid-type]
        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is None:
                self.lr_scheduler = lr_schedule(optimizer or self.optimizer, num_training_steps,
                                                self.args.get_warmup_steps(num_training_steps), kind)
                self._created_lr_scheduler = True
            return self.lr_scheduler

    return Trainer


def build_args(cfg: DPOConfig, out: Path, bf16: bool, has_eval: bool, ds_config: dict[str, Any] | None,
               configured_state: bool) -> Any:
    from trl import KTOConfig

    t = cfg.train
    eval_steps = has_eval and t.eval_every > 0
    cuda = torch.cuda.is_available()
    extra: dict[str, Any] = {}
    if ds_config is not None:
        extra["deepspeed"] = ds_config
    if configured_state:
        extra["accelerator_config"] = {"use_configured_state": True}
    return KTOConfig(
        output_dir=str(out / "checkpoints"),
        beta=cfg.beta,
        desirable_weight=cfg.kto_desirable_weight,
        undesirable_weight=cfg.kto_undesirable_weight,
        precompute_ref_log_probs=cfg.precompute_ref,
        max_length=cfg.data.max_length,
        learning_rate=t.lr,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,  # TRL builds eval KL pairs in groups of the train batch size
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_ratio,  # transformers 5: a value below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=0.0 if t.max_grad_norm is None else t.max_grad_norm,  # transformers' 0: no clipping
        seed=t.seed,
        data_seed=t.seed,
        bf16=bf16,  # KTOConfig would default to True
        # transformers refuses bf16 without CUDA unless told it runs on the CPU; under DeepSpeed on CPU the
        # process state is configured beforehand (configure_processes) and must not be marked CPU-only.
        use_cpu=not cuda and ds_config is None,
        gradient_checkpointing=t.gradient_checkpointing,  # KTOConfig would default to True
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        # TRL's choice, kept: without dropout the policy and reference log-probs (and so KTO's rewards
        # and KL reference point) are not noise; the adapter-off and adapter-copy references run through
        # the training-mode model and would otherwise get dropout too.
        disable_dropout=cfg.disable_dropout,
        logging_steps=t.log_every,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=t.eval_every if eval_steps else None,
        save_strategy="steps" if t.save_every > 0 else "no",
        save_steps=t.save_every if t.save_every > 0 else 500,
        save_total_limit=t.keep_checkpoints if t.keep_checkpoints > 0 else None,
        report_to="none",  # we log ourselves, under our names (TrackerCallback)
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        remove_unused_columns=True,  # KTOTrainer's signature keeps its tokenized columns, drops the text
        **extra,
    )


def lora_config(cfg: DPOConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")


def find_checkpoint(out: Path, resume: str) -> Path | None:
    """The checkpoint to resume from: "auto" takes the newest complete ``checkpoints/checkpoint-N``
    (transformers writes ``trainer_state.json`` last, so a save cut short is skipped)."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / "trainer_state.json").exists():
            raise AlignError(f"'{resume}' is not a checkpoint directory (no trainer_state.json)",
                             field="train.resume")
        return path
    folder = out / "checkpoints"
    if not folder.is_dir():
        return None
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

    complete = [Path(p) for p in sort_checkpoints(str(folder), PREFIX_CHECKPOINT_DIR)
                if (Path(p) / "trainer_state.json").exists()]
    return complete[-1] if complete else None


def configure_processes(cfg: DPOConfig, bf16: bool) -> tuple[dict[str, Any] | None, bool]:
    """The DeepSpeed config (``"auto"`` values filled from the recipe) and whether we set up the process
    state ourselves.

    transformers asks accelerate for a DeepSpeed state only where there is an accelerator: on CPU,
    accelerate picks no backend, sees one process and DeepSpeed never starts. So on CPU we create the
    state first (gloo, flagged for DeepSpeed) and the training arguments reuse it
    (``use_configured_state``). Plain multi-process runs on CPU need nothing of this: with ``use_cpu``
    accelerate starts DDP over gloo itself.
    """
    if not cfg.deepspeed:
        return None, False
    ds_config = deepspeed_config(cfg.deepspeed, cfg.train, bf16)
    if torch.cuda.is_available():
        return ds_config, False
    if "LOCAL_RANK" not in os.environ:
        raise AlignError("DeepSpeed starts through the launcher: use `align dpo --config RECIPE --deepspeed "
                         f"{cfg.deepspeed}` rather than calling run_kto directly", field="deepspeed")
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # read once, by the PartialState below
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    dist.clean_shm_at_exit()
    return ds_config, True


def gathered(trainer: Any, model: torch.nn.Module) -> Any:
    """Every parameter whole on every rank while saving (ZeRO-3 shards gathered); a no-op otherwise."""
    import contextlib

    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if trainer.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


def _no_telemetry() -> None:
    """TRL's trainers ping the Hugging Face Hub with usage telemetry on start; nothing of ours leaves the
    machine at run time. huggingface_hub reads HF_HUB_DISABLE_TELEMETRY at import, so set its constant;
    an explicit HF_HUB_DISABLE_TELEMETRY in the environment still wins."""
    if "HF_HUB_DISABLE_TELEMETRY" not in os.environ:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY = True


# --------------------------------------------------------------------------------------------------
# Setup, loop, save
# --------------------------------------------------------------------------------------------------
def run_kto(cfg: DPOConfig) -> Path:
    """KTO on unpaired data through TRL's KTOTrainer, with our recipe, outputs and tracking."""
    from trl import KTOTrainer

    if cfg.train.early_stopping is not None:  # negatives: kto is refused with the recipe; auto is decided here
        raise AlignError("is not supported for kto (this unpaired data trains with KTO: negatives auto picked it): "
                         "early stopping is supported for sft, rm and dpo", field="train.early_stopping")
    refuse_test(cfg.data, "kto (this unpaired data trains with KTO: negatives auto picked it)")
    out = Path(cfg.output_dir)
    run = Run(cfg, "kto", resume_from=find_checkpoint(out, cfg.train.resume))
    set_seed(cfg.train.seed)
    if cfg.train.batch_size < 2:
        raise AlignError("KTO needs at least 2 examples per micro-batch: its KL reference point pairs each "
                         "prompt with another example's answer", field="train.batch_size")

    train_rows, val_rows, info = load_unpaired(cfg, out if dist.is_main() else None)
    run.log(f"data: unpaired ({info.variant}), {info.rows} rows, {info.duplicates} duplicates removed; "
        f"train {info.train} ({info.desirable} desirable / {info.undesirable} undesirable), validation "
        f"{info.validation}; beta {cfg.beta}, weights {cfg.kto_desirable_weight} / {cfg.kto_undesirable_weight}")
    hint = weight_hint(cfg, info.desirable, info.undesirable)
    if hint:
        run.log(f"note: {hint}")

    tokenizer = load_tokenizer(cfg.model, cfg.model_options)
    # An adapter as the starting model: with LoRA keep training it (TRL then copies it as a frozen "ref"
    # adapter); without LoRA fine-tune its merged weights.
    model = load_causal_lm(cfg.model, trainable_adapter=cfg.lora.enabled, merge_adapter=not cfg.lora.enabled,
                           options=cfg.model_options)
    if not cfg.lora.enabled:
        model.requires_grad_(True)  # a merged adapter comes back frozen
    from peft import PeftModel

    continues_adapter = isinstance(model, PeftModel)
    peft_config = lora_config(cfg) if cfg.lora.enabled and not continues_adapter else None
    separate_ref = cfg.ref_model is not None and cfg.ref_model != cfg.model
    ref_model = None
    if separate_ref or not (cfg.lora.enabled or cfg.precompute_ref):
        # Our own frozen copy rather than TRL's: TRL reloads `config._name_or_path`, which for a merged
        # adapter is the base model, not the starting policy.
        ref_model = load_causal_lm(cfg.ref_model or cfg.model, merge_adapter=True, options=cfg.model_options)
        ref_model = ref_model.eval().requires_grad_(False)
    bf16 = use_bf16(cfg.train.bf16)
    if cfg.deepspeed and bf16 and not torch.cuda.is_available():
        if cfg.train.bf16 == "true":
            raise AlignError("DeepSpeed on CPU trains in fp32 here; set train.bf16 to auto or false",
                             field="train.bf16")
        bf16 = False  # "auto": DeepSpeed would cast the weights themselves to bf16 on CPU
    ds_config, configured = configure_processes(cfg, bf16)
    args = build_args(cfg, out, bf16, has_eval=bool(val_rows), ds_config=ds_config, configured_state=configured)

    resume_from = run.resume_from
    start_step = 0
    if resume_from is not None:
        start_step = json.loads((resume_from / "trainer_state.json").read_text())["global_step"]
    # KTO has no test part (refused above): the record holds the settings that decide the validation part.
    split = split_state(cfg, ())
    run.start(None, 0, start_step=start_step, split=split)  # transformers' Trainer keeps the step cadence itself
    callback = TrackerCallback(run.tracker)

    _no_telemetry()
    trainer = _with_our_schedule(KTOTrainer, cfg.train.scheduler)(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(val_rows) if val_rows else None,
        processing_class=tokenizer,
        callbacks=[callback, SplitRecord(split)],
        peft_config=peft_config,
    )
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgress)
    kept = len(trainer.train_dataset)
    too_long = sum(len(p) + len(c) > cfg.data.max_length for p, c in
                   zip(trainer.train_dataset["prompt_ids"], trainer.train_dataset["completion_ids"]))
    if kept < len(train_rows) or too_long:
        run.log(f"max_length {cfg.data.max_length}: {len(train_rows) - kept} examples dropped (prompt alone too "
            f"long), {too_long} truncated")
    trainable, total = count_parameters(trainer.model)
    where = ("precomputed" if cfg.precompute_ref else "frozen copy" if ref_model is not None else
             "frozen copy of the starting adapter" if continues_adapter else "adapter disabled")
    precision = describe_bf16(cfg.train.bf16, bf16)
    run.log(f"model {cfg.model}: {trainable:,} trainable of {total:,} parameters; reference: {where}; "
        f"{precision}; processes={trainer.accelerator.num_processes}; deepspeed={cfg.deepspeed or 'off'}")
    if cfg.lora.enabled and cfg.lora.dropout:
        run.log(f"note: dropout is off in KTO (TRL's disable_dropout), so lora.dropout={cfg.lora.dropout} has no "
            "effect")

    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    if val_rows and callback.last_eval_step != trainer.state.global_step:
        trainer.evaluate()
    final = callback.last_eval

    model_dir = out / "model"
    policy = trainer.accelerator.unwrap_model(trainer.model)
    merged_dir = out / "merged" if cfg.lora.enabled and cfg.lora.save_merged else None
    with gathered(trainer, policy):
        if run.main:
            save_model(policy, tokenizer, model_dir, merged_dir, cfg.model_options)
    if final:
        run.log(f"held-out: loss {final['eval/loss']:.4f}, rewards chosen {final.get('eval/rewards/chosen', 0):+.3f}"
            f" / rejected {final.get('eval/rewards/rejected', 0):+.3f}, kl {final.get('eval/kl', 0):.3f}")
    run.log(f"saved {model_dir}")
    run.close()
    return model_dir
