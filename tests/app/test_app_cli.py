"""``align app ...`` and ``align feedback ...`` on the command line: ``--store`` wherever it is given, ``$ALIGN_STORE``
when it is given nowhere, output at the default level and under ``-q``/``-v``, and no database password printed.

Every command runs in an empty working directory, so a store opened by mistake at the default path (feedback.db)
shows up as a file there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import feedback_app.store as store_module
from alignment.cli import main
from feedback_app.headtohead import create_from_files
from feedback_app.store import Store, database_url

PASSWORD = "a-long-password"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def prod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """prod.db with the user alice, the project default and the head-to-head project h2h; the working
    directory an empty folder; $ALIGN_STORE unset."""
    monkeypatch.delenv("ALIGN_STORE", raising=False)
    db = tmp_path / "prod.db"
    store = Store(db)
    store.add_user("alice", "admin", PASSWORD)
    store.ensure_project("default")
    old = _jsonl(tmp_path / "old.jsonl", [{"prompt": f"q{i}", "answer": f"old {i}", "model": "r1"} for i in range(3)])
    new = _jsonl(tmp_path / "new.jsonl", [{"prompt": f"q{i}", "answer": f"new {i}", "model": "r2"} for i in range(3)])
    create_from_files(store, "h2h", old, new)
    store.close()
    _jsonl(tmp_path / "gold.jsonl", [])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return db


# Each command that takes --store: the words before the point where a parent parser ends and its subcommand's
# begins (where --store can go besides the end), the arguments after the command, and the exit status.
COMMANDS = {
    "app (serve)": (["app"], [], 0),
    "users add": (["app", "users", "add"], ["carol", "--role", "annotator", "--generate"], 0),
    "users passwd": (["app", "users", "passwd"], ["alice", "--generate"], 0),
    "users disable": (["app", "users", "disable"], ["alice"], 0),
    "users enable": (["app", "users", "enable"], ["alice"], 0),
    "users list": (["app", "users", "list"], [], 0),
    "feedback export": (["feedback", "export"], ["--out", "{tmp}/out/pairs.jsonl"], 0),
    "feedback check": (["feedback", "check"], [], 0),
    "feedback gold": (["feedback", "gold"], ["{tmp}/gold.jsonl"], 0),
    "feedback score": (["feedback", "score"], ["--project", "nope", "--reward-model", "{tmp}/none"], 2),
    "feedback lineage": (["feedback", "lineage"], [], 0),
    "h2h create": (["feedback", "h2h", "create"], ["--project", "h2h-2", "--baseline-answers", "{tmp}/old.jsonl",
                                                   "--challenger-answers", "{tmp}/new.jsonl"], 0),
    "h2h report": (["feedback", "h2h", "report"], ["--project", "h2h"], 0),
}
CASES = [(name, at) for name, (words, _, _) in COMMANDS.items() for at in range(1, len(words) + 1)]


@pytest.mark.parametrize(("name", "at"), CASES, ids=[f"{n}: --store after word {at}" for n, at in CASES])
def test_store_is_the_one_given_wherever_it_is_given(prod: Path, name: str, at: int, monkeypatch, capsys):
    """``align app --store X users add`` wrote to feedback.db: the users subparser's default replaced the X its
    parent had parsed. Now every position of --store reaches the command, and nothing opens feedback.db."""
    words, rest, status = COMMANDS[name]
    opened: list[str] = []
    real_init = Store.__init__

    def spy(self: Store, store: str | Path, **kwargs: object) -> None:
        opened.append(database_url(store))
        real_init(self, store, **kwargs)

    monkeypatch.setattr(store_module.Store, "__init__", spy)
    monkeypatch.setattr("feedback_app.server.serve", lambda store, *a, **k: opened.append(database_url(store)))
    rest = [r.replace("{tmp}", str(prod.parent)) for r in rest]
    argv = [*words[:at], "--store", str(prod), *words[at:], *rest]
    assert main(argv) == status, capsys.readouterr()
    assert opened and set(opened) == {database_url(prod)}, (argv, opened)
    assert not Path("feedback.db").exists()
    if name == "users add":
        assert Store(prod).get_user("carol") is not None
    if name == "feedback score":  # fails on the project: in the store given, not in feedback.db
        assert f"no project 'nope' in {prod}" in capsys.readouterr().err


def test_a_store_given_twice_is_the_later_one(prod: Path, tmp_path: Path):
    other = tmp_path / "other.db"
    assert main(["app", "--store", str(other), "users", "add", "dan", "--role", "admin", "--generate",
                 "--store", str(prod)]) == 0
    assert Store(prod).get_user("dan") is not None and not other.exists()


def test_align_store_in_the_environment_is_the_default(prod: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGN_STORE", str(prod))
    assert main(["app", "users", "add", "erin", "--role", "annotator", "--generate"]) == 0
    assert Store(prod).get_user("erin") is not None and not Path("feedback.db").exists()
    assert main(["feedback", "h2h", "report", "--project", "h2h"]) == 0
    # The flag wins over the environment.
    flagged = tmp_path / "flag.db"
    assert main(["app", "users", "add", "erin", "--role", "annotator", "--generate", "--store", str(flagged)]) == 0
    assert Store(flagged).get_user("erin") is not None
    # -v says which store and where the name came from.
    capsys.readouterr()
    assert main(["-v", "app", "users", "list"]) == 0
    assert f"feedback store {prod} (from $ALIGN_STORE)\n" in capsys.readouterr().out
    # Neither: feedback.db in the working directory, as before.
    monkeypatch.delenv("ALIGN_STORE")
    assert main(["app", "users", "add", "frank", "--role", "annotator", "--generate"]) == 0
    assert Store("feedback.db").get_user("frank") is not None


def test_default_output_is_unchanged_and_quiet_keeps_the_results(prod: Path, capsys):
    assert main(["app", "users", "add", "gus", "--role", "annotator", "--generate", "--store", str(prod)]) == 0
    out, err = capsys.readouterr()
    added, shown, end = out.split("\n")
    password = shown.removeprefix("password (shown once): ")
    assert (added, end, err) == (f"added gus (annotator) to sqlite:///{prod}", "", "")
    assert Store(prod).authenticate("gus", password)
    # -q: the status line goes, the password shown once and a listing stay (they are what was asked for).
    assert main(["-q", "app", "users", "add", "hal", "--role", "annotator", "--generate", "--store", str(prod)]) == 0
    assert capsys.readouterr().out.startswith("password (shown once): ")
    assert main(["-q", "app", "users", "list", "--store", str(prod)]) == 0
    assert "hal\tannotator\tactive\n" in capsys.readouterr().out
    assert main(["-q", "app", "users", "disable", "hal", "--store", str(prod)]) == 0
    assert capsys.readouterr().out == ""
    assert main(["app", "users", "enable", "hal", "--store", str(prod)]) == 0  # the -q before is not kept
    assert capsys.readouterr().out == "hal: enabled\n"
    # Errors stay one line on standard error under -q.
    assert main(["-q", "feedback", "gold", "x.jsonl", "--store", str(prod), "--project", "nope"]) == 2
    assert capsys.readouterr().err == f"error: no project 'nope' in {prod} (projects: default, h2h)\n"


URL = "postgresql+psycopg://user:s3cret-pw@127.0.0.1:1/feedback"  # port 1: nothing listens, refused at once


@pytest.mark.parametrize("argv", [["app", "users", "list"], ["app", "users", "add", "ivy", "--role", "admin",
                                                                  "--generate"], ["app"], ["-v", "feedback", "check"]],
                         ids=["users list", "users add", "app (serve)", "-v check"])
def test_a_database_url_is_printed_without_its_password(prod: Path, argv: list[str], monkeypatch, capsys):
    pytest.importorskip("psycopg")
    monkeypatch.setenv("ALIGN_STORE", URL)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "s3cret" not in out + err
    assert err.startswith("error: feedback store postgresql+psycopg://user:***@127.0.0.1:1/feedback: ") \
        and err.count("\n") == 1, err
    if "-v" in argv:
        assert "feedback store postgresql+psycopg://user:***@127.0.0.1:1/feedback (from $ALIGN_STORE)" in out


def test_the_server_start_lines_never_show_the_database_password(monkeypatch, capsys, tmp_path):
    """`align app` names its store when it starts; a PostgreSQL URL's password stays out of that line."""
    import types

    import uvicorn

    from feedback_app import server

    url = "postgresql+psycopg://expert:s3cret-pw@db.internal:5432/feedback"

    class FakeStore:
        def __init__(self, path: str) -> None:
            self.url = path

        def ensure_project(self, name: str) -> None: ...

        def fail_interrupted_jobs(self) -> int:
            return 1

        def list_users(self) -> list:
            return []

    monkeypatch.setattr(server, "Store", FakeStore)
    monkeypatch.setattr(server, "create_app", lambda *a, **k: types.SimpleNamespace(
        state=types.SimpleNamespace(upload_folder=str(tmp_path / "uploads"))))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    server.serve(url)
    out = capsys.readouterr().out
    assert "s3cret-pw" not in out
    assert "[app] feedback store: postgresql+psycopg://expert:***@db.internal:5432/feedback" in out
    assert "--store postgresql+psycopg://expert:***@db.internal" in out  # the add-an-admin hint too
