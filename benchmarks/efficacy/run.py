"""`make efficacy`: does training teach each domain's rules and keep its content? Ours against TRL, per domain.

For every synthetic domain of :mod:`benchmarks.efficacy.domains` (rules that live only in the preference
data, held-out prompts that rephrase the training topics):

1. the domain's files are generated into ``<workdir>/<domain>/data``;
2. our pipeline runs the recipe set of ``--recipes`` (default ``recipes/domain``: the quickstart's SFT, RM,
   PPO and DPO recipes) with only the data paths pointed at the domain, through ``align run`` in a fresh
   process (its eval phase is left out: step 4 evaluates every model the same way);
3. TRL's straightforward pipeline, ``SFTTrainer`` then ``DPOTrainer`` with TRL's default hyper-parameters, runs
   on the same files in another fresh process (:mod:`benchmarks.efficacy.trl_pipeline`);
4. base, SFT, DPO, RM+PPO, TRL SFT and TRL SFT+DPO answer the held-out prompts (greedy,
   ``alignment.evaluation.adherence.evaluate_model`` with the pipeline's evaluation settings); each answer is
   checked against the domain's policies and its content checks (the topic's key facts).

The report (``benchmarks/efficacy/RESULTS.md``) opens with the date and the machine, then one table per domain
(rows: models; columns: all-rules adherence, each rule, content, length, training and evaluation time) and a
summary table across domains.

    make efficacy                                              # every domain, ours and TRL
    make efficacy EFFICACY_ARGS="--domains bank,it --only ours"
    make efficacy EFFICACY_ARGS="--domains it --only ours --seeds 1,2"   # + RM+PPO and rules RLOO at 2 more seeds
    .venv/bin/python benchmarks/efficacy/run.py --quick --domains it   # a smoke test: a few steps per phase

With ``--seeds``, the online RL phases (their sampled answers make them the phases a seed moves most) run again
once per seed from the same SFT model and reward model (``<workdir>/<domain>/ours-seed<N>``), and the report adds
each seed's rates, their mean and range: one run cannot tell a regression from seed noise.

Finished phases, TRL phases and evaluated answers are kept under ``--workdir`` and reused by a re-run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script (python benchmarks/efficacy/run.py)
    sys.path.insert(0, str(REPO))

from alignment import allocator  # noqa: E402
from benchmarks.bench import machine_info as _bench_machine_info  # noqa: E402
from benchmarks.efficacy.domains import DOMAINS, check_content, parse_domains, write_domain  # noqa: E402

DEFAULT_RECIPES = REPO / "recipes" / "domain"
DEFAULT_WORKDIR = REPO / "runs" / "efficacy"
DEFAULT_OUT = REPO / "benchmarks" / "efficacy" / "RESULTS.md"
QUICK_WORKDIR = REPO / "runs" / "efficacy-quick"

SIDES = ("ours", "trl")
# Row order of every table, and how each row is named there.
MODELS = ("base", "sft", "dpo", "ppo", "rules", "trl-sft", "trl-dpo")
TITLES = {"base": "base", "sft": "SFT", "dpo": "DPO", "ppo": "RM+PPO", "rules": "rules RLOO", "trl-sft": "TRL SFT",
          "trl-dpo": "TRL SFT+DPO"}
# The only keys the suite sets on a phase recipe per domain: where its data is.
# Optional data settings: pointed at the domain's file only when the recipe uses them.
OPTIONAL_DATA_KEYS = {"sft": {"data.preferred": "prefs.jsonl"}}
DATA_KEYS = {"sft": {"data.train": "sft.jsonl"}, "rm": {"data.train": "prefs.jsonl"},
             "dpo": {"data.train": "prefs.jsonl"},
             "ppo": {"data.train": "ppo_prompts.jsonl", "policies": "policies.yaml"}}
# --quick: the same for every domain, so a smoke run takes seconds per phase on a tiny model.
QUICK_TRAIN = {"train.max_steps": 2, "train.batch_size": 2, "train.save_every": 0, "train.eval_every": 0,
               "train.bf16": "false", "tracking.backends": ["none"]}
QUICK_PHASE = {"sft": {"data.max_length": 256}, "rm": {"data.max_length": 256}, "dpo": {"data.max_length": 256},
               "ppo": {"train.max_steps": 1, "generation.max_new_tokens": 8}}
QUICK_EVAL = {"max_new_tokens": 8}
CHILD_ENV = {"WANDB_MODE": "disabled", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domains", default="", help=f"comma separated (default all: {','.join(DOMAINS)})")
    p.add_argument("--only", choices=SIDES, default=None, help="run only our pipeline or only TRL's")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 2 steps per training phase (PPO 1), 8 new tokens per answer; writes to "
                        "runs/efficacy-quick unless --workdir/--out say otherwise")
    p.add_argument("--recipes", type=Path, default=DEFAULT_RECIPES,
                   help="recipe folder with pipeline.yaml and its phase recipes (default recipes/domain)")
    p.add_argument("--model", default=None, help="base model for both pipelines (default: the recipes' model)")
    p.add_argument("--workdir", type=Path, default=None, help="data, outputs, logs (default runs/efficacy)")
    p.add_argument("--out", type=Path, default=None, help="the markdown report (default benchmarks/efficacy/"
                                                           "RESULTS.md; --quick: <workdir>/RESULTS.md)")
    p.add_argument("--timeout", type=int, default=6 * 3600, help="seconds before a training process is killed")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="RESULTS_JSON",
                   help="train nothing: write the report from the results.json (or results.partial.json) of "
                        "earlier runs, domains in the order given; where runs share a domain, a later file's rows "
                        "replace an earlier's and the rest stay (e.g. TRL's rows from an --only trl run)")
    p.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    p.add_argument("--seeds", default="",
                   help="comma separated train.seed values: each runs the online RL phases (RM+PPO, rules RLOO) "
                        "again from the same SFT model and reward model, and the report shows every seed's rates, "
                        "their mean and range (default: none, one run per phase)")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds: '{args.seeds}' is not a comma separated list of integers")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds: a seed is given twice in '{','.join(map(str, args.seeds))}'")
    try:
        args.domains = parse_domains(args.domains)
    except ValueError as exc:
        p.error(str(exc))
    args.recipes = args.recipes.resolve()
    if not (args.recipes / "pipeline.yaml").exists():
        p.error(f"{args.recipes} has no pipeline.yaml")
    args.workdir = (args.workdir or (QUICK_WORKDIR if args.quick else DEFAULT_WORKDIR)).resolve()
    args.out = args.out or (args.workdir / "RESULTS.md" if args.quick else DEFAULT_OUT)
    return args


# --------------------------------------------------------------------------------------------------
# Our pipeline
# --------------------------------------------------------------------------------------------------
def domain_pipeline(recipes: Path, data: Path, output_dir: Path, model: str | None, quick: bool) -> dict[str, Any]:
    """The recipe folder's pipeline for one domain: data paths set, eval phases dropped, nothing else changed
    (plus the --model and --quick settings, which are the same for every domain)."""
    from alignment.config import load_yaml

    raw, _ = load_yaml(recipes / "pipeline.yaml")
    raw = json.loads(json.dumps(raw))  # a plain deep copy
    raw["output_dir"] = str(output_dir)
    if model:
        raw["model"] = model
    phases = []
    for step in raw["phases"]:
        if step["kind"] == "eval":
            continue
        if step["kind"] not in DATA_KEYS:
            raise ValueError(f"{recipes / 'pipeline.yaml'}: phase kind '{step['kind']}' is not known to the suite")
        step = dict(step)
        step["recipe"] = str((recipes / step["recipe"]).resolve())
        overrides = dict(step.get("overrides") or {})
        overrides.update({key: str(data / name) for key, name in DATA_KEYS[step["kind"]].items()})
        recipe, _ = load_yaml(step["recipe"])
        for key, name in OPTIONAL_DATA_KEYS.get(step["kind"], {}).items():
            section, _, leaf = key.partition(".")
            if (recipe.get(section) or {}).get(leaf) or overrides.get(key):
                overrides[key] = str(data / name)
        if quick:
            overrides.update({**QUICK_TRAIN, **QUICK_PHASE.get(step["kind"], {})})
        step["overrides"] = json.loads(json.dumps(overrides))  # no shared lists: YAML would write anchors
        phases.append(step)
    raw["phases"] = phases
    evaluation = dict(raw.get("evaluation") or {})
    evaluation.update(prompts=str(data / "heldout_prompts.jsonl"), policies=str(data / "policies.yaml"))
    raw["evaluation"] = evaluation
    return raw


def eval_settings(recipes: Path, quick: bool) -> dict[str, int]:
    """max_new_tokens and batch_size of the recipe folder's evaluation section (the pipeline's defaults)."""
    from alignment.config import load_yaml
    from alignment.pipeline import EvaluationConfig

    raw, _ = load_yaml(recipes / "pipeline.yaml")
    evaluation = raw.get("evaluation") or {}
    out = {"max_new_tokens": int(evaluation.get("max_new_tokens", EvaluationConfig.max_new_tokens)),
           "batch_size": int(evaluation.get("batch_size", EvaluationConfig.batch_size))}
    if quick:
        out.update(QUICK_EVAL)
    return out


# a tqdm bar: "sft:  40%|####      | 10/25 [01:02<01:33,  6.20s/it]"
TQDM = re.compile(r"^(?:(?P<desc>[^|\[\]]{1,40}?):?\s+)?\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+) \[(?P<time>[^\]]*)\]")
PROGRESS_EVERY = 30.0  # seconds between echoed progress-bar states of one child


def run_child(argv: list[str], log_path: Path, timeout: int, env: Mapping[str, str], tag: str) -> int:
    """Run a child process, its output to ``log_path``. Its status lines (``[pipeline]``, ``[sft]``, ``[trl]``...)
    echo to the console with ``tag`` in front, and so does the state of its progress bars every 30 s (a phase can
    run for many minutes between status lines). Returns the exit code (-9 when killed after ``timeout``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    last_progress = time.monotonic()
    with log_path.open("a", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                for part in line.split("\r"):  # progress bars end without a newline
                    part = part.strip()
                    bar = TQDM.match(part)
                    if part.startswith("[") and not part.startswith("[W"):
                        print(f"[efficacy] {tag} {part}", flush=True)
                    elif bar and time.monotonic() - last_progress >= PROGRESS_EVERY:
                        last_progress = time.monotonic()
                        print(f"[efficacy] {tag} {(bar['desc'] or 'steps').strip()}: {bar['n']}/{bar['total']} "
                              f"[{bar['time']}]", flush=True)
            return proc.wait()
        finally:
            killer.cancel()


def child_env() -> dict[str, str]:
    """No tracker, no hub, and no inherited LD_PRELOAD: `align` picks its allocator itself (tcmalloc when
    installed), and TRL runs the way a user starts it, on the system malloc (as in `make bench`)."""
    env = allocator.without({**os.environ, **CHILD_ENV})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def align_run(pipeline: Mapping[str, Any], path: Path, log: Path, timeout: int, tag: str) -> int:
    """Write ``pipeline`` to ``path`` and run it with `align run` in a fresh process; returns the exit code."""
    import yaml

    path.write_text(yaml.safe_dump(dict(pipeline), sort_keys=False), encoding="utf-8")
    return run_child([sys.executable, "-m", "alignment.cli", "run", str(path)], log, timeout, child_env(), tag)


def run_ours(args: argparse.Namespace, domain: str, folder: Path) -> dict[str, Any]:
    """Our pipeline on one domain; returns {"ok", "phases": {name: seconds}, "models": {label: path}, "error"}."""
    pipeline = domain_pipeline(args.recipes, folder / "data", folder / "ours", args.model, args.quick)
    path = folder / "ours.pipeline.yaml"
    rc = align_run(pipeline, path, folder / "logs" / "ours.log", args.timeout, f"{domain} ours")
    result: dict[str, Any] = {"ok": rc == 0, "phases": {}, "models": {}, "pipeline": str(path)}
    for step in pipeline["phases"]:
        marker = folder / "ours" / step["name"] / "complete.json"
        if marker.exists():  # seconds of the run that completed the phase (also when this run skipped it)
            result["phases"][step["name"]] = json.loads(marker.read_text())["seconds"]
            if step["kind"] in ("sft", "dpo", "ppo"):  # a row of its own when its name is one (rules)
                result["models"][row_label(step)] = str(folder / "ours" / step["name"] / "model")
    if rc != 0:
        reason = "killed after the timeout" if rc in (-9, 137) else f"exit code {rc}"
        result["error"] = f"align run failed ({reason}; log: {folder / 'logs' / 'ours.log'})"
    return result


def seed_pipeline(pipeline: Mapping[str, Any], seed: int, first: Path, output_dir: Path) -> dict[str, Any]:
    """The online RL phases (kind ppo) of a domain pipeline once more with ``train.seed`` = ``seed``: each starts
    from the model it started from in the first run (whose output folder is ``first``) and "@phase" references
    point at that run's models, so only the seed differs: which answers are sampled, and the order of the
    prompts. Sampling makes these the phases a seed moves most; the phases before them are reused."""
    from alignment.pipeline import POLICY_PHASES, _resolve_reference

    raw = json.loads(json.dumps(pipeline))
    raw["output_dir"] = str(output_dir)
    current = raw["model"]  # what a phase without a model override starts from, as run_pipeline tracks it
    outputs: dict[str, str] = {}  # the first run's models of the phases so far, what "@phase" may name
    phases = []
    for step in raw["phases"]:
        if step["kind"] == "ppo":
            overrides = {"model": current, **step.get("overrides", {}), "train.seed": seed}
            for key in ("model", "ref_model", "reward_model"):
                if key in overrides:
                    overrides[key] = _resolve_reference(overrides[key], outputs)
            phases.append({**step, "overrides": overrides})
        outputs[step["name"]] = str(first / step["name"] / "model")
        if step["kind"] in POLICY_PHASES:
            current = outputs[step["name"]]
    raw["phases"] = phases
    return raw


def first_seeds(pipeline: Mapping[str, Any]) -> dict[str, int]:
    """train.seed of each online RL phase of ``pipeline``, as its recipe and overrides set it."""
    from alignment.config import load_config
    from alignment.phases import PHASES

    out = {}
    for step in pipeline["phases"]:
        if step["kind"] == "ppo":
            overrides = {k: v for k, v in (step.get("overrides") or {}).items()
                         if k not in ("model", "ref_model", "reward_model")}
            out[step["name"]] = load_config(PHASES["ppo"].config, step["recipe"], overrides).train.seed
    return out


def row_label(step: Mapping[str, Any]) -> str:
    """The report row of a training phase's model: its name when that is a row of its own (rules), else its kind."""
    return step["name"] if step["name"] in MODELS else step["kind"]


def run_seeds(args: argparse.Namespace, domain: str, folder: Path, report: Mapping[str, Any],
              settings: Mapping[str, int]) -> dict[str, Any]:
    """``--seeds``: every online RL phase again per seed, each model evaluated as the first run's were. Returns
    {"rows": {row: {seed: rates}}} with the first run's seed among them, and "errors" (one line per failure)."""
    pipeline = domain_pipeline(args.recipes, folder / "data", folder / "ours", args.model, args.quick)
    first = first_seeds(pipeline)
    rows = {row_label(step): step["name"] for step in pipeline["phases"] if step["kind"] == "ppo"}
    out: dict[str, Any] = {"rows": {}, "errors": []}
    for row, name in rows.items():
        first_row = report["models"].get(row) or {}
        if first_row.get("ok"):
            out["rows"].setdefault(row, {})[str(first[name])] = seed_rates(first_row)
    for seed in args.seeds:
        if seed in first.values():
            print(f"[efficacy] {domain}: seed {seed} is the first run's, not run again", flush=True)
            continue
        raw = seed_pipeline(pipeline, seed, folder / "ours", folder / f"ours-seed{seed}")
        log = folder / "logs" / f"ours-seed{seed}.log"
        t0 = time.perf_counter()
        print(f"[efficacy] {domain}: online RL phases with seed {seed} ...", flush=True)
        rc = align_run(raw, folder / f"ours-seed{seed}.pipeline.yaml", log, args.timeout, f"{domain} seed {seed}")
        print(f"[efficacy] {domain}: seed {seed} {'done' if rc == 0 else 'FAILED'} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if rc != 0:
            out["errors"].append(f"seed {seed}: align run failed (exit code {rc}; log: {log})")
            continue
        for step in raw["phases"]:
            row = row_label(step)
            model = str(folder / f"ours-seed{seed}" / step["name"] / "model")
            try:
                result = evaluate(f"{row}-seed{seed}", model, folder, settings)
            except Exception as exc:  # one broken model must not cost the other seeds
                out["errors"].append(f"seed {seed} {TITLES[row]}: evaluation failed: {type(exc).__name__}: {exc}")
                continue
            out["rows"].setdefault(row, {})[str(seed)] = seed_rates(result)
    return out


def seed_rates(row: Mapping[str, Any]) -> dict[str, float]:
    return {"all": row["adherence"]["all"], "content": row["content"]}


def run_trl(args: argparse.Namespace, domain: str, folder: Path) -> dict[str, Any]:
    """TRL's SFTTrainer -> DPOTrainer on one domain, in a fresh process."""
    result_path = folder / "trl.result.json"
    result_path.unlink(missing_ok=True)
    from alignment.config import load_yaml

    model = args.model or load_yaml(args.recipes / "pipeline.yaml")[0].get("model", "smollm2-135m-instruct")
    spec = {"model": model, "data": str(folder / "data"), "output_dir": str(folder / "trl"), "quick": args.quick,
            "result": str(result_path)}
    spec_path = folder / "trl.spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    rc = run_child([sys.executable, "-m", "benchmarks.efficacy.trl_pipeline", str(spec_path)],
                   folder / "logs" / "trl.log", args.timeout, child_env(), f"{domain} trl")
    if result_path.exists():
        result = json.loads(result_path.read_text())
    else:
        result = {"ok": False, "phases": {}, "models": {}, "error": f"exit code {rc} without a result"}
    result["models"] = {f"trl-{k}": v for k, v in result.get("models", {}).items()}
    if not result.get("ok"):
        result["error"] = f"{result.get('error', 'failed')} (log: {folder / 'logs' / 'trl.log'})"
    return result


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------
def _stamp(model: str) -> list[Any]:
    """A model folder's weight files and their modification times: a retrained model is evaluated again."""
    path = Path(model)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    return [[f.name, f.stat().st_mtime_ns] for f in files]


def content_rates(answers: Sequence[str], content: Mapping[str, Any]) -> dict[str, float]:
    """Share of answers mentioning every key fact of their topic ("content"), and the mean share of facts."""
    entries = content["heldout"]
    if len(entries) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(entries)} content entries")
    every, share = 0, 0.0
    for answer, entry in zip(answers, entries):
        hits = check_content(answer, entry["facts"])
        every += all(hits.values())
        share += sum(hits.values()) / len(hits)
    return {"content": every / len(answers), "facts": share / len(answers)}


def title(label: str) -> str:
    """A row's title; "<row>-seed<N>" (a --seeds model) is the row's title and the seed."""
    row, _, seed = label.partition("-seed")
    return f"{TITLES[row]} (seed {seed})" if seed else TITLES[label]


def evaluate(label: str, model: str, folder: Path, settings: Mapping[str, int]) -> dict[str, Any]:
    """One model's answers to the domain's held-out prompts, checked; cached in ``eval/<label>.json``."""
    from alignment.evaluation.adherence import evaluate_model, load_prompts
    from alignment.evaluation.rules import load_rules

    data = folder / "data"
    key = hashlib.sha256(json.dumps([model, _stamp(model), dict(settings),
                                     (data / "heldout_prompts.jsonl").read_text(),
                                     (data / "policies.yaml").read_text()]).encode()).hexdigest()[:16]
    cache = folder / "eval" / f"{label}.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            print(f"[efficacy] {folder.name} eval {title(label)}: cached", flush=True)
            return cached
    print(f"[efficacy] {folder.name} eval {title(label)} ({model}) ...", flush=True)
    policies = load_rules(data / "policies.yaml")
    prompts = load_prompts(data / "heldout_prompts.jsonl")
    result = evaluate_model(model, prompts, policies, label=label, **settings).to_json()
    content = json.loads((data / "content.json").read_text())
    if [a["prompt"] for a in result["answers"]] != [e["prompt"] for e in content["heldout"]]:
        raise ValueError(f"{data / 'content.json'} does not list the held-out prompts in file order")
    result.update(content_rates([a["answer"] for a in result["answers"]], content))
    for a, entry in zip(result["answers"], content["heldout"]):
        a["content"] = check_content(a["answer"], entry["facts"])
    result["key"] = key
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1))
    return result


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """bench.py's machine description plus the CPU features that decide bf16 speed, and the GPU if any."""
    info = _bench_machine_info()  # cpu_flags included
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a broken CUDA setup still gets a report
        info["gpu"] = None
    return info


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def training_cell(label: str, ours: Mapping[str, Any], trl: Mapping[str, Any]) -> str:
    """The training phases that produced a model, with their seconds (each phase's own time)."""
    phases = {"sft": [("sft", ours)], "dpo": [("dpo", ours)], "ppo": [("rm", ours), ("ppo", ours)],
              "rules": [("rules", ours)], "trl-sft": [("sft", trl)], "trl-dpo": [("dpo", trl)]}.get(label, [])
    parts = []
    for name, side in phases:
        seconds = (side.get("phases") or {}).get(name)
        if seconds is not None:
            parts.append(f"{name} {seconds:.0f} s")
    return " + ".join(parts) or "-"


def domain_table(report: Mapping[str, Any]) -> list[str]:
    """One domain's markdown: its rules, a row per model, and the wall time per phase."""
    rules = report["rules"]
    header = ["model", "all rules", *rules, "content", "facts", "tokens", "unfinished", "training", "eval s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in MODELS:
        row = report["models"].get(label)
        if row is None or not row.get("ok"):
            reason = (row or {}).get("error", "not run")
            lines.append(f"| {TITLES[label]} | {reason} |" + " |" * (len(header) - 2))
            continue
        adh = row["adherence"]
        lines.append("| " + " | ".join([
            TITLES[label], _pct(adh["all"]), *(_pct(adh[r]) for r in rules), _pct(row["content"]),
            _pct(row["facts"]), f"{row['mean_length_tokens']:.0f}", str(row["unfinished"]),
            training_cell(label, report["ours"], report["trl"]), _secs(row.get("seconds"))]) + " |")
    times = []
    for side, name in (("ours", "ours"), ("trl", "TRL")):
        phases = report[side].get("phases") or {}
        if phases:
            times.append(f"{name}: " + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
                         + f" (training {sum(phases.values()):.0f} s)")
    if times:
        lines += ["", "Wall time per phase: " + "; ".join(times) + "."]
    return lines + seeds_table(report.get("seeds"))


def spread_cell(rates: Sequence[float], count: bool = False) -> str:
    """A row's per-seed rates as "mean (lowest-highest)", with ", number of seeds" in the bracket if ``count``."""
    n = f", {len(rates)}" if count else ""
    return f"{_pct(sum(rates) / len(rates))} ({_pct(min(rates))}-{_pct(max(rates))}{n})"


def seeds_table(seeds: Mapping[str, Any] | None) -> list[str]:
    """--seeds: the online RL rows once per seed (all rules / content), with the mean and range of each."""
    if not seeds:
        return []
    rows = {label: by_seed for label, by_seed in seeds.get("rows", {}).items() if by_seed}
    order = list(dict.fromkeys(s for by_seed in rows.values() for s in by_seed))
    lines = ["", "Online RL phases once per seed, from the same SFT model and reward model (all rules / content; "
                 "the table above shows the first seed):", ""]
    header = ["model", *(f"seed {s}" for s in order), "all rules: mean (range)", "content: mean (range)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in MODELS:
        by_seed = rows.get(label)
        if not by_seed:
            continue
        cells = [f"{_pct(by_seed[s]['all'])} / {_pct(by_seed[s]['content'])}" if s in by_seed else "-" for s in order]
        stats = [spread_cell([r[key] for r in by_seed.values()]) for key in ("all", "content")]
        lines.append("| " + " | ".join([TITLES[label], *cells, *stats]) + " |")
    return lines + [f"- {e}" for e in seeds.get("errors", [])]


def render_markdown(report: Mapping[str, Any]) -> str:
    m = report["machine"]
    flags = ", ".join(m.get("cpu_flags") or []) or "none of avx2/avx512f/avx512_bf16/amx"
    out = [
        "# Efficacy: do the preference phases teach each domain's rules, and does the content survive?",
        "",
        "Written by `make efficacy` (`benchmarks/efficacy/run.py`); the domains are generated by "
        "`benchmarks/efficacy/domains.py`. Each domain's rules appear only in its preference pairs: no SFT "
        "conversation follows any of them, only the chosen answers do. Our SFT phase also fine-tunes on those "
        "chosen answers when its recipe sets `data.preferred` (as `recipes/domain` does), so our SFT row can "
        "already follow the rules; TRL's SFT sees the SFT conversations only. The held-out prompts rephrase the "
        "training topics with wording no training file uses.",
        "",
        f"- date: {report['date']}" + (f" (rows from {len(report['runs'])} runs: " + "; ".join(
            f"{', '.join(r['domains'])}"
            + (f" ({', '.join(TITLES[m] for m in r['rows'])})" if r.get("rows") else "") + f" on {r['date']}"
            for r in report["runs"]) + ")"
            if len(report.get("runs") or []) > 1 else ""),
        f"- machine: {m.get('cpu')} ({flags}), {m.get('cores')} cores, {m.get('memory_gib')} GiB; "
        f"GPU: {m.get('gpu') or 'none'}; {m.get('platform')}",
        f"- software: Python {m.get('python')}, torch {m.get('torch')}, transformers {m.get('transformers')}, "
        f"trl {m.get('trl')}",
        f"- ours: `{report['recipes']}` (pipeline.yaml and its phase recipes; only the data paths change per "
        f"domain), base model `{report['model']}`, under the allocator `align` picks",
        "- TRL: `SFTTrainer` then `DPOTrainer` from its output, `SFTConfig()`/`DPOConfig()` defaults "
        f"({report.get('trl_defaults') or 'see the per-domain settings'}), on the same files, the system malloc",
        f"- evaluation: greedy, {report['eval']['max_new_tokens']} new tokens at most, the framework's "
        "`evaluate_model` and policy checks for every row",
    ]
    if report.get("quick"):
        out += ["- **--quick**: a smoke run (2 steps per phase, 8-token answers); the numbers mean nothing"]
    out += [
        "",
        "Columns: *all rules*: share of held-out answers that follow every rule; one column per rule; "
        "*content*: share that mention every key fact of their topic (regexes in `content.json`); *facts*: mean "
        "share of key facts mentioned; *tokens*: mean answer length; *unfinished*: answers cut at the token "
        "limit; *training*: the phases that made the model, each with its own wall time (DPO, RM+PPO and rules "
        "RLOO start from SFT, TRL SFT+DPO from TRL SFT); *eval s*: generation and checks. *rules RLOO*: "
        "critic-free RL (RLOO, 4 answers per prompt) with the domain's rules as the whole reward, no reward model.",
        "",
        "## Summary (all-rules adherence and content per domain)",
        "",
    ]
    domains = list(report["domains"])
    header = ["model", *(f"{d} all" for d in domains), "mean all", *(f"{d} content" for d in domains),
              "mean content"]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in MODELS:
        alls, contents = [], []
        for d in domains:
            row = report["domains"][d]["models"].get(label)
            ok = row is not None and row.get("ok")
            alls.append(row["adherence"]["all"] if ok else None)
            contents.append(row["content"] if ok else None)

        def mean(xs: list[float | None]) -> float | None:
            return sum(xs) / len(xs) if xs and all(x is not None for x in xs) else None  # type: ignore[misc]

        out.append("| " + " | ".join([TITLES[label], *map(_pct, alls), _pct(mean(alls)), *map(_pct, contents),
                                      _pct(mean(contents))]) + " |")
    seeded = [d for d in domains if (report["domains"][d].get("seeds") or {}).get("rows")]
    if seeded:
        out += ["", "Online RL over seeds (`--seeds`): all-rules adherence, mean (lowest-highest, number of "
                    "seeds); each domain's section has every seed:", ""]
        out += ["| model | " + " | ".join(seeded) + " |", "|" + "---|" * (len(seeded) + 1)]
        for label in MODELS:
            by_domain = [report["domains"][d]["seeds"]["rows"].get(label) or {} for d in seeded]
            cells = [spread_cell([r["all"] for r in by_seed.values()], count=True) if by_seed else "-"
                     for by_seed in by_domain]
            if any(c != "-" for c in cells):
                out.append("| " + " | ".join([TITLES[label], *cells]) + " |")
    for d in domains:
        r = report["domains"][d]
        spec = DOMAINS[d]
        out += ["", f"## {d}: {spec.company}", "",
                f"{r['sizes']['sft']} SFT conversations, {r['sizes']['prefs']} preference pairs, "
                f"{r['sizes']['heldout']} held-out prompts; rules: "
                + "; ".join(f"`{rule.name}` ({rule.description})" for rule in spec.rules), ""]
        out += domain_table(r)
        for side in ("ours", "trl"):
            if r[side].get("error"):
                out += ["", f"{side}: {r[side]['error']}"]
    if report.get("notes"):
        out += ["", "## Notes", "", *(f"- {n}" for n in report["notes"])]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def run_domain(args: argparse.Namespace, domain: str, settings: Mapping[str, int]) -> dict[str, Any]:
    folder = args.workdir / domain
    write_domain(domain, folder / "data")
    sizes = {k: len((folder / "data" / f"{f}.jsonl").read_text(encoding="utf-8").splitlines())
             for k, f in (("sft", "sft"), ("prefs", "prefs"), ("heldout", "heldout_prompts"))}
    report: dict[str, Any] = {"rules": [r.name for r in DOMAINS[domain].rules], "sizes": sizes, "models": {},
                              "ours": {}, "trl": {}}
    for side, runner in (("ours", run_ours), ("trl", run_trl)):
        if args.only not in (None, side):
            continue
        t0 = time.perf_counter()
        print(f"[efficacy] {domain}: {side} pipeline ...", flush=True)
        report[side] = runner(args, domain, folder)
        state = "done" if report[side].get("ok") else f"FAILED: {report[side].get('error')}"
        print(f"[efficacy] {domain}: {side} pipeline {state} ({time.perf_counter() - t0:.0f} s)", flush=True)
    from alignment.config import load_yaml

    models = {"base": args.model or load_yaml(args.recipes / "pipeline.yaml")[0].get("model")}
    models.update(report["ours"].get("models") or {})
    models.update(report["trl"].get("models") or {})
    for label in MODELS:
        if label not in models:
            continue
        try:
            report["models"][label] = {"ok": True, **evaluate(label, models[label], folder, settings)}
        except Exception as exc:  # one broken model must not cost the other rows
            report["models"][label] = {"ok": False, "error": f"evaluation failed: {type(exc).__name__}: {exc}"}
            print(f"[efficacy] {domain} eval {TITLES[label]}: FAILED: {exc}", flush=True)
            continue
        row = report["models"][label]
        print(f"[efficacy] {domain} {TITLES[label]}: all rules {_pct(row['adherence']['all'])}, content "
              f"{_pct(row['content'])}", flush=True)
    if args.seeds and args.only != "trl":
        if report["ours"].get("ok"):
            report["seeds"] = run_seeds(args, domain, folder, report, settings)
        else:
            report["seeds"] = {"rows": {}, "errors": ["not run: our pipeline failed"]}
    # the answers stay in eval/<label>.json; the report keeps the rates
    for row in report["models"].values():
        row.pop("answers", None)
    return report


def merge_domain(earlier: Mapping[str, Any], later: Mapping[str, Any]) -> dict[str, Any]:
    """One domain's results from two runs: the later run's rows, and its phases' times, replace the earlier's;
    rows and sides the later run did not produce (``--only trl``, or a recipe folder with fewer phases) stay."""
    out = {**earlier, "rules": later["rules"], "sizes": later["sizes"],
           "models": {**earlier.get("models", {}), **later.get("models", {})}}
    if earlier.get("seeds") or later.get("seeds"):
        before, after = earlier.get("seeds") or {}, later.get("seeds") or {}
        rows = {**before.get("rows", {})}
        for row, seeds in after.get("rows", {}).items():
            rows[row] = {**rows.get(row, {}), **seeds}
        out["seeds"] = {"rows": rows, "errors": after.get("errors", []) if after else before.get("errors", [])}
    for side in SIDES:
        before, after = earlier.get(side) or {}, later.get(side) or {}
        if after:
            out[side] = {**before, **after, "phases": {**(before.get("phases") or {}), **(after.get("phases") or {})},
                         "models": {**(before.get("models") or {}), **(after.get("models") or {})}}
    return out


def merge_reports(paths: Sequence[Path], notes: Sequence[str]) -> dict[str, Any]:
    """One report from several runs' results: the first run's header, every run's domains; a domain in several
    runs gets each later run's rows over the earlier's (:func:`merge_domain`)."""
    reports = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    merged = {**reports[0], "domains": {}, "runs": [],
              "notes": list(dict.fromkeys(n for r in reports for n in r.get("notes", [])))}
    for report in reports:
        for name, domain in report["domains"].items():
            merged["domains"][name] = (merge_domain(merged["domains"][name], domain) if name in merged["domains"]
                                       else domain)
        rows = {label for d in report["domains"].values() for label, row in d.get("models", {}).items()
                if row.get("ok")}
        merged["runs"].append({"date": report["date"], "domains": list(report["domains"]),
                               "rows": [label for label in MODELS if label in rows]})
        merged["trl_defaults"] = merged.get("trl_defaults") or report.get("trl_defaults")
        if report.get("machine", {}).get("cpu") != merged["machine"].get("cpu"):
            raise SystemExit(f"{report['date']} ran on another machine ({report['machine'].get('cpu')}); "
                             "one table must come from one machine")
    merged["notes"] += list(notes)
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        text = render_markdown(merge_reports(args.merge, args.note))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
        print(text)
        print(f"\n[efficacy] wrote {args.out} from {len(args.merge)} runs", flush=True)
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    settings = eval_settings(args.recipes, args.quick)
    started = time.perf_counter()
    print(f"[efficacy] domains {','.join(args.domains)}; {args.only or 'ours and TRL'}; recipes {args.recipes}; "
          f"work folder {args.workdir}" + ("; QUICK smoke run" if args.quick else ""), flush=True)
    from alignment.config import load_yaml

    report: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(), "recipes": str(args.recipes.resolve().relative_to(REPO))
        if args.recipes.resolve().is_relative_to(REPO) else str(args.recipes),
        "model": args.model or load_yaml(args.recipes / "pipeline.yaml")[0].get("model"),
        "quick": args.quick, "eval": dict(settings), "domains": {}, "notes": [
            "TRL's SFTTrainer trains on every token of the conversation by default (ours: on assistant tokens "
            "only); its default `bf16=True` means bf16 autocast, `use_cpu=True` is set on machines without CUDA "
            "(transformers refuses to start otherwise).",
            *args.note,
        ],
    }
    for i, domain in enumerate(args.domains, 1):
        print(f"[efficacy] [{i}/{len(args.domains)}] {domain} ({DOMAINS[domain].company})", flush=True)
        report["domains"][domain] = run_domain(args, domain, settings)
        trl_settings = report["domains"][domain]["trl"].get("settings")
        if trl_settings and not report.get("trl_defaults"):
            report["trl_defaults"] = "; ".join(
                f"{phase}: " + ", ".join(f"{k}={v}" for k, v in s.items()) for phase, s in trl_settings.items())
        # a long run that dies later still leaves the domains it finished
        (args.workdir / "results.partial.json").write_text(json.dumps(report, indent=2, default=str))
    report["wall_seconds"] = time.perf_counter() - started
    (args.workdir / "results.json").write_text(json.dumps(report, indent=2, default=str))
    text = render_markdown(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    print()
    print(text)
    print(f"\n[efficacy] wrote {args.out} in {report['wall_seconds'] / 60:.1f} min; raw results, answers and logs "
          f"in {args.workdir}", flush=True)
    failed = [f"{d}/{TITLES[m]}" for d, r in report["domains"].items() for m, row in r["models"].items()
              if not row.get("ok")]
    failed += [f"{d}/{side}" for d, r in report["domains"].items() for side in SIDES if r[side].get("error")]
    failed += [f"{d}/{e}" for d, r in report["domains"].items() for e in (r.get("seeds") or {}).get("errors", [])]
    if failed:
        print(f"[efficacy] WARNING: failed: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
