"""Lineage, judgment -> model -> candidate -> judgment: every candidate records the weights that wrote it (their
directory and hash; an imported one its file's model name), every store export the snapshot it is (newest
judgment, counts), every trained phase a ``lineage.json`` naming its weights and the snapshots it trained on, and
``Store.rounds`` / ``align feedback lineage`` / the admin dashboard put them together. A store made before lineage
(schema 4) is upgraded when opened.

Every store test runs on SQLite and, when ALIGN_TEST_POSTGRES_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import inspect, select

from alignment.cli import main
from feedback_app.export import materialise, write_lineage
from feedback_app.scoring import weights_sha256
from feedback_app.store import LINEAGE_HEADERS, SCHEMA_VERSION, Store, StoreError, format_rounds, meta
from tests.app.test_feedback_store import _postgres_url, _prompt, _rank_all, _users
from tests.conftest import app_login, call_api, downgrade_store, open_store_concurrently, write_jsonl


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "feedback.db" if request.param == "sqlite" else _postgres_url())
    yield s
    s.close()


def _weights(folder: Path, content: bytes) -> tuple[str, str]:
    """A hand-made model directory (the hash reads only the bytes of its weights files): (path, weights hash)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(content)
    return str(folder.resolve()), weights_sha256(folder)


def _answers(store: Store, project, model: str, path: str = "", sha: str = "", k: int = 2) -> None:
    """Fill every prompt of the project short of ``k`` candidates with answers written by ``model``."""
    for item_id, prompt, missing in store.items_short_of_candidates(project.id, k):
        store.add_candidates(item_id, [(f"{model} answer {j} to {prompt[0]['content']}", model, {"seed": j})
                                       for j in range(missing)], model_path=path, model_sha256=sha)


def _judge_all(store: Store, user, project) -> list[int]:
    """Judge (first candidate best) every prompt the annotator is served; the judgment ids."""
    ids = []
    while (item_id := store.next_item(user, project)) is not None:
        item = store.item(item_id)
        ids.append(store.submit(user, item_id, _rank_all(item, list(range(len(item.candidates)))),
                                f"{user.id}-{item_id}")[0])
    return ids


# ------------------------------------------------------------------------------------------------ candidates


def test_generation_and_training_close_the_loop(tmp_path, tiny_model_dir, capsys):
    """Round 1: a model writes candidates (its directory and weights hash recorded); the judgments train a DPO
    model through `align dpo` on the store, which writes lineage.json; round 2: that model (named by its phase
    folder) writes candidates, and the rounds lead from them back to the judgments."""
    from feedback_app.candidates import GenerationSettings, generate_candidates

    db = tmp_path / "feedback.db"
    store = Store(db)
    p = store.update_project(store.ensure_project().id, overlap=1, assign_batch=16)
    store.add_prompts(p.id, [_prompt(f"Tell me about item {i}") for i in range(16)])
    admin = store.add_user("boss", "admin", "password-1")
    settings = GenerationSettings(model=str(tiny_model_dir), k=2, temperature=1.0, max_new_tokens=6, batch_size=8)
    generate_candidates(store, p.id, settings, store.create_job(p.id, "generate", {}, admin.id, 32))
    base_sha = weights_sha256(Path(tiny_model_dir))
    cands = [c for i in range(1, 17) for c in store.item(i).candidates]
    assert cands and {(c.model, c.model_path, c.model_sha256) for c in cands} == {
        (str(tiny_model_dir), str(Path(tiny_model_dir).resolve()), base_sha)}
    (first,) = store.rounds(p.id)
    assert (first.number, first.weights_sha256, first.candidates, first.judgments, first.lineage) == (
        1, base_sha, len(cands), 0, "")

    u = _users(store, 1)[0]
    ids = _judge_all(store, u, p)
    assert len(ids) == sum(1 for i in range(1, 17) if len(store.item(i).candidates) >= 2) >= 12
    recipe = {"phase": "dpo", "model": str(tiny_model_dir), "output_dir": str(tmp_path / "dpo"),
              "data": {"train": f"{db}#default", "max_length": 64, "split": {"train": 0.75, "validation": 0.25}},
              "train": {"max_steps": 2, "batch_size": 4, "bf16": "false", "eval_every": 2, "save_every": 2},
              "tracking": {"backends": ["none"]}}
    path = tmp_path / "dpo.yaml"
    path.write_text(json.dumps(recipe))
    assert main(["dpo", "--config", str(path)]) == 0
    capsys.readouterr()
    trained = tmp_path / "dpo" / "model"
    provenance = json.loads((tmp_path / "dpo" / "data" / "train.provenance.json").read_text())
    assert provenance["latest_judgment_id"] == max(ids) and provenance["annotators"] == 1
    assert provenance["store_url"] == f"sqlite:///{db.resolve()}" and provenance["project"] == "default"
    lineage = json.loads((tmp_path / "dpo" / "lineage.json").read_text())
    assert lineage["phase"] == "dpo"
    assert lineage["models"] == [{"path": str(trained.resolve()), "weights_sha256": weights_sha256(trained)}]
    (snapshot,) = lineage["snapshots"]
    assert snapshot["field"] == "data.train" and snapshot["latest_judgment_id"] == max(ids)
    assert (snapshot["judgments"], snapshot["annotators"]) == (len(ids), 1) and snapshot["pairs"] == len(ids)

    store.add_prompts(p.id, [_prompt(f"A new question {i}") for i in range(3)])
    settings.model = str(tmp_path / "dpo")  # the phase folder, as recipes name a trained model
    generate_candidates(store, p.id, settings, store.create_job(p.id, "generate", {}, admin.id, 6))
    new = store.item(store.item_id_for_prompt(p.id, _prompt("A new question 0"))).candidates
    assert new and {(c.model_path, c.model_sha256) for c in new} == {(str(trained.resolve()),
                                                                       weights_sha256(trained))}
    rounds = store.rounds(p.id)
    assert [(r.number, r.weights_sha256, r.judgments) for r in rounds] == [
        (1, base_sha, len(ids)), (2, weights_sha256(trained), 0)]
    assert rounds[1].lineage == str((tmp_path / "dpo" / "lineage.json").resolve())
    assert [(s.latest_judgment_id, s.judgments, s.this_store) for s in rounds[1].snapshots] == [
        (max(ids), len(ids), True)]
    assert main(["feedback", "lineage", "--store", str(db)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"project default in {db}: 2 rounds"
    assert out[1].split() == ["round", "model", "weights", "sha256", "candidates", "judgments", "trained", "on"]
    assert out[3].endswith(f"default up to judgment {max(ids)} ({len(ids)} judgments, {len(ids)} pairs, "
                           "1 annotator)"), out
    store.close()


def test_imported_candidates_keep_the_files_model_name_and_no_hash(store, tmp_path):
    from feedback_app.candidates import import_candidates

    p = store.ensure_project()
    # one name per response, one name for every response, none (a file keeps one type per field: three files)
    for name, row in (("per-response.jsonl", {"prompt": "Q1", "responses": ["a1", "b1"],
                                              "model": ["gpt-x", "local:/models/m7"]}),
                      ("one.jsonl", {"prompt": "Q2", "responses": ["a2", "b2"], "model": "gpt-x"}),
                      ("cands.jsonl", {"prompt": "Q3", "responses": ["a3", "b3"]})):
        assert import_candidates(store, p.id, write_jsonl(tmp_path / name, [row])) == (1, 2)
    got = [(c.model, c.model_path, c.model_sha256) for i in (1, 2, 3) for c in store.item(i).candidates]
    assert got == [("gpt-x", "", ""), ("local:/models/m7", "", ""), ("gpt-x", "", ""), ("gpt-x", "", ""),
                   ("imported:cands.jsonl", "", ""), ("imported:cands.jsonl", "", "")]
    rounds = store.rounds(p.id)
    assert [(r.number, r.model, r.weights_sha256, r.candidates, r.lineage) for r in rounds] == [
        (1, "gpt-x", "", 3, ""), (2, "local:/models/m7", "", 1, ""), (3, "imported:cands.jsonl", "", 2, "")]
    assert [line.split()[-4:] for line in format_rounds(rounds)[1:]] == [["-", "3", "0", "-"], ["-", "1", "0", "-"],
                                                                         ["-", "2", "0", "-"]]
    # a hash without the directory it was taken from, or not a SHA-256, is refused
    with pytest.raises(StoreError, match="SHA-256"):
        store.add_candidates(1, [("c1", "m", {})], model_path="/m", model_sha256="abc")
    with pytest.raises(StoreError, match="model_path"):
        store.add_candidates(1, [("c1", "m", {})], model_sha256="0" * 64)
    with pytest.raises(StoreError, match="no project"):
        store.rounds(10_000)


# ------------------------------------------------------------------------------------------------ snapshots


def test_the_provenance_of_an_export_is_a_snapshot(tmp_path):
    db = tmp_path / "feedback.db"
    store = Store(db)
    p = store.update_project(store.ensure_project().id, overlap=2, assign_batch=5)
    store.add_prompts(p.id, [_prompt(f"question {i}") for i in range(3)])
    _answers(store, p, "m", k=3)
    u, v = _users(store, 2)
    ids = _judge_all(store, u, p) + _judge_all(store, v, p)
    out = tmp_path / "run" / "data" / "train.jsonl"
    prov = materialise(f"{db}#default", out)
    assert {k: prov[k] for k in ("latest_judgment_id", "judgments", "pairs", "annotators", "store", "store_url",
                                 "project")} == {
        "latest_judgment_id": max(ids), "judgments": 6, "pairs": 18, "annotators": 2, "store": str(db),
        "store_url": f"sqlite:///{db.resolve()}", "project": "default"}
    assert json.loads(out.with_name("train.provenance.json").read_text()) == prov
    # a revision is a newer judgment: the snapshot moves, though the rows may not change
    item = store.item(1)
    rev, _ = store.submit(u, 1, _rank_all(item, [0, 1, 2]), "revision")
    assert materialise(f"{db}#default", out)["latest_judgment_id"] == rev > max(ids)
    # a judgment in another project moves the snapshot of the whole store, not this project's
    other = store.update_project(store.ensure_project("other").id, overlap=1)
    store.add_prompts(other.id, [_prompt("elsewhere")])
    _answers(store, other, "m")
    (elsewhere,) = _judge_all(store, u, other)
    assert materialise(f"{db}#default", out)["latest_judgment_id"] == rev
    whole = materialise(str(db), tmp_path / "all" / "train.jsonl")
    assert (whole["latest_judgment_id"], whole["project"], whole["judgments"]) == (elsewhere, None, 7)
    store.close()


def test_the_lineage_table_of_hand_built_rounds(tmp_path, capsys):
    """Round 1: base weights; its judgments train a DPO model (hand-made weights, lineage.json written the way
    the pipeline writes it); round 2: that model's candidates. Then the folder is trained again in place on
    more judgments: the round-2 candidates' lineage is unknown (the folder is for other weights now) and the
    new weights' candidates are round 3; a PPO policy trained with that reward model is round 4 (via it)."""
    db = tmp_path / "feedback.db"
    store = Store(db)
    p = store.update_project(store.ensure_project("desk").id, overlap=2, assign_batch=10)
    store.add_prompts(p.id, [_prompt(f"question {i}") for i in range(4)])
    base_path, base_sha = _weights(tmp_path / "base", b"base weights")
    _answers(store, p, "base", base_path, base_sha)
    u, v = _users(store, 2)
    first = _judge_all(store, u, p) + _judge_all(store, v, p)
    assert len(first) == 8

    run = tmp_path / "runs" / "dpo"
    data = run / "data" / "train.jsonl"
    materialise(f"{db}#desk", data)
    dpo_path, dpo_sha = _weights(run / "model", b"dpo weights")
    assert write_lineage(run, run / "model", {"data.train": str(data)}, phase="dpo") == run / "lineage.json"
    store.add_prompts(p.id, [_prompt(f"second question {i}") for i in range(3)])
    _answers(store, p, "runs/dpo", dpo_path, dpo_sha)
    second = _judge_all(store, u, p)
    assert len(second) == 3

    rounds = store.rounds(p.id)
    assert [(r.number, r.model, r.model_path, r.weights_sha256, r.candidates, r.judgments) for r in rounds] == [
        (1, "base", base_path, base_sha, 8, 8), (2, "runs/dpo", dpo_path, dpo_sha, 6, 3)]
    assert (rounds[0].lineage, rounds[0].snapshots) == ("", ())
    (snap,) = rounds[1].store_snapshots
    assert (snap.latest_judgment_id, snap.judgments, snap.pairs, snap.annotators, snap.project) == (
        max(first), 8, 8, 2, "desk")
    assert main(["feedback", "lineage", "--store", str(db), "--project", "desk"]) == 0
    out = capsys.readouterr().out.splitlines()
    w = len(f"runs/dpo ({dpo_path})")
    assert out == [
        f"project desk in {db}: 2 rounds",
        f"{'round':<5}  {'model':<{w}}  weights sha256  candidates  judgments  trained on",
        f"{'1':<5}  {f'base ({base_path})':<{w}}  {base_sha[:12]:<14}  {'8':<10}  {'8':<9}  -",
        f"{'2':<5}  {f'runs/dpo ({dpo_path})':<{w}}  {dpo_sha[:12]:<14}  {'6':<10}  {'3':<9}  desk up to judgment "
        f"{max(first)} (8 judgments, 8 pairs, 2 annotators)",
    ]

    # the folder trained again, in place, on all 11 judgments; then a PPO policy with it as reward model
    materialise(f"{db}#desk", data)
    _, again_sha = _weights(run / "model", b"dpo weights, trained again")
    write_lineage(run, run / "model", {"data.train": str(data)}, phase="dpo")
    store.add_prompts(p.id, [_prompt("third question")])
    _answers(store, p, "runs/dpo", dpo_path, again_sha)
    ppo = tmp_path / "runs" / "ppo"
    ppo_path, ppo_sha = _weights(ppo / "model", b"ppo weights")
    write_lineage(ppo, ppo / "model", {}, phase="ppo", reward_model=str(run))
    store.add_prompts(p.id, [_prompt("fourth question")])
    _answers(store, p, "runs/ppo", ppo_path, ppo_sha)
    rounds = store.rounds(p.id)
    assert [(r.number, r.weights_sha256) for r in rounds] == [(1, base_sha), (2, dpo_sha), (3, again_sha),
                                                              (4, ppo_sha)]
    assert rounds[1].lineage == "" and "is for other weights" in rounds[1].note
    assert [s.latest_judgment_id for s in rounds[2].store_snapshots] == [max(second)]
    rm = str((run / "model").resolve())
    assert [(s.latest_judgment_id, s.via) for s in rounds[3].store_snapshots] == [(max(second), rm)]
    table = format_rounds(rounds)
    assert table[0].split()[:2] == list(LINEAGE_HEADERS[:2])
    assert table[2].endswith("trained again after these candidates)") and "unknown: " in table[2]
    assert table[4].endswith(f"desk up to judgment {max(second)} (11 judgments, 11 pairs, 2 annotators) via "
                             f"reward model {rm}")

    # a model trained on another store, or on files: said so, and ordered as having no snapshot of this one
    other = tmp_path / "other.db"
    elsewhere = Store(other)
    q = elsewhere.update_project(elsewhere.ensure_project().id, overlap=1)
    elsewhere.add_prompts(q.id, [_prompt("x")])
    _answers(elsewhere, q, "m")
    _judge_all(elsewhere, _users(elsewhere, 1)[0], q)
    elsewhere.close()
    foreign = tmp_path / "runs" / "foreign"
    materialise(str(other), foreign / "data" / "train.jsonl")
    foreign_path, foreign_sha = _weights(foreign / "model", b"foreign weights")
    write_lineage(foreign, foreign / "model", {"data.train": str(foreign / "data" / "train.jsonl"),
                                               "data.validation": str(tmp_path / "plain.jsonl")}, phase="rm")
    store.add_prompts(p.id, [_prompt("fifth question")])
    _answers(store, p, "foreign", foreign_path, foreign_sha)
    rounds = store.rounds(p.id)
    # no snapshot of this store: before the trained rounds, after the older candidates without one
    assert [r.weights_sha256 for r in rounds] == [base_sha, dpo_sha, foreign_sha, again_sha, ppo_sha]
    assert format_rounds(rounds)[3].endswith(f"other stores: sqlite:///{other.resolve()}")
    store.close()


def test_record_lineage_is_the_pipelines_hook(tmp_path, capsys):
    """The pipeline's (and `align <phase>`'s) hook writes lineage.json from the phase config's data files, and a
    lineage it cannot write is a warning, not a failed phase."""
    from alignment.pipeline import record_lineage

    db = tmp_path / "feedback.db"
    store = Store(db)
    p = store.update_project(store.ensure_project().id, overlap=1)
    store.add_prompts(p.id, [_prompt("q")])
    _answers(store, p, "m")
    (jid,) = _judge_all(store, _users(store, 1)[0], p)
    store.close()
    out = tmp_path / "rm"
    materialise(str(db), out / "data" / "train.jsonl")
    cfg = SimpleNamespace(output_dir=str(out), data=SimpleNamespace(train=str(out / "data" / "train.jsonl"),
                                                                    validation=None, preferred=None), policies=None)
    assert record_lineage("rm", cfg, None) is None  # no model saved: nothing to hash
    assert "warning: lineage.json not written" in capsys.readouterr().out and not (out / "lineage.json").exists()
    path, sha = _weights(out / "model", b"rm weights")
    assert record_lineage("rm", cfg, out / "model") == out / "lineage.json"
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["models"] == [{"path": path, "weights_sha256": sha}]
    assert [(s["field"], s["latest_judgment_id"]) for s in lineage["snapshots"]] == [("data.train", jid)]


# ------------------------------------------------------------------------------------------------ migration


def test_a_schema_4_store_is_upgraded_when_opened(store, tmp_path):
    assert SCHEMA_VERSION == "6"  # downgrade_store(store, "4") undoes 6 and 5
    p = store.update_project(store.ensure_project().id, overlap=1, assign_batch=5)
    store.add_prompts(p.id, [_prompt(f"question {i}") for i in range(2)])
    _answers(store, p, "old-model")
    _judge_all(store, _users(store, 1)[0], p)
    downgrade_store(store, "4")
    store.close()
    checker = Store(store.url, create=False)  # what `align feedback lineage` opens: upgraded as well
    with checker.read() as c:
        columns = {col["name"] for col in inspect(c).get_columns("candidates")}
        assert {"model_path", "model_sha256"} <= columns
        assert c.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar() == SCHEMA_VERSION
    checker.close()
    store = Store(store.url)
    old = store.item(1).candidates
    assert [(c.model, c.model_path, c.model_sha256) for c in old] == [("old-model", "", "")] * 2  # kept, no hash
    path, sha = _weights(tmp_path / "new", b"new weights")
    store.add_prompts(p.id, [_prompt("new question")])
    _answers(store, p, "new-model", path, sha)
    assert [(r.number, r.model, r.weights_sha256, r.candidates, r.judgments) for r in store.rounds(p.id)] == [
        (1, "old-model", "", 4, 2), (2, "new-model", sha, 2, 0)]
    assert store.integrity_problems() == []
    store.close()


def test_concurrent_opens_upgrade_a_schema_4_store_once(store):
    p = store.ensure_project()
    store.add_prompts(p.id, [_prompt("q")])
    _answers(store, p, "m")
    downgrade_store(store, "4")
    store.close()
    errors = open_store_concurrently(store.url)  # the server and CLI commands starting together
    assert not errors, errors
    reopened = Store(store.url)
    assert [r.candidates for r in reopened.rounds(p.id)] == [2]
    reopened.close()


# ------------------------------------------------------------------------------------------------ the app


def test_the_lineage_table_is_for_admins_only(tmp_path, capsys):
    from fastapi.testclient import TestClient

    from feedback_app.server import create_app

    store = Store(tmp_path / "feedback.db")
    p = store.ensure_project()
    store.add_prompts(p.id, [_prompt("q")])
    path, sha = _weights(tmp_path / "model", b"weights")
    _answers(store, p, "my-model", path, sha)
    store.add_user("root", "admin", "root-password")
    store.add_user("ann", "annotator", "ann-password")

    with TestClient(create_app(store, upload_dir=tmp_path / "uploads")) as client:
        def call(user: str, password: str) -> str:
            app_login(client, user, password)
            return call_api(client, "admin_lineage", [None])

        # an annotator calling the admin endpoint directly: the handler's role check refuses, naming nothing
        result = call("ann", "ann-password")
        assert "event: error" in result and "admin role" in result and path not in result, result
        result = call("root", "root-password")
        table = json.loads(result.split("data:", 1)[1].strip().splitlines()[0])[0]
        assert table["headers"] == list(LINEAGE_HEADERS)
        assert table["data"] == [[1, f"my-model ({path})", sha[:12], 2, 0, "-"]]
    store.close()
