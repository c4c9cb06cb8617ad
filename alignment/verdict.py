"""Did learning work? One verdict per policy phase of a pipeline, from its eval phase's results.

Each policy phase (SFT, DPO/KTO, PPO) is compared with the model it started from, on the same held-out
prompts the eval phase answered:

- **adherence**: the share of answers passing every policy, before (the start model) and after (the phase).
  The change counts when it exceeds ``Z`` standard errors of the per-prompt difference (pass after minus pass
  before, 1, 0 or -1 per prompt) and ``MIN_NET`` answers net; with 40 or more prompts the first already needs 4
  when no prompt moved the other way. Paired, because both models answer the same prompts: prompts that both
  pass or both fail add no noise, and an unpaired binomial error is often twice as wide when the two models agree
  on most prompts. Without per-answer checks (an old results.json) the unpaired binomial standard error of the
  difference is used instead.
- **status**: ``learned`` (adherence rose beyond the noise), ``no gain`` (within it), ``regressed`` (fell
  beyond it), or ``not measured`` (the phase or its start model is not in the evaluation). Without policies the
  status comes from the reward model instead: the per-prompt win rate of the phase's answers over the start
  model's, against 1/2.
- for a phase that did not learn: the likely cause and what to change, chosen from what the run left on disk
  (the phase's metrics and resolved config, the reward model's diagnostics, unfinished answers).

:func:`learning_verdicts` is pure (results, phase graph and diagnostics in, verdicts out);
:func:`run_verdicts` reads a pipeline's run folder and calls it; :func:`format_verdicts` prints them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.evaluation.records import EvalReport, ModelResult
from alignment.tracking import read_metrics

Z = 2.0
"""A change counts when it exceeds this many standard errors (about a 95% two-sided interval)..."""
MIN_NET = 3
"""...and when at least this many answers changed net: on a handful of prompts the standard error is 0
whenever every prompt moved the same way, so 2 of 2 would count."""
CEILING = 0.95
"""Start-model adherence at or above this leaves too little to teach for a gain to show."""
TRUNCATED = 0.25
"""Share of unfinished answers (cut at max_new_tokens) from which truncation is the likely cause."""
RM_WEAK = 0.6
"""Reward-model held-out pairwise accuracy below this gives PPO too noisy a signal (the RM verdict's line)."""
PAIRS_RANKED = 0.8
"""DPO held-out preference accuracy at or above this: the pairs were learned, generation did not follow."""
LARGE_KL = 6.0
"""Nats per answer: the default `kl_target` of adaptive KL; a PPO policy further away has drifted far."""
LOSS_BARELY_FELL = 0.05
"""Relative fall of the SFT training loss below which the phase hardly trained."""

STATUSES = ("learned", "no gain", "regressed", "not measured")
_ALGORITHMS = {"sft": "SFT", "dpo": "DPO", "ppo": "PPO"}
# the `advantage` of a ppo-kind phase names the algorithm it ran
_ESTIMATORS = {"gae": "PPO", "grpo": "GRPO", "dr_grpo": "Dr. GRPO", "rloo": "RLOO", "reinforce_pp": "REINFORCE++"}
FEW_INFORMATIVE = 0.25  # below: most prompts' sampled answers all scored alike


@dataclass
class PhaseNode:
    """A policy phase and the model it started from."""

    name: str
    kind: str
    start: str
    """The label of the start model in the evaluation ("base" or an earlier phase's name), or a model path."""


def phase_graph(cfg: Any) -> list[PhaseNode]:
    """Which model each policy phase of a pipeline started from, as :func:`alignment.pipeline.run_pipeline`
    chains them: the latest policy before it unless its overrides name a `model`."""
    nodes = []
    current = "base"
    for step in cfg.phases:
        if step.kind not in _ALGORITHMS:
            continue
        model = step.overrides.get("model", current)
        if isinstance(model, str) and model.startswith("@"):
            start = model[1:]
        elif model == cfg.model:
            start = "base"
        else:
            start = str(model)
        nodes.append(PhaseNode(step.name, step.kind, start))
        current = step.name
    return nodes


# ----------------------------------------------------------------------------------------------- statistics


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _paired_se(diffs: list[float]) -> float:
    """Standard error of the mean of per-prompt differences (sample standard deviation, n - 1)."""
    n = len(diffs)
    if n < 2:
        return math.inf
    m = _mean(diffs)
    return math.sqrt(sum((d - m) ** 2 for d in diffs) / (n - 1) / n)


def _status(diff: float, se: float, net: int) -> str:
    """learned / regressed when ``diff`` exceeds ``Z`` standard errors and ``MIN_NET`` answers; else no gain."""
    if diff > 0 and diff > Z * se and net >= MIN_NET:
        return "learned"
    if diff < 0 and -diff > Z * se and -net >= MIN_NET:
        return "regressed"
    return "no gain"


def _passes(result: ModelResult, policy: str | None) -> list[float] | None:
    """1/0 per answer: passes every policy (``policy`` None) or that one; None when the checks are missing."""
    answers = result.answers
    if not answers or not all(a.checks for a in answers):
        return None
    if policy is None:
        return [float(all(a.checks.values())) for a in answers]
    if not all(policy in a.checks for a in answers):
        return None
    return [float(a.checks[policy]) for a in answers]


def _change(before: ModelResult, after: ModelResult, policy: str, n: int) -> dict[str, Any]:
    """Rates before and after, their difference and the noise band (``Z`` standard errors) for one policy."""
    b, a = before.adherence[policy], after.adherence[policy]
    key = None if policy == "all" else policy
    pb, pa = _passes(before, key), _passes(after, key)
    if pb is not None and pa is not None and len(pb) == len(pa) == n:
        se, method = _paired_se([y - x for x, y in zip(pb, pa)]), "paired"
        before_count, after_count = int(sum(pb)), int(sum(pa))
    else:
        se = math.sqrt(b * (1 - b) / n + a * (1 - a) / n) if n else math.inf
        method, before_count, after_count = "binomial", round(b * n), round(a * n)
    diff = a - b
    status = _status(diff, se, after_count - before_count)
    return {"before": b, "after": a, "change": diff, "noise": Z * se if math.isfinite(se) else None,
            "method": method, "before_count": before_count, "after_count": after_count, "status": status}


def _rm_head_to_head(before: ModelResult, after: ModelResult) -> dict[str, Any] | None:
    """Per-prompt RM win rate of ``after``'s answers over ``before``'s (ties 1/2) and its noise band."""
    sb = [a.rm_score for a in before.answers]
    sa = [a.rm_score for a in after.answers]
    if not sb or len(sb) != len(sa) or not all(isinstance(s, (int, float)) for s in sb + sa):
        return None
    wins = [1.0 if y > x else 0.0 if y < x else 0.5 for x, y in zip(sb, sa)]
    win, se = _mean(wins), _paired_se(wins)
    status = _status(win - 0.5, se, sum(1 if w == 1 else -1 if w == 0 else 0 for w in wins))
    return {"win_rate": win, "noise": Z * se if math.isfinite(se) else None, "status": status}


def _vs_base(result: ModelResult, key: str, is_base: bool) -> float | None:
    """The reward model's ``win_rate`` or ``p_a`` against the base model."""
    if is_base:
        return 0.5  # the base model against itself: every prompt ties
    rm = result.vs_baseline.rm if result.vs_baseline else None
    value = getattr(rm, key) if rm else None
    return value if isinstance(value, (int, float)) else None


# ------------------------------------------------------------------------------------------------- verdicts


def _display(name: str, kind: str, algorithm: str) -> str:
    return algorithm if name == kind else f"{name} ({algorithm})"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def learning_verdicts(results: EvalReport | Mapping[str, Any], phases: list[PhaseNode],
                      diagnostics: dict[str, dict[str, Any]] | None = None,
                      eval_max_new_tokens: int | None = None) -> list[dict[str, Any]]:
    """One verdict per policy phase, in pipeline order.

    ``results``: an eval phase's results.json (read, or its JSON). ``phases``: :func:`phase_graph`.
    ``diagnostics``: per phase name, what :func:`phase_diagnostics` read from its folder (all optional). Each
    verdict is a JSON-ready dict: phase, kind, algorithm, start, status, prompts, adherence (per policy and
    "all": before, after, change, noise), rm (win rate and mean P(better) against the base model before and
    after, and the head-to-head win rate against the start model) or None, unfinished answers before and
    after, and the sentences: summary, cause, fix (None when it learned), notes.
    """
    diagnostics = diagnostics or {}
    report = results if isinstance(results, EvalReport) else EvalReport.from_json(results)
    by_label = {r.label: r for r in report.results}
    baseline = report.baseline.label if report.baseline else "base"
    labels = {p.name: _display(p.name, p.kind, diagnostics.get(p.name, {}).get("algorithm") or _ALGORITHMS[p.kind])
              for p in phases}
    verdicts = []
    for p in phases:
        d = diagnostics.get(p.name, {})
        algorithm = d.get("algorithm") or _ALGORITHMS[p.kind]
        who = labels[p.name]
        start_name = "the base model" if p.start == baseline else labels.get(p.start, p.start)
        v: dict[str, Any] = {"phase": p.name, "kind": p.kind, "algorithm": algorithm, "start": p.start,
                             "status": "not measured", "prompts": None, "adherence": None, "rm": None,
                             "unfinished": None, "summary": "", "cause": None, "fix": None, "notes": []}
        after, before = by_label.get(p.name), by_label.get(p.start)
        if after is None or before is None:
            why = ("list the eval phase after it in the pipeline" if after is None or p.start in labels
                   else "the eval phase evaluates the base model and the pipeline's policies, not other models")
            v["summary"] = (f"{who} was not measured: the eval phase has no answers from "
                            f"{p.name if after is None else p.start} ({why}).")
            verdicts.append(v)
            continue
        n = len(after.answers) or report.prompts or 0
        v["prompts"] = n
        v["unfinished"] = {"before": before.unfinished, "after": after.unfinished}
        names = [k for k in after.adherence if k in before.adherence]
        changes = {k: _change(before, after, k, n) for k in names} if n else {}
        v["adherence"] = changes or None
        primary = changes.get("all")
        rm = _rm_section(before, after, p.start == baseline)
        v["rm"] = rm
        if primary is not None:
            v["status"] = primary["status"]
        elif rm and rm.get("vs_start"):
            v["status"] = rm["vs_start"]["status"]
        else:
            v["summary"] = f"{who} was not measured: the eval phase had neither policies nor a reward model."
            verdicts.append(v)
            continue
        v["summary"] = _summary(who, start_name, v["status"], primary, rm, n)
        v["notes"] = _notes(changes, v["status"])
        head = (rm or {}).get("vs_start") or {}
        if primary is not None and head.get("status") not in (None, "no gain", v["status"]):
            # the two judges disagree: worth knowing before acting on either (PPO's case is a cause below)
            judged = (f"prefers its answers to those of {start_name}" if head["status"] == "learned"
                      else f"prefers the answers of {start_name} to its own")
            v["notes"].append(f"The reward model {judged} (per-prompt win rate {head['win_rate']:.2f}): it "
                              "measures something the policy checks do not.")
        if v["status"] != "learned":
            v["cause"], v["fix"] = _cause(p, algorithm, v, before, after, d, start_name, eval_max_new_tokens)
        verdicts.append(v)
    return verdicts


def _rm_section(before: ModelResult, after: ModelResult, start_is_base: bool) -> dict[str, Any] | None:
    win = (_vs_base(before, "win_rate", start_is_base), _vs_base(after, "win_rate", False))
    p_better = (_vs_base(before, "p_a", start_is_base), _vs_base(after, "p_a", False))
    head = _rm_head_to_head(before, after)
    if win[1] is None and head is None:
        return None
    return {"win_rate_vs_base": {"before": win[0], "after": win[1]},
            "p_better_vs_base": {"before": p_better[0], "after": p_better[1]}, "vs_start": head}


def _summary(who: str, start: str, status: str, primary: dict[str, Any] | None, rm: dict[str, Any] | None,
             n: int) -> str:
    if primary is not None:
        b, a = _pct(primary["before"]), _pct(primary["after"])
        noise = "unknown" if primary["noise"] is None else f"±{100 * primary['noise']:.1f} pp"
        change = f"{100 * primary['change']:+.1f} pp"
        if primary["noise"] == 0 and primary["change"] == 0:
            return _rm_summary(f"{who} did not raise held-out adherence over {start} ({b} -> {a}: not one of {n} "
                               "prompts changed between pass and fail).", rm)
        text = {
            "learned": f"{who} raised held-out adherence over {start} ({b} -> {a}, {change}; noise {noise} "
                       f"on {n} prompts).",
            "no gain": f"{who} did not raise held-out adherence over {start} ({b} -> {a}, within noise: {noise} "
                       f"on {n} prompts).",
            "regressed": f"{who} lowered held-out adherence below {start} ({b} -> {a}, {change}; noise {noise} "
                         f"on {n} prompts).",
        }[status]
    else:
        head = (rm or {}).get("vs_start") or {}
        noise = "unknown" if head.get("noise") is None else f"±{head['noise']:.2f}"
        judged = {"learned": f"prefers its answers to those of {start}",
                  "no gain": f"does not prefer its answers to those of {start}",
                  "regressed": f"prefers the answers of {start} to its own"}[status]
        text = (f"{who}: the reward model {judged} (per-prompt win rate {head.get('win_rate', 0):.2f}, noise "
                f"{noise} around 0.50 on {n} prompts; no policies to check).")
    return _rm_summary(text, rm)


def _rm_summary(text: str, rm: dict[str, Any] | None) -> str:
    """``text`` and, when a reward model judged the answers, the win rate and P(better) against base."""
    if rm:
        win, pb = rm["win_rate_vs_base"], rm["p_better_vs_base"]
        if win["after"] is not None:
            text += f" RM win rate vs base {_num(win['before'])} -> {_num(win['after'])}"
            text += (f", mean P(better) {_num(pb['before'])} -> {_num(pb['after'])}." if pb["after"] is not None
                     else ".")
    return text


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _notes(changes: dict[str, dict[str, Any]], status: str) -> list[str]:
    """Single policies that moved beyond the noise against the overall direction (or at all when flat)."""
    notes = []
    for name, c in changes.items():
        if name == "all" or c["status"] == "no gain" or c["status"] == status:
            continue
        word = "rose" if c["status"] == "learned" else "fell"
        notes.append(f"adherence to {name} {word} {_pct(c['before'])} -> {_pct(c['after'])}.")
    return notes


def _config(d: dict[str, Any], dotted: str) -> Any:
    """A value from the phase's resolved config.yaml, or None."""
    node: Any = d.get("config") or {}
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _now(d: dict[str, Any], dotted: str) -> str:
    value = _config(d, dotted)
    return f"`{dotted}`" if value is None else f"`{dotted}` (now {value})"


def _steps(d: dict[str, Any]) -> str:
    steps = _config(d, "train.max_steps")
    if steps is not None and steps != -1:
        return f"`train.max_steps` (now {steps})"
    return f"`train.epochs` (now {_config(d, 'train.epochs')})" if _config(d, "train.epochs") is not None \
        else "`train.epochs` / `train.max_steps`"


def _rule_reward(d: dict[str, Any]) -> str:
    """PPO's rule reward as a further fix, when it is off: it pays for the policy checks themselves."""
    weight = _config(d, "rule_reward_weight")
    if weight:
        return ""
    return ("; or add the policy checks to the reward: `rule_reward_weight` (e.g. 1.0, with `policies` set to "
            "the policies file) in the ppo recipe")


def _cause(p: PhaseNode, algorithm: str, v: dict[str, Any], before: ModelResult, after: ModelResult,
           d: dict[str, Any], start: str, eval_max_new_tokens: int | None) -> tuple[str, str]:
    """The first rule that the data supports, most specific first; (likely cause, what to change)."""
    n = v["prompts"]
    changes = v["adherence"] or {}
    primary = changes.get("all") or next(iter(changes.values()), None)
    status = v["status"]
    recipe = f"the {p.name} recipe"
    unfinished_after = (after.unfinished or 0) / n if n else 0.0
    unfinished_before = (before.unfinished or 0) / n if n else 0.0
    eval_limit = f" (now {eval_max_new_tokens})" if eval_max_new_tokens else ""

    if primary is not None and status == "no gain" and primary["before"] >= CEILING:
        return (f"{start} already passed {_pct(primary['before'])} of the checks: there was almost nothing left "
                f"to teach on them.",
                "judge this phase by the RM win rate, or add held-out prompts and policies that the start model "
                "fails.")

    rm_diag = d.get("reward_model_diagnostics") or {}
    accuracy = rm_diag.get("accuracy")
    if p.kind == "ppo" and isinstance(accuracy, (int, float)) and accuracy < RM_WEAK:
        return (f"the reward model PPO trained against ranks only {accuracy:.0%} of its {rm_diag.get('pairs', '?')} "
                "held-out pairs correctly, so its reward did not point at the preferred behaviour.",
                "fix the reward model first (more preference pairs, raise `train.epochs` / `train.max_steps` in the "
                f"rm recipe, check the labels), then run PPO again{_rule_reward(d)}.")
    if p.kind == "ppo" and "It rewards length" in str(rm_diag.get("verdict", "")):
        # the rm phase's own verdict (alignment.evaluation.rm_diagnostics.verdict) found a high length bias
        return ("the reward model PPO trained against rewards length (its diagnostics: "
                f"{rm_diag['verdict']}), so PPO was paid for longer answers rather than for following the policies.",
                f"balance the lengths of chosen and rejected answers in the preference data and retrain the reward "
                f"model; raise {_now(d, 'kl_coef')} meanwhile{_rule_reward(d)}.")

    rollout_unfinished = d.get("rollout_unfinished")
    if p.kind == "ppo" and ((rollout_unfinished or 0) >= TRUNCATED or unfinished_after >= TRUNCATED):
        limit = _config(d, "generation.max_new_tokens")
        seen = (f"{rollout_unfinished:.0%} of its training rollouts" if (rollout_unfinished or 0) >= TRUNCATED
                else f"{after.unfinished} of {n} held-out answers")
        now = f" (now {limit}; try {2 * limit})" if isinstance(limit, int) else ""
        return (f"{seen} stopped at the token limit unfinished: each such answer takes the missing-EOS penalty "
                "instead of a reward for its content, and a cut answer fails the checks that look at its end.",
                f"raise `generation.max_new_tokens` in {recipe}{now}, and `evaluation.max_new_tokens`{eval_limit} "
                "if held-out answers are cut too.")

    if unfinished_after >= TRUNCATED:
        if unfinished_before >= TRUNCATED:
            return (f"{after.unfinished} of {n} held-out answers (and {before.unfinished} of the "
                    f"start model's) hit the evaluation's token limit before finishing, and a cut answer fails "
                    "the checks that look at its end.",
                    f"raise `evaluation.max_new_tokens`{eval_limit} in the pipeline.")
        leash = {"dpo": "beta", "ppo": "kl_coef"}.get(p.kind)
        return (f"{after.unfinished} of {n} held-out answers run past the token limit (the start model's: "
                f"{before.unfinished}): the phase taught the model to ramble.",
                f"lower {_now(d, 'train.lr')}" + (f" and raise {_now(d, leash)}" if leash else "")
                + f"; or raise `evaluation.max_new_tokens`{eval_limit}.")

    informative = d.get("informative_prompts")
    if p.kind == "ppo" and status == "no gain" and isinstance(informative, (int, float)) \
            and informative < FEW_INFORMATIVE:
        k = _config(d, "num_generations")
        return (f"in only {informative:.0%} of its rollout prompts did the {k if isinstance(k, int) else 'several'} "
                f"sampled answers score differently; {algorithm} compares the answers to one prompt, so the rest "
                "taught nothing.",
                f"raise {_now(d, 'num_generations')} or {_now(d, 'generation.temperature')}, or set "
                "`dynamic_sampling: true` (fresh prompts replace those whose answers all scored alike).")

    # a policy that no answer follows before or after: nothing to reinforce (a regression has other causes)
    stuck = [k for k, c in changes.items() if c["before_count"] == 0 and c["after_count"] == 0 and status == "no gain"]
    if stuck and "all" in stuck and len(stuck) > 1:
        stuck.remove("all")  # name the single policies, not their conjunction
    if stuck:
        rollouts = d.get("rollout_adherence") or {}
        sampled = [k for k in stuck if k in rollouts and rollouts[k] == 0]
        what = ", ".join(stuck) if stuck != ["all"] else "all policies at once"
        seen = (f"; its training rollouts never passed {', '.join(sampled)} either" if sampled else "")
        why = {"ppo": "on-policy RL can only reinforce what the policy samples",
               "dpo": "preference pairs pull little on answers the policy gives almost no probability",
               "sft": "the SFT data does not seem to show it"}[p.kind]
        fix = ("teach the behaviour in SFT first: set `data.preferred` in the sft recipe to the preference data "
               "(SFT then trains on the experts' preferred answers too) and raise `train.epochs` / "
               "`train.max_steps` there if needed; then run this phase again.")
        if p.kind == "sft":
            fix = ("add SFT examples that follow it, or set `data.preferred` in the sft recipe to the preference "
                   "data so SFT trains on the experts' preferred answers too.")
        return (f"no held-out answer of {start} or of this phase follows {what} (0 of {n} before and after)"
                f"{seen}: {why}.", fix)

    if p.kind == "dpo" and algorithm == "DPO" and isinstance(d.get("heldout_accuracy"), (int, float)):
        acc = d["heldout_accuracy"]
        falling = d.get("chosen_logps")
        fell = (f"; the log-probability of the chosen answers fell ({falling[0]:.1f} -> {falling[1]:.1f}), so the "
                "margin grew by pushing both answers down" if falling and falling[1] < falling[0] else "")
        if acc >= PAIRS_RANKED and status == "no gain":
            return (f"DPO learned to rank its held-out pairs (accuracy {acc:.2f}) but that did not change what the "
                    f"model generates{fell}.",
                    f"raise {_steps(d)} or {_now(d, 'train.lr')}, or lower {_now(d, 'beta')} so the policy may "
                    "move further from its reference; `data.preferred` in the sft recipe adds "
                    "the preferred answers' likelihood before DPO.")
        if acc < RM_WEAK:
            return (f"DPO did not learn to rank its held-out pairs (accuracy {acc:.2f}; chance is 0.50).",
                    f"raise {_steps(d)} or {_now(d, 'train.lr')}; check that the chosen "
                    "answers of the pairs really follow the policies.")
    if algorithm == "KTO":
        chosen, rejected = d.get("rewards_chosen"), d.get("rewards_rejected")
        if isinstance(chosen, (int, float)) and isinstance(rejected, (int, float)) and chosen <= rejected:
            return (f"KTO did not separate good from bad held-out examples (rewards chosen {chosen:+.3f}, "
                    f"rejected {rejected:+.3f}).",
                    f"raise {_steps(d)} or {_now(d, 'train.lr')}; balance "
                    "`kto_desirable_weight` / `kto_undesirable_weight` when one kind outnumbers the other.")

    kl = d.get("kl")
    if p.kind == "ppo" and status == "regressed" and isinstance(kl, (int, float)) and kl >= LARGE_KL:
        return (f"the policy drifted far from its start (KL {kl:.1f} nats per answer at the end of training).",
                f"lower {_now(d, 'train.lr')} and raise {_now(d, 'kl_coef')}.")
    if p.kind == "dpo" and status == "regressed" and d.get("chosen_logps") \
            and d["chosen_logps"][1] < d["chosen_logps"][0]:
        a, b = d["chosen_logps"]
        return (f"the log-probability of the chosen answers fell ({a:.1f} -> {b:.1f}): the update pushed the "
                "preferred answers down along with the rejected ones.",
                f"lower {_now(d, 'train.lr')} and raise {_now(d, 'beta')}.")

    head = (v["rm"] or {}).get("vs_start") or {}
    if p.kind == "ppo" and head.get("status") == "learned":
        return (f"the reward model prefers its answers (per-prompt win rate over {start} {head['win_rate']:.2f}) "
                "but the policy checks do not: PPO optimised what the reward model rewards, which is not what the "
                "policies check.",
                f"add preference pairs that differ in the rules that fail and retrain the reward model; raise "
                f"{_now(d, 'kl_coef')}{_rule_reward(d)}.")

    if p.kind == "sft":
        loss = d.get("train_loss")
        if loss and status == "no gain" and loss[1] > loss[0] * (1 - LOSS_BARELY_FELL):
            return (f"its training loss barely fell ({loss[0]:.3f} -> {loss[1]:.3f}).",
                    f"raise {_now(d, 'train.lr')} or {_steps(d)}.")
        if status == "regressed":
            return ("SFT moved the model away from the policies: its data may break them, or it overfit.",
                    f"check the SFT answers against the policies; lower {_now(d, 'train.lr')} or {_steps(d)}.")
        return ("SFT moved the model too little to show on the checks.",
                f"raise {_steps(d)} or {_now(d, 'train.lr')}.")

    leash = _now(d, "beta") if p.kind == "dpo" else _now(d, "kl_coef")
    if status == "regressed":
        return ("the update hurt more than it taught.", f"lower {_now(d, 'train.lr')} and raise {leash}.")
    return (f"the phase moved the policy too little to show on {n} held-out prompts.",
            f"raise {_steps(d)} or {_now(d, 'train.lr')}"
            + (f"; a lower {leash} lets it move further from its reference." if p.kind == "dpo" else "."))


# --------------------------------------------------------------------------------------------- run folder


def phase_diagnostics(phase_dir: Path, kind: str) -> dict[str, Any]:
    """What a phase's folder says about its training: resolved config, final metrics, RM diagnostics."""
    import yaml

    d: dict[str, Any] = {}
    config_file = phase_dir / "config.yaml"
    if config_file.exists():
        d["config"] = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    rows = read_metrics(phase_dir / "metrics.jsonl")

    def series(key: str) -> list[float]:
        return [r[key] for r in rows if isinstance(r.get(key), (int, float))]

    def tail_mean(key: str, k: int = 10) -> float | None:
        values = series(key)[-k:]  # the end of training, not its start
        return _mean(values) if values else None

    if kind == "sft":
        loss = series("train/loss")
        if len(loss) >= 2:
            d["train_loss"] = [loss[0], tail_mean("train/loss", 5)]
    elif kind == "dpo":
        # TRL's KTO logs a KL estimate; our DPO logs none
        d["algorithm"] = "KTO" if series("eval/kl") or series("kl") else "DPO"
        acc = series("eval/rewards/accuracies")
        if acc:
            d["heldout_accuracy"] = acc[-1]
        chosen = series("eval/logps/chosen")
        if len(chosen) >= 2:
            d["chosen_logps"] = [chosen[0], chosen[-1]]
        for key in ("chosen", "rejected"):
            values = series(f"eval/rewards/{key}")
            if values:
                d[f"rewards_{key}"] = values[-1]
    elif kind == "ppo":
        d["rollout_unfinished"] = tail_mean("rollout/unfinished")
        d["kl"] = tail_mean("objective/kl")
        advantage = (d.get("config") or {}).get("advantage")
        if advantage in _ESTIMATORS and advantage != "gae":
            d["algorithm"] = _ESTIMATORS[advantage]
        if series("rollout/informative_prompts"):
            d["informative_prompts"] = _mean(series("rollout/informative_prompts"))
        adherence = {k[len("adherence/"):]: max(series(k)) for k in {k for r in rows for k in r}
                     if k.startswith("adherence/") and series(k)}
        if adherence:
            d["rollout_adherence"] = adherence
        rm = (d.get("config") or {}).get("reward_model")
        if rm:
            for candidate in (Path(rm) / "diagnostics.json", Path(rm).parent / "diagnostics.json"):
                if candidate.exists():
                    d["reward_model_diagnostics"] = json.loads(candidate.read_text())
                    break
    return d


def run_verdicts(run_dir: Path, cfg: Any) -> tuple[list[dict[str, Any]], Path | None]:
    """Verdicts from the last eval phase that left a results.json (and that file), or ([], None)."""
    evals = [run_dir / s.name / "results.json" for s in cfg.phases if s.kind == "eval"]
    existing = [f for f in evals if f.exists()]
    if not existing:
        return [], None
    results = EvalReport.read(existing[-1])
    nodes = phase_graph(cfg)
    diagnostics = {n.name: phase_diagnostics(run_dir / n.name, n.kind) for n in nodes}
    evaluation = getattr(cfg, "evaluation", None)
    return learning_verdicts(results, nodes, diagnostics, getattr(evaluation, "max_new_tokens", None)), existing[-1]


def format_verdicts(verdicts: list[dict[str, Any]]) -> str:
    """The block printed at the end of `align run`: a heading and one line per phase."""
    if not verdicts:
        return ""
    lines = [f"Did learning work? (a change counts beyond {Z:g} standard errors of the per-prompt difference and "
             f"at least {MIN_NET} answers)"]
    width = max(len(v["status"]) for v in verdicts)
    for v in verdicts:
        text = v["summary"]
        if v["cause"]:
            text += f" Likely cause: {v['cause']} Try: {v['fix']}"
        if v["notes"]:
            text += " Also: " + " ".join(v["notes"])
        lines.append(f"  {v['status'].upper():<{width}}  {text}")
    return "\n".join(lines)
