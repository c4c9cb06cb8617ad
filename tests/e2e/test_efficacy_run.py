"""benchmarks/efficacy/run.py: per-domain pipelines differ only in data paths, the content rates and the
report are right, and a --quick run on a tiny model produces a table with every row."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from alignment.config import load_config
from alignment.phases import PHASES
from alignment.pipeline import load_pipeline
from benchmarks.efficacy import run
from benchmarks.efficacy.domains import write_domain

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes" / "domain"


def test_domain_pipelines_differ_only_in_data_paths(tmp_path: Path):
    pipelines = {}
    for name in ("bank", "travel"):
        data = write_domain(name, tmp_path / name / "data")
        raw = run.domain_pipeline(RECIPES, data, tmp_path / "out", None, quick=False)
        path = tmp_path / name / "pipeline.yaml"
        path.write_text(yaml.safe_dump(raw))
        cfg = load_pipeline(path, [])  # the framework accepts it
        assert [p.kind for p in cfg.phases] == ["sft", "rm", "ppo", "dpo", "ppo"]  # eval left to the suite
        for step in cfg.phases:
            phase = load_config(PHASES[step.kind].config, step.recipe, step.overrides)
            assert Path(phase.data.train).parent == data and Path(phase.data.train).exists()
            if step.kind == "ppo":
                assert Path(phase.policies) == data / "policies.yaml"
            if step.name == "rules":  # the rules are the whole reward: no reward model, no critic
                assert (phase.reward_model, phase.critic, phase.advantage) == ("", "none", "rloo")
                assert phase.rule_reward_weight > 0 and step.overrides["model"] == "@sft"
        assert cfg.evaluation.policies == str(data / "policies.yaml")
        pipelines[name] = json.dumps(raw).replace(str(data), "DATA")
    assert pipelines["bank"] == pipelines["travel"]
    recipe = yaml.safe_load((RECIPES / "pipeline.yaml").read_text())
    dpo = next(p for p in yaml.safe_load(pipelines["bank"])["phases"] if p["kind"] == "dpo")
    assert dpo["overrides"] == {**next(p for p in recipe["phases"] if p["kind"] == "dpo")["overrides"],
                                "data.train": "DATA/prefs.jsonl"}


def test_content_rates():
    content = {"heldout": [{"facts": {"a": "refill", "b": "prescriber"}}, {"facts": {"a": "fridge"}}]}
    rates = run.content_rates(["Use the REFILL tab; we ask your prescriber.", "Keep it cool."], content)
    assert rates == {"content": 0.5, "facts": 0.5}
    rates = run.content_rates(["Use the refill tab.", "In the fridge."], content)
    assert rates == {"content": 0.5, "facts": 0.75}
    with pytest.raises(ValueError):
        run.content_rates(["one answer"], content)


def test_child_progress_is_echoed_and_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]):
    script = ("import sys\n"
              "print('[sft] data: 96 examples')\n"
              "print('noise that stays in the log')\n"
              "sys.stdout.write('sft:  40%|####      | 10/25 [01:02<01:33,  6.20s/it]\\r')\n"
              "sys.exit(3)\n")
    monkeypatch.setattr(run, "PROGRESS_EVERY", 0.0)
    log = tmp_path / "logs" / "child.log"
    rc = run.run_child([sys.executable, "-c", script], log, timeout=60, env=dict(os.environ), tag="it ours")
    assert rc == 3
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["[efficacy] it ours [sft] data: 96 examples",
                       "[efficacy] it ours sft: 10/25 [01:02<01:33,  6.20s/it]"]
    assert "noise that stays in the log" in log.read_text()


def _row(all_rate: float) -> dict:
    return {"ok": True, "adherence": {"opening_line": 0.5, "no_hype_words": 0.25, "all": all_rate},
            "content": 0.8, "facts": 0.9, "mean_length_tokens": 60.0, "unfinished": 1, "seconds": 12.0}


def test_report_has_every_row_and_failures():
    domain = {"rules": ["opening_line", "no_hype_words"], "sizes": {"sft": 120, "prefs": 200, "heldout": 50},
              "models": {m: _row(0.1) for m in run.MODELS},
              "ours": {"ok": True, "phases": {"sft": 100.0, "rm": 50.0, "ppo": 40.0, "dpo": 60.0,
                                                  "rules": 30.0}},
              "trl": {"ok": False, "phases": {"sft": 300.0}, "error": "ValueError: boom (log: x)"}}
    domain["models"]["trl-dpo"] = {"ok": False, "error": "evaluation failed: OSError: no model"}
    report = {"date": "2026-12-01 18:00 UTC", "machine": {"cpu": "CPU X", "cpu_flags": ["avx512_bf16"], "cores": 2},
              "recipes": "recipes/domain", "model": "m", "quick": False, "eval": {"max_new_tokens": 128},
              "domains": {"pharmacy": domain}, "notes": ["a note"]}
    text = run.render_markdown(report)
    table = text.split("## pharmacy")[1]
    for title in run.TITLES.values():
        assert f"| {title} |" in table
    assert "| DPO | 10.0% | 50.0% | 25.0% | 80.0% | 90.0% | 60 | 1 | dpo 60 s | 12 |" in table
    assert "| RM+PPO | 10.0% |" in table and "rm 50 s + ppo 40 s" in table
    assert "| rules RLOO | 10.0% | 50.0% | 25.0% | 80.0% | 90.0% | 60 | 1 | rules 30 s | 12 |" in table
    assert "| TRL SFT+DPO | evaluation failed: OSError: no model |" in table
    assert "trl: ValueError: boom" in table
    assert "CPU X (avx512_bf16), 2 cores" in text and "2026-12-01 18:00 UTC" in text
    # summary: the failed row has no mean
    assert "| TRL SFT+DPO | - | - | - | - |" in text
    assert "| base | 10.0% | 10.0% | 80.0% | 80.0% |" in text


def test_merge_writes_one_table_from_several_runs(tmp_path: Path):
    def report(date: str, domain: str, adherence: float, cpu: str = "CPU X") -> Path:
        row = {"rules": ["opening_line", "no_hype_words"], "sizes": {"sft": 1, "prefs": 1, "heldout": 1},
               "models": {m: _row(adherence) for m in run.MODELS}, "ours": {"ok": True, "phases": {}},
               "trl": {"ok": True, "phases": {}}}
        path = tmp_path / f"{domain}-{cpu}.json"
        path.write_text(json.dumps({"date": date, "machine": {"cpu": cpu, "cores": 2}, "recipes": "recipes/domain",
                                    "model": "m", "quick": False, "eval": {"max_new_tokens": 128},
                                    "domains": {domain: row}, "notes": ["shared note"]}))
        return path

    first, second = report("2026-12-01 20:00 UTC", "bank", 0.5), report("2026-12-01 22:00 UTC", "travel", 0.9)
    out = tmp_path / "RESULTS.md"
    assert run.main(["--merge", str(first), str(second), "--out", str(out), "--note", "measured under load"]) == 0
    text = out.read_text()
    assert "## bank" in text and "## travel" in text
    every = ", ".join(run.TITLES[m] for m in run.MODELS)
    assert f"(rows from 2 runs: bank ({every}) on 2026-12-01 20:00 UTC; travel ({every}) on 2026-12-01 22:00 UTC)" \
        in text
    assert text.count("- shared note") == 1 and "- measured under load" in text
    assert "| model | bank all | travel all |" in text
    with pytest.raises(SystemExit, match="another machine"):
        run.main(["--merge", str(first), str(report("x", "it", 0.1, cpu="CPU Y")), "--out", str(out)])


def test_quick_run_produces_every_row(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "RESULTS.md"
    argv = ["--quick", "--domains", "it", "--model", str(tiny_model_dir), "--workdir", str(tmp_path / "w"),
            "--out", str(out)]
    assert run.main(argv) == 0
    printed = capsys.readouterr().out
    assert "[efficacy] it ours [pipeline] sft: sft from" in printed  # progress from the child processes
    assert "[efficacy] it trl [trl] dpo:" in printed
    text = out.read_text()
    table = text.split("## it:")[1]
    for title in run.TITLES.values():
        row = next(line for line in table.splitlines() if line.startswith(f"| {title} |"))
        assert row.count("%") == 6, row  # all rules, three rules, content, facts: a number in every column
    results = json.loads((tmp_path / "w" / "results.json").read_text())["domains"]["it"]
    assert set(results["models"]) == set(run.MODELS) and all(r["ok"] for r in results["models"].values())
    assert set(results["ours"]["phases"]) == {"sft", "rm", "ppo", "dpo", "rules"}
    assert set(results["trl"]["phases"]) == {"sft", "dpo"}
    answers = json.loads((tmp_path / "w" / "it" / "eval" / "dpo.json").read_text())["answers"]
    assert len(answers) == 40 and all("content" in a for a in answers)
    # a second run reuses the finished phases and the cached answers
    assert run.main(argv) == 0
    printed = capsys.readouterr().out
    assert "sft: complete, skipped" in printed and "[trl] dpo: complete, skipped" in printed
    assert "eval TRL SFT+DPO: cached" in printed
    # --seeds: the online RL phases once more from the same SFT and RM; nothing else retrains
    assert run.main([*argv, "--only", "ours", "--seeds", "7"]) == 0
    printed = capsys.readouterr().out
    assert "it: online RL phases with seed 7" in printed
    assert "[efficacy] it seed 7 [pipeline] rules: ppo from" in printed  # trained, from the first run's SFT
    seeds = json.loads((tmp_path / "w" / "results.json").read_text())["domains"]["it"]["seeds"]
    assert seeds["errors"] == [] and set(seeds["rows"]) == {"ppo", "rules"}
    assert all(set(by_seed) == {"42", "7"} for by_seed in seeds["rows"].values())
    seeded = yaml.safe_load((tmp_path / "w" / "it" / "ours-seed7" / "pipeline.yaml").read_text())
    assert [p["name"] for p in seeded["phases"]] == ["ppo", "rules"]
    assert (tmp_path / "w" / "it" / "ours-seed7" / "rules" / "model").is_dir()
    text = out.read_text()
    assert "| model | seed 42 | seed 7 |" in text and "| it |" in text


def test_merge_puts_a_later_runs_rows_over_an_earlier_runs(tmp_path: Path):
    """An --only trl run (or a recipe folder with one more phase) adds its rows to a full run's domain."""
    def domain(models: dict, ours: dict, trl: dict) -> dict:
        return {"rules": ["opening_line", "no_hype_words"], "sizes": {"sft": 1, "prefs": 1, "heldout": 1},
                "models": models, "ours": ours, "trl": trl}

    full = domain({"base": _row(0.0), "sft": _row(0.9), "dpo": _row(0.95)},
                  {"ok": True, "phases": {"sft": 100.0, "dpo": 60.0}, "models": {"sft": "s", "dpo": "d"}}, {})
    trl = domain({"base": _row(0.0), "trl-sft": _row(0.02)}, {},
                 {"ok": True, "phases": {"sft": 300.0}, "models": {"trl-sft": "t"}})
    rules = domain({"sft": _row(0.9), "rules": _row(1.0)},
                   {"ok": True, "phases": {"sft": 100.0, "rules": 30.0}, "models": {"sft": "s", "rules": "r"}}, {})
    paths = []
    for i, (date, d) in enumerate([("A", full), ("B", trl), ("C", rules)]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps({"date": date, "machine": {"cpu": "CPU X"}, "recipes": "r", "model": "m",
                                         "quick": False, "eval": {"max_new_tokens": 128}, "domains": {"bank": d},
                                         "notes": []}))
    merged = run.merge_reports(paths, [])
    bank = merged["domains"]["bank"]
    assert set(bank["models"]) == {"base", "sft", "dpo", "trl-sft", "rules"}
    assert bank["models"]["rules"]["adherence"]["all"] == 1.0 and bank["models"]["dpo"]["adherence"]["all"] == 0.95
    assert bank["ours"]["phases"] == {"sft": 100.0, "dpo": 60.0, "rules": 30.0}
    assert bank["ours"]["models"] == {"sft": "s", "dpo": "d", "rules": "r"}
    assert bank["trl"]["phases"] == {"sft": 300.0}
    assert [r["rows"] for r in merged["runs"]] == [["base", "sft", "dpo"], ["base", "trl-sft"], ["sft", "rules"]]
    table = run.render_markdown(merged)
    assert "bank (SFT, rules RLOO) on C" in table and "rules 30 s" in table


def test_seed_pipeline_reruns_online_rl_from_the_first_runs_models(tmp_path: Path):
    data = write_domain("it", tmp_path / "data")
    first = tmp_path / "ours"
    pipeline = run.domain_pipeline(RECIPES, data, first, None, quick=False)
    assert run.first_seeds(pipeline) == {"ppo": 42, "rules": 42}
    raw = run.seed_pipeline(pipeline, 7, first, tmp_path / "ours-seed7")
    path = tmp_path / "seed7.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_pipeline(path, [])  # the framework accepts it
    assert [(p.name, p.kind) for p in cfg.phases] == [("ppo", "ppo"), ("rules", "ppo")]
    assert cfg.output_dir == str(tmp_path / "ours-seed7")
    ppo, rules = (load_config(PHASES["ppo"].config, p.recipe, p.overrides) for p in cfg.phases)
    # both start from the first run's SFT model (ppo had no model override: it started from the current model)
    assert ppo.model == rules.model == str(first / "sft" / "model")
    assert ppo.reward_model == str(first / "rm" / "model") and rules.reward_model == ""
    assert ppo.train.seed == rules.train.seed == 7
    # nothing but the seed and the resolved references differs from the first run's phases
    for seeded, step in zip(raw["phases"], [p for p in pipeline["phases"] if p["kind"] == "ppo"]):
        changed = {k for k in seeded["overrides"] if seeded["overrides"][k] != step["overrides"].get(k)}
        assert changed <= {"model", "reward_model", "train.seed"}


def test_seed_spread_in_the_report_and_merge(tmp_path: Path):
    def domain(seeds: dict) -> dict:
        return {"rules": ["opening_line", "no_hype_words"], "sizes": {"sft": 1, "prefs": 1, "heldout": 1},
                "models": {m: _row(0.5) for m in run.MODELS}, "ours": {"ok": True, "phases": {}},
                "trl": {"ok": True, "phases": {}}, "seeds": seeds}

    first = domain({"rows": {"ppo": {"42": {"all": 0.9, "content": 0.3}, "1": {"all": 1.0, "content": 0.2}},
                             "rules": {"42": {"all": 0.975, "content": 0.35}}},
                    "errors": ["seed 2: align run failed (exit code 1; log: x)"]})
    later = domain({"rows": {"rules": {"1": {"all": 0.9, "content": 0.25}, "2": {"all": 0.9, "content": 0.3}}},
                    "errors": []})
    paths = []
    for i, d in enumerate([first, later]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps({"date": str(i), "machine": {"cpu": "CPU X"}, "recipes": "r", "model": "m",
                                         "quick": False, "eval": {"max_new_tokens": 128}, "domains": {"it": d},
                                         "notes": []}))
    text = run.render_markdown({**json.loads(paths[0].read_text()), "domains": {"it": first}})
    assert "| RM+PPO | 95.0% (90.0%-100.0%, 2) |" in text  # summary: mean (range, seeds)
    assert "| model | seed 42 | seed 1 | all rules: mean (range) | content: mean (range) |" in text
    assert "| RM+PPO | 90.0% / 30.0% | 100.0% / 20.0% | 95.0% (90.0%-100.0%) | 25.0% (20.0%-30.0%) |" in text
    assert "| rules RLOO | 97.5% / 35.0% | - | 97.5% (97.5%-97.5%) | 35.0% (35.0%-35.0%) |" in text
    assert "- seed 2: align run failed" in text
    merged = run.merge_reports(paths, [])["domains"]["it"]["seeds"]
    assert merged["rows"]["ppo"] == first["seeds"]["rows"]["ppo"]
    assert set(merged["rows"]["rules"]) == {"42", "1", "2"} and merged["errors"] == []
    assert "| rules RLOO | 92.5% (90.0%-97.5%, 3) |" in run.render_markdown(run.merge_reports(paths, []))


def test_seeds_argument_is_checked(capsys: pytest.CaptureFixture[str]):
    assert run.parse_args(["--seeds", "1, 2"]).seeds == [1, 2]
    assert run.parse_args([]).seeds == []
    for bad in ("1,x", "3,3"):
        with pytest.raises(SystemExit):
            run.parse_args(["--seeds", bad])
        assert "--seeds" in capsys.readouterr().err
