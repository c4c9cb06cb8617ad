"""Two rounds of expert feedback on the quickstart domain, end to end, with simulated experts.

    .venv/bin/python scripts/feedback_rounds.py            # or: make rounds-demo

Round 1: the SFT model (the quickstart's SFT recipe) writes K sampled answers to training prompts; a feedback
app is started on a fresh store and N simulated experts (``feedback_app.simulate``: an oracle that prefers the
answers following more of the domain's rules, with noise) rank them through its real HTTP API, each prompt
judged by ``--overlap`` of them. The store is then the training data: a reward model and a DPO policy are
trained on it (``align rm`` / ``align dpo`` with ``data.train: feedback.db#round-1``, pairs merged across
annotators by ``--aggregate``), each writing ``lineage.json`` (the store snapshot it learned from).

Round 2: the DPO model (challenger) and the SFT model (baseline) answer the held-out prompts, greedy; the
answers become a head-to-head project that the same experts judge blind; the reward model scores them too.

Printed at the end and written to ``<workdir>/summary.md``: the lineage of both rounds (which judgments
trained which model, which model wrote which answers), the head-to-head table (the experts' win rate of
round 2 over round 1 with its intervals, the rules and reward-model judges and their agreement with the
experts), the held-out adherence of both models, the time of every step, and the demo's targets
(round 2 adheres more, experts' win rate >= 70%, all in under 20 minutes) with whether each was met.

``--seeds 0 1 2 3 4`` runs it once per seed from one shared SFT model and prints a table across the seeds with
their decisive votes pooled: one seed's few dozen votes cannot tell a 65% win rate from 75%.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from alignment.evaluation.rules import check_answer, load_rules  # noqa: E402
from feedback_app.candidates import GenerationSettings, generate_candidates, load_prompts  # noqa: E402
from feedback_app.headtohead import create_from_models, format_summary, project_summary, sides  # noqa: E402
from feedback_app.simulate import simulate  # noqa: E402
from feedback_app.store import Store, format_rounds  # noqa: E402

QUICKSTART = REPO / "recipes" / "quickstart"
ROUND1, ROUND2 = "round-1", "round-2-vs-round-1"
TARGET_WIN_RATE = 0.70
TARGET_MINUTES = 20.0
# The demo's DPO runs the quickstart recipe with a twice larger learning rate. Its pairs are round-1 answers of the
# SFT model itself, ranked by experts: chosen and rejected differ in a phrase or two, and at the recipe's 1e-5 the
# margin grew to +0.10 in the 24 steps (the quickstart's written pairs differ more). On one seed's store, held-out
# adherence after DPO was 87.9% at 1e-5 and 97.0% at 2e-5 (answers also got shorter); five seeds: README.
# Steps follow the data (1.25 passes over the training pairs) instead of the recipe's fixed 24, so that twice
# the round-1 prompts are twice the steps: 96 prompts gave 238-261 training pairs, 38-42 steps.
DPO_DEFAULTS = ("train.lr=2e-5", "train.max_steps=-1", "train.epochs=1.25")


@dataclass
class Settings:
    """What the demo runs; the defaults are the documented demo, tests shrink them."""

    workdir: Path = REPO / "runs" / "rounds-demo"
    model: str = "smollm2-135m-instruct"  # the base model SFT starts from
    annotators: int = 5
    overlap: int = 3  # experts per round-1 prompt and per head-to-head prompt
    noise: float = 0.15  # the simulated experts' probability of swapping two adjacent answers
    # round-1 training prompts (from the quickstart's PPO prompt file). With 48, round 2 broke a rule round 1
    # followed on 12 of the 87 held-out prompts the rules told apart (five seeds; decisive win rate 71.6% pooled);
    # with 96 (twice the pairs, ~40 DPO steps) on 3 of 90 (five seeds; 80.7%; the 15% noise caps it near 85%).
    prompts: int = 96
    k: int = 4  # sampled answers per round-1 prompt
    temperature: float = 0.8
    max_new_tokens: int = 128
    heldout: Path = QUICKSTART / "data" / "heldout_prompts.jsonl"
    heldout_limit: int | None = None  # the first N held-out prompts only (tests)
    h2h_temperature: float = 0.0  # greedy head-to-head answers; tests sample (a tiny random model's greedy
    # answer can be all special tokens, which is no answer)
    # How round-1 pairs of annotators are merged (feedback export). The simulated experts order answers that
    # follow the same rules by a draw of their own, so most pairs between such answers are coin flips that
    # annotators contradict each other on; keeping only the pairs nobody contradicts trains on the rules
    # (measured on one round-1 store: decisive win rate 75.0% with drop_contradicted, 68.8% majority, 60.4%
    # agreement_weight).
    aggregate: str = "drop_contradicted"
    seed: int = 0
    sft_model: Path | None = None  # an SFT model to start from instead of training one (several seeds share one)
    sft_overrides: list[str] = field(default_factory=list)  # extra `align sft` key=value overrides
    rm_overrides: list[str] = field(default_factory=list)
    dpo_overrides: list[str] = field(default_factory=lambda: list(DPO_DEFAULTS))  # before any --dpo-set


@dataclass
class Result:
    times: dict[str, float] = field(default_factory=dict)
    round1_judgments: int = 0
    round2_votes: int = 0
    adherence: dict[str, float] = field(default_factory=dict)  # model -> held-out all-rules adherence
    win_rate: float | None = None  # ties and both bad count 1/2
    win_interval: tuple[float, float] | None = None  # bootstrap over prompts
    decisive_rate: float | None = None  # wins / (wins + losses): the target's measure
    decisive_interval: tuple[float, float] | None = None  # Wilson
    wins: int = 0  # the experts' votes for round 2 ...
    losses: int = 0  # ... and for round 1
    lines: list[str] = field(default_factory=list)  # the printed summary

    @property
    def total_minutes(self) -> float:
        return sum(self.times.values()) / 60


class Step:
    """Times a step into ``result.times`` and says when it starts and ends."""

    def __init__(self, result: Result, name: str) -> None:
        self.result, self.name = result, name

    def __enter__(self) -> Step:
        print(f"[rounds] {self.name} ...", flush=True)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.result.times[self.name] = time.perf_counter() - self.t0
        if exc[0] is None:
            print(f"[rounds] {self.name}: {self.result.times[self.name]:.0f} s", flush=True)


def align(args: Sequence[str], log: Path) -> None:
    """Run ``align ARGS`` as a user would, its output to ``log``; a failure raises with the log's tail."""
    exe = Path(sys.executable).with_name("align")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from alignment.cli import entry; entry()"]
    with log.open("ab") as out:
        rc = subprocess.call([*cmd, *args], stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
    if rc:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"`align {' '.join(args[:2])}` failed with exit code {rc}; its log {log} ends:\n{tail}")


def add_accounts(store: Store, n: int) -> list[tuple[str, str]]:
    """``n`` annotator accounts with fresh random passwords that live only in this process."""
    accounts = [(f"expert{i + 1:02d}", secrets.token_urlsafe(12)) for i in range(n)]
    for name, password in accounts:
        store.add_user(name, "annotator", password)
    return accounts


def run_experts(url: str, accounts: Sequence[tuple[str, str]], policies: Sequence[Any], s: Settings,
                project: str, head_to_head: bool = False) -> int:
    """The simulated experts judge every item of ``project`` they are served; returns the judgments stored.

    They take turns in one thread: with one thread per expert, which expert claims which item depends on
    timing, so two runs trained on different judgments (measured: the decisive win rate moved from 71% to
    60% between two runs of the same commit). In turns, the demo is reproducible; it costs seconds."""
    result = simulate(url, accounts, policies, seed=s.seed, noise=s.noise, project=project,
                      head_to_head=head_to_head, threads=1)
    if result.errors:
        raise RuntimeError(f"simulated experts on {project}: {len(result.errors)} errors, first: {result.errors[0]}")
    return len(result.submissions)


def adherence(store: Store, project_name: str, policies: Sequence[Any]) -> dict[str, float]:
    """Held-out all-rules adherence of both sides of a head-to-head project, over every prompt (an identical
    answer counts for both models)."""
    project = store.project(project_name)
    assert project is not None
    names = (project.baseline, project.challenger)
    passed = dict.fromkeys(names, 0)
    prompts = store.project_items(project.id)
    for item in prompts:
        pair = sides(item, project) or (item.candidates[0],) * 2  # identical answers: one candidate for both
        for model, cand in zip(names, pair):
            passed[model] += all(check_answer(cand.text, policies).values())
    return {model: count / len(prompts) for model, count in passed.items()} if prompts else {}


def train_sft(s: Settings, out: Path, log: Path) -> None:
    align(["sft", "--config", str(QUICKSTART / "sft.yaml"), f"model={s.model}", f"output_dir={out}",
           *s.sft_overrides], log)


def run(s: Settings) -> Result:
    """The whole demo; see the module docstring."""
    from app_load import Server  # scripts/app_load.py: `align app` as a subprocess on a free port

    w = s.workdir.resolve()
    if s.sft_model is not None and not (s.sft_model / "model").is_dir():
        raise SystemExit(f"--sft {s.sft_model}: no SFT output there (expected {s.sft_model / 'model'})")
    if (w / "feedback.db").exists():
        raise SystemExit(f"{w} holds an earlier demo's store; remove the folder or pass another --workdir")
    w.mkdir(parents=True, exist_ok=True)
    logs = w / "logs"
    logs.mkdir(exist_ok=True)
    res = Result()
    policies_file = QUICKSTART / "policies.yaml"
    policies = load_rules(policies_file)
    sft, rm, dpo = w / "round1-sft", w / "round2-rm", w / "round2-dpo"
    if s.sft_model is not None:
        sft = s.sft_model.resolve()
    db = w / "feedback.db"
    store = Store(db)
    accounts = add_accounts(store, s.annotators)
    admin = store.add_user("demo-admin", "admin", secrets.token_urlsafe(12))

    if s.sft_model is None:
        with Step(res, "round 1: SFT"):
            train_sft(s, sft, logs / "sft.log")

    with Step(res, "round 1: candidates"):
        project = store.ensure_project(ROUND1)
        store.update_project(project.id, candidates_per_item=s.k, overlap=s.overlap)
        prompts = load_prompts(QUICKSTART / "data" / "ppo_prompts.jsonl")[:s.prompts]
        store.add_prompts(project.id, prompts)
        settings = GenerationSettings(model=str(sft / "model"), k=s.k, temperature=s.temperature,
                                      max_new_tokens=s.max_new_tokens, seed=s.seed)
        job = store.create_job(project.id, "generate", asdict(settings), admin.id, len(prompts) * s.k)
        generate_candidates(store, project.id, settings, job)

    server = Server(db, log=logs / "app.log").start(timeout=300)  # a loaded machine starts it slowly
    try:
        with Step(res, "round 1: experts rank"):
            res.round1_judgments = run_experts(server.url, accounts, policies, s, ROUND1)

        data = [f"data.train={db}#{ROUND1}", f"data.aggregate={s.aggregate}"]
        with Step(res, "round 2: reward model"):
            align(["rm", "--config", str(QUICKSTART / "rm.yaml"), f"model={sft / 'model'}", f"output_dir={rm}",
                   *data, *s.rm_overrides], logs / "rm.log")
        with Step(res, "round 2: DPO"):
            align(["dpo", "--config", str(QUICKSTART / "dpo.yaml"), f"model={sft / 'model'}", f"output_dir={dpo}",
                   *data, *s.dpo_overrides], logs / "dpo.log")

        with Step(res, "round 2: head-to-head answers"):
            heldout = s.heldout
            if s.heldout_limit:
                heldout = w / "heldout.jsonl"
                lines = s.heldout.read_text(encoding="utf-8").splitlines()[:s.heldout_limit]
                heldout.write_text("\n".join(lines) + "\n", encoding="utf-8")
            create_from_models(store, ROUND2, heldout, sft / "model", dpo / "model", baseline_name="round-1 SFT",
                               challenger_name="round-2 DPO", overlap=s.overlap, max_new_tokens=s.max_new_tokens,
                               temperature=s.h2h_temperature, seed=s.seed, policies=policies_file)
            from feedback_app.scoring import score_project

            h2h = store.project(ROUND2)
            assert h2h is not None
            score_project(store, h2h.id, str(rm / "model"), progress=False)

        with Step(res, "round 2: experts judge head-to-head"):
            res.round2_votes = run_experts(server.url, accounts, policies, s, ROUND2, head_to_head=True)
    finally:
        server.stop()

    h2h = store.project(ROUND2)
    assert h2h is not None
    summary = project_summary(store, h2h)  # with the rules stored in the project, as the dashboard shows it
    res.win_rate, res.win_interval = summary.counts.win_rate, summary.bootstrap
    res.decisive_rate, res.decisive_interval = summary.counts.decisive_rate, summary.wilson
    res.wins, res.losses = summary.counts.wins, summary.counts.losses
    res.adherence = adherence(store, ROUND2, policies)
    res.lines = report(store, s, res, format_summary(summary))
    (w / "summary.md").write_text("\n".join(["```", *res.lines, "```", ""]), encoding="utf-8")
    (w / "summary.json").write_text(json.dumps({
        "times_s": res.times, "total_minutes": res.total_minutes, "round1_judgments": res.round1_judgments,
        "round2_votes": res.round2_votes, "adherence": res.adherence, "win_rate": res.win_rate,
        "wins": res.wins, "losses": res.losses,
        "win_interval": res.win_interval, "decisive_rate": res.decisive_rate,
        "decisive_interval": res.decisive_interval, "settings": {k: str(v) for k, v in asdict(s).items()},
    }, indent=2) + "\n", encoding="utf-8")
    return res


def report(store: Store, s: Settings, res: Result, h2h_lines: list[str]) -> list[str]:
    """The lineage, the head-to-head table, adherence, times and targets, as printed lines."""
    r1, r2 = store.project(ROUND1), store.project(ROUND2)
    assert r1 is not None and r2 is not None
    lines = [f"# Two feedback rounds on the quickstart domain ({s.annotators} simulated experts, overlap {s.overlap}, "
             f"noise {s.noise}, {s.aggregate} across annotators)", "",
             f"## Lineage: round 1 ({ROUND1}: {res.round1_judgments} judgments)", *format_rounds(store.rounds(r1.id)),
             "", f"## Lineage: round 2 ({ROUND2})", *format_rounds(store.rounds(r2.id)), "",
             "## Head-to-head, judged blind by the simulated experts", *h2h_lines, "",
             "## Held-out adherence to all rules (the head-to-head answers)"]
    lines += [f"  {model}: {rate:.1%}" for model, rate in res.adherence.items()]
    lines += ["", "## Time"] + [f"  {name}: {sec:.0f} s" for name, sec in res.times.items()]
    lines.append(f"  total: {res.total_minutes:.1f} min")
    if s.sft_model is not None:
        lines.append(f"  (SFT not trained here: {s.sft_model} was given; the 20-minute target needs a run training it)")
    rates = list(res.adherence.values())
    higher = len(rates) == 2 and rates[1] > rates[0]
    # The target is the share of the experts' decisive votes (a preference either way) that go to round 2.
    # Counting ties as half cannot reach it here: the simulated experts tie two answers that follow every
    # rule, so with round 1 following every rule on a share a of the prompts, even a perfect round 2 gets
    # at most (1 - a) + a / 2 that way. That rate is printed beside it, with its ceiling.
    win = res.decisive_rate is not None and res.decisive_rate >= TARGET_WIN_RATE
    low = res.decisive_interval[0] if res.decisive_interval else None
    ceiling = 1 - rates[0] / 2 if rates else None
    lines += ["", "## Targets",
              f"  round 2 adheres more than round 1: {'met' if higher else 'NOT met'}",
              f"  experts' win rate of round 2 on decisive votes >= {TARGET_WIN_RATE:.0%}: "
              f"{'met' if win else 'NOT met'} ({'-' if res.decisive_rate is None else f'{res.decisive_rate:.1%}'}"
              f"{'' if low is None else f', 95% CI from {low:.1%}'})",
              f"  (ties and both bad as 1/2: {'-' if res.win_rate is None else f'{res.win_rate:.1%}'}; at most "
              f"{'-' if ceiling is None else f'{ceiling:.1%}'} that way, with round 1 following every rule on "
              f"{'-' if not rates else f'{rates[0]:.1%}'} of the prompts)",
              f"  under {TARGET_MINUTES:.0f} minutes: "
              + ("not measured (SFT was given)" if s.sft_model is not None else
                 f"{'met' if res.total_minutes < TARGET_MINUTES else 'NOT met'} ({res.total_minutes:.1f} min)")]
    return lines


def run_seeds(s: Settings, seeds: Sequence[int]) -> list[str]:
    """The demo once per seed, each in ``<workdir>/seed-N``, sharing one SFT model (the SFT recipe has its own
    seed, so every seed would train the same one); returns the table across seeds, also written to
    ``<workdir>/seeds.md`` and ``seeds.json``.

    One seed's 45-51 decisive votes cannot tell a 65% win rate from 75%; the seeds' votes pooled (the
    experts' draws and the round-1 answers differ per seed) narrow the interval, and the lowest seed says how
    far one run of the demo may fall."""
    w = s.workdir.resolve()
    w.mkdir(parents=True, exist_ok=True)
    sft = s.sft_model
    times: dict[str, float] = {}
    if sft is None:
        sft = w / "round1-sft"
        if not (sft / "model").is_dir():
            (w / "logs").mkdir(exist_ok=True)
            t0 = time.perf_counter()
            print("[rounds] round 1: SFT (shared by every seed) ...", flush=True)
            train_sft(s, sft, w / "logs" / "sft.log")
            times["SFT"] = time.perf_counter() - t0
    results = {}
    for seed in seeds:
        one = replace(s, workdir=w / f"seed-{seed}", seed=seed, sft_model=sft)
        done = one.workdir / "summary.json"
        if done.exists():  # a seed finished by an earlier sweep in this folder (add seeds without rerunning)
            saved = json.loads(done.read_text(encoding="utf-8")).get("settings", {})
            differ = sorted(k for k, v in asdict(one).items() if saved.get(k) != str(v))
            if differ:  # pooling runs of other settings would report a mixture as these settings' result
                raise SystemExit(f"{done} was run with other settings ({', '.join(differ)}); remove that folder "
                                 "or pass another --workdir")
            print(f"[rounds] seed {seed}: read back from {done}", flush=True)
            results[seed] = read_result(done)
            continue
        print(f"[rounds] seed {seed}", flush=True)
        results[seed] = run(one)
    lines = seeds_table(results, times)
    (w / "seeds.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (w / "seeds.json").write_text(json.dumps({
        "sft_s": times.get("SFT"), "seeds": {str(k): {
            "adherence": r.adherence, "wins": r.wins, "losses": r.losses, "decisive_rate": r.decisive_rate,
            "decisive_interval": r.decisive_interval, "win_rate": r.win_rate, "minutes": r.total_minutes}
            for k, r in results.items()}}, indent=2) + "\n", encoding="utf-8")
    return lines


def read_result(path: Path) -> Result:
    """A finished run's numbers, as its ``summary.json`` holds them."""
    d = json.loads(path.read_text(encoding="utf-8"))

    def pair(x: Any) -> tuple[float, float] | None:
        return None if x is None else (x[0], x[1])

    return Result(times=d["times_s"], round1_judgments=d["round1_judgments"], round2_votes=d["round2_votes"],
                  adherence=d["adherence"], win_rate=d["win_rate"], win_interval=pair(d["win_interval"]),
                  decisive_rate=d["decisive_rate"], decisive_interval=pair(d["decisive_interval"]),
                  wins=d["wins"], losses=d["losses"])


def seeds_table(results: dict[int, Result], times: dict[str, float]) -> list[str]:
    """Per seed: adherence of both rounds, the experts' decisive votes and rate; then the votes pooled."""
    from feedback_app.headtohead import wilson_interval

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    rows = [["seed", "adherence r1 -> r2", "wins", "losses", "decisive win rate", "95% Wilson", "minutes"]]
    for seed, r in results.items():
        rates = list(r.adherence.values())
        ci = r.decisive_interval
        rows.append([str(seed), " -> ".join(pct(x) for x in rates), str(r.wins), str(r.losses),
                     pct(r.decisive_rate), "-" if ci is None else f"[{pct(ci[0])}, {pct(ci[1])}]",
                     f"{r.total_minutes:.1f}"])
    wins, losses = sum(r.wins for r in results.values()), sum(r.losses for r in results.values())
    pooled = wins / (wins + losses) if wins + losses else None
    ci = wilson_interval(wins, wins + losses)
    rows.append(["pooled", "", str(wins), str(losses), pct(pooled),
                 "-" if ci is None else f"[{pct(ci[0])}, {pct(ci[1])}]", ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"# The two-round demo on {len(results)} seeds"
             + (f" (one shared SFT: {times['SFT'] / 60:.1f} min)" if "SFT" in times else ""), ""]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    decisive = [r.decisive_rate for r in results.values() if r.decisive_rate is not None]
    higher = sum(1 for r in results.values() if len(r.adherence) == 2 and list(r.adherence.values())[1]
                 > list(r.adherence.values())[0])
    lines += ["", f"round 2 adheres more than round 1 on {higher} of {len(results)} seeds; decisive win rate >= "
              f"{TARGET_WIN_RATE:.0%} on {sum(1 for d in decisive if d >= TARGET_WIN_RATE)} of {len(results)} "
              f"(lowest {pct(min(decisive) if decisive else None)}, pooled {pct(pooled)})"]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    d = Settings()
    p.add_argument("--workdir", type=Path, default=d.workdir)
    p.add_argument("--model", default=d.model, help="base model SFT starts from (default: the embedded model)")
    p.add_argument("--annotators", type=int, default=d.annotators)
    p.add_argument("--overlap", type=int, default=d.overlap)
    p.add_argument("--noise", type=float, default=d.noise)
    p.add_argument("--prompts", type=int, default=d.prompts, help="round-1 prompts")
    p.add_argument("--k", type=int, default=d.k, help="answers per round-1 prompt")
    p.add_argument("--aggregate", default=d.aggregate,
                   choices=["all", "majority", "drop_contradicted", "agreement_weight"])
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--seeds", type=int, nargs="+", metavar="N",
                   help="run the demo once per seed (in WORKDIR/seed-N, one shared SFT) and print a table across them")
    p.add_argument("--sft", type=Path, metavar="DIR",
                   help="an SFT output folder (DIR/model) to start from instead of training one")
    for phase in ("sft", "rm", "dpo"):
        p.add_argument(f"--{phase}-set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"an override for `align {phase}` (repeatable)"
                       + (f"; after the demo's own {', '.join(DPO_DEFAULTS)}" if phase == "dpo" else ""))
    a = p.parse_args(argv)
    if a.overlap > a.annotators:
        p.error(f"--overlap ({a.overlap}) cannot exceed --annotators ({a.annotators})")
    os.environ.setdefault("WANDB_MODE", "offline")
    s = Settings(workdir=a.workdir, model=a.model, annotators=a.annotators, overlap=a.overlap, noise=a.noise,
                 prompts=a.prompts, k=a.k, aggregate=a.aggregate, seed=a.seed, sft_model=a.sft,
                 sft_overrides=a.sft_set, rm_overrides=a.rm_set, dpo_overrides=[*DPO_DEFAULTS, *a.dpo_set])
    if a.seeds:
        print("\n".join(run_seeds(s, a.seeds)))
        return 0
    res = run(s)
    print("\n".join(res.lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
