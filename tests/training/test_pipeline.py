"""Pipelines on a tiny model: phases chain, complete phases are skipped, a killed phase resumes,
the eval table and the report are written, and `align run` takes a single phase recipe too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from alignment.cli import main
from alignment.tracking import read_metrics

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart"


def _pipeline(tmp_path: Path, model: Path, sft_file: Path) -> Path:
    recipe = {
        "name": "tiny", "output_dir": str(tmp_path / "runs"), "model": str(model),
        "phases": [
            {"name": "sft", "kind": "sft", "recipe": str(QUICKSTART / "sft.yaml"),
             "overrides": {"data.train": str(sft_file), "data.max_length": 96, "train.max_steps": 4,
                           "train.batch_size": 4, "train.save_every": 2, "train.eval_every": 2,
                           "train.lr": 3e-3, "train.bf16": "false", "tracking.backends": ["none"]}},
            {"name": "eval", "kind": "eval"},
        ],
        "evaluation": {"prompts": str(QUICKSTART / "data" / "heldout_prompts.jsonl"),
                       "policies": str(QUICKSTART / "policies.yaml"), "max_new_tokens": 6, "batch_size": 33},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(recipe))
    return path


def test_pipeline_runs_skips_and_resumes(tmp_path, tiny_model_dir, sft_file, capsys):
    path = _pipeline(tmp_path, tiny_model_dir, sft_file)
    runs = tmp_path / "runs"
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Policy adherence on 66 held-out prompts" in out
    results = json.loads((runs / "eval" / "results.json").read_text())["results"]
    assert [r["label"] for r in results] == ["base", "sft"]
    assert results[1]["model"] == str(runs / "sft" / "model")
    assert all(len(r["answers"]) == 66 for r in results)
    report = (runs / "report.html").read_text()
    assert "Policy adherence" in report and "data:image/png;base64" in report
    assert "<script" not in report
    # the quickstart's SFT recipe curates and scans for personal data: both in the report's data section
    assert '<table id="privacy">' in report and "<h3>Curation: sft</h3>" in report
    assert (runs / "sft" / "curation_clusters.png").exists() and (runs / "sft" / "data" / "pii.json").exists()
    assert "[pipeline] privacy: sft (data.pii: report)" in out and "[pipeline] curation: sft: kept" in out
    assert (runs / "sft" / "complete.json").exists()
    # the SFT model's card, written after training, carries the eval phase's table once it ran
    card = (runs / "sft" / "model" / "README.md").read_text()
    assert "# sft: sft model" in card and "## Evaluation" in card and "Policy adherence" not in card
    assert (runs / "eval" / "table.txt").read_text().strip().splitlines()[0] in card

    # Re-running skips both phases.
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sft: complete, skipped" in out and "eval: complete, skipped" in out

    # A phase killed after its step-2 checkpoint resumes from it, then eval runs again for it only.
    shutil.rmtree(runs / "sft" / "model")
    (runs / "sft" / "complete.json").unlink()
    (runs / "eval" / "complete.json").unlink()
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "step-2" in out
    assert [r["step"] for r in read_metrics(runs / "sft" / "metrics.jsonl") if "train/loss" in r] == [1, 2, 3, 4]
    assert "eval: base" not in out  # the base model's answers were cached
    assert "eval: sft" in out


def _sft_only_run(tmp_path: Path, model: Path, sft_file: Path, capsys) -> tuple[Path, dict]:
    """A pipeline of the SFT phase alone, run once (its output swallowed); returns its file and content."""
    path = _pipeline(tmp_path, model, sft_file)
    data = json.loads(path.read_text())
    data["phases"] = data["phases"][:1]
    path.write_text(json.dumps(data))
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    return path, data


def test_changed_recipe_reruns_phase(tmp_path, tiny_model_dir, sft_file, capsys):
    path, data = _sft_only_run(tmp_path, tiny_model_dir, sft_file, capsys)
    data["phases"][0]["overrides"]["train.lr"] = 1e-3
    path.write_text(json.dumps(data))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "skipped" not in out and "starting this phase afresh" in out


def test_a_retrained_earlier_phase_is_not_resumed_from_under_a_later_one(tmp_path, tiny_model_dir, sft_file,
                                                                          capsys):
    """The second phase was killed after a checkpoint; the first then retrains into the same folder (same
    path, same config for the second): the second must start from the new weights, not resume the old ones."""
    path, data = _sft_only_run(tmp_path, tiny_model_dir, sft_file, capsys)
    data["phases"].append({**data["phases"][0], "name": "sft2", "overrides": dict(data["phases"][0]["overrides"])})
    path.write_text(json.dumps(data))
    runs = tmp_path / "runs"
    assert main(["run", str(path)]) == 0
    assert "sft2: sft from " + str(runs / "sft" / "model") in capsys.readouterr().out
    shutil.rmtree(runs / "sft2" / "model")
    (runs / "sft2" / "complete.json").unlink()
    assert (runs / "sft2" / "checkpoints").exists()
    data["phases"][0]["overrides"]["train.lr"] = 1e-3
    path.write_text(json.dumps(data))

    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sft2: an earlier phase or its data changed since its checkpoints were written" in out
    assert "resumed from" not in out
    assert [r["step"] for r in read_metrics(runs / "sft2" / "metrics.jsonl") if "train/loss" in r] == [1, 2, 3, 4]
    # killed again, nothing upstream changed: now it resumes
    shutil.rmtree(runs / "sft2" / "model")
    (runs / "sft2" / "complete.json").unlink()
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sft: complete, skipped" in out and "resumed from" in out and "changed since" not in out


def _killed_after_a_checkpoint(runs: Path, phase: str) -> None:
    shutil.rmtree(runs / phase / "model")
    (runs / phase / "complete.json").unlink()
    assert (runs / phase / "checkpoints").exists()


def test_checkpoints_that_do_not_record_their_inputs_are_not_resumed(tmp_path, tiny_model_dir, sft_file, capsys):
    """A phase folder left by a version that wrote no started.json: its checkpoints cannot be checked, so the
    phase starts afresh; a completed run's checkpoints (complete.json under other inputs) neither."""
    path, data = _sft_only_run(tmp_path, tiny_model_dir, sft_file, capsys)
    runs = tmp_path / "runs"
    _killed_after_a_checkpoint(runs, "sft")
    (runs / "sft" / "started.json").unlink()
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sft: its checkpoints do not record what they were trained from" in out and "resumed from" not in out

    (runs / "sft" / "started.json").unlink()
    data["phases"][0]["overrides"]["data.max_length"] = 80  # other inputs; the config check alone would see it
    (runs / "sft" / "config.yaml").unlink()  # too, so only complete.json is left to tell
    path.write_text(json.dumps(data))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sft: its checkpoints are those of a run that completed on other inputs" in out
    assert "resumed from" not in out


def test_a_run_killed_while_starting_afresh_does_not_resume_the_old_checkpoints(tmp_path, tiny_model_dir, sft_file,
                                                                                 capsys, monkeypatch):
    """started.json records the new inputs before the phase trains: the old checkpoints must be gone by then,
    or a run killed before its first save would leave them under the new record, to be resumed next time."""
    from alignment import pipeline

    path, data = _sft_only_run(tmp_path, tiny_model_dir, sft_file, capsys)
    runs = tmp_path / "runs"
    data["phases"].append({**data["phases"][0], "name": "sft2", "overrides": dict(data["phases"][0]["overrides"])})
    path.write_text(json.dumps(data))
    assert main(["run", str(path)]) == 0
    _killed_after_a_checkpoint(runs, "sft2")
    data["phases"][0]["overrides"]["train.lr"] = 1e-3
    path.write_text(json.dumps(data))
    real = pipeline._run_training_phase

    def killed_in_sft2(kind, cfg, *args):
        if Path(cfg.output_dir).name == "sft2":
            raise KeyboardInterrupt
        real(kind, cfg, *args)

    monkeypatch.setattr(pipeline, "_run_training_phase", killed_in_sft2)
    try:
        main(["run", str(path)])
    except KeyboardInterrupt:
        pass
    assert not (runs / "sft2" / "checkpoints").exists()
    monkeypatch.setattr(pipeline, "_run_training_phase", real)
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sft: complete, skipped" in out and "sft2: sft from" in out and "resumed from" not in out


def test_a_change_of_train_resume_alone_keeps_a_killed_phase_s_progress(tmp_path, tiny_model_dir, sft_file, capsys):
    """How a run is told to resume is not what it learns: a phase started with resume: never, killed, then run
    with resume: auto resumes its own checkpoint."""
    path, data = _sft_only_run(tmp_path, tiny_model_dir, sft_file, capsys)
    runs = tmp_path / "runs"
    data["phases"][0]["overrides"]["train.resume"] = "never"
    path.write_text(json.dumps(data))
    assert main(["run", str(path)]) == 0
    _killed_after_a_checkpoint(runs, "sft")
    del data["phases"][0]["overrides"]["train.resume"]
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "afresh" not in out


def test_a_changed_tracking_section_does_not_retrain(tmp_path, tiny_model_dir, sft_file, capsys):
    """Where the metrics go is not part of what a phase learns: a new W&B project or group keeps the phase."""
    path, data = _sft_only_run(tmp_path, tiny_model_dir, sft_file, capsys)
    data["phases"][0]["overrides"].update({"tracking.project": "another", "tracking.group": "exp-2"})
    path.write_text(json.dumps(data))
    assert main(["run", str(path)]) == 0
    assert "sft: complete, skipped" in capsys.readouterr().out


def test_run_single_phase_recipe(tmp_path, tiny_model_dir, sft_file):
    out = tmp_path / "single"
    assert main(["run", str(QUICKSTART / "sft.yaml"), f"model={tiny_model_dir}", f"data.train={sft_file}",
                 f"output_dir={out}", "train.max_steps=2", "train.batch_size=2", "data.max_length=64",
                 "tracking.backends=[none]"]) == 0
    assert (out / "model" / "model.safetensors").exists()


def test_pipeline_errors_name_the_field(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nphases:\n  - name: sft\n    kind: sft\n    recipie: sft.yaml\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:5" in err and "did you mean 'phases[0].recipe'" in err


def test_eval_command(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--prompts", str(QUICKSTART / "data" /
                 "heldout_prompts.jsonl"), "--policies", str(QUICKSTART / "policies.yaml"),
                 "--max-new-tokens", "4", "--batch-size", "66", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "signoff" in table and "no_outcome_promise" in table
    result = json.loads(out.read_text())["results"][0]
    assert result["adherence"]["signoff"] == 0.0  # four random tokens never sign off
    assert result["unfinished"] > 0


def test_changed_data_reruns_the_phase_and_says_why(tmp_path, tiny_model_dir, sft_file, capsys):
    path, _ = _sft_only_run(tmp_path, tiny_model_dir, sft_file, capsys)
    sft_file.write_text(sft_file.read_text(), encoding="utf-8")  # rewritten with the same bytes: still complete
    assert main(["run", str(path)]) == 0
    assert "sft: complete, skipped" in capsys.readouterr().out
    # a new export under the same name: the phase trains again, and the log names the file that changed
    lines = sft_file.read_text().splitlines()
    sft_file.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "skipped" not in out
    assert f"sft: its data changed since it completed (data.train: {sft_file})" in out


def test_a_store_as_data_is_exported_into_the_run_folder(tmp_path, tiny_model_dir, capsys):
    """A phase whose data is a feedback store trains on a JSONL export of it in its own folder (the exact pairs
    the store exports, provenance beside them); the export's content decides completeness, so a new judgment
    that adds pairs runs the phase again, and an unchanged store leaves the phase (and its files) alone."""
    from alignment.data.fingerprint import source_digest
    from feedback_app.export import preference_examples
    from feedback_app.store import Judgment, Store

    db = tmp_path / "feedback.db"
    store = Store(db)
    p = store.update_project(store.ensure_project("desk").id, overlap=1, assign_batch=24)
    store.add_prompts(p.id, [[{"role": "user", "content": f"question {i}"}] for i in range(13)])
    for item_id, prompt, missing in store.items_short_of_candidates(p.id, 3):
        store.add_candidates(item_id, [(f"answer {j} to {prompt[0]['content']}", "m", {}) for j in range(missing)])
    user = store.add_user("ann", "annotator", "password-ann")

    def judge(key: str) -> None:
        item_id = store.next_item(user, p)
        item = store.item(item_id)
        store.submit(user, item_id, Judgment(ranks={c.id: r + 1 for r, c in enumerate(item.candidates)}), key)

    for i in range(12):
        judge(f"k{i}")
    spec = f"{db}#desk"
    recipe = {"name": "store", "output_dir": str(tmp_path / "runs"), "model": str(tiny_model_dir),
              "phases": [{"name": "rm", "kind": "rm", "recipe": str(QUICKSTART / "rm.yaml"),
                          "overrides": {"data.train": spec, "data.max_length": 64, "train.max_steps": 2,
                                        "train.batch_size": 4, "train.bf16": "false",
                                        "tracking.backends": ["none"]}}]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(recipe))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    data = tmp_path / "runs" / "rm" / "data"
    assert f"[rm] data.train: feedback store {spec} -> {data / 'train.jsonl'} (36 pairs from 12 judgments" in out
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    examples, _ = preference_examples(spec)
    assert [[r["prompt"], r["chosen"], r["rejected"], r.get("margin")] for r in rows] == \
        [[e.prompt, e.chosen, e.rejected, e.margin] for e in examples]
    provenance = json.loads((data / "train.provenance.json").read_text())
    assert {k: provenance[k] for k in ("source", "store", "project", "pair_policy", "pairs", "judgments")} == {
        "source": spec, "store": str(db), "project": "desk", "pair_policy": "all", "pairs": 36, "judgments": 12}
    assert (tmp_path / "runs" / "rm" / "model" / "config.json").exists()

    stamp = (data / "train.jsonl").stat().st_mtime_ns
    assert main(["run", str(path)]) == 0
    assert "rm: complete, skipped" in capsys.readouterr().out
    assert (data / "train.jsonl").stat().st_mtime_ns == stamp  # same pairs: the file the phase trained on stays

    first = source_digest(str(data / "train.jsonl"))
    judge("k12")  # a new judgment: new pairs, a new export, the phase runs again and says why
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"rm: its data changed since it completed (data.train: {spec}); running it again" in out
    assert source_digest(str(data / "train.jsonl")) != first
    assert json.loads((data / "train.provenance.json").read_text())["pairs"] == 39
    store.close()
    assert source_digest(str(tmp_path / "absent.jsonl")) == "missing"


def test_a_masked_phase_trains_on_the_copy_and_stays_complete(tmp_path, tiny_model_dir, sft_file, capsys):
    """data.pii: mask in a pipeline: the SFT phase reads the masked copy (the e-mail never reaches training),
    the report says so, and a re-run finds the phase complete."""
    planted = tmp_path / "with_pii.jsonl"
    row = {"messages": [{"role": "user", "content": "Write to me at jane.doe@example.com"},
                        {"role": "assistant", "content": "Sure."}]}
    planted.write_text(sft_file.read_text() + json.dumps(row) + "\n")
    path = _pipeline(tmp_path, tiny_model_dir, planted)
    data = json.loads(path.read_text())
    data["phases"] = data["phases"][:1]
    data["phases"][0]["overrides"]["data.pii"] = "mask"
    path.write_text(json.dumps(data))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    runs = tmp_path / "runs"
    copy = runs / "sft" / "data" / "train.pii-mask.jsonl"
    assert "Write to me at <EMAIL>" in copy.read_text() and "jane.doe" not in copy.read_text()
    assert f"training on a masked copy, {copy}" in out
    assert yaml.safe_load((runs / "sft" / "config.yaml").read_text())["data"]["train"] == str(copy)
    assert f"mask: trained on {copy}" in (runs / "report.html").read_text()
    assert main(["run", str(path)]) == 0
    assert "sft: complete, skipped" in capsys.readouterr().out
