"""Head-to-head evaluation: experts compare the old model's and the new model's answers, blind.

After a training round, every held-out prompt gets one answer from the **baseline** (the old model) and one from
the **challenger** (the new one), stored as a project with ``task`` head_to_head
(:meth:`feedback_app.store.Store.add_head_to_head`): an item per prompt with the two answers as its candidates.
Annotators are served these items like any other, each in an order of its own (``display_order``), and judge
them with the usual judgment: the better answer ranked 1 and the other 2, both ranked 1 for a tie, "all
unacceptable" when both are bad. The judgments are an evaluation and are never exported for training.

Creating one: :func:`create_from_models` (each model answers every prompt: greedy by default, a fixed seed
when sampling) or :func:`create_from_files` (two JSONL files of answers, matched by prompt); either stores the
rules that judge beside the experts (``policies``, a policies YAML's text) with the project.

The report (:func:`project_summary`, :func:`format_summary`; ``align feedback h2h report``). Each annotator's
current judgment (latest revision) of an item is one **vote** for the challenger: ``win``, ``loss``, ``tie`` or
``both_bad``.

- **win rate** = (wins + 1/2 (ties + both bad)) / votes, with a 95% **percentile bootstrap** interval that
  resamples prompts (items), not votes: the votes of one prompt are correlated (the same two answers), so
  resampling votes would give an interval too narrow. Fixed seed: the same store gives the same interval.
- **decisive** win rate = wins / (wins + losses), with the **Wilson** 95% interval. It treats votes as
  independent: a quick check beside the bootstrap, narrower than it whenever annotators agree.
- per-annotator counts.
- **automatic judges**, per prompt: the **rules** (a policies YAML, :mod:`alignment.evaluation.rules`: the one
  stored with the project when it was created, ``--policies``, unless the caller gives others) prefer the answer
  that follows more rules; the **reward model** (the scores ``align feedback score`` stored) prefers
  the higher score; equal is a tie. Each has its own win rate over the prompts it could judge ((wins + 1/2
  ties) / prompts), and its **agreement** with the experts: of the decisive expert votes (win or loss) on those
  prompts, the share where the judge is decisive and picks the same side (a judge's tie counts as a
  disagreement; how many there were is reported).

Prompts both models answered with the same text hold one candidate and are never shown: they are counted
(``identical``) and left out of every rate, experts' and judges' alike.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.config import ModelOptions
from alignment.errors import AlignError
from feedback_app.store import (
    MAX_POLICIES_TEXT,
    Candidate,
    HeadToHeadAdded,
    Item,
    Judgment,
    ModelSide,
    Project,
    Store,
    StoreError,
    prompt_hash,
)

WIN, LOSS, TIE, BOTH_BAD = "win", "loss", "tie", "both_bad"  # a vote, for the challenger
OUTCOMES = (WIN, LOSS, TIE, BOTH_BAD)
VERDICTS = ("better", "tie", "both_bad")  # what an annotator says (judgment_for)
ANSWER_FIELDS = ("answer", "completion")  # the answer's column in an answers file, in order of precedence
DEFAULT_SAMPLES = 2000  # bootstrap resamples: the interval's ends move by about 0.005 between seeds
DEFAULT_SEED = 0
DEFAULT_MAX_NEW_TOKENS = 256  # an answer cut short loses to one that was not: keep the limit generous
LEVEL = 0.95
Z95 = statistics.NormalDist().inv_cdf(0.5 + LEVEL / 2)  # 1.959963984540054


# ------------------------------------------------------------------------------------------------ judgments


def sides(item: Item, project: Project) -> tuple[Candidate, Candidate] | None:
    """The item's (baseline, challenger) candidates, told apart by the model names the project records; None
    when the item does not hold one answer of each (both models gave the same text: one candidate)."""
    by_model = {c.model: c for c in item.candidates}
    if len(item.candidates) != 2 or project.baseline not in by_model or project.challenger not in by_model:
        return None
    return by_model[project.baseline], by_model[project.challenger]


def judgment_for(item: Item, verdict: str, better: int | None = None, *, tags: Mapping[int, list[str]] | None = None,
                 note: str = "") -> Judgment:
    """The judgment an annotator's verdict on a head-to-head item is stored as: ``better`` (the candidate id
    ``better`` ranked 1, the other 2), ``tie`` (both ranked 1) or ``both_bad`` ("all unacceptable", no ranks)."""
    ids = [c.id for c in item.candidates]
    extra: dict[str, Any] = {"tags": {k: list(v) for k, v in (tags or {}).items()}, "note": note}
    if verdict == "better":
        if better not in ids:
            raise StoreError("choose the better answer")
        return Judgment(ranks={cid: 1 if cid == better else 2 for cid in ids}, **extra)
    if verdict == "tie":
        return Judgment(ranks=dict.fromkeys(ids, 1), **extra)
    if verdict == "both_bad":
        return Judgment(all_unacceptable=True, **extra)
    raise StoreError(f"a verdict is one of {', '.join(VERDICTS)}, not {verdict!r}")


def outcome_of(item: Item, project: Project, judgment: Judgment) -> str | None:
    """A judgment of a head-to-head item as a vote for the challenger: WIN (ranked above the baseline), LOSS,
    TIE (equal ranks) or BOTH_BAD ("all unacceptable", whatever the ranks). None when it says nothing
    (the item does not hold both sides, or a side has no rank)."""
    pair = sides(item, project)
    if pair is None:
        return None
    if judgment.all_unacceptable:
        return BOTH_BAD
    rank_b, rank_c = judgment.ranks.get(pair[0].id), judgment.ranks.get(pair[1].id)
    if rank_b is None or rank_c is None:
        return None
    return WIN if rank_c < rank_b else LOSS if rank_c > rank_b else TIE


# ------------------------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class Vote:
    """One annotator's current judgment of one item, for the challenger."""

    item_id: int
    annotator: str
    outcome: str  # one of OUTCOMES


@dataclass(frozen=True)
class Counts:
    wins: int = 0
    losses: int = 0
    ties: int = 0
    both_bad: int = 0

    @classmethod
    def of(cls, outcomes: Iterable[str]) -> Counts:
        n = dict.fromkeys(OUTCOMES, 0)
        for o in outcomes:
            if o not in n:
                raise ValueError(f"an outcome is one of {', '.join(OUTCOMES)}, not {o!r}")
            n[o] += 1
        return cls(n[WIN], n[LOSS], n[TIE], n[BOTH_BAD])

    @property
    def total(self) -> int:
        return self.wins + self.losses + self.ties + self.both_bad

    @property
    def decisive(self) -> int:
        return self.wins + self.losses

    @property
    def win_rate(self) -> float | None:
        """(wins + 1/2 (ties + both bad)) / total: neither side gains from a tie or from two bad answers."""
        return (self.wins + 0.5 * (self.ties + self.both_bad)) / self.total if self.total else None

    @property
    def decisive_rate(self) -> float | None:
        """wins / (wins + losses)."""
        return self.wins / self.decisive if self.decisive else None


@dataclass(frozen=True)
class JudgeResult:
    """An automatic judge's verdicts on the prompts it could judge, and its agreement with the experts."""

    name: str  # "rules", "reward model"
    detail: str  # which rules file, which reward model
    counts: Counts  # per prompt, for the challenger (no both_bad: a judge only compares)
    comparable: int  # decisive expert votes (win or loss) on prompts this judge judged
    agreed: int  # of those, votes where the judge is decisive and picks the same side
    judge_ties: int  # of those, votes on prompts the judge found a tie (counted as disagreements)
    means: tuple[float, float] | None = None  # the judge's mean measure of the baseline's, the challenger's answers
    measure: str = ""  # what ``means`` measure: "rules followed", "score"

    @property
    def win_rate(self) -> float | None:
        return self.counts.win_rate

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.comparable if self.comparable else None


@dataclass(frozen=True)
class HeadToHeadSummary:
    """What ``align feedback h2h report`` shows (:func:`format_summary`), and the app's dashboard."""

    project: str
    baseline: str
    challenger: str
    prompts: int  # prompts holding both answers: the ones annotators are served
    identical: int  # prompts both models answered with the same text: never served, in no rate
    judged_prompts: int  # prompts with at least one vote
    counts: Counts  # every vote
    bootstrap: tuple[float, float] | None  # 95% interval of counts.win_rate, resampling prompts
    wilson: tuple[float, float] | None  # 95% interval of counts.decisive_rate
    annotators: tuple[tuple[str, Counts], ...]  # per annotator, by name
    judges: tuple[JudgeResult, ...] = ()
    samples: int = DEFAULT_SAMPLES
    seed: int = DEFAULT_SEED
    notes: tuple[str, ...] = ()  # what could not be reported, and how to get it

    @property
    def win_rate(self) -> float | None:
        return self.counts.win_rate


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``successes / n`` (95% for the default ``z``); None for n = 0.
    Unlike p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at 0/n or n/n."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n ({n}), not {successes}")
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0/n and n/n the end is exactly 0 or 1; computed, it is off by a rounding error (2.8e-17).
    return (0.0 if successes == 0 else center - half), (1.0 if successes == n else center + half)


def bootstrap_interval(votes: Sequence[Vote], *, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED,
                       level: float = LEVEL) -> tuple[float, float] | None:
    """The percentile bootstrap interval of the win rate, resampling **items** with replacement: each resample
    draws as many items as were judged and pools all their votes. None without votes.

    Items, not votes, because the votes of one prompt judge the same two answers: they agree more than votes
    of different prompts, and a prompt judged by three annotators is not three independent prompts. The ends are
    the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled win rates (linear interpolation
    between order statistics, numpy's default), from ``random.Random(seed)``: the same votes give the same
    interval."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, not {samples}")
    if not 0 < level < 1:
        raise ValueError(f"level is between 0 and 1, not {level}")
    # Per item: twice its score (win 2, tie or both bad 1, loss 0) and its votes: integer sums, so that a
    # resample of all wins is exactly 1.0.
    per_item: dict[int, list[int]] = {}
    for v in votes:
        entry = per_item.setdefault(v.item_id, [0, 0])
        entry[0] += 2 if v.outcome == WIN else 0 if v.outcome == LOSS else 1
        entry[1] += 1
    if not per_item:
        return None
    doubled = [s for s, _ in per_item.values()]
    counts = [n for _, n in per_item.values()]
    k = len(doubled)
    rng = random.Random(seed)
    rates = []
    indices = range(k)
    for _ in range(samples):
        picks = rng.choices(indices, k=k)
        rates.append(sum(doubled[i] for i in picks) / (2 * sum(counts[i] for i in picks)))
    rates.sort()
    alpha = (1 - level) / 2
    return _quantile(rates, alpha), _quantile(rates, 1 - alpha)


def _quantile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, interpolating linearly between the two nearest order statistics."""
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def compare(baseline: float, challenger: float) -> str:
    """A judge's verdict from its measure of the two answers (higher is better): WIN, LOSS or TIE."""
    return WIN if challenger > baseline else LOSS if challenger < baseline else TIE


def judge_result(name: str, measures: Mapping[int, tuple[float, float]], votes: Sequence[Vote], *, detail: str = "",
                 measure: str = "") -> JudgeResult:
    """An automatic judge from its measure of each prompt's (baseline, challenger) answers (item id -> the two
    numbers, higher is better): its verdicts (:func:`compare`), their counts and its agreement with the decisive
    expert ``votes`` on the prompts it judged. Prompts missing from ``measures`` are not counted."""
    verdicts = {item_id: compare(b, c) for item_id, (b, c) in measures.items()}
    comparable = agreed = ties = 0
    for v in votes:
        if v.outcome not in (WIN, LOSS) or v.item_id not in verdicts:
            continue
        comparable += 1
        agreed += verdicts[v.item_id] == v.outcome
        ties += verdicts[v.item_id] == TIE
    means = None
    if measures:
        means = (sum(b for b, _ in measures.values()) / len(measures),
                 sum(c for _, c in measures.values()) / len(measures))
    return JudgeResult(name, detail, Counts.of(verdicts.values()), comparable, agreed, ties, means, measure)


def rules_followed(answers: Mapping[int, tuple[str, str]], policies: Sequence[Any]) -> dict[int, tuple[float, float]]:
    """Per item, how many of ``policies`` (:class:`alignment.evaluation.rules.DomainRule`) the baseline's and the
    challenger's answers follow: the rules judge's measure (:func:`judge_result`)."""
    from alignment.evaluation.rules import check_answer

    return {item_id: (float(sum(check_answer(b, policies).values())), float(sum(check_answer(c, policies).values())))
            for item_id, (b, c) in answers.items()}


def summarize(votes: Sequence[Vote], *, project: str = "", baseline: str = "", challenger: str = "",
              prompts: int | None = None, identical: int = 0, judges: Sequence[JudgeResult] = (),
              samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED, notes: Sequence[str] = ()) -> HeadToHeadSummary:
    """The experts' votes (and the judges' results) as a summary; see the module docstring for the definitions.
    ``prompts``: how many prompts hold both answers (default: the prompts with a vote)."""
    judged = {v.item_id for v in votes}
    counts = Counts.of(v.outcome for v in votes)
    by_annotator: dict[str, list[str]] = {}
    for v in votes:
        by_annotator.setdefault(v.annotator, []).append(v.outcome)
    return HeadToHeadSummary(
        project, baseline, challenger, len(judged) if prompts is None else prompts, identical, len(judged), counts,
        bootstrap_interval(votes, samples=samples, seed=seed), wilson_interval(counts.wins, counts.decisive),
        tuple((name, Counts.of(o)) for name, o in sorted(by_annotator.items())), tuple(judges), samples, seed,
        tuple(notes))


def project_summary(store: Store, project: Project, *, policies: Sequence[Any] | None = None,
                    policies_name: str = "", samples: int = DEFAULT_SAMPLES,
                    seed: int = DEFAULT_SEED) -> HeadToHeadSummary:
    """The report of a head-to-head project: the experts' current votes, the rules judge, the reward-model judge
    when the project's candidates have scores.

    The rules: ``policies`` when given (``policies_name``: the file they came from, for the report), else the
    policies stored with the project (``Project.policies_yaml``, set when it was created): every reader of the
    project (the dashboard, ``align feedback h2h report``, the pipeline's report) judges with the same rules
    without needing the file. Stored rules that no longer read (a later release checks more) are a note, not an
    error: the rest of the report still stands."""
    if not project.is_head_to_head:
        raise StoreError(f"project '{project.name}' is a ranking project, not a head-to-head evaluation")
    notes = []
    stored = ""  # how the rules judge's detail names rules from the store
    if project.policies_yaml:
        from alignment.evaluation.rules import parse_rules

        name = project.policies_name or "policies"
        try:
            kept = parse_rules(project.policies_yaml, f"{name} (stored with the project)")
        except AlignError as err:
            kept = None
            if policies is None:
                notes.append(f"the rules stored with the project no longer read: {err}")
        if policies is None and kept is not None:
            policies, policies_name, stored = kept, name, ", stored with the project"
        elif policies is not None and list(policies) != kept:
            # Said only when they differ (rules compare by name, description and compiled patterns): a caller
            # that gives the very rules the project stores (the pipeline's recipe, a demo) changes nothing.
            notes.append(f"rules given for this report ({policies_name or 'policies'}) replace the ones stored with "
                         f"the project ({name})")
    items = {item.id: item for item in store.project_items(project.id)}
    pairs = {item_id: pair for item_id, item in items.items() if (pair := sides(item, project)) is not None}
    identical = sum(1 for item in items.values() if len(item.candidates) == 1)
    votes = []
    for sj in store.latest_judgments(project.id):
        item = items.get(sj.item_id)
        outcome = outcome_of(item, project, sj.judgment) if item is not None else None
        if outcome is not None:
            votes.append(Vote(sj.item_id, sj.user_name, outcome))
    judges = []
    if policies:
        measures = rules_followed({i: (b.text, c.text) for i, (b, c) in pairs.items()}, policies)
        judges.append(judge_result("rules", measures, votes, detail=f"{policies_name or 'policies'} "
                                   f"({len(policies)} rules{stored})", measure="rules followed"))
    elif not project.policies_yaml:
        notes.append(f"no rules judge: the project stores no policies (`align feedback h2h create --project "
                     f"{project.name} ... --policies FILE` stores them; `align feedback h2h report --policies FILE` "
                     "judges with a file)")
    scores = store.scores(project.id)
    scored = {i: (scores[b.id].score, scores[c.id].score) for i, (b, c) in pairs.items()
              if b.id in scores and c.id in scores}
    if scored:
        models = sorted({(scores[c.id].reward_model, scores[c.id].weights_sha256) for pair in pairs.values()
                         for c in pair if c.id in scores})
        detail = "; ".join(f"{path} (sha256 {sha[:12]}...)" for path, sha in models)
        judges.append(judge_result("reward model", scored, votes, detail=detail, measure="score"))
        if len(scored) < len(pairs):
            notes.append(f"the reward model scored both answers of {len(scored)} of {len(pairs)} prompts; score the "
                         f"project again to judge them all (`align feedback score --project {project.name}`)")
    else:
        notes.append(f"no reward-model scores: `align feedback score --project {project.name} --reward-model DIR` "
                     "adds the reward model as a judge")
    return summarize(votes, project=project.name, baseline=project.baseline, challenger=project.challenger,
                     prompts=len(pairs), identical=identical, judges=judges, samples=samples, seed=seed, notes=notes)


def format_summary(summary: HeadToHeadSummary) -> list[str]:
    """The summary as text lines: the experts' win rate with both intervals, then a table of the experts and each
    judge (prompts, wins, losses, ties, win rate, agreement with the experts), then one row per annotator."""
    s = summary
    c = s.counts
    lines = [f"head-to-head '{s.project}': challenger {s.challenger} vs baseline {s.baseline}",
             f"prompts: {s.prompts} compared, {s.judged_prompts} judged by {len(s.annotators)} annotator"
             f"{'' if len(s.annotators) == 1 else 's'}"
             + (f"; {s.identical} more answered identically by both (never shown, in no rate)" if s.identical else "")]
    if not c.total:
        lines.append("no judgments yet")
    else:
        lines.append(f"experts, for the challenger: {c.total} votes: {c.wins} wins, {c.losses} losses, {c.ties} ties, "
                     f"{c.both_bad} both bad")
        lines.append(f"  win rate {_rate(c.win_rate)}  95% CI {_interval(s.bootstrap)}  (ties and both bad count 1/2; "
                     f"bootstrap over {s.judged_prompts} prompts, {s.samples} resamples, seed {s.seed})")
        lines.append(f"  decisive votes {c.wins}/{c.decisive} = {_rate(c.decisive_rate)}  95% CI "
                     f"{_interval(s.wilson)}  (Wilson; votes taken as independent)")
    table = [["judge", "judged", "wins", "losses", "ties", "win rate", "agrees with experts"]]
    table.append(["experts", f"{c.total} votes", str(c.wins), str(c.losses),
                  f"{c.ties}" + (f" (+{c.both_bad} both bad)" if c.both_bad else ""), _rate(c.win_rate), "-"])
    for j in s.judges:
        agree = "-" if j.agreement is None else (
            f"{_rate(j.agreement)} ({j.agreed}/{j.comparable} decisive votes"
            + (f"; judge tied on {j.judge_ties}" if j.judge_ties else "") + ")")
        table.append([j.name, f"{j.counts.total} prompts", str(j.counts.wins), str(j.counts.losses), str(j.counts.ties),
                      _rate(j.win_rate), agree])
    lines += [""] + _grid(table)
    for j in s.judges:
        mean = "" if j.means is None else (f": mean {j.measure} {j.means[0]:.2f} (baseline), {j.means[1]:.2f} "
                                           "(challenger)")
        lines.append(f"  {j.name}: {j.detail}{mean}")
    if s.annotators:
        rows = [["annotator", "votes", "wins", "losses", "ties", "both bad", "win rate"]]
        rows += [[name, str(n.total), str(n.wins), str(n.losses), str(n.ties), str(n.both_bad), _rate(n.win_rate)]
                 for name, n in s.annotators]
        lines += [""] + _grid(rows)
    lines += [f"note: {n}" for n in s.notes]
    return lines


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _interval(bounds: tuple[float, float] | None) -> str:
    return "-" if bounds is None else f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


def _grid(rows: list[list[str]]) -> list[str]:
    """Left-aligned columns, numbers right-aligned, the last column as it is."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for r in rows:
        cells = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))]
        out.append("  ".join([*cells, r[-1]]).rstrip())
    return out


# ------------------------------------------------------------------------------------------------ creating one


@dataclass(frozen=True)
class Created:
    """What :func:`create_from_models` or :func:`create_from_files` stored."""

    stored: HeadToHeadAdded
    sides: tuple[ModelSide, ModelSide]  # (baseline, challenger) as their answers were stored
    skipped: tuple[str, ...] = ()  # prompts left out, and why (a model's answer was empty)
    seconds: float = 0.0


def create_from_files(store: Store, name: str, baseline_file: str | Path, challenger_file: str | Path, *,
                      baseline_name: str | None = None, challenger_name: str | None = None,
                      overlap: int | None = None, policies: str | Path | None = None) -> Created:
    """A head-to-head evaluation from two answers files, one per model, matched by prompt (the files' orders
    may differ). Each row: ``prompt`` (or ``messages``) and ``answer`` (or ``completion``: a string or assistant
    messages), optional ``model``. A side's name: ``*_name``, else the ``model`` the file's rows give, else
    ``imported:<file name>``.

    Refused with an AlignError naming file, line and field: a row without a prompt or answer, an empty one, a
    prompt given twice in a file or missing from the other file, two model names in one file. Nothing is stored
    unless every row is good.

    ``policies``: a policies YAML (:func:`read_policies`), stored with the project for the rules judge of every
    report; an extended project's are replaced. None keeps what the project has."""
    start = time.monotonic()
    rules = read_policies(policies)
    base_rows, base_model = read_answers(baseline_file)
    chal_rows, chal_model = read_answers(challenger_file)
    base_by_prompt = {prompt_hash(p): (line, p, a) for line, p, a in base_rows}
    chal_by_prompt = {prompt_hash(p): (line, p, a) for line, p, a in chal_rows}
    for rows, other, file, other_file in ((chal_rows, base_by_prompt, challenger_file, baseline_file),
                                          (base_rows, chal_by_prompt, baseline_file, challenger_file)):
        for line, prompt, _ in rows:
            if prompt_hash(prompt) not in other:
                raise AlignError(f"this prompt has no answer in {other_file}; both files answer the same prompts",
                                 file=str(file), line=line, field="prompt")
    base = ModelSide(baseline_name or base_model or f"imported:{Path(baseline_file).name}")
    chal = ModelSide(challenger_name or chal_model or f"imported:{Path(challenger_file).name}")
    if base.name == chal.name:
        raise AlignError(f"both files name their model '{base.name}'; name the two sides apart (--baseline-name, "
                         "--challenger-name)", field="--challenger-name")
    rows = [(p, a, chal_by_prompt[h][2]) for h, (_, p, a) in base_by_prompt.items()]
    stored = store.add_head_to_head(name, base, chal, rows, overlap=overlap, source=Path(baseline_file).name,
                                    candidate_source="imported", policies=rules)
    return Created(stored, (base, chal), (), time.monotonic() - start)


def read_policies(path: str | Path | None) -> tuple[str, str] | None:
    """A policies file as the store keeps it: (its text, its file name), checked as the rules judge reads it
    (:func:`alignment.evaluation.rules.parse_rules`: an AlignError naming the file as given, the line and the
    field). None for None. The file name only: the path is the creating machine's, meaningless where the
    report is read."""
    if path is None:
        return None
    from alignment.evaluation.rules import parse_rules, read_rules_text

    text = read_rules_text(path)
    if len(text) > MAX_POLICIES_TEXT:  # refused here, before any model loads, rather than by the store after
        raise AlignError(f"{len(text)} characters; a policies file stored with a project is up to "
                         f"{MAX_POLICIES_TEXT}", file=str(path))
    parse_rules(text, path)
    return text, Path(path).name


def read_answers(path: str | Path) -> tuple[list[tuple[int, list[dict[str, str]], str]], str | None]:
    """An answers file: (line, prompt, answer) per row in file order, and the model name its rows give (None when
    none does). Read with the candidates file's readers (:mod:`feedback_app.candidates`); errors name the file,
    line and field."""
    from alignment.data import load_records
    from alignment.data.formats import blank_prompt
    from feedback_app.candidates import _answer_text, prompt_records

    source = str(path)
    ds = load_records(path)
    columns = set(ds.column_names)
    answer_field = next((f for f in ANSWER_FIELDS if f in columns), None)
    if answer_field is None:
        raise AlignError("an answers file needs an 'answer' (or 'completion') column: one model's answer per prompt",
                         file=source, field="answer")
    prompt_field, records = prompt_records(ds, source)
    rows: list[tuple[int, list[dict[str, str]], str]] = []
    first_line: dict[str, int] = {}
    model: tuple[int, str] | None = None  # (first line naming it, the name)
    for line, prompt, record in records:
        if blank_prompt(prompt):
            raise AlignError("the prompt is empty", file=source, line=line, field=prompt_field)
        h = prompt_hash(prompt)
        if h in first_line:
            raise AlignError(f"the same prompt as line {first_line[h]}; give each prompt once", file=source,
                             line=line, field=prompt_field)
        first_line[h] = line
        text = _answer_text(record[answer_field], source, line, answer_field)
        if not text.strip():
            raise AlignError("the answer is empty", file=source, line=line, field=answer_field)
        name = record.get("model")
        if name is not None and not isinstance(name, str):
            raise AlignError("a model name is a string", file=source, line=line, field="model")
        if name and name.strip():
            if model is None:
                model = (line, name.strip())
            elif model[1] != name.strip():
                raise AlignError(f"names model '{name.strip()}', line {model[0]} names '{model[1]}': an answers file "
                                 "holds one model's answers", file=source, line=line, field="model")
        rows.append((line, prompt, text))
    return rows, model[1] if model else None


def create_from_models(store: Store, name: str, prompts_file: str | Path, baseline_dir: str | Path,
                       challenger_dir: str | Path, *, baseline_name: str | None = None,
                       challenger_name: str | None = None, overlap: int | None = None,
                       max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 16, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int = DEFAULT_SEED, policies: str | Path | None = None,
                       options: ModelOptions | None = None) -> Created:
    """A head-to-head evaluation from two models: each answers every prompt of ``prompts_file`` (any prompts
    file; greedy by default, sampling with ``seed`` when ``temperature`` > 0), and every answer is stored with
    its model's directory, weights hash and decoding settings. A side's name: ``*_name``, else the directory as
    given. Prompts the project already has are not generated again; repeated prompts are generated once.

    Everything that can be refused is refused before a model loads (the settings, the project name, the prompts,
    the model directories). A prompt one model answered with nothing is left out and listed in ``skipped``: the
    store keeps no empty answer, and a made-up one would be judged in its place.

    ``policies``: as :func:`create_from_files` takes them, checked before a model loads. ``options``: how both
    models load (dtype, attention kernel, remote code); None: float32, transformers' defaults."""

    from alignment.generation import generate
    from alignment.modeling import load_causal_lm, load_tokenizer, on_inference_device, resolve_model
    from feedback_app.candidates import load_prompts
    from feedback_app.scoring import weights_sha256

    start = time.monotonic()
    for value, low, high, option in ((max_new_tokens, 1, 4096, "--max-new-tokens"),
                                     (batch_size, 1, 1 << 16, "--batch-size")):
        if not low <= value <= high:
            raise AlignError(f"must be between {low} and {high}, not {value}", field=option)
    if temperature < 0:
        raise AlignError(f"must be 0 (greedy) or above, not {temperature}", field="--temperature")
    if not 0 < top_p <= 1:
        raise AlignError(f"must be in (0, 1], not {top_p}", field="--top-p")
    rules = read_policies(policies)
    base_name = baseline_name or str(baseline_dir)
    chal_name = challenger_name or str(challenger_dir)
    if base_name == chal_name:
        raise AlignError(f"the baseline and the challenger are both '{base_name}': compare two models, or name the "
                         "sides apart (--baseline-name, --challenger-name)", field="--challenger")
    existing = store.check_head_to_head(name, base_name, chal_name)
    prompts: dict[str, list[dict[str, str]]] = {}
    for prompt in load_prompts(prompts_file):
        prompts.setdefault(prompt_hash(prompt), prompt)
    if not prompts:
        raise AlignError("no prompts", file=str(prompts_file))
    present = 0
    if existing is not None:  # extending an evaluation: the prompts it has keep their answers
        known = {prompt_hash(item.prompt) for item in store.project_items(existing.id)}
        present = sum(1 for h in prompts if h in known)
        prompts = {h: p for h, p in prompts.items() if h not in known}
    # Both directories resolved and hashed before either model loads: a typo in the second costs no generation.
    paths = {}
    for label, directory in (("baseline", baseline_dir), ("challenger", challenger_dir)):
        path = resolve_model(directory).resolve()
        paths[label] = (path, weights_sha256(path, f"--{label}"))
    decoding = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed}
    todo = list(prompts.values())
    answers: dict[str, list[str]] = {}
    for label in ("baseline", "challenger"):
        if not todo:
            break
        path = paths[label][0]
        tokenizer = load_tokenizer(path, options)
        model = on_inference_device(load_causal_lm(path, merge_adapter=True, options=options))
        got = generate(model, tokenizer, todo, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       temperature=temperature, top_p=top_p, seed=seed, desc=f"{label} answers")
        answers[label] = [a.text for a in got]
        del model  # one model in memory at a time
    base = ModelSide(base_name, str(paths["baseline"][0]), paths["baseline"][1], decoding)
    chal = ModelSide(chal_name, str(paths["challenger"][0]), paths["challenger"][1], decoding)
    rows = []
    skipped = []
    for i, prompt in enumerate(todo):
        b, c = answers["baseline"][i], answers["challenger"][i]
        empty = [label for label, text in (("baseline", b), ("challenger", c)) if not text.strip()]
        if empty:
            skipped.append(f"prompt {_short(prompt[-1]['content'])!r}: the {' and the '.join(empty)}'s answer "
                           "is empty")
            continue
        rows.append((prompt, b, c))
    if rows:
        stored = store.add_head_to_head(name, base, chal, rows, overlap=overlap, source=Path(prompts_file).name,
                                        candidate_source="generated", policies=rules)
    elif existing is not None:  # nothing new: the project as it is, with the rules given
        project = existing if rules is None else store.set_project_policies(existing.id, *rules)
        stored = HeadToHeadAdded(project, 0, 0, 0)
    else:
        raise StoreError(f"each of the {len(skipped)} prompt(s) got an empty answer from a model; nothing stored")
    stored = HeadToHeadAdded(stored.project, stored.added, stored.identical, stored.already_present + present)
    return Created(stored, (base, chal), tuple(skipped), time.monotonic() - start)


def _short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."
