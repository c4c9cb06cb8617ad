"""What every request must pass before any of the app (ours or Gradio's) runs: one ASGI middleware.

In order, for each HTTP request:

1. **Origin.** A browser request from another origin is refused (403): an ``Origin`` header that is not this
   server's, or ``Sec-Fetch-Site: same-site/cross-site`` on anything but a plain link (a top-level GET
   navigation). A page on another port of the same host is *same-site*, so the session cookie's
   ``SameSite=Strict`` alone would not stop it. No CORS header is ever sent for a foreign origin.
2. **Session.** Everything but the login page needs a valid session cookie (401, or a redirect to the
   login page for a browser page).
3. **Route allow-list.** Only the routes the app's page and API clients use are served; the rest of
   Gradio's routes (monitoring, run history, vibe editing, proxies, streams, ...) answer 404. API
   description (``/gradio_api/info``), file downloads and uploads are for admins only (403 for annotators).
4. **Files.** An upload larger than the limit is refused (413) from its ``Content-Length`` before a byte is
   read (Gradio checks the streamed size too). The paths each upload returns are remembered for the user
   who made it; an event whose data names a file (any object with a ``path``) is refused (403) unless every
   such path is one this user uploaded to this server, so no server file can be made to enter Gradio's
   cache. File downloads are served only from the server's private upload folder.

Handlers still check the user and role themselves (``require`` in :mod:`feedback_app.annotate`): this layer
decides which requests reach Gradio at all, the handlers decide what a user may do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from feedback_app.auth import COOKIE, Sessions
from feedback_app.store import User

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SAFE_METHODS = {"GET", "HEAD"}
PUBLIC = {("GET", "/login"), ("HEAD", "/login"), ("POST", "/login")}
# Routes for every signed-in user: the page, its assets, Gradio's event queue, our logout.
USER_EXACT = {
    "/", "/config", "/config/", "/theme.css", "/favicon.ico", "/manifest.json", "/robots.txt", "/logout",
    "/gradio_api/theme.css", "/gradio_api/queue/data", "/gradio_api/queue/join", "/gradio_api/cancel",
    "/gradio_api/reset", "/gradio_api/reset/", "/gradio_api/startup-events", "/gradio_api/user",
    "/gradio_api/user/", "/gradio_api/app_id", "/gradio_api/app_id/", "/gradio_api/login_check",
    "/gradio_api/login_check/",
}
USER_PREFIX = ("/assets/", "/static/", "/svelte/", "/gradio_api/heartbeat/")
# Gradio's HTTP API for clients (gradio_client, curl): a POST starts an event, a GET reads its result.
EVENT_ROUTE = re.compile(r"^/gradio_api/(?:call(?:/v2)?|run|api)/[\w-]+/?$")
EVENT_RESULT = re.compile(r"^/gradio_api/call(?:/v2)?/[\w-]+/[\w-]+/?$")
ADMIN_EXACT = {"/gradio_api/info", "/gradio_api/info/", "/gradio_api/upload", "/gradio_api/upload_progress"}
FILE_PREFIX = "/gradio_api/file="
UPLOAD = "/gradio_api/upload"
MAX_EVENT_BYTES = 16 * 1024 * 1024  # an event's JSON body: three 20,000-character texts fit many times over


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _netloc(url: str) -> str:
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return "?"


def foreign_origin(scope: Scope, allowed_origins: Iterable[str] = ()) -> str | None:
    """Why a browser request comes from another origin (None when it does not).

    Requests without browser headers (``curl``, ``gradio_client``) pass: forging a request is only an
    attack when a victim's browser adds the victim's cookie, and browsers send these headers."""
    method = scope["method"]
    host = (_header(scope, b"host") or "").lower()
    allowed = {o.rstrip("/").lower() for o in allowed_origins}
    origin = _header(scope, b"origin")
    if origin is not None and origin.rstrip("/").lower() not in allowed and \
            (origin == "null" or _netloc(origin) != host):
        return f"origin {origin!r} is not this server"
    site = _header(scope, b"sec-fetch-site")
    if site in ("same-site", "cross-site") and origin not in allowed:
        navigation = _header(scope, b"sec-fetch-mode") == "navigate" and method in SAFE_METHODS
        if not navigation:
            return f"a {site} request"
    if method not in SAFE_METHODS and origin is None:
        referer = _header(scope, b"referer")
        if referer and _netloc(referer) != host and not any(referer.lower().startswith(a) for a in allowed):
            return "referer is not this server"
    return None


def file_references(data: Any) -> list[Any]:
    """Every ``path`` value of every object in an event's JSON data (Gradio's ``FileData`` and look-alikes)."""
    found: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "path" in item:
                found.append(item["path"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


class Uploads:
    """The files each user uploaded to this server, by real path; forgotten after ``ttl`` seconds."""

    def __init__(self, folder: Path, ttl: float = 6 * 3600) -> None:
        self.folder = folder.resolve()
        self.ttl = ttl
        self._owner: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def inside(self, path: str | Path) -> Path | None:
        """``path`` resolved, when it is a regular file in the upload folder reached without a symlink."""
        p = Path(path)
        if not p.is_absolute():
            return None
        real = p.resolve()
        if real != Path(os.path.abspath(p)) or not real.is_relative_to(self.folder) or not real.is_file():
            return None
        return real

    def export_folder(self, keep: float = 600.0) -> Path:
        """A new folder for one export inside the private folder; earlier exports older than ``keep`` seconds
        are removed (Gradio serves its own copy of each exported file, which its cache clean-up removes)."""
        root = self.folder / "exports"
        root.mkdir(mode=0o700, exist_ok=True)
        now = time.time()
        for old in root.iterdir():
            try:
                if now - old.stat().st_mtime > keep:
                    shutil.rmtree(old, ignore_errors=True)
            except FileNotFoundError:
                continue
        return Path(tempfile.mkdtemp(dir=root))

    def add(self, user: str, paths: Iterable[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for path in paths:
                real = self.inside(path)
                if real is not None:
                    self._owner[str(real)] = (user, now)

    def owned_by(self, user: str, path: Any) -> bool:
        if not isinstance(path, str):
            return False
        real = self.inside(path)
        if real is None:
            return False
        now = time.monotonic()
        with self._lock:
            entry = self._owner.get(str(real))
        return entry is not None and entry[0] == user and now - entry[1] < self.ttl


def _allowed_route(method: str, path: str, user: User) -> int:
    """200 when ``user`` may call the route, else the status to answer (403 admin-only, 404 not served)."""
    if path in USER_EXACT or path.startswith(USER_PREFIX):
        return 200
    if (method == "POST" and EVENT_ROUTE.match(path)) or (method in SAFE_METHODS and EVENT_RESULT.match(path)):
        return 200
    if path in ADMIN_EXACT or path.startswith(FILE_PREFIX):
        return 200 if user.is_admin else 403
    return 404


class Guard:
    """The middleware (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, sessions: Sessions, uploads: Uploads, max_upload_bytes: int,
                 allowed_origins: Iterable[str] = (), log: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.sessions = sessions
        self.uploads = uploads
        self.max_upload_bytes = max_upload_bytes
        self.allowed_origins = tuple(allowed_origins)
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        why = foreign_origin(scope, self.allowed_origins)
        if why is not None:
            self.log(f"[app] refused {method} {path}: {why}")
            await _answer(send, 403, {"error": "cross-origin request refused"})
            return
        if (method, path) in PUBLIC:
            await self.app(scope, receive, send)
            return
        user = self.sessions.user(_cookie(scope, COOKIE))
        if user is None:
            accept = _header(scope, b"accept") or ""
            if method in SAFE_METHODS and "text/html" in accept:
                await _answer(send, 303, None, [(b"location", b"/login")])
            else:
                await _answer(send, 401, {"error": "not signed in"})
            return
        status = _allowed_route(method, path, user)
        if status != 200:
            why = "admin only" if status == 403 else "not served"
            self.log(f"[app] refused {method} {path} for {user.name}: {why}")
            await _answer(send, status, {"error": why})
            return
        if path.startswith(FILE_PREFIX):
            # scope["path"] is already percent-decoded: this is the very path Gradio would open
            if self.uploads.inside(path[len(FILE_PREFIX):]) is None:
                await _answer(send, 404, {"error": "not found"})
                return
        if path == UPLOAD:
            await self._upload(scope, receive, send, user)
            return
        if method == "POST" and (path == "/gradio_api/queue/join" or EVENT_ROUTE.match(path)):
            await self._event(scope, receive, send, user)
            return
        await self.app(scope, receive, send)

    async def _upload(self, scope: Scope, receive: Receive, send: Send, user: User) -> None:
        length = _header(scope, b"content-length")
        # The multipart envelope adds a few hundred bytes per file to the file's own size.
        if length is not None and (not length.isdigit() or int(length) > self.max_upload_bytes + 64 * 1024):
            self.log(f"[app] refused an upload of {length} bytes from {user.name}")
            await _answer(send, 413, {"error": f"file too large (limit {self.max_upload_bytes // 2**20} MiB)"})
            return
        status: list[int] = []
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body") and status and status[0] == 200:
                    try:
                        paths = json.loads(b"".join(chunks))
                    except ValueError:
                        paths = []
                    if isinstance(paths, list):
                        self.uploads.add(user.name, [p for p in paths if isinstance(p, str)])
            await send(message)

        await self.app(scope, receive, capture)

    async def _event(self, scope: Scope, receive: Receive, send: Send, user: User) -> None:
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_EVENT_BYTES:
                await _answer(send, 413, {"error": "request too large"})
                return
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None  # not JSON: Gradio refuses it itself
        for ref in file_references(data):
            if not user.is_admin or not self.uploads.owned_by(user.name, ref):
                self.log(f"[app] refused a file reference from {user.name}: {str(ref)[:200]!r}")
                await _answer(send, 403, {"error": "files must be uploaded by you to this server first"})
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _answer(send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = b"" if payload is None else json.dumps(payload).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
