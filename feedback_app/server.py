"""The expert feedback app's server: FastAPI with our login, and the Gradio page mounted behind it.

Security model, in three layers:

1. The request guard (:class:`feedback_app.security.Guard`): every request except the login page needs a
   valid session cookie (see :mod:`feedback_app.auth`); anything else gets 401 (or a redirect to the login
   page for a browser page). This covers Gradio's every route, documented or not: config, API info, queue,
   uploads, files.
2. Gradio's ``auth_dependency`` names the user of each event (``gr.Request.username``).
3. Every handler calls :func:`~feedback_app.annotate.require` with the role it needs, which re-reads the
   user's current row: a hidden tab or button is never the permission.

The page is :func:`build_blocks`: the Annotate and My submissions tabs (:mod:`feedback_app.annotate`) and
the Admin tab (:mod:`feedback_app.admin`). The login and logout pages, the keyboard script and the page's
style are files in ``feedback_app/assets/``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from alignment.config import ModelOptions
from feedback_app.admin import AdminSection
from feedback_app.annotate import AnnotatePage, header_html, open_page, require
from feedback_app.auth import COOKIE, SESSION_SECONDS, LoginThrottle, Sessions, make_cookie
from feedback_app.security import Guard, Uploads
from feedback_app.store import Store

DEFAULT_MAX_UPLOAD_MB = 100


def asset(name: str) -> str:
    """The text of ``feedback_app/assets/<name>`` (installed with the package)."""
    return resources.files("feedback_app").joinpath("assets", name).read_text(encoding="utf-8")


LOGIN_PAGE = asset("login.html")  # "{error}" marks where a failed sign-in says why
LOGOUT_PAGE = asset("logout.html")
KEYBOARD_JS = f"<script>\n{asset('keyboard.js')}</script>\n"  # Gradio's head takes HTML
CSS = asset("page.css")


def login_page(error: str = "") -> str:
    """The sign-in form; ``error``: HTML of our own (never the user's input) shown under the button."""
    return LOGIN_PAGE.replace("{error}", error)


def build_blocks(store: Store, uploads: Uploads | None = None, model_options: ModelOptions | None = None) -> gr.Blocks:
    """The page: a header, the Annotate, My submissions and (for admins) Admin tabs. ``uploads``: the server's
    private upload folder, where the admin's file inputs must come from (None: any path, for tests).
    ``model_options``: how the admin's generation jobs load their model."""
    with gr.Blocks(title="Expert feedback", analytics_enabled=False) as demo:
        header = gr.HTML()
        with gr.Tabs(selected="annotate") as tabs:
            page = AnnotatePage.layout()
            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                admin = AdminSection(store, page.project_dd, uploads, model_options)
        timer = gr.Timer(2.0, active=False)
        form = page.form

        def on_load(request: gr.Request) -> list[Any]:
            user = require(store, request)
            shown = open_page(store, user)
            names = [p.name for p in store.list_projects()]
            return [header_html(user), gr.Tab(visible=user.is_admin), gr.Timer(active=user.is_admin),
                    gr.Dropdown(choices=names, value=shown.project.name if shown.project else None),
                    *form.show(store, user, shown)]

        demo.load(on_load, None, [header, admin_tab, timer, page.project_dd, *form.outputs()], api_name="load")
        page.wire(store, tabs)
        admin.wire(timer)
    return demo


def create_app(store: Store, *, secure_cookies: bool = False, upload_dir: str | Path | None = None,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, allowed_origins: tuple[str, ...] = (),
               throttle: LoginThrottle | None = None, model_options: ModelOptions | None = None) -> FastAPI:
    """The whole server: login routes, the request guard in front of everything, Gradio at ``/``.

    ``upload_dir``: Gradio's upload and cache folder, private to this server (a new temporary folder when
    None; :func:`serve` removes it at exit). ``allowed_origins``: origins besides this server's own that
    may send state-changing requests (a reverse proxy that rewrites ``Host``)."""
    sessions = Sessions(store)
    throttle = throttle or LoginThrottle()
    folder = Path(upload_dir or tempfile.mkdtemp(prefix="align-app-")).resolve()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Gradio reads its upload/cache folder from the environment when components are made and files moved:
    # a folder of this server's own, so nothing of another app or user's temporary files is ever in it.
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    uploads = Uploads(folder)
    max_bytes = int(max_upload_mb * 2**20)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.upload_folder = folder

    @app.get("/login", response_class=HTMLResponse)
    def get_login() -> HTMLResponse:
        return HTMLResponse(login_page())

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        name = str(form.get("username") or "").strip()[:256]
        password = str(form.get("password") or "")
        client = request.client.host if request.client else "?"  # the proxy-resolved peer (see serve)
        if throttle.blocked(name, client) > 0:
            return HTMLResponse(login_page('<p class="err">Too many failed attempts from here. '
                                           "Wait a few minutes and try again.</p>"), status_code=429)
        delay = throttle.delay(name)
        if delay:
            await asyncio.sleep(delay)
        user = await run_in_threadpool(store.authenticate, name, password)  # scrypt: off the event loop
        if user is None:
            throttle.failed(name, client)
            return HTMLResponse(login_page('<p class="err">Wrong user name or password.</p>'), status_code=401)
        throttle.succeeded(name, client)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, make_cookie(store.secret(), user), max_age=SESSION_SECONDS, httponly=True,
                            samesite="strict", secure=secure_cookies)
        return response

    @app.get("/logout", response_class=HTMLResponse)
    def get_logout() -> HTMLResponse:
        return HTMLResponse(LOGOUT_PAGE)

    @app.post("/logout")
    def logout(request: Request) -> Response:
        user = sessions.user(request.cookies.get(COOKIE))
        if user is not None:
            store.end_sessions(user.id)
            sessions.forget(user.name)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    def gradio_user(request: Request) -> str | None:
        user = sessions.user(request.cookies.get(COOKIE))
        return user.name if user else None

    demo = build_blocks(store, uploads, model_options)
    demo.queue(default_concurrency_limit=8)
    demo.delete_cache = (600, 3600)  # uploads and exports leave the cache an hour after they were made
    # Never into Gradio's cache, whatever else goes wrong: the store file (its session secret) and its journal.
    blocked = [str(Path(store.url.removeprefix("sqlite:///")).resolve()) + suffix for suffix in ("", "-wal", "-shm")] \
        if store.is_sqlite else []
    app = gr.mount_gradio_app(app, demo, path="/", auth_dependency=gradio_user, head=KEYBOARD_JS, css=CSS,
                              ssr_mode=False, footer_links=[], show_error=True, enable_monitoring=False,
                              max_file_size=max_bytes, blocked_paths=blocked)
    # Mounted (not launched), Gradio skips its own check that a file in an event was uploaded: turn it on.
    # Our guard already refuses any file not uploaded by the caller; this is the second lock.
    demo.has_launched = True
    # A CORS middleware of the parent app's own makes Gradio drop its localhost-friendly CORS headers; it
    # allows no foreign origin.
    app.add_middleware(CORSMiddleware, allow_origins=[], allow_credentials=False)
    app.add_middleware(Guard, sessions=sessions, uploads=uploads, max_upload_bytes=max_bytes,
                       allowed_origins=allowed_origins)
    return app


def serve(store_path: str, host: str = "127.0.0.1", port: int = 7860, secure_cookies: bool = False, *,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, trusted_proxies: tuple[str, ...] = (),
          allowed_origins: tuple[str, ...] = (), model_options: ModelOptions | None = None) -> None:
    """Run the app until interrupted (``align app``). ``model_options``: how generation jobs load models."""
    import uvicorn

    from alignment.log import get_logger
    from feedback_app.store import public_url

    log = get_logger("app")  # masks a database password in every line, as public_url does here
    store = Store(store_path)
    store.ensure_project("default")
    interrupted = store.fail_interrupted_jobs()
    if interrupted:
        log.warning(f"[app] {interrupted} generation job(s) were cut off by the last shutdown; start them again")
    if not any(u.is_admin for u in store.list_users()):
        log.info("[app] no admin yet: add one with `align app users add NAME --role admin --store "
                 f"{public_url(str(store_path))}`")
    log.info(f"[app] feedback store: {public_url(str(store.url))}")
    log.info(f"[app] open http://{host}:{port}/ (binds to {host}; use --host 0.0.0.0 to serve a network)")
    app = create_app(store, secure_cookies=secure_cookies, max_upload_mb=max_upload_mb,
                     allowed_origins=allowed_origins, model_options=model_options)
    try:
        # X-Forwarded-For rewrites the client address (which the login throttle counts) only when it comes
        # from a proxy named here; uvicorn would otherwise trust it from 127.0.0.1.
        uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=bool(trusted_proxies),
                    forwarded_allow_ips=list(trusted_proxies) or None)
    finally:
        shutil.rmtree(app.state.upload_folder, ignore_errors=True)
