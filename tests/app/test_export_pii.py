"""Personal data that annotators typed into corrections and negative examples: `align feedback export` reports it
(kind, file, row, field, item, judgment), masks it or drops its rows, and never prints it whole.

The store holds one item (answers A and B) judged once: A over B, B corrected with a text that holds an email
address, and a negative example that holds a phone number. The export (pair policy all) is then, in order:

pairs:    1 ranking    A over B                     clean
          2 correction correction over B            email in chosen[0].content
          3 negative   correction over negative     email in chosen[0].content, phone in rejected[0].content
unpaired: 1 correction (label true)                 email in completion[0].content
          2 negative   (label false)                phone in completion[0].content
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from alignment.cli import main
from feedback_app.store import Judgment, Store

CORRECTION = "Write to jane.doe@example.com and we refund you."
NEGATIVE = "Call me on 415-555-0132."


@pytest.fixture()
def judged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, int, int]:
    """The store, the item id and the judgment id."""
    monkeypatch.delenv("ALIGN_STORE", raising=False)
    db = tmp_path / "feedback.db"
    store = Store(db)
    ann = store.add_user("ann1", "annotator", "a-long-password")
    project = store.update_project(store.ensure_project("desk").id, candidates_per_item=2, overlap=1)
    store.add_prompts(project.id, [[{"role": "user", "content": "My claim was refused. What now?"}]])
    for iid, _, missing in store.items_short_of_candidates(project.id, 2):
        store.add_candidates(iid, [("Answer A", "m", {}), ("Answer B", "m", {})][:missing])
    item_id = store.next_item(ann, project)
    a, b = store.item(item_id).candidates
    judgment_id, _ = store.submit(ann, item_id, Judgment(ranks={a.id: 1, b.id: 2}, correction_of=b.id,
                                                         correction=CORRECTION, negative=NEGATIVE),
                                  secrets.token_hex(16))
    store.close()
    return db, item_id, judgment_id


def export(db: Path, out: Path, *extra: str) -> int:
    return main(["feedback", "export", "--store", str(db), "--out", str(out), *extra])


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_report_is_the_default_and_names_row_field_item_and_judgment(judged, tmp_path: Path, capsys):
    db, item, judgment = judged
    out = tmp_path / "out" / "pairs.jsonl"
    assert export(db, out) == 0
    printed = capsys.readouterr().out
    who = f"(item {item}, judgment {judgment} by ann1)"
    assert [line for line in printed.splitlines() if "personal data" in line or " row " in line] == [
        "personal data: 5 finding(s) in 4 row(s) (email 3, phone 2); left as they are (--pii mask or drop to clean "
        "them)",
        f"  pairs.jsonl row 2, field 'chosen[0].content' {who}: email j***@example.com",
        f"  pairs.jsonl row 3, field 'chosen[0].content' {who}: email j***@example.com",
        f"  pairs.jsonl row 3, field 'rejected[0].content' {who}: phone ***-***-**32",
        f"  pairs.unpaired.jsonl row 1, field 'completion[0].content' {who}: email j***@example.com",
        f"  pairs.unpaired.jsonl row 2, field 'completion[0].content' {who}: phone ***-***-**32",
    ]
    assert "jane.doe@example.com" not in printed and "415-555-0132" not in printed
    # reported, not changed: the files hold what the annotator wrote
    assert read(out)[1]["chosen"][0]["content"] == CORRECTION
    assert export(db, out, "--pii-fail") == 1


def test_report_shows_under_quiet(judged, tmp_path: Path, capsys):
    db, _, _ = judged
    assert main(["-q", "feedback", "export", "--store", str(db), "--out", str(tmp_path / "p.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("personal data: 5 finding(s)") and "judgments ->" not in printed


def test_mask_replaces_each_finding_in_every_row(judged, tmp_path: Path, capsys):
    db, _, _ = judged
    out = tmp_path / "pairs.jsonl"
    assert export(db, out, "--pii", "mask") == 0
    pairs, unpaired = read(out), read(tmp_path / "pairs.unpaired.jsonl")
    masked = "Write to <EMAIL> and we refund you."
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("Answer A", "Answer B"), (masked, "Answer B"), (masked, "Call me on <PHONE>.")]
    assert [u["completion"][0]["content"] for u in unpaired] == [masked, "Call me on <PHONE>."]
    assert pairs[2]["provenance"]["kind"] == "negative"  # provenance kept as it was
    assert "replaced by placeholders (<EMAIL>, <PHONE>, ...)" in capsys.readouterr().out


def test_drop_leaves_out_the_rows_and_the_counts_follow(judged, tmp_path: Path, capsys):
    db, _, _ = judged
    out = tmp_path / "pairs.jsonl"
    assert export(db, out, "--pii", "drop") == 0
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in read(out)] == [("Answer A", "Answer B")]
    assert read(tmp_path / "pairs.unpaired.jsonl") == []
    lines = capsys.readouterr().out.splitlines()
    assert "1 judgments -> 1 preference pairs, 0 unpaired rows" in lines
    assert [line for line in lines if line.startswith("  ") and ":" in line and "row" not in line] == ["  ranking: 1"]
    assert ("personal data: 5 finding(s) in 4 row(s) (email 3, phone 2); their rows left out (2 pair rows, "
            "2 unpaired rows)") in lines


def test_off_scans_nothing(judged, tmp_path: Path, capsys):
    db, _, _ = judged
    assert export(db, tmp_path / "pairs.jsonl", "--pii", "off", "--pii-fail") == 0
    assert "personal data" not in capsys.readouterr().out
