"""Did learning work? Verdicts per policy phase from hand-made eval results (no models): the paired noise rule
and its threshold, learned / no gain / regressed / not measured, the likely causes the diagnostics support, the
phase graph, what is read from the phase folders, and the block `align run` prints at the end."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from alignment.pipeline import EvaluationConfig, PhaseStep, PipelineConfig, _finish
from alignment.verdict import (
    PhaseNode,
    format_verdicts,
    learning_verdicts,
    phase_diagnostics,
    phase_graph,
    run_verdicts,
)

SFT, DPO, PPO = PhaseNode("sft", "sft", "base"), PhaseNode("dpo", "dpo", "sft"), PhaseNode("ppo", "ppo", "sft")


def _first(k: int, n: int = 40) -> list[bool]:
    return [i < k for i in range(n)]


def _model(label: str, signoff: list[bool], promise: list[bool] | None = None, *, scores: list[float] | None = None,
           unfinished: int = 0, win: float | None = None, p_a: float | None = None) -> dict:
    """An eval result as `_run_eval_phase` writes it, from per-prompt passes of two policies."""
    promise = promise if promise is not None else [True] * len(signoff)
    answers = [{"prompt": f"q{i}", "answer": "a", "checks": {"signoff": s, "no_promise": p}, "tokens": 10,
                "chars": 20, "finished": True} for i, (s, p) in enumerate(zip(signoff, promise))]
    if scores is not None:
        for a, s in zip(answers, scores):
            a["rm_score"] = s
    n = len(answers)
    vs = None if label == "base" else {"baseline": "base", "length_delta_tokens": 0.0}
    if vs is not None and win is not None:
        vs.update({"rm_win_rate": win, "rm_p_a": p_a})
    return {"label": label, "model": f"/m/{label}", "answers": answers, "unfinished": unfinished,
            "mean_length_tokens": 10.0, "vs_baseline": vs,
            "reward": {"mean": statistics.mean(scores)} if scores is not None else None,
            "adherence": {"signoff": sum(signoff) / n, "no_promise": sum(promise) / n,
                          "all": sum(s and p for s, p in zip(signoff, promise)) / n}}


def _results(*models: dict) -> dict:
    scored = any(m["reward"] for m in models)
    return {"results": list(models), "prompts": len(models[0]["answers"]), "policies": ["signoff", "no_promise"],
            "baseline": "base", "reward_model": {"model": "/m/rm"} if scored else None}


def _by_phase(verdicts: list[dict]) -> dict[str, dict]:
    return {v["phase"]: v for v in verdicts}


def test_learned_with_the_paired_noise_band():
    verdicts = learning_verdicts(_results(_model("base", _first(10)), _model("sft", _first(30))), [SFT])
    (v,) = verdicts
    assert v["status"] == "learned" and v["start"] == "base" and v["prompts"] == 40
    diffs = [float(i < 30) - float(i < 10) for i in range(40)]
    noise = 2 * statistics.stdev(diffs) / math.sqrt(40)
    overall = v["adherence"]["all"]
    assert overall["method"] == "paired" and overall["noise"] == pytest.approx(noise)
    counts = (overall["before"], overall["after"], overall["before_count"], overall["after_count"])
    assert counts == (0.25, 0.75, 10, 30)
    assert v["summary"] == (f"SFT raised held-out adherence over the base model (25.0% -> 75.0%, +50.0 pp; "
                            f"noise ±{100 * noise:.1f} pp on 40 prompts).")
    assert v["cause"] is None and v["fix"] is None and v["rm"] is None  # no reward model in this eval


def test_a_policy_that_moved_against_the_verdict_is_named():
    results = _results(_model("base", _first(0)), _model("sft", _first(40), _first(35)))
    (v,) = learning_verdicts(results, [SFT])
    assert v["status"] == "learned" and v["adherence"]["no_promise"]["status"] == "regressed"
    assert v["notes"] == ["adherence to no_promise fell 100.0% -> 87.5%."]
    assert format_verdicts([v]).endswith(" Also: adherence to no_promise fell 100.0% -> 87.5%.")


@pytest.mark.parametrize(("after", "status"), [(24, "learned"), (23, "no gain"), (17, "no gain"), (16, "regressed")])
def test_the_threshold_is_two_standard_errors_of_the_per_prompt_difference(after, status):
    """66 prompts, every other answer unchanged: 4 prompts gained (or lost) count, 3 do not."""
    results = _results(_model("base", _first(20, 66)), _model("sft", _first(after, 66)))
    assert learning_verdicts(results, [SFT])[0]["status"] == status


def test_a_change_of_fewer_than_three_answers_never_counts():
    """Every prompt moved the same way: the standard error is 0, so only the floor of 3 answers decides."""
    assert learning_verdicts(_results(_model("base", _first(0, 2)), _model("sft", _first(2, 2))),
                             [SFT])[0]["status"] == "no gain"
    assert learning_verdicts(_results(_model("base", _first(0, 3)), _model("sft", _first(3, 3))),
                             [SFT])[0]["status"] == "learned"
    assert learning_verdicts(_results(_model("base", _first(3, 3)), _model("sft", _first(0, 3))),
                             [SFT])[0]["status"] == "regressed"


def test_without_per_answer_checks_the_binomial_error_is_used():
    results = _results(_model("base", _first(10)), _model("sft", _first(16)))
    for r in results["results"]:
        for a in r["answers"]:
            del a["checks"]
    overall = learning_verdicts(results, [SFT])[0]["adherence"]["all"]
    assert overall["method"] == "binomial"
    assert overall["noise"] == pytest.approx(2 * math.sqrt(0.25 * 0.75 / 40 + 0.4 * 0.6 / 40))
    assert overall["status"] == "no gain"  # +15 pp, but the unpaired band is ±20 pp; paired it would count


def test_dpo_no_gain_with_pairs_learned_names_steps_lr_and_beta():
    sft = _first(27, 66)
    dpo = [*sft]
    dpo[0] = dpo[1] = False  # two prompts lost, two gained: the same rate
    dpo[40] = dpo[41] = True
    diagnostics = {"dpo": {"algorithm": "DPO", "heldout_accuracy": 0.92, "chosen_logps": [-40.0, -55.5],
                           "config": {"train": {"lr": 5e-7, "max_steps": -1, "epochs": 1.0}, "beta": 0.1}}}
    verdicts = learning_verdicts(_results(_model("base", _first(5, 66)), _model("sft", sft), _model("dpo", dpo)),
                                 [SFT, DPO], diagnostics)
    v = _by_phase(verdicts)["dpo"]
    assert v["status"] == "no gain" and v["start"] == "sft"
    assert v["summary"].startswith("DPO did not raise held-out adherence over SFT (40.9% -> 40.9%, within noise: ±")
    assert v["summary"].endswith(" pp on 66 prompts).")
    assert v["cause"] == ("DPO learned to rank its held-out pairs (accuracy 0.92) but that did not change what the "
                          "model generates; the log-probability of the chosen answers fell (-40.0 -> -55.5), so the "
                          "margin grew by pushing both answers down.")
    for key in ("`train.epochs` (now 1.0)", "`train.lr` (now 5e-07)", "`beta` (now 0.1)", "`data.preferred`"):
        assert key in v["fix"]
    # the same phase whose pairs were not learned gets another cause
    diagnostics["dpo"]["heldout_accuracy"] = 0.52
    v = _by_phase(learning_verdicts(_results(_model("base", _first(5, 66)), _model("sft", sft), _model("dpo", dpo)),
                                    [SFT, DPO], diagnostics))["dpo"]
    assert v["cause"] == "DPO did not learn to rank its held-out pairs (accuracy 0.52; chance is 0.50)."


def test_ppo_regressed_with_large_kl_or_without():
    config = {"train": {"lr": 1e-5, "max_steps": 40}, "kl_coef": 0.05, "generation": {"max_new_tokens": 128}}
    results = _results(_model("base", _first(5)), _model("sft", _first(30)), _model("ppo", _first(10)))
    v = _by_phase(learning_verdicts(results, [SFT, PPO], {"ppo": {"kl": 9.25, "config": config}}))["ppo"]
    assert v["status"] == "regressed"
    assert v["summary"].startswith("PPO lowered held-out adherence below SFT (75.0% -> 25.0%, -50.0 pp; noise ±")
    assert v["cause"] == "the policy drifted far from its start (KL 9.2 nats per answer at the end of training)."
    assert v["fix"] == "lower `train.lr` (now 1e-05) and raise `kl_coef` (now 0.05)."
    v = _by_phase(learning_verdicts(results, [SFT, PPO], {"ppo": {"kl": 2.0, "config": config}}))["ppo"]
    assert v["cause"] == "the update hurt more than it taught."
    assert v["fix"] == "lower `train.lr` (now 1e-05) and raise `kl_coef` (now 0.05)."


def test_ppo_with_many_unfinished_answers():
    config = {"generation": {"max_new_tokens": 64}}
    results = _results(_model("base", _first(5)), _model("sft", _first(20)), _model("ppo", _first(21)))
    v = _by_phase(learning_verdicts(results, [SFT, PPO], {"ppo": {"rollout_unfinished": 0.6, "config": config}},
                                    eval_max_new_tokens=128))["ppo"]
    assert v["status"] == "no gain"
    assert v["cause"].startswith("60% of its training rollouts stopped at the token limit unfinished")
    assert v["fix"] == ("raise `generation.max_new_tokens` in the ppo recipe (now 64; try 128), and "
                        "`evaluation.max_new_tokens` (now 128) if held-out answers are cut too.")
    # no rollout metrics, but the held-out answers are cut: the same rule, from the eval
    results["results"][2]["unfinished"] = 30
    v = _by_phase(learning_verdicts(results, [SFT, PPO], {"ppo": {"config": config}}))["ppo"]
    assert v["cause"].startswith("30 of 40 held-out answers stopped at the token limit unfinished")
    # few unfinished: not the cause
    results["results"][2]["unfinished"] = 3
    v = _by_phase(learning_verdicts(results, [SFT, PPO], {"ppo": {"rollout_unfinished": 0.1, "config": config}}))["ppo"]
    assert "token limit" not in v["cause"]


def test_ppo_never_samples_the_preferred_behaviour():
    never = [False] * 40
    results = _results(_model("base", _first(5), never), _model("sft", _first(38), never),
                       _model("ppo", _first(39), never))
    diagnostics = {"ppo": {"rollout_adherence": {"signoff": 0.9, "no_promise": 0.0}}}
    v = _by_phase(learning_verdicts(results, [SFT, PPO], diagnostics))["ppo"]
    assert v["status"] == "no gain" and v["adherence"]["all"]["after"] == 0.0
    assert v["cause"] == ("no held-out answer of SFT or of this phase follows no_promise (0 of 40 before and after); "
                          "its training rollouts never passed no_promise either: on-policy RL can only reinforce "
                          "what the policy samples.")
    assert "`data.preferred` in the sft recipe" in v["fix"]


def test_group_estimator_whose_answers_all_scored_alike():
    """RLOO with 4 answers per prompt: when most groups scored alike, the verdict says why nothing was learned."""
    config = {"advantage": "rloo", "num_generations": 4, "generation": {"temperature": 0.7}}
    results = _results(_model("base", _first(5)), _model("sft", _first(30)), _model("rules", _first(31)))
    rules = PhaseNode("rules", "ppo", "sft")
    d = {"rules": {"algorithm": "RLOO", "informative_prompts": 0.1, "config": config}}
    v = _by_phase(learning_verdicts(results, [SFT, rules], d))["rules"]
    assert v["status"] == "no gain" and v["algorithm"] == "RLOO"
    assert v["summary"].startswith("rules (RLOO) ")
    assert v["cause"] == ("in only 10% of its rollout prompts did the 4 sampled answers score differently; RLOO "
                          "compares the answers to one prompt, so the rest taught nothing.")
    assert v["fix"] == ("raise `num_generations` (now 4) or `generation.temperature` (now 0.7), or set "
                        "`dynamic_sampling: true` (fresh prompts replace those whose answers all scored alike).")
    d["rules"]["informative_prompts"] = 0.6  # enough signal: another cause
    assert "scored differently" not in _by_phase(learning_verdicts(results, [SFT, rules], d))["rules"]["cause"]


def test_ceiling_and_weak_reward_model():
    results = _results(_model("base", _first(5)), _model("sft", _first(39)), _model("ppo", _first(39)))
    v = _by_phase(learning_verdicts(results, [SFT, PPO]))["ppo"]
    assert v["cause"] == ("SFT already passed 97.5% of the checks: there was almost nothing left to teach on them.")
    results = _results(_model("base", _first(5)), _model("sft", _first(20)), _model("ppo", _first(20)))
    diagnostics = {"ppo": {"reward_model_diagnostics": {"accuracy": 0.55, "pairs": 80, "fit_for_ppo": False}}}
    v = _by_phase(learning_verdicts(results, [SFT, PPO], diagnostics))["ppo"]
    assert v["cause"].startswith("the reward model PPO trained against ranks only 55% of its 80 held-out pairs")
    assert v["fix"].startswith("fix the reward model first")
    assert v["fix"].endswith("; or add the policy checks to the reward: `rule_reward_weight` (e.g. 1.0, with "
                             "`policies` set to the policies file) in the ppo recipe.")
    diagnostics["ppo"]["config"] = {"rule_reward_weight": 0.5, "policies": "p.yaml"}
    v = _by_phase(learning_verdicts(results, [SFT, PPO], diagnostics))["ppo"]
    assert v["fix"].endswith("then run PPO again.")  # the rule reward is on already
    diagnostics["ppo"].pop("config")
    verdict = "accuracy 0.90 on 80 held-out pairs; length bias high. It rewards length: PPO would learn to ramble."
    diagnostics = {"ppo": {"reward_model_diagnostics": {"accuracy": 0.9, "pairs": 80, "verdict": verdict}}}
    v = _by_phase(learning_verdicts(results, [SFT, PPO], diagnostics))["ppo"]
    assert v["cause"].startswith("the reward model PPO trained against rewards length (its diagnostics: accuracy 0.90")
    diagnostics["ppo"]["reward_model_diagnostics"]["verdict"] = "accuracy 0.90 on 80 held-out pairs. Fit for PPO."
    v = _by_phase(learning_verdicts(results, [SFT, PPO], diagnostics))["ppo"]
    assert "reward model" not in v["cause"]  # a sound reward model is not blamed


def test_reward_model_numbers_before_and_after():
    base = _model("base", _first(10), scores=[0.0] * 40)
    sft = _model("sft", _first(30), scores=[1.0] * 40, win=1.0, p_a=0.731)
    dpo = _model("dpo", _first(30), scores=[1.0] * 20 + [2.0] * 20, win=1.0, p_a=0.8)
    verdicts = _by_phase(learning_verdicts(_results(base, sft, dpo), [SFT, DPO]))
    rm = verdicts["sft"]["rm"]
    assert rm["win_rate_vs_base"] == {"before": 0.5, "after": 1.0}  # base against itself ties everywhere
    assert rm["p_better_vs_base"] == {"before": 0.5, "after": 0.731}
    assert rm["vs_start"]["win_rate"] == 1.0 and rm["vs_start"]["status"] == "learned"
    assert verdicts["sft"]["summary"].endswith(" RM win rate vs base 0.50 -> 1.00, mean P(better) 0.50 -> 0.73.")
    dpo_rm = verdicts["dpo"]["rm"]
    assert dpo_rm["win_rate_vs_base"] == {"before": 1.0, "after": 1.0}
    assert dpo_rm["vs_start"]["win_rate"] == 0.75  # 20 wins and 20 ties against SFT
    # adherence flat, the reward model clearly prefers DPO: said beside the verdict
    assert verdicts["dpo"]["status"] == "no gain"
    assert verdicts["dpo"]["notes"] == ["The reward model prefers its answers to those of SFT (per-prompt win rate "
                                        "0.75): it measures something the policy checks do not."]
    assert verdicts["sft"]["notes"] == []  # both judges agree


def test_reward_model_decides_when_there_are_no_policies():
    base = _model("base", _first(0), scores=[0.0] * 40)
    sft = _model("sft", _first(0), scores=[1.0] * 40, win=1.0, p_a=0.731)
    for r in (base, sft):
        r["adherence"] = {}
        for a in r["answers"]:
            a["checks"] = {}
    (v,) = learning_verdicts(_results(base, sft), [SFT])
    assert v["status"] == "learned" and v["adherence"] is None
    assert v["summary"].startswith("SFT: the reward model prefers its answers to those of the base model "
                                   "(per-prompt win rate 1.00,")
    for a in sft["answers"][:30]:
        a["rm_score"] = -1.0  # 30 losses, 10 wins
    (v,) = learning_verdicts(_results(base, sft), [SFT])
    assert v["status"] == "regressed" and v["cause"] is not None
    assert v["summary"].startswith("SFT: the reward model prefers the answers of the base model to its own "
                                   "(per-prompt win rate 0.25,")
    for r in (base, sft):
        r["reward"], r["vs_baseline"] = None, None
        for a in r["answers"]:
            del a["rm_score"]
    (v,) = learning_verdicts(_results(base, sft), [SFT])
    assert v["status"] == "not measured" and "neither policies nor a reward model" in v["summary"]


def test_missing_phases_are_not_measured():
    results = _results(_model("base", _first(10)), _model("sft", _first(30)))
    verdicts = _by_phase(learning_verdicts(results, [SFT, DPO]))
    assert verdicts["sft"]["status"] == "learned"
    assert verdicts["dpo"]["status"] == "not measured" and verdicts["dpo"]["adherence"] is None
    assert verdicts["dpo"]["summary"] == ("DPO was not measured: the eval phase has no answers from dpo (list the "
                                          "eval phase after it in the pipeline).")
    outside = PhaseNode("sft", "sft", "/models/other")
    (v,) = learning_verdicts(results, [outside])
    assert v["status"] == "not measured" and "no answers from /models/other" in v["summary"]
    assert learning_verdicts({"results": []}, [SFT])[0]["status"] == "not measured"


def test_phase_graph_follows_the_pipeline_chain():
    cfg = PipelineConfig(model="/models/base", phases=[
        PhaseStep("sft", "sft", "sft.yaml"), PhaseStep("rm", "rm", "rm.yaml"),
        PhaseStep("ppo", "ppo", "ppo.yaml", {"reward_model": "@rm"}),
        PhaseStep("dpo", "dpo", "dpo.yaml", {"model": "@sft"}), PhaseStep("dpo2", "dpo", "dpo.yaml"),
        PhaseStep("fresh", "dpo", "dpo.yaml", {"model": "/models/base"}),
        PhaseStep("other", "dpo", "dpo.yaml", {"model": "/models/other"}), PhaseStep("eval", "eval")],
        evaluation=EvaluationConfig(prompts="p.jsonl", policies="p.yaml"))
    assert [(n.name, n.kind, n.start) for n in phase_graph(cfg)] == [
        ("sft", "sft", "base"), ("ppo", "ppo", "sft"), ("dpo", "dpo", "sft"), ("dpo2", "dpo", "dpo"),
        ("fresh", "dpo", "base"), ("other", "dpo", "/models/other")]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_phase_diagnostics_read_from_the_phase_folders(tmp_path):
    _jsonl(tmp_path / "sft" / "metrics.jsonl", [{"step": i, "train/loss": 3.0 - 0.1 * i} for i in range(10)])
    assert phase_diagnostics(tmp_path / "sft", "sft")["train_loss"] == [3.0, pytest.approx(2.3)]  # last 5 averaged

    _jsonl(tmp_path / "dpo" / "metrics.jsonl", [
        {"step": 1, "train/loss": 0.69}, {"step": 5, "eval/rewards/accuracies": 0.6, "eval/logps/chosen": -40.0},
        {"step": 10, "eval/rewards/accuracies": 0.9, "eval/logps/chosen": -52.0, "eval/rewards/chosen": 0.1,
         "eval/rewards/rejected": -0.4}])
    (tmp_path / "dpo" / "config.yaml").write_text("beta: 0.1\ntrain:\n  lr: 5.0e-07\n")
    d = phase_diagnostics(tmp_path / "dpo", "dpo")
    assert d["algorithm"] == "DPO" and d["heldout_accuracy"] == 0.9 and d["chosen_logps"] == [-40.0, -52.0]
    assert d["config"] == {"beta": 0.1, "train": {"lr": 5e-7}} and d["rewards_rejected"] == -0.4
    _jsonl(tmp_path / "kto" / "metrics.jsonl", [{"step": 4, "eval/kl": 0.2, "eval/rewards/chosen": 0.1}])
    assert phase_diagnostics(tmp_path / "kto", "dpo")["algorithm"] == "KTO"

    rows = [{"step": i, "rollout/unfinished": 1.0 if i < 5 else 0.5, "objective/kl": float(i),
             "adherence/signoff": 0.0, "adherence/no_promise": 0.1 * (i % 3)} for i in range(15)]
    _jsonl(tmp_path / "ppo" / "metrics.jsonl", rows)
    (tmp_path / "ppo" / "config.yaml").write_text(f"reward_model: {tmp_path / 'rm' / 'model'}\n")
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "diagnostics.json").write_text(json.dumps({"accuracy": 0.97, "pairs": 80}))
    d = phase_diagnostics(tmp_path / "ppo", "ppo")
    assert d["rollout_unfinished"] == 0.5 and d["kl"] == pytest.approx(9.5)  # the last 10 steps
    assert d["rollout_adherence"] == {"signoff": 0.0, "no_promise": pytest.approx(0.2)}
    assert d["reward_model_diagnostics"] == {"accuracy": 0.97, "pairs": 80}
    assert phase_diagnostics(tmp_path / "missing", "ppo") == {"rollout_unfinished": None, "kl": None}
    _jsonl(tmp_path / "rules" / "metrics.jsonl", [{"step": 1, "rollout/informative_prompts": 0.25},
                                                  {"step": 2, "rollout/informative_prompts": 0.75}])
    (tmp_path / "rules" / "config.yaml").write_text("advantage: rloo\nnum_generations: 4\n")
    d = phase_diagnostics(tmp_path / "rules", "ppo")
    assert d["algorithm"] == "RLOO" and d["informative_prompts"] == 0.5


def test_format_verdicts_one_line_per_phase():
    results = _results(_model("base", _first(10)), _model("sft", _first(30)), _model("dpo", _first(30)))
    text = format_verdicts(learning_verdicts(results, [SFT, DPO, PPO]))
    lines = text.splitlines()
    assert lines[0].startswith("Did learning work?") and len(lines) == 4
    assert lines[1].startswith("  LEARNED       SFT raised held-out adherence over the base model (25.0% -> 75.0%")
    assert "Likely cause" not in lines[1]
    assert lines[2].startswith("  NO GAIN       DPO did not raise held-out adherence over SFT (75.0% -> 75.0%: not "
                               "one of 40 prompts changed between pass and fail).")
    assert " Likely cause: the phase moved the policy too little to show on 40 held-out prompts. Try: " in lines[2]
    assert lines[3].startswith("  NOT MEASURED  PPO was not measured")
    assert format_verdicts([]) == ""


def _fake_run(tmp_path: Path) -> PipelineConfig:
    """A finished sft -> dpo pipeline on disk: markers, a DPO metrics file and the eval results."""
    for name in ("sft", "dpo", "eval"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "complete.json").write_text(json.dumps({"fingerprint": "f", "seconds": 3.0}))
    _jsonl(tmp_path / "dpo" / "metrics.jsonl", [{"step": 8, "eval/rewards/accuracies": 0.95}])
    results = _results(_model("base", _first(10)), _model("sft", _first(30)), _model("dpo", _first(30)))
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results))
    return PipelineConfig(name="demo", model="/m/base", output_dir=str(tmp_path),
                          phases=[PhaseStep("sft", "sft", "sft.yaml"), PhaseStep("dpo", "dpo", "dpo.yaml"),
                                  PhaseStep("eval", "eval")],
                          evaluation=EvaluationConfig(prompts="p.jsonl", policies="p.yaml"))


def test_align_run_prints_the_verdicts_and_stores_them(tmp_path, capsys):
    cfg = _fake_run(tmp_path)
    report = _finish(tmp_path, cfg, {"sft": 0.0, "dpo": 0.0, "eval": 0.0})
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-1] == f"[pipeline] report: {report}" and lines[-2] == "[pipeline] total: 0 s"
    block = lines[:-5]
    assert block[0] == "" and block[1].startswith("[pipeline] Did learning work?")
    assert block[2].startswith("[pipeline]   LEARNED  SFT raised held-out adherence over the base model")
    assert block[3].startswith("[pipeline]   NO GAIN  DPO did not raise held-out adherence over SFT (75.0% -> 75.0%")
    assert "Likely cause: DPO learned to rank its held-out pairs (accuracy 0.95)" in block[3]
    stored = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert stored["verdicts"] == run_verdicts(tmp_path, cfg)[0]
    assert [v["status"] for v in stored["verdicts"]] == ["learned", "no gain"]
    assert "Did learning work?" in report.read_text()


def test_no_eval_phase_no_verdicts(tmp_path, capsys):
    cfg = _fake_run(tmp_path)
    (tmp_path / "eval" / "results.json").unlink()
    assert run_verdicts(tmp_path, cfg) == ([], None)
    _finish(tmp_path, cfg, {"sft": 1.0})
    out = capsys.readouterr().out
    assert "Did learning work?" not in out and "Did learning work?" not in (tmp_path / "report.html").read_text()
