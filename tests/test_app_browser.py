"""The feedback app in a real browser: the server runs as ``align app`` and headless Chromium drives it.

Every test reads its outcome back from the store (``Store``), not only from the page. One server and one
browser serve the whole module; each test opens its own browser context (its own cookies), so the tests
do not depend on each other's order: a test that needs a submission makes one through the store first.

Users: ``admin``; ``ann1`` submits and revises; ``ann2`` never submits, so it always sees the first item,
whose prompt and one candidate carry HTML and script.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"browser tests need Chromium at {CHROMIUM}", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
gradio_client = pytest.importorskip("gradio_client", reason="the admin-permission test needs gradio_client")
httpx = pytest.importorskip("httpx")

from gradio_client.exceptions import AuthenticationError  # noqa: E402
from sqlalchemy import select  # noqa: E402

from feedback_app.export import export_store  # noqa: E402
from feedback_app.store import Judgment, Store, judgments  # noqa: E402

expect = sync_api.expect
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PASSWORDS = {"admin": "admin-pass-123", "ann1": "ann1-pass-123", "ann2": "ann2-pass-123"}
EVIL_CANDIDATE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
EVIL_PROMPT = '<img src=x onerror="window.__pwned=3"> How do I <b>reset</b> my password?'
K = 4  # candidates per item
TIMEOUT_MS = 20_000


@dataclass
class App:
    url: str
    db: Path
    store: Store
    project_id: int
    item_of_prompt: dict[str, int]  # the prompt's last message -> item id
    evil_item: int

    def user(self, name: str) -> Any:
        user = self.store.get_user(name)
        assert user is not None
        return user


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _align_command() -> list[str]:
    script = Path(sys.executable).parent / "align"
    return [str(script)] if script.exists() else [sys.executable, "-m", "alignment.cli"]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    root = tmp_path_factory.mktemp("browser-app")
    db = root / "feedback.db"
    store = Store(db)
    for name, password in PASSWORDS.items():
        store.add_user(name, "admin" if name == "admin" else "annotator", password)
    project = store.ensure_project("default")  # the project `align app` opens first
    store.update_project(project.id, overlap=3, assign_batch=5, candidates_per_item=K)
    prompts = [[{"role": "system", "content": "You are a support assistant."},
                {"role": "user", "content": EVIL_PROMPT}]]
    prompts += [[{"role": "user", "content": f"Question {i}: how do I pay bill number {i}?"}] for i in range(1, 7)]
    assert store.add_prompts(project.id, prompts, source="test") == (len(prompts), 0)
    item_of_prompt = {}
    for n, prompt in enumerate(prompts):
        item_id = store.item_id_for_prompt(project.id, prompt)
        assert item_id is not None
        item_of_prompt[prompt[-1]["content"]] = item_id
        texts = [f"Answer {n}.{j}: open the settings page and press button {j}." for j in range(K - 1)]
        texts.append(EVIL_CANDIDATE if n == 0 else f"Answer {n}.{K - 1}: please call us instead.")
        assert store.add_candidates(item_id, [(t, "test-model", {"temperature": 0.7}) for t in texts]) == K
    port = _free_port()
    log_path = root / "server.log"
    log = log_path.open("wb")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*_align_command(), "app", "--store", str(db), "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}):\n{log_path.read_text(errors='replace')}")
            try:
                if httpx.get(url + "/login", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer in 90 s:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.25)
        yield App(url, db, store, project.id, item_of_prompt, item_of_prompt[EVIL_PROMPT])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
        store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Session:
    page: Any
    errors: list[str]  # uncaught page errors
    dialogs: list[str]  # alert / confirm / prompt messages (each is dismissed)

    def cookie(self) -> str:
        values = [c["value"] for c in self.page.context.cookies() if c["name"] == "align_session"]
        assert values, "no session cookie after login"
        return values[0]


@pytest.fixture()
def login(app: App, browser: Any) -> Iterator[Callable[[str], Session]]:
    """Sign a user in through the login form in a fresh browser context; the page ends on the app."""
    contexts = []

    def _login(name: str) -> Session:
        context = browser.new_context(viewport={"width": 1280, "height": 2000})
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        session = Session(page, [], [])
        page.on("pageerror", lambda e: session.errors.append(str(e)))

        def on_dialog(dialog: Any) -> None:
            session.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.goto(app.url + "/")
        assert page.url.rstrip("/").endswith("/login"), "an unsigned visitor is sent to the login page"
        page.fill("#username", name)
        page.fill("#password", PASSWORDS[name])
        page.click("#login")
        expect(page.locator("#whoami")).to_have_text(name)
        return session

    yield _login
    for context in contexts:
        context.close()


# ------------------------------------------------------------------------------------------------ helpers


def wait_until(fn: Callable[[], Any], timeout: float = TIMEOUT_MS / 1000, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def shown_item(app: App, page: Any) -> int:
    """The item on the annotate tab, found by its prompt text."""
    page.wait_for_selector("#response-0 .msg")
    last = page.locator("#prompt .msg").last.inner_text()
    assert last in app.item_of_prompt, f"unknown prompt on the page: {last!r}"
    return app.item_of_prompt[last]


def slot_candidates(app: App, page: Any, item_id: int) -> list[int]:
    """Candidate id per response slot, mapped back through the text the page shows."""
    item = app.store.item(item_id)
    assert item is not None
    by_text = {c.text: c.id for c in item.candidates}
    out = []
    for i in range(len(item.candidates)):
        text = page.locator(f"#response-{i} .msg").inner_text()
        assert text in by_text, f"slot {i} shows text of no candidate: {text!r}"
        out.append(by_text[text])
    assert sorted(out) == sorted(by_text.values()), "every candidate is shown once"
    expect(page.locator(f"#slot-{len(out)}")).to_be_hidden()
    return out


def shown_ranks(page: Any, k: int = K) -> list[str | None]:
    return [page.eval_on_selector(f"#rank-{i}", "g => { const c = g.querySelector('input:checked');"
                                  " return c ? c.value : null }") for i in range(k)]


def expect_ranks(page: Any, wanted: list[str | None]) -> None:
    try:
        wait_until(lambda: shown_ranks(page, len(wanted)) == wanted)
    except AssertionError:
        raise AssertionError(f"the page shows ranks {shown_ranks(page, len(wanted))}, not {wanted}") from None


def press(page: Any, *keys: str) -> None:
    """Rank keys outside any text box, each after the last took effect (the shortcut reads the page's ranks)."""
    for key in keys:
        before = shown_ranks(page)
        page.keyboard.press(key)
        wait_until(lambda before=before: shown_ranks(page) != before, what=f"key {key} to set a rank")


def clear_ranks(page: Any) -> None:
    """Key 0 (when a rank is set: the server's answer unsets them, so waiting for that is waiting for it)."""
    if shown_ranks(page) != [None] * K:
        page.locator("#prompt").click()  # focus outside the text boxes
        page.keyboard.press("0")
        expect_ranks(page, [None] * K)


def pick(page: Any, dropdown: str, option: str | None = None) -> str:
    """Choose an option of a Gradio dropdown by its label (the first one when None); returns the label."""
    page.click(f"{dropdown} input")
    options = page.locator(f"{dropdown} [role=option]")
    target = options.first if option is None else page.locator(f'{dropdown} [role=option][aria-label="{option}"]')
    label = target.get_attribute("aria-label")
    target.click()
    expect(page.locator(f"{dropdown} input")).to_have_value(label)
    return label


def done_count(page: Any) -> int:
    m = re.search(r"(\d+) done of (\d+) assigned", page.locator("#progress").inner_text())
    assert m, page.locator("#progress").inner_text()
    return int(m.group(1))


def judgment_rows(app: App, user_id: int, item_id: int) -> list[Any]:
    with app.store.read() as c:
        return c.execute(select(judgments).where(judgments.c.user_id == user_id, judgments.c.item_id == item_id)
                         .order_by(judgments.c.revision)).all()


def ensure_submission(app: App, name: str) -> int:
    """An item the user has submitted: an existing one, else one submitted through the store (one best)."""
    user = app.user(name)
    mine = app.store.recent_submissions(user.id, app.project_id)
    if mine:
        return mine[0].item_id
    project = app.store.project(app.project_id)
    item_id = app.store.next_item(user, project)
    assert item_id is not None
    item = app.store.item(item_id)
    ranks = {c.id: 1 if n == 0 else 2 for n, c in enumerate(item.candidates)}
    app.store.submit(user, item_id, Judgment(ranks=ranks), secrets.token_hex(16))
    return item_id


def open_tab(page: Any, name: str) -> None:
    page.get_by_role("tab", name=name).click()


# ------------------------------------------------------------------------------------------------ tests


def test_annotator_ranks_tags_corrects_and_submits(app: App, login: Callable[[str], Session]) -> None:
    s = login("ann1")
    page = s.page
    user = app.user("ann1")
    item_id = shown_item(app, page)
    order = slot_candidates(app, page, item_id)
    done = done_count(page)
    clear_ranks(page)  # a draft from an earlier visit would otherwise be prefilled

    page.locator('#rank-2 input[value="1"]').click()  # mouse: response C is the best
    expect_ranks(page, [None, None, "1", None])
    press(page, "Digit1", "Shift+Digit4", "Digit2")  # A next (2), D tied with A (2), B next (3)
    expect_ranks(page, ["2", "3", "1", "2"])
    page.locator('#tags-0 input[name="factual error"]').check()
    page.locator('#tags-3 input[name="off tone"]').check()
    assert pick(page, "#correction-of", "B") == "B"
    correction = "Open Settings > Billing and press <b>Pay</b>.\nThat is all."
    negative = "Send us your card number by e-mail."
    page.fill("#correction textarea", correction)
    page.fill("#negative textarea", negative)
    page.keyboard.press("Control+Enter")  # from inside the text box: submits

    expect(page.locator("#message")).to_contain_text("Saved.")
    latest = wait_until(lambda: app.store.latest_judgment(user.id, item_id), what="the judgment in the store")
    j = latest.judgment
    assert j.ranks == {order[0]: 2, order[1]: 3, order[2]: 1, order[3]: 2}
    assert j.tags == {order[0]: ["factual error"], order[3]: ["off tone"]}
    assert j.correction_of == order[1]
    assert j.correction == correction
    assert j.negative == negative
    assert not j.all_unacceptable and j.note == ""
    assert latest.revision == 1
    assert app.store.draft(user.id, item_id) in (None, json.loads(j.to_json())), "no stale draft"
    expect(page.locator("#progress")).to_contain_text(f"{done + 1} done of")
    assert shown_item(app, page) != item_id, "the next item is shown"
    assert not s.errors and not s.dialogs


def test_draft_survives_reload(app: App, login: Callable[[str], Session]) -> None:
    s = login("ann2")
    page = s.page
    user = app.user("ann2")
    item_id = shown_item(app, page)
    order = slot_candidates(app, page, item_id)
    clear_ranks(page)

    page.locator('#rank-1 input[value="1"]').click()
    press(page, "Digit3")
    expect_ranks(page, [None, "1", "2", None])
    page.locator('#tags-0 input[name="unsafe"]').check()
    text = "Draft <i>answer</i>: still working on it"
    page.fill("#correction textarea", text)  # set at once, like a paste
    negative = page.locator("#negative textarea")
    negative.press_sequentially("Never say this!!")  # typed key by key ...
    negative.press("Backspace")  # ... and corrected
    negative.press("Backspace")

    def saved() -> bool:
        d = app.store.draft(user.id, item_id)
        return bool(d) and d.get("correction") == text and d.get("negative") == "Never say this" \
            and d.get("ranks") == {str(order[1]): 1, str(order[2]): 2} and d.get("tags") == {str(order[0]): ["unsafe"]}

    wait_until(saved, what="the draft in the store")
    page.reload()
    assert shown_item(app, page) == item_id
    assert slot_candidates(app, page, item_id) == order, "the display order is stable"
    expect(page.locator("#correction textarea")).to_have_value(text)
    expect(page.locator("#negative textarea")).to_have_value("Never say this")
    expect_ranks(page, [None, "1", "2", None])
    expect(page.locator('#tags-0 input[name="unsafe"]')).to_be_checked()
    expect(page.locator('#tags-1 input[name="unsafe"]')).not_to_be_checked()
    assert app.store.latest_judgment(user.id, item_id) is None, "a draft is not a submission"
    assert not s.errors and not s.dialogs


def test_revise_appends_a_new_revision(app: App, login: Callable[[str], Session]) -> None:
    item_id = ensure_submission(app, "ann1")
    user = app.user("ann1")
    before = judgment_rows(app, user.id, item_id)
    assert [r.revision for r in before] == [1]
    s = login("ann1")
    page = s.page

    open_tab(page, "My submissions")
    page.click("#mine-refresh")
    prompt = app.store.item(item_id).prompt[-1]["content"]
    expect(page.locator("#mine-table")).to_contain_text(prompt[:40])  # as text, even the one with HTML
    assert page.locator("#mine-table img, #mine-table b").count() == 0
    pick(page, "#mine-pick")  # the first (newest) submission
    page.click("#revise")
    expect(page.locator("#message")).to_contain_text("Revising your submission (revision 1)")
    assert shown_item(app, page) == item_id
    order = slot_candidates(app, page, item_id)
    old = before[0]
    old_ranks = Judgment.from_json(old.payload).ranks
    expect_ranks(page, [str(old_ranks[c]) for c in order])  # prefilled with the submission

    clear_ranks(page)
    press(page, "Digit4", "Digit3", "Digit2", "Digit1")  # D best ... A worst
    expect_ranks(page, ["4", "3", "2", "1"])
    page.click("#submit")

    expect(page.locator("#message")).to_contain_text("Saved.")
    rows = wait_until(lambda: (r := judgment_rows(app, user.id, item_id)) and len(r) == 2 and r,
                      what="the revision in the store")
    assert [r.revision for r in rows] == [1, 2]
    assert tuple(rows[0]) == tuple(old), "the first submission is kept unchanged (append-only)"
    latest = app.store.latest_judgment(user.id, item_id)
    assert latest.revision == 2 and latest.id == rows[1].id
    assert latest.judgment.ranks == {order[0]: 4, order[1]: 3, order[2]: 2, order[3]: 1}
    assert [sj.revision for sj in app.store.latest_judgments(app.project_id)
            if sj.user_id == user.id and sj.item_id == item_id] == [2]
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert not s.errors and not s.dialogs


def test_html_and_script_are_shown_as_text(app: App, login: Callable[[str], Session]) -> None:
    s = login("ann2")  # ann2 never submits: its first item is the one with the hostile texts
    page = s.page
    item_id = shown_item(app, page)
    assert item_id == app.evil_item
    order = slot_candidates(app, page, item_id)
    evil = next(c.id for c in app.store.item(item_id).candidates if c.text == EVIL_CANDIDATE)
    slot = order.index(evil)
    assert page.locator(f"#response-{slot} .msg").inner_text() == EVIL_CANDIDATE
    assert "<script>" in page.locator(f"#response-{slot}").inner_text()
    assert page.locator("#prompt .msg").last.inner_text() == EVIL_PROMPT
    for where in ("#prompt", *[f"#response-{i}" for i in range(K)]):
        assert page.locator(f"{where} script, {where} img, {where} b").count() == 0, f"markup ran in {where}"
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert not s.dialogs and not s.errors


def test_admin_exports_and_annotator_cannot(app: App, login: Callable[[str], Session]) -> None:
    ensure_submission(app, "ann1")  # something to export
    project = app.store.project(app.project_id)

    # an annotator: no admin tab, and the admin endpoints refuse the session cookie
    s = login("ann2")
    expect(s.page.locator("#progress")).to_contain_text("done of")  # the page has loaded
    expect(s.page.get_by_role("tab", name="Admin")).to_have_count(0)
    expect(s.page.locator("#export")).to_be_hidden()
    with httpx.Client(base_url=app.url, cookies={"align_session": s.cookie()}, timeout=30) as client:
        assert client.get("/gradio_api/info").status_code == 403, "the API description is for admins"
        # Gradio's HTTP API called directly: the project name None passes the dropdown's check, so the
        # handler's role check is what refuses
        for api, data in (("admin_save_project", [None, "Hacked guidelines", "hacked", 2, 1, 1]),
                          ("admin_export", [None, "all"]), ("admin_add_user", ["intruder", "admin"])):
            r = client.post(f"/gradio_api/call/{api}", json={"data": data})
            assert r.status_code == 200, r.text
            result = client.get(f"/gradio_api/call/{api}/{r.json()['event_id']}").text
            assert "event: error" in result and "admin role" in result, (api, result)
    assert app.store.project(app.project_id) == project, "the project settings did not change"
    assert app.store.get_user("intruder") is None

    # the admin: the tab, a dashboard, an export whose files hold what export_store makes
    a = login("admin")
    page = a.page
    expect(page.get_by_role("tab", name="Admin")).to_be_visible()
    open_tab(page, "Admin")
    page.click("#refresh-dashboard")
    latest = app.store.latest_judgments(app.project_id)
    expect(page.locator("#dashboard-summary")).to_contain_text(f"{len(latest)} current judgments")
    page.locator('#pair-policy input[value="all"]').check()
    page.click("#export")
    expect(page.locator("#export-msg")).to_contain_text("preference pairs")
    result = export_store(app.store, project=project.name, pairs="all")
    assert result.judgments == len(latest) >= 1 and result.pairs
    msg = page.locator("#export-msg").inner_text()
    assert f"{result.judgments} judgments -> {len(result.pairs)} preference pairs, {len(result.unpaired)} unpaired" \
        in msg, msg
    links = page.locator("#export-files a[download]")
    expect(links).to_have_count(2)
    files = {}
    for i in range(2):
        link = links.nth(i)
        response = page.context.request.get(link.get_attribute("href"))  # with the admin's cookie
        assert response.ok, response.status
        files[link.get_attribute("download")] = [json.loads(line) for line in response.text().splitlines() if line]
    pairs = next(rows for name, rows in files.items() if not name.endswith(".unpaired.jsonl"))
    unpaired = next(rows for name, rows in files.items() if name.endswith(".unpaired.jsonl"))
    assert len(pairs) == len(result.pairs) and len(unpaired) == len(result.unpaired)
    assert {r["provenance"]["judgment_id"] for r in pairs} == {r["provenance"]["judgment_id"] for r in result.pairs}
    assert app.store.project(app.project_id) == project
    assert not s.dialogs and not a.dialogs


def test_logout_ends_the_session(app: App, login: Callable[[str], Session]) -> None:
    s = login("ann2")
    page = s.page
    cookie = s.cookie()
    jar = {"align_session": cookie}
    html = {"Accept": "text/html"}
    assert httpx.get(app.url + "/", cookies=jar, headers=html).status_code == 200
    assert httpx.get(app.url + "/config", cookies=jar).status_code == 200

    page.goto(app.url + "/logout")
    page.click("#logout")
    page.wait_for_url(re.compile(r"/login$"))
    assert not [c for c in page.context.cookies() if c["name"] == "align_session"]

    r = httpx.get(app.url + "/", cookies=jar, headers=html)
    assert r.status_code == 303 and r.headers["location"].endswith("/login")
    for path in ("/config", "/gradio_api/info"):
        assert httpx.get(app.url + path, cookies=jar).status_code == 401, path
    r = httpx.post(app.url + "/gradio_api/queue/join", cookies=jar,
                   json={"data": [], "fn_index": 0, "session_hash": "x"})
    assert r.status_code == 401
    with pytest.raises(AuthenticationError):  # it cannot even read the app's config
        gradio_client.Client(app.url + "/", headers={"Cookie": f"align_session={cookie}"}, verbose=False,
                             analytics_enabled=False, download_files=False)
    page.goto(app.url + "/")
    assert page.url.endswith("/login"), "the browser is signed out too"
    assert not s.errors and not s.dialogs
