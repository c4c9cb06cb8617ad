"""A phase's privacy scan (``data.pii``): what it reports, the cleaned copy it trains on, the rescan it skips, and
the pipeline report's "Data preparation" section built from the files it leaves."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from alignment.config import SFTConfig, load_config
from alignment.data.phase_pii import read_report, scan_phase_data, summary_line
from alignment.errors import AlignError
from alignment.pipeline import load_phase_config
from alignment.report import data_prep_lines, data_prep_rows, write_report

EMAIL = "jane.doe@example.com"


def _conversation(user: str, answer: str = "Happy to help.") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def _sft_file(path: Path) -> Path:
    rows = [_conversation("How do I reset my password?"),
            _conversation(f"Please write to me at {EMAIL} about my claim."),
            _conversation("What are your opening hours?"),
            _conversation("Is my card covered?", "Yes. Card 4111 1111 1111 1111 is on file.")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(tmp_path: Path, pii: str, train: Path | None = None) -> SFTConfig:
    train = train or _sft_file(tmp_path / "sft.jsonl")
    return load_config(SFTConfig, None, {"model": "m", "data.train": str(train), "data.pii": pii,
                                         "output_dir": str(tmp_path / "run")})


def test_report_lists_each_finding_and_changes_no_path(tmp_path):
    cfg = _cfg(tmp_path, "report")
    assert scan_phase_data("sft", cfg) == {}
    report = read_report(cfg.output_dir)
    (entry,) = report["files"]
    assert (entry["field"], entry["rows"], entry["rows_with_findings"]) == ("data.train", 4, 2)
    assert entry["counts"] == {"email": 1, "credit_card": 1}
    assert [(f["kind"], f["line"], f["field"]) for f in entry["findings"]] == [
        ("email", 2, "messages[0].content"), ("credit_card", 4, "messages[1].content")]
    assert EMAIL not in json.dumps(report) and "4111 1111 1111 1111" not in json.dumps(report)  # masked hints only
    assert entry["out"] is None and not list((Path(cfg.output_dir) / "data").glob("*.pii-*"))
    assert summary_line("sft", report) == \
        "privacy: sft (data.pii: report): data.train 2/4 records (email 1, credit card 1)"


def test_mask_trains_on_a_masked_copy_and_a_second_scan_reads_nothing(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "mask")
    overrides = scan_phase_data("sft", cfg)
    copy = Path(overrides["data.train"])
    assert copy == Path(cfg.output_dir) / "data" / "train.pii-mask.jsonl"
    rows = [json.loads(line) for line in copy.read_text().splitlines()]
    assert len(rows) == 4 and rows[0] == _conversation("How do I reset my password?")
    assert rows[1]["messages"][0]["content"] == "Please write to me at <EMAIL> about my claim."
    assert rows[3]["messages"][1]["content"] == "Yes. Card <CREDIT_CARD> is on file."
    assert copy.stat().st_mode & 0o777 == 0o644

    import alignment.data.pii as pii

    monkeypatch.setattr(pii, "scan_file", lambda *a, **k: pytest.fail("scanned again"))
    assert scan_phase_data("sft", cfg) == overrides  # same content, same action: the earlier scan stands
    # a launched process is handed the copy as its data.train: the launcher's scan is its scan
    handed = load_config(SFTConfig, None, {"model": "m", "data.train": str(copy), "data.pii": "mask",
                                           "output_dir": cfg.output_dir})
    assert scan_phase_data("sft", handed) == {}  # nothing to change: it already reads the copy
    assert read_report(cfg.output_dir)["files"][0]["file"] == cfg.data.train


def test_changed_data_is_scanned_again(tmp_path):
    cfg = _cfg(tmp_path, "drop")
    first = scan_phase_data("sft", cfg)
    with open(cfg.data.train, "a") as f:
        f.write(json.dumps(_conversation("Call me on +44 20 7946 0958 please.")) + "\n")
    again = scan_phase_data("sft", cfg)
    assert again == first  # same copy path, new content
    entry = read_report(cfg.output_dir)["files"][0]
    assert (entry["rows"], entry["rows_with_findings"], entry["rows_written"]) == (5, 3, 2)
    kept = [json.loads(line)["messages"][0]["content"] for line in Path(again["data.train"]).read_text().splitlines()]
    assert kept == ["How do I reset my password?", "What are your opening hours?"]


def test_a_clean_file_gets_no_copy_and_off_scans_nothing(tmp_path):
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps(_conversation("What are your opening hours?")) + "\n")
    cfg = _cfg(tmp_path, "mask", clean)
    assert scan_phase_data("sft", cfg) == {}
    assert read_report(cfg.output_dir)["files"][0]["counts"] == {}
    assert not (Path(cfg.output_dir) / "data" / "train.pii-mask.jsonl").exists()

    off = load_config(SFTConfig, None, {"model": "m", "data.train": str(clean), "data.pii": "off",
                                        "output_dir": str(tmp_path / "off")})
    assert scan_phase_data("sft", off) == {} and read_report(off.output_dir) is None


def test_a_csv_copy_stays_csv_with_its_message_cells_as_json(tmp_path):
    from alignment.data import load_dataset_file, to_conversation

    path = tmp_path / "sft.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages"])
        for r in (_conversation(f"Mail {EMAIL}"), _conversation("Hello")):
            w.writerow([json.dumps(r["messages"])])
    overrides = scan_phase_data("sft", _cfg(tmp_path, "mask", path))
    copy = Path(overrides["data.train"])
    assert copy.suffix == ".csv"
    ds, info = load_dataset_file(str(copy), "sft")  # validates the copy as training data
    assert [to_conversation(r, "sft", info.variant)["messages"][0]["content"] for r in ds] == ["Mail <EMAIL>", "Hello"]


def test_load_phase_config_points_the_phase_at_the_cleaned_copy(tmp_path):
    train = _sft_file(tmp_path / "sft.jsonl")
    written, cfg, overrides = load_phase_config("sft", None, {"model": "m", "data.train": str(train),
                                                              "data.pii": "drop", "output_dir": str(tmp_path / "r")})
    assert written.data.train == str(train)
    assert cfg.data.train == overrides["data.train"] == str(tmp_path / "r" / "data" / "train.pii-drop.jsonl")


def test_a_bad_action_is_refused_naming_the_key(tmp_path):
    with pytest.raises(AlignError) as e:
        _cfg(tmp_path, "scrub")
    assert "data.pii" in str(e.value)


def test_the_report_shows_findings_and_curation_escaped(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(SFTConfig, None, {"model": "m", "data.train": str(_sft_file(tmp_path / "sft.jsonl")),
                                        "output_dir": str(run / "sft")})  # data.pii: report by default
    scan_phase_data("sft", cfg)
    # a curation report as the SFT phase writes it, with a representative prompt that is markup
    (run / "sft" / "curation.json").write_text(json.dumps({
        "file": "data/sft.jsonl", "records": 10, "kept": 8, "removed": {"duplicate": 1, "near_duplicate": 1},
        "settings": {"near_dup_threshold": 0.8, "seeds": None}, "embedding": {"backend": "tfidf"},
        "clusters": [{"cluster": 0, "size": 5, "diversity": 0.5, "representative": "<script>x</script> hours?"},
                     {"cluster": 1, "size": 3, "diversity": 0.25, "representative": "reset password"}]}))
    (run / "rm").mkdir()
    pipeline = SimpleNamespace(name="p", model="base", phases=[SimpleNamespace(name="sft", kind="sft"),
                                                                SimpleNamespace(name="rm", kind="rm")])
    rows = data_prep_rows(run, pipeline)
    assert [r["phase"] for r in rows] == ["sft"]
    assert data_prep_lines(rows) == [
        "privacy: sft (data.pii: report): data.train 2/4 records (email 1, credit card 1)",
        "curation: sft: kept 8 of 10 records (removed: 1 duplicate, 1 near duplicate); 2 prompt clusters"]
    page = write_report(run, pipeline, {}, verdicts=[]).read_text()
    assert '<table id="privacy">' in page and '<table id="clusters-sft">' in page
    assert EMAIL not in page and "<script>x</script>" not in page and "&lt;script&gt;" in page
    assert "kept 8 of 10 records; removed: 1 duplicate, 1 near duplicate" in page


def test_a_pair_masked_into_two_equal_answers_is_left_out(tmp_path):
    """Two different e-mails both become <EMAIL>: the pair prefers nothing any more, and the preference loaders
    refuse a pair whose answers are equal, so the masked copy (and the app's masked export) leaves it out."""
    from alignment.config import DPOConfig
    from alignment.data.pii import scan_file
    from feedback_app.export import Export, pii_lines, scan_personal_data

    rows = [{"prompt": "Where do I write?", "chosen": "Write to john@a.com", "rejected": "Write to jane@b.com"},
            {"prompt": "Where do I write?", "chosen": "Write to john@a.com please", "rejected": "No."},
            {"prompt": "Hours?", "chosen": "9 to 5.", "rejected": "Never."}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scan = scan_file(path, "mask", tmp_path / "clean.jsonl")
    assert (scan.rows_written, scan.pairs_collapsed) == (2, 1)
    written = [json.loads(line) for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert [r["chosen"] for r in written] == ["Write to <EMAIL> please", "9 to 5."]

    cfg = load_config(DPOConfig, None, {"model": "m", "data.train": str(path), "data.pii": "mask",
                                        "output_dir": str(tmp_path / "run")})
    overrides = scan_phase_data("dpo", cfg)
    from alignment.data.preferences import load_preference_examples

    examples, _ = load_preference_examples(overrides["data.train"])  # loads: no pair with equal answers
    assert len(examples) == 2 and read_report(cfg.output_dir)["files"][0]["pairs_collapsed"] == 1

    export = Export(pairs=[{**r, "provenance": {"kind": "ranking"}} for r in rows], by_kind={"ranking": 3})
    scan_personal_data(export, "mask")
    assert len(export.pairs) == 2 and export.by_kind == {"ranking": 2}
    assert "1 pair row(s) left out, masking made chosen and rejected the same" in pii_lines(export)[0]
