"""Pairs across annotators (the export's ``aggregate``) and per-pair loss weights (the preference ``weight``).

Every expected row and count below is worked out by hand in the comments next to it. The answers of the
hand-built item are the one-letter texts "A", "B" and "C"; a row is written (chosen, rejected, weight,
margin), weight None where the row has none.
"""

from __future__ import annotations

import copy
import html
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignment.cli import main
from alignment.config import PreferenceDataConfig, SFTConfig, SFTDataConfig, load_config
from alignment.errors import AlignError
from feedback_app.agreement import decide
from feedback_app.export import Export, item_rows, materialise, preference_examples, summary_lines
from feedback_app.store import Candidate, Item, Judgment, Store, StoredJudgment
from tests.conftest import write_jsonl

PROJECT = SimpleNamespace(name="desk")  # the export reads a project's name only
CANDIDATES = {"A": 11, "B": 12, "C": 13}
ITEM = Item(id=1, project_id=1, prompt=[{"role": "user", "content": "Which answer?"}],
            candidates=tuple(Candidate(id=i, text=t, model="m", generation={}) for t, i in CANDIDATES.items()))
THIRD = 2 / 3


def judged(*rankings: dict[str, int], unacceptable: tuple[int, ...] = (), **extra: dict) -> list[StoredJudgment]:
    """One judgment per ranking ({"A": 1, "B": 2}), by annotators ann1, ann2, ...; ``extra`` maps
    ``ann<k>`` to more Judgment fields, ``unacceptable`` lists the annotators who ticked all unacceptable."""
    out = []
    for k, ranking in enumerate(rankings, start=1):
        j = Judgment(ranks={CANDIDATES[t]: r for t, r in ranking.items()}, all_unacceptable=k in unacceptable,
                     **extra.get(f"ann{k}", {}))
        out.append(StoredJudgment(id=100 + k, item_id=ITEM.id, user_id=k, user_name=f"ann{k}", created_at=0.0,
                                  judgment=j, guideline_version=1, revision=1))
    return out


def export(judgments: list[StoredJudgment], aggregate: str, policy: str = "all") -> Export:
    out = Export(aggregate=aggregate)
    item_rows(ITEM, judgments, PROJECT, policy, aggregate, out)
    return out


def rows(out: Export) -> list[tuple]:
    return [(r["chosen"][0]["content"], r["rejected"][0]["content"], r.get("weight"), r["margin"]) for r in out.pairs]


def counts(out: Export) -> tuple[int, int, int, int, int]:
    c = out.aggregation
    return c["rows"], c["kept"], c["merged"], c["dropped_contradicted"], c["dropped_ties"]


def same_rows(got: list[tuple], expected: list[tuple]) -> None:
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for g, e in zip(got, expected):
        assert (g[2] is None) == (e[2] is None) and (g[2] is None or g[2] == pytest.approx(e[2])), (g, e)
        assert (g[3] is None) == (e[3] is None) and (g[3] is None or g[3] == pytest.approx(e[3])), (g, e)


# ------------------------------------------------------------------------------------------- decide


def test_decide_per_mode():
    # (mode, votes for, votes against) -> (keep, weight, reason)
    for mode, for_, against, keep, weight, reason in [
        ("majority", 2, 1, True, 1.0, "kept"), ("majority", 1, 2, False, 0.0, "contradicted"),
        ("majority", 1, 1, False, 0.0, "tie"), ("majority", 3, 0, True, 1.0, "kept"),
        ("drop_contradicted", 3, 0, True, 1.0, "kept"), ("drop_contradicted", 2, 1, False, 0.0, "contradicted"),
        ("agreement_weight", 2, 1, True, 2 / 3, "kept"), ("agreement_weight", 1, 2, True, 1 / 3, "kept"),
        ("agreement_weight", 1, 1, True, 0.5, "kept"), ("agreement_weight", 3, 0, True, 1.0, "kept"),
        ("all", 1, 2, True, 1.0, "kept"),
    ]:
        d = decide(mode, for_, against)
        assert (d.keep, d.reason) == (keep, reason) and d.weight == pytest.approx(weight), (mode, for_, against)
    with pytest.raises(ValueError, match="unknown aggregation"):
        decide("vote", 1, 0)


# ------------------------------------------------------------------------------ two answers, three people


def test_two_to_one_votes():
    """ann1 and ann2 rank A over B, ann3 B over A: A>B has votes 2-1, B>A 1-2."""
    j = judged({"A": 1, "B": 2}, {"A": 1, "B": 2}, {"A": 2, "B": 1})
    same_rows(rows(export(j, "all")), [("A", "B", None, 1.0), ("A", "B", None, 1.0), ("B", "A", None, 1.0)])
    assert counts(export(j, "all")) == (3, 3, 0, 0, 0)
    maj = export(j, "majority")  # A>B kept once (ann2's row merged into ann1's), ann3's B>A outvoted
    same_rows(rows(maj), [("A", "B", None, 1.0)])
    assert counts(maj) == (3, 1, 1, 1, 0)
    prov = maj.pairs[0]["provenance"]
    assert (prov["aggregate"], prov["votes_for"], prov["votes_against"], prov["merged_rows"]) == (
        "majority", ["ann1", "ann2"], ["ann3"], 2)
    assert prov["annotator"] == "ann1" and prov["kind"] == "ranking"  # the first row of its direction
    dropped = export(j, "drop_contradicted")  # ann3 ordered the pair the other way: nothing left
    assert rows(dropped) == [] and counts(dropped) == (3, 0, 0, 3, 0)
    weighted = export(j, "agreement_weight")  # one row per direction: 2 of 3 chose A>B, 1 of 3 B>A
    same_rows(rows(weighted), [("A", "B", THIRD, 1.0), ("B", "A", 1 / 3, 1.0)])
    assert counts(weighted) == (3, 2, 1, 0, 0)


def test_one_one_tie_and_a_tied_ranking_is_no_vote():
    """ann1 A over B, ann2 B over A, ann3 ranks them equal (no pair, no vote): 1-1."""
    j = judged({"A": 1, "B": 2}, {"A": 2, "B": 1}, {"A": 1, "B": 1})
    assert counts(export(j, "all")) == (2, 2, 0, 0, 0)
    maj = export(j, "majority")
    assert rows(maj) == [] and counts(maj) == (2, 0, 0, 0, 2)
    dropped = export(j, "drop_contradicted")
    assert rows(dropped) == [] and counts(dropped) == (2, 0, 0, 2, 0)
    weighted = export(j, "agreement_weight")  # 1 / (1 + 1) each way; ann3 is in neither count
    same_rows(rows(weighted), [("A", "B", 0.5, 1.0), ("B", "A", 0.5, 1.0)])
    assert weighted.pairs[0]["provenance"]["votes_for"] == ["ann1"]
    assert weighted.pairs[0]["provenance"]["votes_against"] == ["ann2"]


def test_unanimous_pair():
    j = judged({"A": 1, "B": 2}, {"A": 1, "B": 3}, {"A": 1, "B": 2})  # margins 1, 2, 1
    assert counts(export(j, "all")) == (3, 3, 0, 0, 0)
    for mode, weight in (("majority", None), ("drop_contradicted", None), ("agreement_weight", 1.0)):
        out = export(j, mode)
        same_rows(rows(out), [("A", "B", weight, 4 / 3)])  # margin: mean of the three rank gaps
        assert counts(out) == (3, 1, 2, 0, 0)


# ------------------------------------------------------------------------ three answers and the policies

# ann1 ranks A > B > C, ann2 A > C > B, ann3 B > A > C. Votes come from each whole ranking, whatever the policy:
#   {A, B}: A>B by ann1 and ann2, B>A by ann3   -> 2-1
#   {A, C}: A>C by all three                    -> 3-0
#   {B, C}: B>C by ann1 and ann3, C>B by ann2   -> 2-1
# Proposed rows (ranking_to_pairs order per annotator; margin = rank gap):
#   all:          ann1 A>B 1, A>C 2, B>C 1 | ann2 A>C 1, A>B 2, C>B 1 | ann3 B>A 1, B>C 2, A>C 1
#   best-vs-rest: ann1 A>B 1, A>C 2        | ann2 A>C 1, A>B 2        | ann3 B>A 1, B>C 2
#   adjacent:     ann1 A>B 1, B>C 1        | ann2 A>C 1, C>B 1        | ann3 B>A 1, A>C 1
RANKINGS = ({"A": 1, "B": 2, "C": 3}, {"A": 1, "C": 2, "B": 3}, {"B": 1, "A": 2, "C": 3})
# Merged rows keep the first proposed row of their direction and average the margins of their direction.
EXPECTED = {
    "all": {
        "all": ([("A", "B", None, 1), ("A", "C", None, 2), ("B", "C", None, 1), ("A", "C", None, 1),
                 ("A", "B", None, 2), ("C", "B", None, 1), ("B", "A", None, 1), ("B", "C", None, 2),
                 ("A", "C", None, 1)], (9, 9, 0, 0, 0)),
        # directions in order of first appearance: A>B (2 rows), A>C (3), B>C (2), C>B (1), B>A (1)
        "majority": ([("A", "B", None, 1.5), ("A", "C", None, 4 / 3), ("B", "C", None, 1.5)], (9, 3, 4, 2, 0)),
        "drop_contradicted": ([("A", "C", None, 4 / 3)], (9, 1, 2, 6, 0)),
        "agreement_weight": ([("A", "B", THIRD, 1.5), ("A", "C", 1.0, 4 / 3), ("B", "C", THIRD, 1.5),
                              ("C", "B", 1 / 3, 1), ("B", "A", 1 / 3, 1)], (9, 5, 4, 0, 0)),
    },
    "best-vs-rest": {
        "all": ([("A", "B", None, 1), ("A", "C", None, 2), ("A", "C", None, 1), ("A", "B", None, 2),
                 ("B", "A", None, 1), ("B", "C", None, 2)], (6, 6, 0, 0, 0)),
        # A>B (2 rows) 2-1 kept, A>C (2) 3-0 kept, B>A (1) 1-2 outvoted, B>C (1, only ann3 proposed it) 2-1 kept
        "majority": ([("A", "B", None, 1.5), ("A", "C", None, 1.5), ("B", "C", None, 2)], (6, 3, 2, 1, 0)),
        # B>C is dropped although only ann3's policy proposed it: ann2's ranking puts C over B
        "drop_contradicted": ([("A", "C", None, 1.5)], (6, 1, 1, 4, 0)),
        "agreement_weight": ([("A", "B", THIRD, 1.5), ("A", "C", 1.0, 1.5), ("B", "A", 1 / 3, 1),
                              ("B", "C", THIRD, 2)], (6, 4, 2, 0, 0)),
    },
    "adjacent": {
        "all": ([("A", "B", None, 1), ("B", "C", None, 1), ("A", "C", None, 1), ("C", "B", None, 1),
                 ("B", "A", None, 1), ("A", "C", None, 1)], (6, 6, 0, 0, 0)),
        # A>B (1 row) 2-1, B>C (1) 2-1, A>C (2) 3-0 kept; C>B and B>A outvoted
        "majority": ([("A", "B", None, 1), ("B", "C", None, 1), ("A", "C", None, 1)], (6, 3, 1, 2, 0)),
        "drop_contradicted": ([("A", "C", None, 1)], (6, 1, 1, 4, 0)),
        "agreement_weight": ([("A", "B", THIRD, 1), ("B", "C", THIRD, 1), ("A", "C", 1.0, 1),
                              ("C", "B", 1 / 3, 1), ("B", "A", 1 / 3, 1)], (6, 5, 1, 0, 0)),
    },
}


@pytest.mark.parametrize("policy", ["all", "best-vs-rest", "adjacent"])
@pytest.mark.parametrize("aggregate", ["all", "majority", "drop_contradicted", "agreement_weight"])
def test_rankings_over_three_answers(policy, aggregate):
    out = export(judged(*RANKINGS), aggregate, policy)
    expected_rows, expected_counts = EXPECTED[policy][aggregate]
    same_rows(rows(out), expected_rows)
    assert counts(out) == expected_counts
    rows_in, kept, merged, contradicted, ties = expected_counts
    assert rows_in == kept + merged + contradicted + ties and kept == len(out.pairs)
    assert out.by_kind == {"ranking": kept}  # kinds count the rows written
    if aggregate == "all":  # today's rows, untouched: no weight, no aggregation provenance
        assert all("weight" not in r and "aggregate" not in r["provenance"] for r in out.pairs)
    else:
        assert all(("weight" in r) == (aggregate == "agreement_weight") for r in out.pairs)
        assert all(r["provenance"]["aggregate"] == aggregate for r in out.pairs)


def test_corrections_and_unacceptable_rankings():
    """ann1 ranks A over B and corrects B; ann2 ranks B over A; ann3 ticks all unacceptable (its ranking A>B makes
    no pair and no vote) and writes a negative example. {A, B} is 1-1; the correction pair has no vote against."""
    j = judged({"A": 1, "B": 2}, {"A": 2, "B": 1}, {"A": 1, "B": 2}, unacceptable=(3,),
               ann1={"correction_of": CANDIDATES["B"], "correction": "Fixed B"}, ann3={"negative": "Never"})
    assert counts(export(j, "all")) == (3, 3, 0, 0, 0)  # A>B, Fixed B>B, B>A
    maj = export(j, "majority")
    same_rows(rows(maj), [("Fixed B", "B", None, None)])
    assert counts(maj) == (3, 1, 0, 0, 2)
    assert maj.by_kind["correction"] == 1 and "ranking" not in maj.by_kind
    weighted = export(j, "agreement_weight")
    same_rows(rows(weighted), [("A", "B", 0.5, 1.0), ("Fixed B", "B", 1.0, None), ("B", "A", 0.5, 1.0)])
    # unpaired rows are never aggregated: the correction (label true), the negative and ann3's unacceptable answers
    for out in (maj, weighted, export(j, "all")):
        unpaired = sorted((r["completion"][0]["content"], r["label"]) for r in out.unpaired)
        assert unpaired == [("A", False), ("B", False), ("C", False), ("Fixed B", True), ("Never", False)]
        assert out.by_kind["negative without a good answer"] == 1


def test_summary_lines_name_the_aggregation_and_counts():
    lines = summary_lines(export(judged({"A": 1, "B": 2}, {"A": 1, "B": 2}, {"A": 2, "B": 1}), "majority"))
    assert lines[:2] == ["3 judgments -> 1 preference pairs, 0 unpaired rows",
                         "pairs across annotators: majority: 3 annotator pairs -> 1 kept (1 merged into an agreeing "
                         "annotator's pair, 1 dropped as contradicted, 0 dropped as tied votes)"]
    lines = summary_lines(export(judged({"A": 1, "B": 2}), "all"))
    assert lines[1] == "pairs across annotators: all (1 annotator pairs kept as they are)"


# ------------------------------------------------------------------------------- the store, end to end


@pytest.fixture()
def voted_store(tmp_path: Path) -> str:
    """Two items with answers "A <item>" and "B <item>", three annotators: item 0 votes A>B 2-1, item 1 3-0."""
    store = Store(tmp_path / "feedback.db")
    project = store.ensure_project("desk")
    project = store.update_project(project.id, overlap=3)
    store.add_prompts(project.id, [[{"role": "user", "content": f"Question {i}?"}] for i in range(2)])
    for item_id, prompt, missing in store.items_short_of_candidates(project.id, 2):
        n = prompt[0]["content"].split()[1].rstrip("?")
        store.add_candidates(item_id, [(f"{x} {n}", "m", {"seed": k}) for k, x in enumerate("AB")][:missing])
    dissent = {"ann3": "0"}  # ann3 prefers B on item 0
    for name in ("ann1", "ann2", "ann3"):
        user = store.add_user(name, "annotator", f"password-{name}")
        while (item_id := store.next_item(user, project)) is not None:
            item = store.item(item_id)
            a, b = sorted(item.candidates, key=lambda c: c.text)
            n = a.text.split()[1]
            ranks = {a.id: 2, b.id: 1} if dissent.get(name) == n else {a.id: 1, b.id: 2}
            store.submit(user, item_id, Judgment(ranks=ranks), f"{name}:{item_id}")
    store.close()
    return f"{tmp_path / 'feedback.db'}#desk"


def test_materialise_records_the_aggregation(voted_store, tmp_path):
    from alignment.data.preferences import load_preference_examples

    out = tmp_path / "run" / "data" / "train.jsonl"
    prov = materialise(voted_store, out, "all", "majority")
    texts = [(r["chosen"][0]["content"], r["rejected"][0]["content"], r.get("weight")) for r in _rows(out)]
    assert texts == [("A 0", "B 0", None), ("A 1", "B 1", None)]
    assert prov["aggregate"] == "majority" and prov["judgments"] == 6 and prov["pairs"] == 2
    # item 0: 3 rows -> 1 kept, 1 merged, 1 outvoted; item 1: 3 rows -> 1 kept, 2 merged
    assert prov["aggregation"] == {"rows": 6, "kept": 2, "merged": 3, "dropped_contradicted": 1, "dropped_ties": 0}
    assert json.loads(provenance_file(out).read_text()) == prov

    # the same rows under another setting (two answers: every pair policy agrees): only the provenance changes
    stamp = out.stat().st_mtime_ns
    again = materialise(voted_store, out, "adjacent", "majority")
    assert out.stat().st_mtime_ns == stamp and again["pair_policy"] == "adjacent"
    assert json.loads(provenance_file(out).read_text())["pair_policy"] == "adjacent"
    assert materialise(voted_store, out, "adjacent", "majority") == again  # nothing changed: nothing rewritten

    weighted = materialise(voted_store, out, "all", "agreement_weight")
    assert [r["weight"] for r in _rows(out)] == pytest.approx([2 / 3, 1 / 3, 1.0])  # A0>B0, B0>A0, A1>B1
    assert weighted["aggregation"] == {"rows": 6, "kept": 3, "merged": 3, "dropped_contradicted": 0,
                                       "dropped_ties": 0}
    examples, info = load_preference_examples(str(out))  # default de-duplication keeps every weighted row
    assert [e.weight for e in examples] == pytest.approx([2 / 3, 1 / 3, 1.0]) and info.duplicates_removed == 0
    assert [e.weight for e in preference_examples(voted_store, "all", "agreement_weight")[0]] == pytest.approx(
        [2 / 3, 1 / 3, 1.0])
    contradicted = materialise(voted_store, out, "all", "drop_contradicted")
    assert contradicted["pairs"] == 1 and contradicted["aggregation"]["dropped_contradicted"] == 3
    assert all("weight" not in r for r in _rows(out))


def test_recipe_and_cli_carry_aggregate(voted_store, tmp_path, capsys):
    from alignment.config import RMConfig, load_config
    from alignment.data.preferences import load_pairs
    from alignment.pipeline import export_feedback_stores

    recipe = tmp_path / "rm.yaml"
    recipe.write_text(json.dumps({"phase": "rm", "output_dir": str(tmp_path / "rm"),
                                  "data": {"train": voted_store, "aggregate": "agreement_weight"}}))
    cfg = load_config(RMConfig, recipe)
    overrides = export_feedback_stores("rm", cfg)
    printed = capsys.readouterr().out
    assert "data.train: pairs across annotators: agreement_weight: 6 annotator pairs -> 3 kept" in printed
    provenance = json.loads(provenance_file(Path(overrides["data.train"])).read_text())
    assert provenance["aggregate"] == "agreement_weight"
    cfg = load_config(RMConfig, recipe, overrides)
    train, val, _ = load_pairs(cfg.data, seed=0)
    by_text = {(e.chosen[0]["content"], e.rejected[0]["content"]): e.weight for e in train + val}
    assert by_text == pytest.approx({("A 0", "B 0"): 2 / 3, ("B 0", "A 0"): 1 / 3, ("A 1", "B 1"): 1.0})
    with pytest.raises(AlignError, match="aggregate"):
        load_config(RMConfig, recipe, ["data.aggregate=vote"])

    db = voted_store.split("#")[0]
    out = tmp_path / "cli" / "prefs.jsonl"
    assert main(["feedback", "export", "--store", db, "--out", str(out), "--aggregate", "drop_contradicted"]) == 0
    printed = capsys.readouterr().out
    assert ("pairs across annotators: drop_contradicted: 6 annotator pairs -> 1 kept (2 merged into an agreeing "
            "annotator's pair, 3 dropped as contradicted, 0 dropped as tied votes)") in printed
    assert [r["chosen"][0]["content"] for r in _rows(out)] == ["A 1"]


def provenance_file(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".jsonl") + ".provenance.json")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -------------------------------------------------------------------------------------- weight in the data


def _pref(i: int, **extra) -> dict:
    return {"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}.", **extra}


@pytest.mark.parametrize("bad", [-1, -0.5, "heavy", True, float("nan"), float("inf"), [1]])
def test_bad_weight_names_file_line_and_field(tmp_path, bad):
    from alignment.data.preferences import load_preference_examples

    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(_pref(0)) + "\n" + json.dumps(_pref(1, weight=bad)) + "\n", encoding="utf-8")
    with pytest.raises(AlignError) as e:
        load_preference_examples(str(path))
    assert (e.value.file, e.value.line, e.value.field) == (str(path), 2, "weight")
    assert "weight" in str(e.value)


def test_csv_weights_and_one_error_for_a_bad_cell(tmp_path):
    from alignment.data.preferences import load_preference_examples

    good = tmp_path / "prefs.csv"
    good.write_text("prompt,chosen,rejected,weight\nQ1?,Yes.,No.,0.25\nQ2?,Yes.,No.,\nQ3?,Yes.,No.,0\n",
                    encoding="utf-8")
    examples, _ = load_preference_examples(str(good))
    assert [e.weight for e in examples] == [0.25, 1.0, 0.0]  # an empty cell is no weight: 1
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,chosen,rejected,weight\nQ1?,Yes.,No.,0.25\nQ2?,Yes.,No.,lots\n", encoding="utf-8")
    with pytest.raises(AlignError) as e:
        load_preference_examples(str(bad))
    assert (e.value.file, e.value.line, e.value.field) == (str(bad), 3, "weight")
    assert "expected a number >= 0" in e.value.message and "'lots'" in e.value.message


def test_weighted_rows_survive_dedup_and_split(tmp_path):
    from alignment.data.preferences import load_preference_examples, split_pairs

    path = write_jsonl(tmp_path / "prefs.jsonl", [
        _pref(0), _pref(0, weight=1), _pref(0, weight=0.5), _pref(0, weight=0.5), _pref(1, weight=0),
    ])
    examples, info = load_preference_examples(str(path))
    # weight 1 is the same row as no weight (removed); 0.5 weighs differently (kept); the second 0.5 repeats it
    assert [(e.chosen[0]["content"], e.weight) for e in examples] == [
        ("Good answer 0.", 1.0), ("Good answer 0.", 0.5), ("Good answer 1.", 0.0)]
    assert info.duplicates_removed == 2
    assert (info.weighted, info.zero_weight, info.total_weight) == (2, 1, 1.5)
    rows = [_pref(i, weight=i / 10) for i in range(40)]
    examples, _ = load_preference_examples(str(write_jsonl(tmp_path / "many.jsonl", rows)))
    parts = split_pairs(examples, {"train": 0.7, "validation": 0.3}, seed=3)
    assert len(parts["train"]) + len(parts["validation"]) == 40 and parts["validation"]
    for e in parts["train"] + parts["validation"]:  # each pair keeps its own weight
        assert e.weight == pytest.approx(int(e.prompt[0]["content"].split()[1].rstrip("?")) / 10)


def test_weights_follow_pairs_through_tokenizing_and_collation(tiny_model_dir):
    from alignment.batching import collate_pairs
    from alignment.data.preferences import PreferenceExample, tokenize_pairs
    from alignment.modeling import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    examples = [PreferenceExample([{"role": "user", "content": f"Q{i}"}], [{"role": "assistant", "content": "Yes"}],
                                  [{"role": "assistant", "content": "No"}], weight=w)
                for i, w in enumerate([0.5, 0.0, 2.0, 1.0])]
    pairs, _ = tokenize_pairs(tok, examples, 64)
    order = [2, 0, 3, 1]  # any order the schedule reads them in
    batch = collate_pairs([pairs[i] for i in order], tok.pad_token_id)
    assert batch["weight"].tolist() == [2.0, 0.5, 1.0, 0.0]


# ------------------------------------------------------------------------------ a zero-weight pair is absent


def _examples(tokenizer, weights: list[float]) -> list:
    from alignment.data.preferences import PreferenceExample, tokenize_pairs

    texts = [("Certainly, happy to help with the bill.", "No."), ("Here is how to file a claim.", "Figure it out."),
             ("Your address is updated.", "Whatever."), ("Yes.", "Never ask me that again, it is a long no.")]
    examples = [PreferenceExample([{"role": "user", "content": f"Question {i}?"}],
                                  [{"role": "assistant", "content": c}], [{"role": "assistant", "content": r}],
                                  margin=0.5 * i, weight=w) for i, ((c, r), w) in enumerate(zip(texts, weights))]
    return tokenize_pairs(tokenizer, examples, 64)[0]


LR = 1e-2


def _run_step(engine, step_fn) -> tuple[dict, dict]:
    """One train step; returns (metrics, the gradients the update applied)."""
    grads: dict[str, torch.Tensor] = {}
    step = engine.step

    def capture() -> float:
        grads.update({n: p.grad.detach().clone() for n, p in engine.module.named_parameters() if p.grad is not None})
        return step()

    engine.step = capture
    return step_fn(), grads


def _same_step(a: tuple, b: tuple) -> None:
    """Same loss and same gradients. (Not the weights after the update: Adam's first update is about
    ``lr * g / (|g| + eps)``, which swings by a large share of ``lr`` for gradients near eps, so float noise in the
    forwards of two batch shapes would show there and say nothing about the weighting.)"""
    assert a[0]["train/loss"] == pytest.approx(b[0]["train/loss"], rel=1e-5)
    assert a[1].keys() == b[1].keys() and a[1]
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_rm(tiny_model_dir):
    from alignment.modeling import load_reward_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = load_reward_model(tiny_model_dir)  # a fresh one-score head on the tiny model
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def test_rm_step_with_a_zero_weight_pair_equals_the_step_without_it(tiny_rm):
    """p0, p1, p2 and p3 weigh 1 except where said; margins and reward centering on, so every term is weighted."""
    from alignment.batching import collate_pairs
    from alignment.config import PreferenceDataConfig, RMConfig, TrainConfig
    from alignment.reward import LastTokenScores
    from alignment.rm import train_step
    from alignment.training import Engine

    model, tok = tiny_rm
    cfg = RMConfig(data=PreferenceDataConfig(train="unused.jsonl"), use_margin=True, center_coef=0.1)
    pad = tok.pad_token_id
    unit, zero, double = _examples(tok, [1, 1, 1, 1]), _examples(tok, [1, 1, 1, 0]), _examples(tok, [2, 1, 1, 1])

    def step(micro: list[list], grad_accum: int) -> tuple:
        train = TrainConfig(max_steps=1, lr=LR, warmup_ratio=0.0, scheduler="constant", max_grad_norm=None,
                            grad_accum=grad_accum)
        engine = Engine(copy.deepcopy(model), train, total_steps=1, bf16=False, deepspeed_config=None)
        scorer = LastTokenScores(engine.module)
        batches = [collate_pairs(pairs, pad) for pairs in micro]
        return _run_step(engine, lambda: train_step(engine, scorer, batches, cfg))

    # one micro-batch: p3 at weight 0 is the batch without p3
    _same_step(step([[zero[0], zero[1], zero[3], zero[2]]], 1), step([[unit[0], unit[1], unit[2]]], 1))
    # accumulation: the weighted mean runs over the whole step, so [p0, p3 (weight 0)] + [p1, p2] is [p0] + [p1, p2]
    _same_step(step([[zero[0], zero[3]], [zero[1], zero[2]]], 2), step([[unit[0]], [unit[1], unit[2]]], 2))
    # weight 2 is the pair twice
    _same_step(step([[double[0], double[1]]], 1), step([[unit[0], unit[0], unit[1]]], 1))


def test_dpo_step_with_a_zero_weight_pair_equals_the_step_without_it(tiny_model_dir):
    """SimPO (no reference) with the RPO term, which is weighted too."""
    from alignment.batching import collate_pairs
    from alignment.config import TrainConfig
    from alignment.dpo import train_step
    from alignment.losses import SimPOLoss
    from alignment.modeling import load_causal_lm, load_tokenizer
    from alignment.training import Engine

    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir)
    pad = tok.pad_token_id
    unit, zero = _examples(tok, [1, 1, 1, 1]), _examples(tok, [1, 0, 1, 1])

    def step(micro: list[list], grad_accum: int) -> tuple:
        train = TrainConfig(max_steps=1, lr=LR, warmup_ratio=0.0, scheduler="constant", max_grad_norm=None,
                            grad_accum=grad_accum)
        engine = Engine(copy.deepcopy(model), train, total_steps=1, bf16=False, deepspeed_config=None)
        batches = [collate_pairs(pairs, pad) for pairs in micro]
        keys = [list(range(len(pairs))) for pairs in micro]
        return _run_step(engine, lambda: train_step(engine, None, SimPOLoss(beta=2.0, gamma=0.5), batches, keys,
                                                    rpo_alpha=0.5))

    a = step([[zero[0], zero[1]], [zero[2], zero[3]]], 2)
    b = step([[unit[0]], [unit[2], unit[3]]], 2)
    _same_step(a, b)
    assert a[0]["train/nll_chosen"] == pytest.approx(b[0]["train/nll_chosen"], rel=1e-5)


# ------------------------------------------------------------------------------- a store, by votes


def votes_store(path: Path, votes: dict[int, dict[str, str]]) -> str:
    """A store of one project "desk" whose item n has the answers "A n" and "B n" and is judged as ``votes``
    says: item -> annotator -> ">" (A over B), "<" (B over A) or "=" (a tie). Every annotator judges every item
    (overlap = the number of annotators). Returns ``<db>#desk``."""
    store = Store(path)
    annotators = sorted({name for by in votes.values() for name in by})
    project = store.ensure_project("desk")
    project = store.update_project(project.id, overlap=len(annotators), assign_batch=len(votes))
    store.add_prompts(project.id, [[{"role": "user", "content": f"Question {n}?"}] for n in votes])
    for item_id, prompt, missing in store.items_short_of_candidates(project.id, 2):
        n = prompt[0]["content"].split()[1].rstrip("?")
        store.add_candidates(item_id, [(f"{x} {n}", "m", {"seed": k}) for k, x in enumerate("AB")][:missing])
    for name in annotators:
        user = store.add_user(name, "annotator", f"password-{name}")
        while (item_id := store.next_item(user, project)) is not None:
            item = store.item(item_id)
            a, b = sorted(item.candidates, key=lambda c: c.text)
            vote = votes[int(a.text.split()[1])][name]
            ranks = {a.id: 1, b.id: 1 if vote == "=" else 2} if vote != "<" else {a.id: 2, b.id: 1}
            store.submit(user, item_id, Judgment(ranks=ranks), f"{name}:{item_id}")
    store.close()
    return f"{path}#desk"


# ------------------------------------------------------------------------------- the admin's Export


def test_admin_export_aggregates_across_annotators(tmp_path):
    """The dashboard's Export handler, as the page (or an API call) runs it, with "Pairs across annotators".

    ann1 and ann3 contradict each other on item 0 and ann1 and ann2 on item 2:
      item 0: ann1 A>B, ann2 A>B, ann3 B>A -> A0>B0 2-1: one row (ann2's merged into ann1's), ann3's outvoted
      item 1: all three A>B                -> A1>B1 3-0: one row, 2 merged
      item 2: ann1 A>B, ann2 B>A, ann3 tie -> 1-1 (a tie is no vote): both rows dropped as tied
    majority: 8 annotator rows (3 + 3 + 2) -> 2 kept, 3 merged, 1 contradicted, 2 tied."""
    from feedback_app.annotate import Denied
    from feedback_app.server import build_blocks

    spec = votes_store(tmp_path / "feedback.db", {0: {"ann1": ">", "ann2": ">", "ann3": "<"},
                                                  1: {"ann1": ">", "ann2": ">", "ann3": ">"},
                                                  2: {"ann1": ">", "ann2": "<", "ann3": "="}})
    store = Store(spec.split("#")[0])
    store.add_user("boss", "admin", "password-boss")
    try:
        demo = build_blocks(store)
        handler = next(f.fn for f in demo.fns.values() if f.api_name == "admin_export")
        admin = SimpleNamespace(username="boss")

        message, files = handler("desk", "all", "majority", admin)
        pairs_file = next(Path(f) for f in files if not f.endswith(".unpaired.jsonl"))
        got = [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in _rows(pairs_file)]
        assert got == [("A 0", "B 0"), ("A 1", "B 1")]
        assert [(r["provenance"]["votes_for"], r["provenance"]["votes_against"]) for r in _rows(pairs_file)] == [
            (["ann1", "ann2"], ["ann3"]), (["ann1", "ann2", "ann3"], [])]
        assert all("weight" not in r and r["provenance"]["aggregate"] == "majority" for r in _rows(pairs_file))
        message = html.unescape(message)  # Markdown with the text escaped, as the page shows it
        assert "9 judgments -> 2 preference pairs, 0 unpaired rows" in message
        assert ("pairs across annotators: majority: 8 annotator pairs -> 2 kept (3 merged into an agreeing "
                "annotator's pair, 1 dropped as contradicted, 2 dropped as tied votes)") in message

        message, files = handler("desk", "all", "all", admin)  # the default: every annotator's row
        pairs_file = next(Path(f) for f in files if not f.endswith(".unpaired.jsonl"))
        assert len(_rows(pairs_file)) == 8 and "pairs across annotators: all (8 annotator pairs" in message

        # an unknown mode (an API call can send any text) is refused, and no file is offered
        message, files = handler("desk", "all", "vote", admin)
        assert message.startswith("**Not exported:**") and "'vote'" in message and "majority" in message
        assert files is None
        message, files = handler("desk", "pairs-please", "majority", admin)
        assert message.startswith("**Not exported:**") and "pairs-please" in message and files is None
        with pytest.raises(Denied, match="admin role"):
            handler("desk", "all", "majority", SimpleNamespace(username="ann1"))
    finally:
        store.close()


# ------------------------------------------------------------------------------- SFT data.preferred


# Two annotators, twelve items: they agree on every item (A over B) but item 0, which ann1 orders A over B and
# ann2 B over A (1-1).
SFT_VOTES = {n: {"ann1": ">", "ann2": "<" if n == 0 else ">"} for n in range(12)}


@pytest.mark.parametrize("aggregate", [None, "majority", "drop_contradicted", "all"])
def test_sft_preferred_from_a_store_aggregates(tmp_path, sft_file, aggregate, capsys):
    """Only the chosen answers of the aggregated pairs join SFT: under all both sides of item 0 (each annotator
    "preferred" one), under majority (the SFT default: 1-1 is a tie) and drop_contradicted neither; every other
    item's A answer under each. Minus the prompts the preference phases hold out, as for a file."""
    from alignment.data.preferences import load_preference_examples, split_pairs
    from alignment.pipeline import load_phase_config
    from alignment.sft import PREFERENCE_HOLDOUT, load_sft_records

    spec = votes_store(tmp_path / "feedback.db", SFT_VOTES)
    data = {"train": str(sft_file), "preferred": spec, **({"aggregate": aggregate} if aggregate else {})}
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(json.dumps({"phase": "sft", "model": "x", "output_dir": str(tmp_path / "sft"), "data": data}))
    written, cfg, exported = load_phase_config("sft", str(recipe), [])
    mode = aggregate or "majority"
    assert written.data.aggregate == mode and exported == {"data.preferred": str(tmp_path / "sft/data/preferred.jsonl")}
    assert json.loads(provenance_file(Path(cfg.data.preferred)).read_text())["aggregate"] == mode
    if mode != "all":
        printed = capsys.readouterr().out  # items 1-11: 2 rows -> 1 kept each; item 0's 2 rows dropped
        assert f"data.preferred: pairs across annotators: {mode}: 24 annotator pairs -> 11 kept" in printed

    train, _, report = load_sft_records(cfg)
    plain = SFTConfig(data=SFTDataConfig(train=str(sft_file)))
    added = {(r["messages"][0]["content"], r["messages"][-1]["content"])
             for r in train[len(load_sft_records(plain)[0]):]}
    examples, _ = load_preference_examples(cfg.data.preferred)
    held_out = {e.prompt[0]["content"]
                for e in split_pairs(examples, PREFERENCE_HOLDOUT, cfg.train.seed)["validation"]}
    assert held_out and "Question 0?" not in held_out  # item 0 is trained on, or this test would test nothing
    expected = {(f"Question {n}?", f"A {n}") for n in range(1, 12)} - {(q, f"A {q[9:-1]}") for q in held_out}
    if mode == "all":
        expected |= {("Question 0?", "A 0"), ("Question 0?", "B 0")}
    assert added == expected and report.preferred_added == len(expected)


def test_sft_aggregate_is_checked_where_it_is_written(tmp_path, sft_file):
    recipe = tmp_path / "sft.yaml"
    for value, words in (("vote", "expected one of 'all', 'majority', 'drop_contradicted', 'agreement_weight'"),
                         ("agreement_weight", "SFT does not have")):
        recipe.write_text(json.dumps({"phase": "sft", "model": "x",
                                      "data": {"train": str(sft_file), "preferred": "prefs.jsonl",
                                               "aggregate": value}}))
        with pytest.raises(AlignError) as e:
            load_config(SFTConfig, recipe)
        assert str(recipe) in str(e.value) and "field 'data.aggregate'" in str(e.value) and words in str(e.value)
    assert SFTDataConfig().aggregate == "majority" and PreferenceDataConfig().aggregate == "all"
