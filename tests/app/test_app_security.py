"""The feedback app against the attacks it must refuse, probed over HTTP and from a hostile page in Chromium.

One ``align app`` server serves the module (upload limit 1 MiB). Each probe checks the outcome where it
would show: the HTTP status, the store (nothing loaded, the session still valid) and the server's private
upload folder (no file was copied into it).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")

from feedback_app.auth import COOKIE, LoginThrottle  # noqa: E402
from feedback_app.security import Uploads, file_references, foreign_origin  # noqa: E402
from feedback_app.simulate import app_login  # noqa: E402
from feedback_app.store import Store  # noqa: E402
from tests.app.test_app_load import app_load  # noqa: E402

PASSWORDS = {"admin": "admin-pass-123", "admin2": "admin2-pass-123", "ann": "ann-pass-123"}
FILE = {"_type": "gradio.FileData"}
CHROMIUM = "/usr/bin/chromium"


@dataclass
class Server:
    url: str
    db: Path
    store: Store
    project_id: int
    log: Any

    def client(self, name: str | None = None) -> httpx.Client:
        c = httpx.Client(base_url=self.url, timeout=30)
        if name is not None:
            app_login(c, name, PASSWORDS[name])
        return c


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("security-app")
    db = root / "feedback.db"
    store = Store(db)
    for name, password in PASSWORDS.items():
        store.add_user(name, "annotator" if name == "ann" else "admin", password)
    project = store.ensure_project("default")
    proc = app_load.Server(db, log=root / "server.log", args=("--max-upload-mb", "1"))
    proc.start()
    try:
        yield Server(proc.url, db, store, project.id, proc.log)
    finally:
        proc.stop()
        store.close()


def upload(client: httpx.Client, name: str, content: bytes) -> httpx.Response:
    return client.post("/gradio_api/upload", files={"files": (name, content)})


def call(client: httpx.Client, api_name: str, data: list[Any]) -> tuple[int, str]:
    """Gradio's HTTP API: start an event, then read its result; (HTTP status of the start, result text)."""
    r = client.post(f"/gradio_api/call/{api_name}", json={"data": data})
    if r.status_code != 200:
        return r.status_code, r.text
    event_id = r.json()["event_id"]
    return 200, client.get(f"/gradio_api/call/{api_name}/{event_id}").text


def folder_files(server: Server, admin: httpx.Client) -> tuple[Path, set[Path]]:
    """The server's private upload folder (found through an upload of our own) and every file in it."""
    r = upload(admin, "probe.txt", b"probe")
    assert r.status_code == 200, r.text
    folder = Path(r.json()[0]).parent.parent
    assert folder.name.startswith("align-app-"), folder
    return folder, {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def prompts_jsonl(n: int, tag: str) -> bytes:
    return "".join(json.dumps({"prompt": f"{tag} question {i}?"}) + "\n" for i in range(n)).encode()


# ------------------------------------------------------------------------------------------------ files


def test_crafted_file_paths_are_refused_before_any_copy(server: Server, tmp_path: Path) -> None:
    admin, annotator = server.client("admin"), server.client("ann")
    folder, before = folder_files(server, admin)
    n_items = server.store.counts(server.project_id)["prompts"]
    secret_file = tmp_path / "secret.jsonl"
    secret_file.write_bytes(prompts_jsonl(3, "secret"))
    link = folder / "link-to-store.jsonl"
    link.symlink_to(server.db)  # as if something had put a symlink into the upload area
    before.add(link)
    crafted = {
        "a system file": "/etc/passwd",
        "the store itself": str(server.db),
        "a readable data file": str(secret_file),
        "traversal out of the upload folder": f"{folder}/../../etc/passwd",
        "a symlink inside the upload folder": str(link),
        "a URL": f"{server.url}/config",
        "a relative path": "feedback.db",
    }
    try:
        for what, path in crafted.items():
            for file_data in ({"path": path, "meta": FILE}, {"path": path}):  # with and without Gradio's marker
                for client in (admin, annotator):
                    status, text = call(client, "admin_load_prompts", [None, file_data])
                    assert status == 403, (what, status, text)
                    assert "passwd" not in text and "root:" not in text
        after = {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}
        assert after == before, f"files appeared in the upload folder: {after - before}"
        assert server.store.counts(server.project_id)["prompts"] == n_items, "nothing was loaded"
        assert "refused a file reference" in server.log()
    finally:
        link.unlink()
        admin.close()
        annotator.close()


def test_only_the_uploader_can_use_an_upload(server: Server) -> None:
    admin, admin2, annotator = server.client("admin"), server.client("admin2"), server.client("ann")
    try:
        r = upload(admin, "prompts.jsonl", prompts_jsonl(4, "uploaded"))
        assert r.status_code == 200, r.text
        path = r.json()[0]
        n = server.store.counts(server.project_id)["prompts"]
        # another admin and an annotator cannot name it
        for client in (admin2, annotator):
            status, _ = call(client, "admin_load_prompts", [None, {"path": path, "meta": FILE}])
            assert status == 403
        assert server.store.counts(server.project_id)["prompts"] == n
        # its uploader can, and the prompts arrive
        status, text = call(admin, "admin_load_prompts", [None, {"path": path, "meta": FILE}])
        assert status == 200 and "4 prompts added" in text, text
        assert server.store.counts(server.project_id)["prompts"] == n + 4
        # a load error names the file, not the server's folders
        r = upload(admin, "broken.jsonl", b'{"prompt": "fine"}\n{"nope": 1}\n')
        status, text = call(admin, "admin_load_prompts", [None, {"path": r.json()[0], "meta": FILE}])
        assert status == 200 and "Not loaded" in text and "broken.jsonl" in text, text
        assert str(Path(path).parent.parent) not in text
    finally:
        for c in (admin, admin2, annotator):
            c.close()


def test_uploads_are_for_admins_and_limited_in_size(server: Server) -> None:
    admin, annotator = server.client("admin"), server.client("ann")
    try:
        folder, before = folder_files(server, admin)
        r = upload(annotator, "prompts.jsonl", prompts_jsonl(2, "annotator"))
        assert r.status_code == 403
        r = upload(admin, "big.jsonl", b"x" * (2 * 2**20))  # the module's server allows 1 MiB
        assert r.status_code == 413
        # a chunked upload has no Content-Length to refuse early: Gradio's own limit stops it
        chunks = iter([b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"c.jsonl\"\r\n\r\n",
                       *[b"y" * 2**16] * 40, b"\r\n--b--\r\n"])
        r = admin.post("/gradio_api/upload", content=chunks,
                       headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413, r.text
        after = {p for p in folder.rglob("*") if p.is_file()}
        new = after - before
        assert all(p.stat().st_size < 2**20 for p in new), "no oversized file was kept"
        assert upload(admin, "small.jsonl", b"z" * 1000).status_code == 200
    finally:
        admin.close()
        annotator.close()


def test_files_are_served_to_admins_only_and_only_from_the_upload_folder(server: Server) -> None:
    admin, annotator = server.client("admin"), server.client("ann")
    try:
        r = upload(admin, "mine.jsonl", prompts_jsonl(1, "served"))
        path = r.json()[0]
        assert admin.get(f"/gradio_api/file={path}").status_code == 200
        assert annotator.get(f"/gradio_api/file={path}").status_code == 403
        folder = Path(path).parent.parent
        for other in ("/etc/passwd", str(server.db), f"{folder}/../../etc/passwd", f"{folder}/nothing-here"):
            assert admin.get(f"/gradio_api/file={other}").status_code == 404, other
    finally:
        admin.close()
        annotator.close()


def test_exports_are_served_to_admins_only(server: Server) -> None:
    admin, annotator = server.client("admin"), server.client("ann")
    try:
        status, text = call(admin, "admin_export", [None, "all", "all"])
        assert status == 200 and "event: complete" in text, text
        data = json.loads(text.split("data:", 1)[1].strip().splitlines()[0])
        urls = [f["url"] for f in data[1]]
        assert len(urls) == 2
        for url in urls:
            path = url.split("/gradio_api/file=", 1)[1]
            assert admin.get(f"/gradio_api/file={path}").status_code == 200
            assert annotator.get(f"/gradio_api/file={path}").status_code == 403
        # an aggregation the menu does not offer is refused before anything is written or offered
        status, text = call(admin, "admin_export", [None, "all", "vote"])
        assert status == 200 and "event: error" in text and "/gradio_api/file=" not in text, text
        status, text = call(annotator, "admin_export", [None, "all", "all"])
        assert status == 200, text  # the event starts, and the handler's role check refuses it
        assert "event: error" in text and "admin role" in text and "/gradio_api/file=" not in text, text
    finally:
        admin.close()
        annotator.close()


def test_export_folders_are_cleaned_up(tmp_path: Path) -> None:
    uploads = Uploads(tmp_path)
    old = uploads.export_folder()
    (old / "x.jsonl").write_text("{}\n")
    os.utime(old, (0, 0))
    new = uploads.export_folder(keep=600)
    assert not old.exists() and new.exists()


# ------------------------------------------------------------------------------------------------ routes


def test_monitoring_and_api_description_are_closed(server: Server) -> None:
    admin, annotator = server.client("admin"), server.client("ann")
    try:
        for client in (admin, annotator):
            for path in ("/monitoring", "/monitoring/summary", "/gradio_api/runs", "/gradio_api/vibe-code",
                         "/gradio_api/profiling/summary", "/gradio_api/proxy=http://127.0.0.1/"):
                assert client.get(path).status_code == 404, path
        assert annotator.get("/gradio_api/info").status_code == 403
        assert admin.get("/gradio_api/info").status_code == 200
        assert annotator.get("/config").status_code == 200  # the page itself still works
    finally:
        admin.close()
        annotator.close()


# ------------------------------------------------------------------------------------------------ origins


def test_foreign_origins_are_refused(server: Server) -> None:
    admin = server.client("admin")
    evil = "http://127.0.0.1:1"  # another port of the same host: same-site, so SameSite cookies still flow
    try:
        folder, before = folder_files(server, admin)
        epoch = server.store.get_user("admin").session_epoch
        r = admin.get("/config", headers={"Origin": evil})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
        r = admin.options("/gradio_api/upload", headers={"Origin": evil, "Access-Control-Request-Method": "POST"})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
        assert admin.post("/logout", headers={"Origin": evil}).status_code == 403
        assert admin.post("/logout", headers={"Origin": "null"}).status_code == 403
        assert admin.post("/logout", headers={"Referer": evil + "/page"}).status_code == 403
        assert admin.post("/logout", headers={"Sec-Fetch-Site": "same-site"}).status_code == 403
        r = admin.post("/gradio_api/upload", files={"files": ("x.txt", b"x")}, headers={"Origin": evil})
        assert r.status_code == 403
        assert server.store.get_user("admin").session_epoch == epoch, "the admin is still signed in"
        assert {p for p in folder.rglob("*") if p.is_file()} == before
        # a link from elsewhere may still open the app (a top-level GET navigation)
        r = admin.get("/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                                    "Accept": "text/html"})
        assert r.status_code == 200
        # the app's own origin passes
        assert admin.get("/config", headers={"Origin": server.url}).status_code == 200
    finally:
        admin.close()


def test_origin_rules() -> None:
    def scope(method: str, **headers: str) -> dict[str, Any]:
        hs = [(b"host", b"app.example:8080")] + [(k.replace("_", "-").lower().encode(), v.encode())
                                                 for k, v in headers.items()]
        return {"method": method, "headers": hs}

    assert foreign_origin(scope("POST", origin="http://app.example:8080")) is None
    assert foreign_origin(scope("POST")) is None  # curl, gradio_client
    assert foreign_origin(scope("POST", origin="http://app.example:9090"))
    assert foreign_origin(scope("GET", origin="http://evil.example"))
    assert foreign_origin(scope("POST", sec_fetch_site="same-site", sec_fetch_mode="navigate"))
    assert foreign_origin(scope("GET", sec_fetch_site="cross-site", sec_fetch_mode="navigate")) is None
    assert foreign_origin(scope("GET", sec_fetch_site="same-site", sec_fetch_mode="cors"))
    assert foreign_origin(scope("POST", origin="https://feedback.example.org"),
                          ["https://feedback.example.org"]) is None


def test_file_references_are_found_at_any_depth() -> None:
    data = {"data": [None, {"x": [{"path": "/a", "meta": FILE}]}, {"path": "/b"}], "fn_index": 3}
    assert sorted(file_references(data)) == ["/a", "/b"]
    assert file_references({"data": ["path", {"paths": 1}]}) == []


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Chromium at {CHROMIUM}")
def test_a_hostile_page_on_another_port_gets_nothing(server: Server) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    admin = server.client("admin")
    folder, before = folder_files(server, admin)
    admin.close()
    epoch = server.store.get_user("admin").session_epoch
    page_html = f"""<!doctype html><html><body><form id="f" method="post" action="{server.url}/logout"></form>
<script>
window.results = {{}};
const app = {json.dumps(server.url)};
async function attempt(name, fn) {{
  try {{ const r = await fn(); window.results[name] = 'read ' + r.status + ' ' + (await r.text()).slice(0, 80); }}
  catch (e) {{ window.results[name] = 'blocked'; }}
}}
(async () => {{
  await attempt('config', () => fetch(app + '/config', {{credentials: 'include'}}));
  await attempt('user', () => fetch(app + '/gradio_api/user', {{credentials: 'include'}}));
  const fd = new FormData(); fd.append('files', new Blob(['stolen']), 'x.jsonl');
  await attempt('upload', () => fetch(app + '/gradio_api/upload', {{method: 'POST', body: fd, credentials: 'include',
                                                                     mode: 'no-cors'}}));
  window.done = true;
}})();
</script></body></html>""".encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(page_html)

        def log_message(self, *args: Any) -> None:
            pass

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    evil = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            context = browser.new_context()
            page = context.new_page()
            page.goto(server.url + "/login")
            page.fill("#username", "admin")
            page.fill("#password", PASSWORDS["admin"])
            page.click("#login")
            page.wait_for_selector("#whoami", timeout=30_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("window.done === true", timeout=30_000)
            results = page.evaluate("window.results")
            assert results["config"] == "blocked" and results["user"] == "blocked", results
            with page.expect_navigation():  # the admin's browser posts a logout form to the app
                page.evaluate("document.getElementById('f').submit()")
            assert "cross-origin request refused" in page.content()
            # still signed in: the app's page opens without a login
            page.goto(server.url + "/")
            page.wait_for_selector("#whoami", timeout=30_000)
            browser.close()
    finally:
        evil.shutdown()
    assert server.store.get_user("admin").session_epoch == epoch, "the cross-site logout was refused"
    assert {p for p in folder.rglob("*") if p.is_file()} == before, "the cross-site upload was refused"
    evil_origin = f"origin 'http://127.0.0.1:{port}' is not this server"
    for request in ("GET /config", "POST /logout"):
        assert f"refused {request}: {evil_origin}" in server.log(), request


# ------------------------------------------------------------------------------------------------ logins


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_stranger_cannot_lock_a_user_out() -> None:
    clock = Clock()
    t = LoginThrottle(limit=5, window=300, address_limit=20, clock=clock)
    for _ in range(12):
        t.failed("admin", "203.0.113.9")
    assert t.blocked("admin", "203.0.113.9") > 0, "the guesser is locked out"
    assert t.blocked("admin", "198.51.100.5") == 0, "the admin at their own address is not"
    assert t.delay("admin") > 0, "but every attempt for a much-guessed name is slowed"
    clock.now += 301
    assert t.delay("admin") == 0


def test_lock_doubles_and_success_clears() -> None:
    clock = Clock()
    t = LoginThrottle(limit=5, window=300, address_limit=100, max_lock=3600, clock=clock)
    for _ in range(5):
        t.failed("ann", "a")
    assert t.blocked("ann", "a") == pytest.approx(300)
    clock.now += 301
    assert t.blocked("ann", "a") == 0
    for _ in range(5):  # five more failures: the lock is now longer than the window
        t.failed("ann", "a")
    assert t.blocked("ann", "a") > 300
    t.succeeded("ann", "a")
    assert t.blocked("ann", "a") == 0
    for name in range(100):  # one address trying many names
        t.failed(f"user{name}", "b")
    assert t.blocked("someone-else", "b") > 0


def test_forwarded_for_is_ignored_unless_from_a_trusted_proxy(tmp_path: Path) -> None:
    db = tmp_path / "feedback.db"
    store = Store(db)
    store.add_user("admin", "admin", PASSWORDS["admin"])
    store.ensure_project("default")
    store.close()

    def attempts(url: str, forwarded: list[str], password: str = "wrong") -> list[int]:
        with httpx.Client(base_url=url, timeout=30) as c:
            return [c.post("/login", data={"username": "admin", "password": password},
                           headers={"X-Forwarded-For": f}).status_code for f in forwarded]

    plain = app_load.Server(db, log=tmp_path / "plain.log").start()
    try:  # rotating the header does not rotate the address the throttle counts
        codes = attempts(plain.url, [f"203.0.113.{i}" for i in range(7)])
        assert codes[:5] == [401] * 5 and codes[5:] == [429, 429], codes
    finally:
        plain.stop()
    proxied = app_load.Server(db, log=tmp_path / "proxied.log", args=("--trusted-proxy", "127.0.0.1")).start()
    try:  # behind a trusted proxy the forwarded address counts: a guesser there does not lock the admin out
        assert attempts(proxied.url, ["203.0.113.7"] * 7)[-1] == 429
        assert attempts(proxied.url, ["198.51.100.5"], PASSWORDS["admin"]) == [303]
    finally:
        proxied.stop()


def test_login_cookie_is_strict_and_http_only(server: Server) -> None:
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/login", data={"username": "ann", "password": PASSWORDS["ann"]})
        cookie = r.headers["set-cookie"].lower()
        assert COOKIE in cookie and "httponly" in cookie and "samesite=strict" in cookie


@pytest.mark.parametrize("args, message", [
    (["--max-upload-mb", "0"], "--max-upload-mb must be above 0"),
    (["--allowed-origin", "evil.example/path"], "--allowed-origin takes scheme://host[:port]"),
])
def test_bad_server_options_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                        message: str) -> None:
    from alignment.cli import main

    assert main(["app", "--store", str(tmp_path / "fb.db"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "fb.db").exists(), "nothing was created"


def test_no_cors_for_foreign_origins_whatever_the_host(tmp_path: Path) -> None:
    """Served on 0.0.0.0, Gradio's own CORS layer would echo any Origin with credentials: ours answers first."""
    from fastapi.testclient import TestClient

    from feedback_app.server import create_app

    store = Store(tmp_path / "fb.db")
    store.ensure_project("default")
    store.add_user("admin", "admin", PASSWORDS["admin"])
    client = TestClient(create_app(store, upload_dir=tmp_path / "uploads"), base_url="http://0.0.0.0:7860",
                        follow_redirects=False)
    r = client.post("/login", data={"username": "admin", "password": PASSWORDS["admin"]})
    assert r.status_code == 303
    for origin in ("http://evil.example", "http://localhost:7860", "null"):
        r = client.get("/config", headers={"Origin": origin})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers, origin
        r = client.options("/gradio_api/queue/join", headers={"Origin": origin,
                                                               "Access-Control-Request-Method": "POST"})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers, origin
    r = client.get("/config", headers={"Origin": "http://0.0.0.0:7860"})
    assert r.status_code == 200 and r.headers.get("access-control-allow-origin") in (None, "http://0.0.0.0:7860")
    store.close()
