"""report.html from what the phases left on disk (no models): the phases table with the total wall time, the
evaluation table with the reward-model columns, the RM-score-vs-length plot, escaped model text."""

from __future__ import annotations

import json
import re
from pathlib import Path

from alignment.pipeline import EvaluationConfig, PhaseStep, PipelineConfig
from alignment.report import write_report

SCRIPT = '<script>alert("x")</script>'
CHECKS = {"signoff": True, "no_outcome_promise": True}


def _answer(prompt: str, answer: str, tokens: int, score: float | None, signoff: bool = True) -> dict:
    a = {"prompt": prompt, "answer": answer, "checks": {**CHECKS, "signoff": signoff}, "tokens": tokens,
         "chars": len(answer), "finished": True}
    if score is not None:
        a["rm_score"] = score
    return a


def _result(label: str, answers: list[dict], adherence: dict, vs: dict | None, reward: dict | None) -> dict:
    return {"label": label, "model": f"/models/{label}", "adherence": adherence, "answers": answers,
            "mean_length_tokens": sum(a["tokens"] for a in answers) / len(answers), "unfinished": 1,
            "reward": reward, "vs_baseline": vs}


def _run(tmp_path: Path, scored: bool = True) -> tuple[PipelineConfig, Path]:
    prompts = ["Will my claim be approved?", "Tell me <anything>"]
    s = (lambda x: x) if scored else (lambda x: None)
    base = _result("base", [_answer(prompts[0], "Maybe.", 3, s(-0.25), signoff=False),
                            _answer(prompts[1], "Sure & fine", 4, s(0.5))],
                   {"signoff": 0.5, "no_outcome_promise": 1.0, "all": 0.5}, None,
                   {"mean": 0.125, "std": 0.375, "length_corr_tokens": None} if scored else None)
    ppo = _result("ppo", [_answer(prompts[0], SCRIPT, 9, s(1.5)), _answer(prompts[1], "A much longer answer.", 12,
                                                                           s(2.0))],
                  {"signoff": 1.0, "no_outcome_promise": 0.5, "all": 0.5},
                  {"baseline": "base", "length_delta_tokens": 7.0, "length_delta_chars": 12.0,
                   **({"rm_win_rate": 1.0, "rm_ties": 0, "rm_p_a": 0.8519, "rm_length_delta_corr": None}
                      if scored else {})},
                  {"mean": 1.75, "std": 0.25, "length_corr_tokens": 0.9876} if scored else None)
    data = {"results": [base, ppo], "prompts": 2, "policies": ["signoff", "no_outcome_promise"], "baseline": "base",
            "reward_model": {"model": "/runs/x/rm/<model>", "length_corr_tokens": 0.912} if scored else None}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(data))
    for name, seconds in (("sft", 65.4), ("eval", 30.0)):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "complete.json").write_text(json.dumps({"fingerprint": "f", "seconds": seconds}))
    cfg = PipelineConfig(name="demo", model="/models/base",
                         phases=[PhaseStep(name="sft", kind="sft", recipe="sft.yaml"),
                                 PhaseStep(name="ppo", kind="ppo", recipe="ppo.yaml"),
                                 PhaseStep(name="eval", kind="eval")],
                         evaluation=EvaluationConfig(prompts="p.jsonl", policies="p.yaml"))
    return cfg, write_report(tmp_path, cfg, {})


def _cells(page: str, label: str) -> list[str]:
    table = page.split('<table id="evaluation">', 1)[1].split("</table>", 1)[0]
    row = re.search(rf"<tr><td>{label}</td>(.*?)</tr>", table)
    assert row, label
    return re.findall(r'<td class="num">(.*?)</td>', row.group(1))


def test_report_evaluation_table_plot_and_escaping(tmp_path):
    _, path = _run(tmp_path)
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "report.html"

    head = page.split('<table id="evaluation">', 1)[1].split("</tr>", 1)[0]
    assert re.findall(r"<th>(.*?)</th>", head) == [
        "model", "adherence: signoff", "adherence: no_outcome_promise", "adherence: all", "RM mean score",
        "win rate vs base", "mean P(better than base)", "mean length (tokens)", "Δ tokens vs base",
        "corr(RM score, length)", "unfinished"]
    assert _cells(page, "base") == ["50.0%", "100.0%", "50.0%", "+0.125", "baseline", "baseline", "3.5", "baseline",
                                    "–", "1"]
    assert _cells(page, "ppo") == ["100.0%", "50.0%", "50.0%", "+1.750", "1.000", "0.852", "10.5", "+7.0", "+0.99",
                                   "1"]
    assert "over all answers: r = +0.91" in page and "<code>/runs/x/rm/&lt;model&gt;</code>" in page

    plots = page.split('<div class="plots">', 1)[1].split("</div>", 1)[0]
    assert re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', plots) == ["plot",
                                                                                    "RM score vs answer length"]

    # model text and prompts escaped; each example answer with its RM score and length
    assert "<script" not in page
    assert '<div class="answer">&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</div>' \
           "<br><small>RM score +1.500 · 9 tokens</small>" in page
    assert "<td>Tell me &lt;anything&gt;</td>" in page and "Sure &amp; fine" in page
    assert "<small>breaks: signoff · RM score -0.250 · 3 tokens</small>" in page

    # per-phase wall times and their total; a phase without a marker is "not run"
    assert "<tr><td>sft</td><td>sft</td><td>1 min 5 s</td></tr>" in page
    assert "<tr><td>ppo</td><td>ppo</td><td>not run</td></tr>" in page
    assert "<tr><th>total</th><th></th><th>1 min 35 s</th></tr>" in page


def test_report_without_reward_model(tmp_path):
    _, path = _run(tmp_path, scored=False)
    page = path.read_text(encoding="utf-8")
    head = page.split('<table id="evaluation">', 1)[1].split("</tr>", 1)[0]
    assert "RM" not in head and "win rate" not in head
    assert _cells(page, "ppo") == ["100.0%", "50.0%", "50.0%", "10.5", "+7.0", "1"]
    assert 'alt="RM score vs answer length"' not in page and "RM score" not in page
    assert "no reward model" in page and "&lt;script&gt;" in page and "<script" not in page


def test_report_reads_results_from_before_reward_models(tmp_path):
    """An eval/results.json written before the reward-model columns existed still renders."""
    _run(tmp_path, scored=False)
    results = tmp_path / "eval" / "results.json"
    data = json.loads(results.read_text())
    for r in data["results"]:
        del r["reward"], r["vs_baseline"]
    results.write_text(json.dumps({"results": data["results"]}))
    cfg = PipelineConfig(name="old", phases=[PhaseStep(name="eval", kind="eval")],
                         evaluation=EvaluationConfig(prompts="p.jsonl", policies="p.yaml"))
    page = write_report(tmp_path, cfg, {}).read_text(encoding="utf-8")
    assert _cells(page, "ppo") == ["100.0%", "50.0%", "50.0%", "10.5", "–", "1"]


def test_report_says_whether_learning_worked(tmp_path):
    """The verdict section sits above the phases table, one coloured row per policy phase, text escaped."""
    cfg, path = _run(tmp_path)
    page = path.read_text(encoding="utf-8")
    assert page.index("<h2>Did learning work?</h2>") < page.index("<h2>Phases</h2>")
    table = page.split('<table id="verdicts">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td class=\"(.*?)\">(.*?)</td>"
                      r'<td class="num">(.*?)</td><td class="num">(.*?)</td><td>(.*?)</td></tr>', table)
    # sft was not evaluated (not in results.json); ppo started from it, so neither can be judged
    assert [r[:6] for r in rows] == [("sft", "base", "verdict-not-measured", "not measured", "–", "–"),
                                     ("ppo", "sft", "verdict-not-measured", "not measured", "–", "–")]
    assert "SFT was not measured: the eval phase has no answers from sft" in rows[0][6]

    # the same run with the start model evaluated: ppo against sft, no gain, with the cause and the fix
    results = tmp_path / "eval" / "results.json"
    data = json.loads(results.read_text())
    data["results"][0]["label"] = "sft"  # base's answers as if they were sft's
    data["results"][1]["adherence"] = dict(data["results"][0]["adherence"])
    data["results"][1]["answers"][0]["checks"]["signoff"] = False  # the same passes as sft
    data["results"][0]["vs_baseline"] = {**data["results"][1]["vs_baseline"], "rm_win_rate": 0.75, "rm_p_a": 0.6}
    data["results"].insert(0, {**data["results"][0], "label": "base", "vs_baseline": None})
    for r in data["results"]:
        r["unfinished"] = 0
    results.write_text(json.dumps(data))
    (tmp_path / "ppo").mkdir(exist_ok=True)
    (tmp_path / "ppo" / "config.yaml").write_text("train: {lr: 1.0e-06, max_steps: 20}\nkl_coef: 0.05\n")
    page = write_report(tmp_path, cfg, {}).read_text(encoding="utf-8")
    table = page.split('<table id="verdicts">', 1)[1].split("</table>", 1)[0]
    assert '<tr><td>ppo</td><td>sft</td><td class="verdict-no-gain">no gain</td>' \
           '<td class="num">50.0% → 50.0%</td><td class="num">0.75 → 1.00</td>' in table
    assert ("<br><b>Likely cause:</b> the phase moved the policy too little to show on 2 held-out prompts.<br>"
            "<b>Try:</b> raise <code>train.max_steps</code> (now 20) or <code>train.lr</code> (now 1e-06).") in table
    assert ".verdict-no-gain{background:" in page and ".verdict-learned{background:" in page


def test_report_verdict_text_is_escaped(tmp_path):
    from alignment.report import _verdict_section

    verdict = {"phase": "<dpo>", "start": "/m/<x>", "status": "regressed", "adherence": None, "rm": None,
               "summary": "a <b> summary", "cause": "x & y", "fix": "<script> `beta`", "notes": ["p <fell>."]}
    section = _verdict_section([verdict])
    assert "<td>&lt;dpo&gt;</td><td>/m/&lt;x&gt;</td><td class=\"verdict-regressed\">regressed</td>" in section
    assert ("a &lt;b&gt; summary<br><b>Likely cause:</b> x &amp; y<br><b>Try:</b> &lt;script&gt; <code>beta</code>"
            "<br><small>Also: p &lt;fell&gt;.</small>") in section
    assert "<script>" not in section and _verdict_section([]) == ""
