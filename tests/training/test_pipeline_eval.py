"""The pipeline's eval phase judged by a reward model: `evaluation.reward_model` (auto, @phase, a path, none),
scores and win rates against base in eval/results.json, caching of answers and scores, and the report."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import pytest

from alignment.cli import main
from alignment.evaluation.judge import bt_preferences, mean, pearson, win_rate
from alignment.pipeline import EvaluationConfig, PhaseStep, PipelineConfig, _run_eval_phase
from alignment.report import _num, write_report
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart"
POLICIES = QUICKSTART / "policies.yaml"
PROMPTS = ["If I report the burst pipe today, will the claim be approved?",
           "How soon would I get money after filing a claim?",
           "Can you change my address?",
           "What is my deductible for <b>glass</b> damage?",
           "Do you need my social security number?"]


@pytest.fixture()
def prompts_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])


def _results(eval_dir: Path) -> dict:
    return json.loads((eval_dir / "results.json").read_text())


def test_eval_phase_scores_with_a_reward_model_and_caches(tmp_path, tiny_model_dir, real_model_dir, tiny_rm_dir,
                                                          prompts_file, capsys):
    """A model against itself ties on every prompt (win rate and P(better) exactly 1/2), a different model's
    numbers recompute from its answers' scores; answers are cached per model and the scores per reward model,
    so a changed reward model rescores without generating again."""
    cfg = PipelineConfig(output_dir=str(tmp_path), model=str(tiny_model_dir),
                         phases=[PhaseStep(name="eval", kind="eval")],
                         evaluation=EvaluationConfig(prompts=str(prompts_file), policies=str(POLICIES),
                                                     max_new_tokens=6, batch_size=4, reward_model=str(tiny_rm_dir)))
    eval_dir = tmp_path / "eval"
    models = {"base": str(tiny_model_dir), "copy": str(tiny_model_dir), "smol": str(real_model_dir)}
    _run_eval_phase(cfg, eval_dir, models, str(tiny_rm_dir))
    out = capsys.readouterr().out
    assert "eval: base" in out and "eval: copy" in out and "scoring every answer" in out
    for column in ("RM mean", "RM win", "RM P(A)", "r(RM,len)", "Δtokens"):
        assert column in out
    data = _results(eval_dir)
    assert data["reward_model"]["model"] == str(tiny_rm_dir)
    assert data["baseline"] == {"label": "base", "model": str(tiny_model_dir)}  # the shape `align eval` writes
    assert data["prompts"] == len(PROMPTS)
    base, copy, smol = data["results"]
    assert base["vs_baseline"] is None
    for r in (base, copy, smol):
        scores = [a["rm_score"] for a in r["answers"]]
        assert r["reward"]["mean"] == pytest.approx(mean(scores))
        assert r["reward"]["length_corr_tokens"] == pearson(scores, [a["tokens"] for a in r["answers"]])
    assert [a["rm_score"] for a in copy["answers"]] == [a["rm_score"] for a in base["answers"]]
    vs = copy["vs_baseline"]
    assert vs["baseline"] == "base" and vs["rm_win_rate"] == 0.5 and vs["rm_p_a"] == 0.5
    assert vs["rm_ties"] == len(PROMPTS) and vs["length_delta_tokens"] == 0.0
    assert "RM win" in (eval_dir / "table.txt").read_text()
    # SmolLM2 answers differently: its numbers recompute from the per-answer scores
    assert all(a["answer"] for a in smol["answers"])
    a_scores, b_scores = ([a["rm_score"] for a in r["answers"]] for r in (smol, base))
    vs = smol["vs_baseline"]
    assert vs["rm_win_rate"] == win_rate(a_scores, b_scores)
    assert vs["rm_p_a"] == pytest.approx(mean(bt_preferences(a_scores, b_scores)))
    assert [a["rm_p_a"] for a in smol["answers"]] == pytest.approx(bt_preferences(a_scores, b_scores))
    assert vs["length_delta_tokens"] == pytest.approx(
        mean([a["tokens"] - b["tokens"] for a, b in zip(smol["answers"], base["answers"])]))

    # The report: the table's numbers are the results' numbers, every answer escaped with its RM score.
    page = write_report(tmp_path, cfg, {}).read_text()
    assert _row(page, "smol")[-7:] == [f"{smol['reward']['mean']:+.3f}", f"{vs['rm_win_rate']:.3f}",
                                       f"{vs['rm_p_a']:.3f}", f"{smol['mean_length_tokens']:.1f}",
                                       f"{vs['length_delta_tokens']:+.1f}",
                                       _num(smol["reward"]["length_corr_tokens"], "+.2f"), str(smol["unfinished"])]
    assert _row(page, "copy")[-7:-4] == [f"{base['reward']['mean']:+.3f}", "0.500", "0.500"]
    for a in smol["answers"]:
        assert f'{html.escape(a["answer"])}</div><br><small>' in page and f"RM score {a['rm_score']:+.3f}" in page

    # Nothing changed: no generation and no scoring, the same numbers.
    _run_eval_phase(cfg, eval_dir, models, str(tiny_rm_dir))
    out = capsys.readouterr().out
    assert "eval: base" not in out and "scoring" not in out and "RM win" in out
    assert _results(eval_dir) == data

    # The reward model's weights changed: the answers come from the cache, the scores are recomputed.
    weights = next(tiny_rm_dir.glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, (stat.st_atime, stat.st_mtime + 10))  # as if retrained
    try:
        _run_eval_phase(cfg, eval_dir, models, str(tiny_rm_dir))
    finally:
        os.utime(weights, (stat.st_atime, stat.st_mtime))
    out = capsys.readouterr().out
    assert "eval: base" not in out and "eval: copy" not in out and "scoring every answer" in out
    assert _results(eval_dir)["results"][1]["vs_baseline"]["rm_win_rate"] == 0.5

    # No reward model: policies and lengths only, answers still cached, except answers cached by an older
    # version without per-answer lengths, which are generated again.
    cached = json.loads((eval_dir / "base.json").read_text())
    for a in cached["answers"]:
        del a["tokens"], a["chars"]
    (eval_dir / "base.json").write_text(json.dumps(cached))
    cfg.evaluation.reward_model = None
    _run_eval_phase(cfg, eval_dir, models, None)
    out = capsys.readouterr().out
    assert "eval: base" in out and "eval: copy" not in out and "RM mean" not in out and "Δtokens" in out
    data = _results(eval_dir)
    assert data["reward_model"] is None
    assert all(r["reward"] is None and "rm_score" not in r["answers"][0] for r in data["results"])
    assert data["results"][1]["vs_baseline"] == {"baseline": "base", "length_delta_tokens": 0.0,
                                                 "length_delta_chars": 0.0}


def _pipeline(tmp_path: Path, model: Path, sft_file: Path, prefs: Path, prompts: Path) -> Path:
    common = {"train.bf16": "false", "tracking.backends": ["none"], "train.batch_size": 4}
    recipe = {
        "name": "tiny", "output_dir": str(tmp_path / "runs"), "model": str(model),
        "phases": [
            {"name": "sft", "kind": "sft", "recipe": str(QUICKSTART / "sft.yaml"),
             "overrides": {**common, "data.train": str(sft_file), "data.max_length": 96, "train.max_steps": 2,
                           "train.lr": 3e-3}},
            {"name": "rm", "kind": "rm", "recipe": str(QUICKSTART / "rm.yaml"),
             "overrides": {**common, "data.train": str(prefs), "data.max_length": 64, "train.max_steps": 2}},
            {"name": "eval", "kind": "eval"},
        ],
        "evaluation": {"prompts": str(prompts), "policies": str(POLICIES), "max_new_tokens": 6, "batch_size": 8},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(recipe))
    return path


def _row(page: str, label: str) -> list[str]:
    """The cells of the evaluation table's row for ``label``."""
    table = page.split('<table id="evaluation">', 1)[1].split("</table>", 1)[0]
    row = re.search(rf"<tr><td>{re.escape(label)}</td>(.*?)</tr>", table)
    assert row, label
    return re.findall(r'<td class="num">(.*?)</td>', row.group(1))


def test_pipeline_auto_uses_the_rm_phase_and_the_report_shows_it(tmp_path, tiny_model_dir, sft_file,
                                                                  toy_preferences, prompts_file, capsys):
    path = _pipeline(tmp_path, tiny_model_dir, sft_file, toy_preferences, prompts_file)
    runs = tmp_path / "runs"
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "RM mean" in out and "RM win" in out
    lines = out.strip().splitlines()
    assert lines[-1] == f"[pipeline] report: {runs / 'report.html'}"
    assert lines[-2].startswith("[pipeline] total: ") and lines[-2].endswith(" s")
    assert [ln.split(":")[0] for ln in lines[-5:-2]] == ["[pipeline] sft", "[pipeline] rm", "[pipeline] eval"]

    data = _results(runs / "eval")
    assert data["reward_model"]["model"] == str(runs / "rm" / "model")  # "auto" found the rm phase
    # did learning work: SFT against base, printed above the wall times and stored with the results
    (verdict,) = data["verdicts"]
    assert (verdict["phase"], verdict["start"], verdict["prompts"]) == ("sft", "base", len(PROMPTS))
    assert verdict["status"] in ("learned", "no gain", "regressed")
    assert verdict["rm"]["win_rate_vs_base"] == {"before": 0.5,
                                                 "after": data["results"][1]["vs_baseline"]["rm_win_rate"]}
    # the verdict, then a privacy line per phase and the curation lines, then the wall times
    head = next(i for i, ln in enumerate(lines) if ln.startswith("[pipeline] Did learning work?"))
    assert [ln.split(":")[0] for ln in lines[head + 2:-5]] == [
        "[pipeline] privacy", "[pipeline] curation", "[pipeline] privacy"]
    assert lines[head + 1] == f"[pipeline]   {verdict['status'].upper()}  " + verdict["summary"] + (
        f" Likely cause: {verdict['cause']} Try: {verdict['fix']}" if verdict["cause"] else "") + (
        " Also: " + " ".join(verdict["notes"]) if verdict["notes"] else "")
    base, sft = data["results"]
    assert [base["label"], sft["label"]] == ["base", "sft"] and base["vs_baseline"] is None
    a_scores, b_scores = ([a["rm_score"] for a in r["answers"]] for r in (sft, base))
    assert sft["vs_baseline"]["rm_win_rate"] == win_rate(a_scores, b_scores)
    assert sft["vs_baseline"]["rm_p_a"] == pytest.approx(mean(bt_preferences(a_scores, b_scores)))

    page = (runs / "report.html").read_text()
    assert '<table id="verdicts"><tr>' in page and f'<td class="verdict-{verdict["status"].replace(" ", "-")}">' in page
    head = page.split('<table id="evaluation">', 1)[1].split("</tr>", 1)[0]
    for column in ("adherence: signoff", "RM mean score", "win rate vs base", "mean P(better than base)",
                   "mean length (tokens)", "corr(RM score, length)"):
        assert f"<th>{column}</th>" in head
    names = list(sft["adherence"])
    for r in (base, sft):
        vs = r["vs_baseline"] or {}
        corr = r["reward"]["length_corr_tokens"]
        expected = [f"{100 * r['adherence'][n]:.1f}%" for n in names] + [f"{r['reward']['mean']:+.3f}"]
        expected += (["baseline", "baseline"] if r is base else [f"{vs['rm_win_rate']:.3f}", f"{vs['rm_p_a']:.3f}"])
        expected += [f"{r['mean_length_tokens']:.1f}",
                     "baseline" if r is base else f"{vs['length_delta_tokens']:+.1f}",
                     "–" if corr is None else f"{corr:+.2f}", str(r["unfinished"])]
        assert _row(page, r["label"]) == expected
    assert page.count("data:image/png;base64") >= 4  # sft and rm curves, rm diagnostics, adherence, RM vs length
    assert 'alt="RM score vs answer length"' in page
    for r in (base, sft):  # every example answer shows its reward-model score
        for a in r["answers"]:
            assert f'{html.escape(a["answer"])}</div><br><small>' in page
            assert f"RM score {a['rm_score']:+.3f}" in page
    assert html.escape(PROMPTS[3]) in page and PROMPTS[3] not in page  # the prompt's <b> is escaped
    assert re.search(r"<tr><th>total</th><th></th><th>\d+ s</th></tr>", page)

    # Switched off: the eval phase runs again from cached answers, without the reward model.
    assert main(["run", str(path), "evaluation.reward_model=none"]) == 0
    out = capsys.readouterr().out
    assert "sft: complete, skipped" in out and "rm: complete, skipped" in out
    assert "eval: base" not in out and "scoring" not in out and "RM mean" not in out
    assert _results(runs / "eval")["reward_model"] is None
    page = (runs / "report.html").read_text()
    assert "RM mean score" not in page and 'alt="RM score vs answer length"' not in page
    assert "adherence: signoff" in page

    # Back on, as an explicit reference to the rm phase: answers and scores come from the caches.
    assert main(["run", str(path), "evaluation.reward_model=@rm"]) == 0
    out = capsys.readouterr().out
    assert "eval: base" not in out and "scoring" not in out and "RM win" in out
    assert _results(runs / "eval") == data
    # "auto" names the same model as "@rm": the eval phase is complete
    assert main(["run", str(path)]) == 0
    assert "eval: complete, skipped" in capsys.readouterr().out


def test_reward_model_setting_errors(tmp_path, tiny_model_dir, sft_file, toy_preferences, prompts_file, capsys):
    path = _pipeline(tmp_path, tiny_model_dir, sft_file, toy_preferences, prompts_file)
    cases = [
        ("evaluation.reward_model=@sft", "'@sft' names no `rm` phase of this pipeline (rm phases: rm)"),
        ("evaluation.reward_model=@nope", "'@nope' names no `rm` phase"),
        (f"evaluation.reward_model={tmp_path / 'missing'}", "field 'evaluation.reward_model'"),
        (f"evaluation.reward_model={tiny_model_dir}", "not a reward model"),
        ("evaluation.reward_modle=auto", "did you mean 'evaluation.reward_model'"),
    ]
    for override, message in cases:
        assert main(["run", str(path), override]) == 2, override
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (override, err)
    assert not (tmp_path / "runs" / "sft").exists()  # refused before any phase ran

    data = json.loads(path.read_text())
    data["phases"] = [data["phases"][0], data["phases"][2], data["phases"][1]]  # rm after eval
    path.write_text(json.dumps(data))
    assert main(["run", str(path), "evaluation.reward_model=@rm"]) == 2
    assert "runs after the eval phase" in capsys.readouterr().err


def test_reward_model_setting_is_parsed(tmp_path):
    from alignment.pipeline import load_pipeline

    path = tmp_path / "p.yaml"
    path.write_text("phases:\n  - {name: rm, kind: rm, recipe: rm.yaml}\n  - {name: eval, kind: eval}\n"
                    "evaluation: {prompts: x.jsonl, policies: p.yaml}\n")
    assert load_pipeline(path, []).evaluation.reward_model == "auto"
    assert load_pipeline(path, ["evaluation.reward_model=none"]).evaluation.reward_model is None
    assert load_pipeline(path, ["evaluation.reward_model=null"]).evaluation.reward_model is None
    assert load_pipeline(path, ["evaluation.reward_model=@rm"]).evaluation.reward_model == "@rm"
    (tmp_path / "my_rm").mkdir()
    assert load_pipeline(path, ["evaluation.reward_model=my_rm"]).evaluation.reward_model == str(tmp_path / "my_rm")
