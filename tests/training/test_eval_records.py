"""Typed evaluation records and the one results.json shape: a lossless round trip, old files still read, and
`align eval --out` and a pipeline's eval phase writing the same shape through the same orchestrator, whose
cache reuses answers but checks them against today's rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.cli import main
from alignment.evaluation.records import (
    AnswerJudgement,
    AnswerRecord,
    BaselineRef,
    EvalReport,
    JudgeComparison,
    JudgeModelSummary,
    ModelResult,
    RewardComparison,
    RewardModelSummary,
    RewardSummary,
    VsBaseline,
)
from alignment.pipeline import EvaluationConfig, PhaseStep, PipelineConfig, _run_eval_phase
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "recipes" / "quickstart" / "policies.yaml"
PROMPTS = ["If I report the burst pipe today, will the claim be approved?", "Can you change my address?"]


def _full_report() -> EvalReport:
    """Every field set, on both sides of a comparison, plus keys the records do not know."""
    base = ModelResult(
        label="base", model="/m/base", role="baseline",
        answers=[AnswerRecord("q1", "Maybe.", {"signoff": False}, tokens=3, chars=6, finished=True, rm_score=-0.5,
                              extra={"content": {"deductible": True}})],
        adherence={"signoff": 0.0, "all": 0.0}, mean_length_tokens=3.0, mean_length_chars=6.0, unfinished=0,
        seconds=1.5, reward=RewardSummary(-0.5, 0.0, None, None))
    sft = ModelResult(
        label="sft", model="/m/sft", role="model",
        answers=[AnswerRecord("q1", "Sure. Regards", {"signoff": True}, tokens=4, chars=13, finished=False,
                              rm_score=0.5, rm_p_a=0.731, judge=AnswerJudgement(0.6, 0.3, 0.65))],
        adherence={"signoff": 1.0, "all": 1.0}, mean_length_tokens=4.0, mean_length_chars=13.0, unfinished=1,
        seconds=2.0, reward=RewardSummary(0.5, 0.0, None, None),
        vs_baseline=VsBaseline("base", 1.0, 7.0, rm=RewardComparison(1.0, 0, 0.731, None),
                               judge=JudgeComparison(0.65, 1.0, -0.05, 0.4, None)),
        extra={"content": 1.0})
    return EvalReport(results=[base, sft], prompts=1, policies=["signoff"], prompts_file="p.jsonl",
                      max_new_tokens=8, baseline=BaselineRef("base", "/m/base"),
                      reward_model=RewardModelSummary("/m/rm", 2, 0, 1.0),
                      judge_model=JudgeModelSummary("/m/judge", "{question}", ["1", "2"], "swap-averaged"),
                      verdicts=[{"phase": "sft", "status": "learned"}], extra={"note": "kept"})


def test_round_trip_is_lossless(tmp_path):
    report = _full_report()
    data = report.to_json()
    assert EvalReport.from_json(data) == report
    assert EvalReport.from_json(json.loads(json.dumps(data))).to_json() == data
    assert list(data)[:9] == ["results", "prompts", "prompts_file", "policies", "max_new_tokens", "baseline",
                              "reward_model", "judge_model", "verdicts"] and data["note"] == "kept"
    base, sft = data["results"]
    # the flat keys the report and the verdicts read
    assert sft["vs_baseline"] == {"baseline": "base", "length_delta_tokens": 1.0, "length_delta_chars": 7.0,
                                  "rm_win_rate": 1.0, "rm_ties": 0, "rm_p_a": 0.731, "rm_length_delta_corr": None,
                                  "judge_win_rate": 0.65, "judge_position_consistency": 1.0,
                                  "judge_order_bias": -0.05, "judge_label_mass": 0.4,
                                  "judge_length_delta_corr": None}
    assert sft["answers"][0]["judge"] == {"p_one_a_first": 0.6, "p_one_a_second": 0.3, "p_a": 0.65}
    # a judge's keys only where it judged: the baseline's answers have no rm_p_a and no judge verdict
    assert set(base["answers"][0]) == {"prompt", "answer", "checks", "tokens", "chars", "finished", "rm_score",
                                       "content"}
    assert base["vs_baseline"] is None and sft["content"] == 1.0

    # NaN is not JSON: written as null, read back as None
    report.results[1].reward.std = float("nan")
    path = report.write(tmp_path / "out" / "results.json")
    assert json.loads(path.read_text())["results"][1]["reward"]["std"] is None
    assert EvalReport.read(path).results[1].reward.std is None


def test_reads_the_old_pipeline_shape():
    """A pipeline's results.json from before the shapes were unified: the baseline named by its label, no roles,
    each result with its answer-cache key; and an older one yet, before reward models and answer lengths."""
    old = {
        "results": [
            {"model": "/m/base", "label": "base", "adherence": {"signoff": 0.5, "all": 0.5},
             "mean_length_tokens": 3.0, "mean_length_chars": 6.0, "unfinished": 0, "seconds": 1.0,
             "answers": [{"prompt": "q", "answer": "a", "checks": {"signoff": True}, "tokens": 3, "chars": 1,
                          "finished": True, "rm_score": 0.1}],
             "key": "abc", "vs_baseline": None, "reward": {"mean": 0.1, "std": 0.0, "length_corr_tokens": None,
                                                           "length_corr_chars": None}},
            {"model": "/m/sft", "label": "sft", "adherence": {"signoff": 1.0, "all": 1.0},
             "mean_length_tokens": 4.0, "mean_length_chars": 7.0, "unfinished": 0, "seconds": 1.0,
             "answers": [{"prompt": "q", "answer": "b", "checks": {"signoff": True}, "tokens": 4, "chars": 1,
                          "finished": True, "rm_score": 0.3, "rm_p_a": 0.55}],
             "key": "def", "vs_baseline": {"baseline": "base", "length_delta_tokens": 1.0, "length_delta_chars": 0.0,
                                           "rm_win_rate": 1.0, "rm_ties": 0, "rm_p_a": 0.55,
                                           "rm_length_delta_corr": None},
             "reward": {"mean": 0.3, "std": 0.0, "length_corr_tokens": None, "length_corr_chars": None}},
        ],
        "prompts": 1, "policies": ["signoff"], "baseline": "base",
        "reward_model": {"model": "/m/rm", "answers_scored": 2, "truncated": 0, "length_corr_tokens": None},
        "verdicts": [{"phase": "sft"}],
    }
    report = EvalReport.from_json(old)
    assert report.baseline == BaselineRef("base", "/m/base")
    assert [r.role for r in report.results] == ["baseline", "model"]
    assert report.prompts_file is None and report.max_new_tokens is None and report.judge_model is None
    assert report.results[1].vs_baseline.rm.win_rate == 1.0 and report.results[1].vs_baseline.judge is None
    assert report.verdicts == [{"phase": "sft"}]
    data = report.to_json()
    assert data["baseline"] == {"label": "base", "model": "/m/base"}
    assert data["results"][1]["vs_baseline"] == old["results"][1]["vs_baseline"]
    assert data["results"][0]["key"] == "abc"  # unknown keys survive a rewrite

    older = {"results": [{"model": "/m/base", "label": "base", "adherence": {"all": 1.0}, "mean_length_tokens": 2.0,
                          "unfinished": 0, "answers": [{"prompt": "q", "answer": "a", "checks": {"all": True}}]}]}
    report = EvalReport.from_json(older)
    assert report.baseline is None and report.prompts == 1 and report.results[0].reward is None
    answer = report.to_json()["results"][0]["answers"][0]
    assert answer == {"prompt": "q", "answer": "a", "checks": {"all": True}}  # no lengths made up


def _keys(data: dict) -> tuple:
    """Top-level, per-result and per-answer keys (and the shape of `baseline`) of a results.json."""
    results = data["results"]
    return (set(data), {frozenset(r) for r in results}, {frozenset(a) for r in results for a in r["answers"]},
            set(data["baseline"]), set(data["reward_model"]))


def test_align_eval_and_the_eval_phase_write_the_same_shape(tmp_path, tiny_model_dir, tiny_rm_dir, capsys,
                                                            monkeypatch):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    out = tmp_path / "cli" / "results.json"
    argv = ["eval", "--baseline", str(tiny_model_dir), "--model", str(tiny_model_dir), "--prompts", str(prompts),
            "--policies", str(POLICIES), "--reward-model", str(tiny_rm_dir), "--max-new-tokens", "5",
            "--batch-size", "2", "--out", str(out), "--cache", str(tmp_path / "cache")]
    assert main(argv) == 0
    cfg = PipelineConfig(output_dir=str(tmp_path), model=str(tiny_model_dir),
                         phases=[PhaseStep(name="eval", kind="eval")],
                         evaluation=EvaluationConfig(prompts=str(prompts), policies=str(POLICIES), max_new_tokens=5,
                                                     batch_size=2, reward_model=str(tiny_rm_dir)))
    _run_eval_phase(cfg, tmp_path / "eval", {"base": str(tiny_model_dir), "copy": str(tiny_model_dir)},
                    str(tiny_rm_dir))
    capsys.readouterr()
    cli, phase = json.loads(out.read_text()), json.loads((tmp_path / "eval" / "results.json").read_text())
    assert _keys(cli) == _keys(phase)
    assert cli["baseline"] == {"label": "baseline", "model": str(tiny_model_dir)}
    assert phase["baseline"] == {"label": "base", "model": str(tiny_model_dir)}
    assert (cli["max_new_tokens"], cli["prompts_file"]) == (phase["max_new_tokens"], phase["prompts_file"])
    assert [r["role"] for r in cli["results"]] == [r["role"] for r in phase["results"]] == ["baseline", "model"]
    # the same model, prompts and settings: the same answers, checks and scores whichever command asked
    for a, b in zip(cli["results"], phase["results"]):
        assert [(x["answer"], x["checks"], x["rm_score"]) for x in a["answers"]] == \
               [(x["answer"], x["checks"], x["rm_score"]) for x in b["answers"]]
        assert a["adherence"] == b["adherence"] and a["reward"] == b["reward"]
    assert cli["results"][1]["vs_baseline"]["rm_win_rate"] == phase["results"][1]["vs_baseline"]["rm_win_rate"] == 0.5

    # `align eval --cache` again: nothing generated, nothing scored, the same file
    import alignment.evaluation.judge as judge
    import alignment.evaluation.run as run

    def refuse(*args, **kwargs):
        raise AssertionError("answers or scores were not taken from the cache")

    monkeypatch.setattr(run, "evaluate_model", refuse)
    monkeypatch.setattr(judge, "judge_with_reward_model", refuse)
    before = out.read_text()
    assert main(argv) == 0
    assert out.read_text() == before


def test_the_cache_checks_cached_answers_against_todays_rules(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """Answers are cached by what they depend on (prompt content, settings, the model): an edited rules file
    re-checks the cached answers without generating, an edited prompts file generates again."""
    from alignment.evaluation import run
    from alignment.evaluation.adherence import load_prompts
    from alignment.evaluation.rules import load_rules

    prompts_file = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    rules = load_rules(POLICIES)
    models = {"base": str(tiny_model_dir)}
    first = run.evaluate(models, load_prompts(prompts_file), rules, baseline="base", max_new_tokens=4,
                         batch_size=2, cache_dir=tmp_path / "cache")
    assert set(first.results[0].answers[0].checks) == {r.name for r in rules}

    generated = []
    real = run.evaluate_model
    monkeypatch.setattr(run, "evaluate_model", lambda *a, **k: generated.append(a[0]) or real(*a, **k))
    fewer = rules[:1]
    again = run.evaluate(models, load_prompts(prompts_file), fewer, baseline="base", max_new_tokens=4,
                         batch_size=2, cache_dir=tmp_path / "cache")
    assert generated == []
    assert [a.answer for a in again.results[0].answers] == [a.answer for a in first.results[0].answers]
    assert set(again.results[0].answers[0].checks) == {fewer[0].name}
    assert set(again.results[0].adherence) == {fewer[0].name, "all"} and again.policies == [fewer[0].name]

    write_jsonl(prompts_file, [{"prompt": p + " Please."} for p in PROMPTS])  # same path, new content
    edited = run.evaluate(models, load_prompts(prompts_file), rules, baseline="base", max_new_tokens=4,
                          batch_size=2, cache_dir=tmp_path / "cache")
    assert generated == [str(tiny_model_dir)]
    assert [a.prompt for a in edited.results[0].answers] == [p + " Please." for p in PROMPTS]


def test_evaluate_refuses_a_baseline_it_does_not_have():
    from alignment.errors import AlignError
    from alignment.evaluation.run import evaluate

    with pytest.raises(ValueError, match="not one of the models"):
        evaluate({"a": "/m/a"}, [[{"role": "user", "content": "q"}]], [], baseline="b")
    with pytest.raises(AlignError, match="judge model"):
        evaluate({"a": "/m/a"}, [[{"role": "user", "content": "q"}]], [], judge_model="/m/j")
