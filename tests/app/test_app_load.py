"""The feedback app under load, killed mid-load, and probed without a valid session.

The first two tests drive a real ``align app`` subprocess over HTTP with ``scripts/app_load.py`` (one thread
per annotator session, Gradio's queue protocol under our session cookie). Latency is printed, not asserted
(``pytest -s`` shows it). The third builds the app in-process and knocks on every route it serves.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import sqlite3
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("app_load", REPO / "scripts" / "app_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["app_load"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


app_load = _load_script()


def _report(title: str, result, sessions: int, stored: int) -> None:
    print(f"\n{title}\n" + app_load.markdown_table(app_load.summary(result, sessions, stored)))


# ------------------------------------------------------------------------------------------------ load


def test_concurrent_sessions_store_every_judgment_once(tmp_path: Path) -> None:
    n_users, per_user = 50, 20
    store, project, creds = app_load.setup_store(tmp_path / "feedback.db", n_users, per_user, k=3, overlap=3)
    server = app_load.Server(tmp_path / "feedback.db", log=tmp_path / "server.log")
    try:
        server.start()
        result = app_load.run_load(server.url, creds, per_user)
    finally:
        server.stop()
    stored = store.count_judgment_rows()
    _report(f"{n_users} sessions x {per_user} judgments", result, n_users, stored)

    assert result.errors == [], result.errors[:10]
    assert len(result.acks) == n_users * per_user
    assert all(a.fresh for a in result.acks)
    assert stored == n_users * per_user
    assert app_load.check_acks(store, project.id, result) == []  # one row per ack: its user, item and ranks

    latest = store.latest_judgments(project.id)
    assert len(latest) == n_users * per_user
    pairs = Counter((sj.user_name, sj.item_id) for sj in latest)
    assert max(pairs.values()) == 1
    per_user_items: dict[str, set[int]] = {}
    for sj in latest:
        per_user_items.setdefault(sj.user_name, set()).add(sj.item_id)
    assert sorted(per_user_items) == sorted(name for name, _ in creds)
    assert all(len(items) == per_user for items in per_user_items.values())
    annotators = Counter(sj.item_id for sj in latest)
    assert max(annotators.values()) <= project.overlap
    assert app_load.over_overlap(store, project) == []
    # every session saw its items in order, one per ack, and each ack is the item it was shown
    for name, _ in creds:
        shown = result.displayed[name]
        acked = [a.prompt_html for a in result.acks if a.user == name]
        assert acked == shown[:per_user]
        assert len(set(acked)) == per_user
    assert store.integrity_problems() == []
    store.close()


def test_kill_mid_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "feedback.db"
    n_users, kill_after = 20, 80
    store, project, creds = app_load.setup_store(db, n_users, 0, k=3, overlap=2, n_items=300)
    acked = threading.Event()
    lock = threading.Lock()
    count = [0]

    def on_ack(_ack) -> None:
        with lock:
            count[0] += 1
            if count[0] >= kill_after:
                acked.set()

    server = app_load.Server(db, log=tmp_path / "server1.log")
    holder: dict[str, object] = {}
    loader = threading.Thread(target=lambda: holder.update(
        result=app_load.run_load(server.url, creds, 10**6, on_ack=on_ack, timeout=60)), daemon=True)
    try:
        server.start()
        loader.start()
        assert acked.wait(240), f"only {count[0]} acks before the deadline; server log:\n{server.log()[-3000:]}"
        server.kill()  # SIGKILL, with submits in flight
    finally:
        server.kill()
        if loader.is_alive():
            loader.join(120)
    assert not loader.is_alive()
    first = holder["result"]
    kinds = Counter(m.group(1) if (m := re.search(r"judgments: (\w+)", e)) else e for e in first.errors)
    print(f"\nkilled after {len(first.acks)} acks; how the sessions ended: {dict(kinds)}")
    # every session ended on the dead server, none because the app refused a judgment
    assert not [e for e in first.errors if "not acknowledged" in e or "nothing to annotate" in e], first.errors
    assert len(first.acks) >= kill_after

    with sqlite3.connect(db) as raw:  # the file as SQLite itself sees it, after the kill, before any restart
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert store.integrity_problems() == []
    # every acknowledged judgment is there, once, as sent; rows nobody acknowledged: at most one per session
    assert app_load.check_acks(store, project.id, first, max_unacked=n_users) == []
    rows_after_kill = store.count_judgment_rows()

    server2 = app_load.Server(db, log=tmp_path / "server2.log")
    try:
        server2.start()
        second = app_load.run_load(server2.url, creds, 3)
    finally:
        server2.stop()
    _report("after the restart", second, n_users, store.count_judgment_rows())
    assert second.errors == [], second.errors[:10]
    assert len(second.acks) == 3 * n_users
    both = app_load.LoadResult(acks=first.acks + second.acks)
    assert app_load.check_acks(store, project.id, both, max_unacked=n_users) == []
    assert store.count_judgment_rows() == rows_after_kill + 3 * n_users
    assert app_load.over_overlap(store, project) == []
    assert store.integrity_problems() == []
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    store.close()


# ------------------------------------------------------------------------------------------------ refusal


def _routes(routes, prefix: str = ""):
    """(path template, methods) of every HTTP route, through mounts (the Gradio app) and included routers."""
    from fastapi.routing import iter_route_contexts
    from starlette.routing import Mount, WebSocketRoute

    for ctx in iter_route_contexts(routes):
        route = ctx.original_route
        if isinstance(route, Mount):
            inner = getattr(route, "routes", None)
            if inner:
                yield from _routes(inner, prefix + route.path)
            else:  # a mounted app without routes (static files): any path below it
                yield prefix + route.path + "/{path:path}", {"GET"}
        elif isinstance(route, WebSocketRoute) or ctx.path is None:
            continue
        else:
            yield prefix + ctx.path, set(ctx.methods or {"GET"})


def _fill(template: str, path_value: str) -> str:
    def value(m: re.Match[str]) -> str:
        conv = m.group(2)
        return "1" if conv == "int" else path_value if conv == "path" else "x"

    return re.sub(r"\{(\w+)(?::(\w+))?\}", value, template)


def test_unauthenticated_requests_are_refused(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from feedback_app import auth
    from feedback_app.security import PUBLIC
    from feedback_app.server import create_app
    from feedback_app.store import Store

    db = tmp_path / "feedback.db"
    store = Store(db)
    store.ensure_project("default")
    alice = store.add_user("alice", "annotator", "alice-password")
    bob = store.add_user("bob", "annotator", "bob-password")
    store.add_user("carol", "annotator", "carol-password")
    admin = store.add_user("root", "admin", "root-password")
    app = create_app(store, upload_dir=tmp_path / "uploads")
    client = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
    secret = store.secret()

    templates = sorted(set((p, frozenset(m)) for p, m in _routes(app.routes)))
    paths = {p for p, _ in templates}
    assert {"/login", "/config", "/gradio_api/queue/join", "/gradio_api/upload", "/gradio_api/info"} <= paths
    assert any(p.startswith("/gradio_api/file=") for p in paths)
    requests = set()
    for template, methods in templates:
        for value in ("x/y.txt", str(db)):  # a path parameter: something, and the store file itself
            for method in {*methods, "OPTIONS"}:
                requests.add((method, _fill(template, value)))
    print(f"\n{len(templates)} routes, {len(requests)} requests per cookie")

    # /login is the only public route (its GET shows the form, its POST signs in)
    PUBLIC_PATHS = {path for _, path in PUBLIC}  # noqa: N806
    assert PUBLIC_PATHS == {"/login"}, PUBLIC_PATHS

    def probe(cookie: str | None) -> list[str]:
        """Every request that got through (not 401, not a 303 to the login page)."""
        through = []
        headers_json = {"accept": "application/json"}
        headers_html = {"accept": "text/html,application/xhtml+xml"}
        if cookie is not None:
            headers_json["cookie"] = headers_html["cookie"] = f"{auth.COOKIE}={cookie}"
        for method, path in sorted(requests):
            if path == "/login":
                continue
            for headers in ((headers_json, headers_html) if cookie is None else (headers_json,)):
                assert not client.cookies
                # streamed: an event stream that lets a request through answers its status, then we hang up
                with client.stream(method, path, headers=headers) as resp:
                    status, location = resp.status_code, resp.headers.get("location")
                    sets_session = auth.COOKIE in resp.headers.get("set-cookie", "")
                if path in PUBLIC_PATHS:
                    if status == 200 or sets_session:
                        through.append(f"{method} {path} -> {status} (public path)")
                elif not (status == 401 or (status == 303 and location == "/login")):
                    through.append(f"{method} {path} -> {status}")
        return through

    def cookie_of(name: str, password: str) -> str:
        resp = client.post("/login", data={"username": name, "password": password})
        assert resp.status_code == 303, resp.text
        cookie = resp.cookies[auth.COOKIE]
        client.cookies.clear()  # the test client keeps cookies; every probe names its own
        return cookie

    # a valid cookie gets in (so the probes below mean something) ...
    good = cookie_of("alice", "alice-password")
    assert client.get("/config", headers={"cookie": f"{auth.COOKIE}={good}"}).status_code == 200
    assert client.get("/gradio_api/info", headers={"cookie": f"{auth.COOKIE}={good}"}).status_code == 403
    root_cookie = cookie_of("root", "root-password")
    assert client.get("/gradio_api/info", headers={"cookie": f"{auth.COOKIE}={root_cookie}"}).status_code == 200
    # ... no cookie does not, anywhere
    assert probe(None) == []

    body, sig = good.rsplit(".", 1)
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    _, epoch, expires = raw.split("|")
    as_admin = base64.urlsafe_b64encode(f"root|{epoch}|{expires}".encode()).decode().rstrip("=")
    longer = base64.urlsafe_b64encode(f"alice|{epoch}|{int(expires) + 10**6}".encode()).decode().rstrip("=")
    forged = {
        "garbage": "not-a-cookie",
        "empty": "",
        "wrong secret": auth.make_cookie(os.urandom(32), admin),
        "body swapped to admin": f"{as_admin}.{sig}",
        "expiry extended": f"{longer}.{sig}",
        "signature flipped": f"{body}.{sig[:-1]}{'0' if sig[-1] != '0' else '1'}",
        "no signature": body,
        "expired": auth.make_cookie(secret, alice, now=time.time() - 13 * 3600),
    }
    for what, cookie in forged.items():
        assert probe(cookie) == [], what

    # a disabled account: its old cookie, and even a freshly signed one with its current epoch
    bob_cookie = auth.make_cookie(secret, bob)
    store.set_active("bob", False)
    assert probe(bob_cookie) == [], "disabled user's cookie"
    assert probe(auth.make_cookie(secret, store.get_user("bob"))) == [], "disabled user, current epoch"
    assert client.post("/login", data={"username": "bob", "password": "bob-password"}).status_code == 401

    # a user seen a moment ago (the session check caches the row briefly), disabled: refused once the cache ends
    carol_cookie = cookie_of("carol", "carol-password")
    assert client.get("/config", headers={"cookie": f"{auth.COOKIE}={carol_cookie}"}).status_code == 200
    store.set_active("carol", False)
    time.sleep(auth._CACHE_SECONDS + 0.5)
    assert probe(carol_cookie) == [], "disabled after use"

    # logging out ends the cookie at once
    assert client.post("/logout", headers={"cookie": f"{auth.COOKIE}={good}"}).status_code == 303
    assert probe(good) == [], "logged out"
    store.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))
