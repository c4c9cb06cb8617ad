"""The feedback app in a real browser: the server runs as ``align app`` and headless Chromium drives it.

Every test reads its outcome back from the store (``Store``), not only from the page. One server and one
browser serve the whole module; each test opens its own browser context (its own cookies), so the tests
do not depend on each other's order: a test that needs a submission makes one through the store first.

Users: ``admin``; ``ann1`` submits and revises; ``ann2`` never submits, so it always sees the first item,
whose prompt and one candidate carry HTML and script. Tests that change a user's lasting state (its
remembered project, its claims, its drafts) have a user of their own and set that state first.

Projects: ``default`` (K=4, seven prompts), ``markdown`` (K=4, one prompt whose answers are Markdown, one
of them 200 lines long) and ``pair`` (K=2, one prompt). The head-to-head test makes its own evaluation project
(``versus``), judged by ``assessor``.
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

from feedback_app.export import aggregation_line, export_store  # noqa: E402
from feedback_app.store import Judgment, Store, judgments  # noqa: E402

expect = sync_api.expect
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
USERS = ("admin", "admin2", "admin3", "ann1", "ann2", "ann3", "ann4", "ann5", "ann6", "ann7", "ann8", "picker",
         "reader", "assessor")
PASSWORDS = {name: f"{name}-pass-123" for name in USERS}
EVIL_CANDIDATE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
EVIL_PROMPT = '<img src=x onerror="window.__pwned=3"> How do I <b>reset</b> my password?'
K = 4  # candidates per item
LETTERS = "ABCDEFGH"
TIMEOUT_MS = 20_000
PAIR_PROMPT = "The pair question: how should the dose change?"
MD_CANDIDATE = """## Dosage

**Adults:** 500 mg twice a day, ~~three times~~. ${window.__pwned=7} {{constructor}}

| Age | Dose |
|-----|------|
| 12+ | 500 mg |

```python
dose_mg = 500  # <b>not bold</b>
```

![chart](http://127.0.0.1:9/chart.png)
<script>window.__pwned=4</script><img src=x onerror="window.__pwned=5">
[click me](javascript:window.__pwned=6), [a picture](data:image/png;base64,AAAA) and [the leaflet](https://example.org/leaflet)
"""
LONG_CANDIDATE = "\n".join(f"{i}. Step {i} of a very long answer." for i in range(1, 201))
MD_GUIDELINES = "Read **every** answer.\n\n![pixel](http://127.0.0.1:9/pixel.png)\n\n<img src=http://127.0.0.1:9/p.png>"
PAIR_GUIDELINES = "Pick the *safer* of two answers."


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
        store.add_user(name, "admin" if name.startswith("admin") else "annotator", password)
    project = store.ensure_project("default")  # the project `align app` opens first
    # Overlap 10: every test user can claim every prompt, whatever the other tests claimed before.
    store.update_project(project.id, overlap=10, assign_batch=5, candidates_per_item=K)
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
    for name, guidelines, answers in (
            ("markdown", MD_GUIDELINES, [MD_CANDIDATE, LONG_CANDIDATE, "Half the dose.", "Ask a pharmacist."]),
            ("pair", PAIR_GUIDELINES, ["Stop the drug.", "Keep taking it."])):
        p = store.ensure_project(name)
        store.update_project(p.id, guidelines=guidelines, overlap=10, assign_batch=5, candidates_per_item=len(answers))
        prompt = [{"role": "user", "content": f"The {name} question: how should the dose change?"}]
        store.add_prompts(p.id, [prompt], source="test")
        item_id = store.item_id_for_prompt(p.id, prompt)
        assert store.add_candidates(item_id, [(t, "test-model", {}) for t in answers]) == len(answers)
        item_of_prompt[prompt[-1]["content"]] = item_id
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


def words(text: str) -> list[str]:
    """Letters and digits only: an answer's text and its rendered Markdown compare equal (``__x__`` is bold)."""
    return re.findall(r"[0-9A-Za-z]+", text)


def renders(shown: list[str], text: str) -> bool:
    """The words shown are the text's words in order, some left out (Markdown drops link targets, code
    fence languages)."""
    rest = iter(words(text))
    return bool(shown) and all(w in rest for w in shown)


def slot_candidates(app: App, page: Any, item_id: int) -> list[int]:
    """Candidate id per response slot, mapped back through the text the page shows."""
    item = app.store.item(item_id)
    assert item is not None
    out = []
    for i in range(len(item.candidates)):
        shown = words(page.locator(f"#response-{i} .msg").inner_text())
        found = [c.id for c in item.candidates if renders(shown, c.text)]
        assert len(found) == 1, f"slot {i} shows the text of {len(found)} candidates: {shown!r}"
        out.append(found[0])
    assert sorted(out) == sorted(c.id for c in item.candidates), "every candidate is shown once"
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


def remember(app: App, name: str, project: str) -> None:
    """Start the user in ``project`` (what the app remembers of the user's last choice)."""
    p = app.store.project(project)
    assert p is not None
    app.store.remember_project(app.user(name).id, p.id)


def box(page: Any, selector: str) -> dict[str, float]:
    b = page.locator(selector).bounding_box()
    assert b is not None, f"{selector} is not on the page"
    return b


def press(page: Any, *keys: str) -> None:
    """Rank keys outside any text box, each after the last one changed the page (so a key that changes
    nothing fails here, not later)."""
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
    remember(app, "ann1", "default")
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
    page.set_viewport_size({"width": 1280, "height": 700})  # a laptop screen: the submit button is far down
    page.locator("#negative textarea").scroll_into_view_if_needed()
    assert page.evaluate("window.scrollY") > 0
    page.keyboard.press("Control+Enter")  # from inside the text box: submits

    expect(page.locator("#message")).to_have_text("Saved. Here is the next one.")
    wait_until(lambda: page.evaluate("window.scrollY") == 0, what="the page to scroll to the top")
    expect(page.locator("#message")).to_be_in_viewport()  # where the eye is after a submit
    expect(page.locator("#progress")).to_be_in_viewport()
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
    remember(app, "ann2", "default")
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
    remember(app, "ann1", "default")
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

    expect(page.locator("#message")).to_contain_text("Saved revision 2.")
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
    remember(app, "ann2", "default")
    s = login("ann2")  # ann2 never submits: its first item is the one with the hostile texts
    page = s.page
    item_id = shown_item(app, page)
    assert item_id == app.evil_item
    order = slot_candidates(app, page, item_id)
    evil = next(c.id for c in app.store.item(item_id).candidates if c.text == EVIL_CANDIDATE)
    slot = order.index(evil)
    # Markdown may read __pwned=1 ... window.__ as emphasis; the tags themselves must show as text.
    shown = page.locator(f"#response-{slot} .msg").inner_text()
    assert words(shown) == words(EVIL_CANDIDATE)
    for tag in ("<script>", "</script>", "<img src=x onerror="):
        assert tag in shown, tag
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
                          ("admin_export", [None, "all", "all"]), ("admin_add_user", ["intruder", "admin"])):
            r = client.post(f"/gradio_api/call/{api}", json={"data": data})
            assert r.status_code == 200, r.text
            result = client.get(f"/gradio_api/call/{api}/{r.json()['event_id']}").text
            assert "event: error" in result and "admin role" in result, (api, result)
    assert app.store.project(app.project_id) == project, "the project settings did not change"
    assert app.store.get_user("intruder") is None

    # the admin: the tab, a dashboard, an export whose files hold what export_store makes
    remember(app, "admin", "default")
    a = login("admin")
    page = a.page
    expect(page.get_by_role("tab", name="Admin")).to_be_visible()
    open_tab(page, "Admin")
    page.click("#refresh-dashboard")
    latest = app.store.latest_judgments(app.project_id)
    expect(page.locator("#dashboard-summary")).to_contain_text(f"{len(latest)} current judgments")
    page.locator('#pair-policy input[value="all"]').check()
    expect(page.locator("#export-aggregate input")).to_have_value("all")  # across annotators: every row, as before
    page.click("#export")
    expect(page.locator("#export-msg")).to_contain_text("preference pairs")
    result = export_store(app.store, project=project.name, pairs="all")
    assert result.judgments == len(latest) >= 1 and result.pairs
    msg = page.locator("#export-msg").inner_text()
    assert f"{result.judgments} judgments -> {len(result.pairs)} preference pairs, {len(result.unpaired)} unpaired" \
        in msg, msg
    assert aggregation_line("all", result.aggregation) in msg, msg
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

    # across annotators by majority: the menu beside the button reaches the export, and the result says so
    pick(page, "#export-aggregate", "majority")
    page.click("#export")
    expect(page.locator("#export-msg")).to_contain_text("pairs across annotators: majority")
    majority = export_store(app.store, project=project.name, pairs="all", aggregate="majority")
    assert aggregation_line("majority", majority.aggregation) in page.locator("#export-msg").inner_text()
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


def test_answers_and_guidelines_are_sanitised_markdown(app: App, login: Callable[[str], Session]) -> None:
    remember(app, "reader", "markdown")
    s = login("reader")
    page = s.page
    item_id = shown_item(app, page)
    order = slot_candidates(app, page, item_id)
    md = next(c.id for c in app.store.item(item_id).candidates if c.text == MD_CANDIDATE)
    answer = f"#response-{order.index(md)} .msg"

    expect(page.locator(f"{answer} h2")).to_have_text("Dosage")
    expect(page.locator(f"{answer} strong")).to_have_text("Adults:")
    expect(page.locator(f"{answer} s")).to_have_text("three times")
    expect(page.locator(f"{answer} table td")).to_have_text(["12+", "500 mg"])
    code = page.locator(f"{answer} pre code")
    expect(code).to_have_text("dose_mg = 500  # <b>not bold</b>")
    assert "mono" in code.evaluate("e => getComputedStyle(e).fontFamily").lower()
    assert page.locator(f"{answer} pre").evaluate("e => getComputedStyle(e).overflowX") == "auto"
    assert page.locator(f"{answer} td").first.evaluate("e => getComputedStyle(e).borderTopStyle") == "solid"
    shown = page.locator(answer).inner_text()
    assert "${window.__pwned=7} {{constructor}}" in shown  # the page's HTML template does not evaluate answers
    assert '<script>window.__pwned=4</script><img src=x onerror="window.__pwned=5">' in shown  # as text
    links = page.locator(f"{answer} a")
    expect(links).to_have_count(2)  # the leaflet, and the image turned into a plain link; no javascript:, no data:
    hrefs = [links.nth(i).get_attribute("href") for i in range(2)]
    assert sorted(hrefs) == ["http://127.0.0.1:9/chart.png", "https://example.org/leaflet"]
    for i in range(2):
        assert links.nth(i).get_attribute("rel") == "noopener noreferrer nofollow"
        assert links.nth(i).get_attribute("target") == "_blank"
    assert "[click me](javascript:window.__pwned=6), [a picture](data:image/png;base64,AAAA)" in shown
    for where in ("#prompt", "#guidelines", *[f"#response-{i}" for i in range(K)]):
        assert page.locator(f"{where} script, {where} img").count() == 0, f"markup ran in {where}"
        assert page.locator(f'{where} [href^="javascript:" i]').count() == 0, where
    expect(page.locator("#guidelines strong")).to_have_text("every")
    assert "<img src=http://127.0.0.1:9/p.png>" in page.locator("#guidelines").inner_text()
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert not s.errors and not s.dialogs


def test_every_rank_control_is_in_view_beside_a_long_answer(app: App, login: Callable[[str], Session]) -> None:
    remember(app, "reader", "markdown")
    s = login("reader")
    page = s.page
    page.set_viewport_size({"width": 1280, "height": 900})
    item_id = shown_item(app, page)
    order = slot_candidates(app, page, item_id)
    long = order.index(next(c.id for c in app.store.item(item_id).candidates if c.text == LONG_CANDIDATE))
    area = box(page, "#answers")
    ranks = [box(page, f"#rank-{i}") for i in range(K)]
    bottoms = [r["y"] + r["height"] - area["y"] for r in ranks]
    assert max(bottoms) <= 900, f"rank controls end {bottoms} px below the top of the answers: out of view"
    assert all(r["y"] < box(page, f"#response-{i}")["y"] for i, r in enumerate(ranks)), "each rank is above its text"
    text = page.locator(f"#response-{long} .msg")
    assert text.evaluate("e => e.scrollHeight > e.clientHeight + 100"), "the long answer scrolls in its box"
    expect(text).to_contain_text("Step 200 of a very long answer.")

    remember(app, "reader", "pair")  # two answers: side by side
    page.reload()
    assert shown_item(app, page) == app.item_of_prompt[PAIR_PROMPT]
    a, b = box(page, "#slot-0"), box(page, "#slot-1")
    assert abs(a["y"] - b["y"]) < 1 and b["x"] >= a["x"] + a["width"], (a, b)
    assert not s.errors and not s.dialogs


def test_answers_sit_side_by_side(app: App, login: Callable[[str], Session]) -> None:
    """All four answers in one row on a wide screen (A and D compared without scrolling), two columns on a
    narrower one, one on a phone."""
    remember(app, "reader", "markdown")
    s = login("reader")
    page = s.page
    page.set_viewport_size({"width": 1400, "height": 900})
    shown_item(app, page)
    slots = [box(page, f"#slot-{i}") for i in range(K)]
    assert all(abs(b["y"] - slots[0]["y"]) < 1 for b in slots), slots  # one row: the same top
    assert all(b["x"] >= a["x"] + a["width"] for a, b in zip(slots, slots[1:])), slots  # left to right, apart
    assert all(b["width"] >= 250 for b in slots), slots  # wide enough to read

    page.set_viewport_size({"width": 900, "height": 900})
    wait_until(lambda: box(page, "#slot-2")["y"] > box(page, "#slot-0")["y"], what="answers wrapping")
    a, b, c, d = [box(page, f"#slot-{i}") for i in range(K)]
    assert abs(a["y"] - b["y"]) < 1 and b["x"] >= a["x"] + a["width"], (a, b)  # two columns
    assert abs(c["y"] - d["y"]) < 1 and abs(c["x"] - a["x"]) < 1 and c["y"] >= a["y"] + a["height"], (a, c, d)

    page.set_viewport_size({"width": 500, "height": 900})
    wait_until(lambda: box(page, "#slot-1")["y"] > box(page, "#slot-0")["y"], what="one column")
    a, b = box(page, "#slot-0"), box(page, "#slot-1")
    assert abs(a["x"] - b["x"]) < 1 and b["y"] >= a["y"] + a["height"], (a, b)
    assert not s.errors and not s.dialogs


def test_the_project_is_remembered_per_user(app: App, login: Callable[[str], Session]) -> None:
    remember(app, "ann3", "default")
    s = login("ann3")
    page = s.page
    expect(page.locator("#project input")).to_have_value("default")
    shown_item(app, page)
    pick(page, "#project", "pair")
    expect(page.locator("#prompt")).to_contain_text(PAIR_PROMPT)
    pair = app.store.project("pair")
    wait_until(lambda: app.store.remembered_project(app.user("ann3").id) == pair, what="the choice in the store")

    page.reload()
    expect(page.locator("#project input")).to_have_value("pair")
    assert shown_item(app, page) == app.item_of_prompt[PAIR_PROMPT]
    again = login("ann3")  # a new browser: a fresh login starts where the user left
    expect(again.page.locator("#project input")).to_have_value("pair")
    assert shown_item(app, again.page) == app.item_of_prompt[PAIR_PROMPT]
    assert not s.errors and not again.errors


def test_one_project_pick_is_one_request_and_one_claim(app: App, login: Callable[[str], Session]) -> None:
    remember(app, "picker", "pair")
    user = app.user("picker")
    s = login("picker")
    page = s.page
    assert shown_item(app, page) == app.item_of_prompt[PAIR_PROMPT]
    fn = page.evaluate("window.gradio_config.dependencies.find((d) => d.api_name === 'select_project').id")
    picks: list[int] = []
    page.on("request", lambda r: picks.append(1) if "queue/join" in r.url and r.post_data
            and json.loads(r.post_data).get("fn_index") == fn else None)

    pick(page, "#project", "default")  # by mouse
    # the menu shows the pick before the handler answers: wait for the item to change, not a fixed read
    expect(page.locator("#prompt")).not_to_contain_text(PAIR_PROMPT)
    assert shown_item(app, page) != app.item_of_prompt[PAIR_PROMPT]
    page.locator("#prompt").click()  # the menu loses focus: Gradio's .input would fire again here
    page.wait_for_timeout(1000)
    assert len(picks) == 1, f"one pick ran the handler {len(picks)} times"
    assert app.store.progress(user, app.store.project(app.project_id)).assigned == 5  # one batch

    page.click("#project input")  # by keyboard
    page.keyboard.press("Control+a")
    page.keyboard.type("pair")
    page.keyboard.press("Enter")
    expect(page.locator("#prompt")).to_contain_text(PAIR_PROMPT)
    page.wait_for_timeout(1000)
    assert len(picks) == 2
    assert not s.errors and not s.dialogs


def test_a_new_user_starts_in_a_project_with_work(app: App, login: Callable[[str], Session]) -> None:
    user = app.user("ann4")
    default = app.store.project(app.project_id)
    while (item_id := app.store.next_item(user, default)) is not None:  # ann4 finishes the first project
        item = app.store.item(item_id)
        app.store.submit(user, item_id, Judgment(ranks={c.id: 1 for c in item.candidates}), secrets.token_hex(16))
    assert app.store.remembered_project(user.id) is None
    s = login("ann4")
    page = s.page
    expect(page.locator("#project input")).to_have_value("markdown")  # not "default", where nothing is left
    shown_item(app, page)

    pick(page, "#project", "default")
    message = page.locator("#message")
    expect(message).to_contain_text("Nothing left for you in project default.")
    # markdown's one prompt is claimed (open), pair's is claimable (projects other tests make may follow)
    expect(message).to_contain_text("Projects with work: markdown (1 prompt), pair (1 prompt)")
    assert "default (" not in message.inner_text()
    assert not s.errors and not s.dialogs


def test_submit_after_the_last_item_says_so(app: App, login: Callable[[str], Session]) -> None:
    remember(app, "ann5", "pair")
    user = app.user("ann5")
    s = login("ann5")
    page = s.page
    item_id = shown_item(app, page)
    assert item_id == app.item_of_prompt[PAIR_PROMPT]
    page.locator('#rank-0 input[value="1"]').click()
    page.locator('#rank-1 input[value="2"]').click()
    page.click("#submit")
    message = page.locator("#message")
    expect(message).to_contain_text("Saved. Nothing more to annotate in project pair. Projects with work: default")
    assert wait_until(lambda: app.store.latest_judgment(user.id, item_id), what="the judgment").revision == 1
    expect(page.locator("#slot-0")).to_be_hidden()  # an empty form, and the message says why
    assert not s.errors and not s.dialogs


def test_keys_continue_from_ranks_given_on_this_view(app: App, login: Callable[[str], Session]) -> None:
    from feedback_app.store import display_order

    user = app.user("ann6")
    remember(app, "ann6", "default")
    item_id = app.store.next_item(user, app.store.project(app.project_id))
    order = [c.id for c in display_order(user.id, app.store.item(item_id))]
    app.store.save_draft(user.id, item_id, {"ranks": {str(cid): K - n for n, cid in enumerate(order)}})
    s = login("ann6")
    page = s.page
    assert shown_item(app, page) == item_id
    expect_ranks(page, ["4", "3", "2", "1"])  # restored from the draft

    page.locator("#prompt").click()  # focus outside the text boxes
    for key in ("Digit1", "Shift+Digit2", "Digit3", "Digit4"):
        page.keyboard.press(key)
    expect_ranks(page, ["1", "1", "2", "3"])  # the restored ranks did not count
    wait_until(lambda: (app.store.draft(user.id, item_id) or {}).get("ranks")
               == {str(order[0]): 1, str(order[1]): 1, str(order[2]): 2, str(order[3]): 3}, what="the draft")
    assert not s.errors and not s.dialogs


def test_an_unranked_response_is_named(app: App, login: Callable[[str], Session]) -> None:
    remember(app, "ann7", "default")
    user = app.user("ann7")
    s = login("ann7")
    page = s.page
    item_id = shown_item(app, page)
    clear_ranks(page)
    page.locator("#prompt").click()
    press(page, "Digit1", "Digit2", "Digit4")
    page.click("#submit")
    expect(page.locator("#message")).to_contain_text("Not saved: Response C has no rank")
    assert app.store.latest_judgment(user.id, item_id) is None
    assert shown_item(app, page) == item_id and shown_ranks(page) == ["1", "2", None, "3"], "the form is kept"
    assert not s.errors and not s.dialogs


def test_a_too_long_text_is_refused_and_kept(app: App, login: Callable[[str], Session]) -> None:
    remember(app, "ann8", "default")
    user = app.user("ann8")
    s = login("ann8")
    page = s.page
    item_id = shown_item(app, page)
    clear_ranks(page)
    page.locator("#prompt").click()
    press(page, "Digit1", "Digit2", "Digit3", "Digit4")
    pick(page, "#correction-of", "A")
    long = "word " * 4691 + "x"  # 23,456 characters, pasted at once
    assert len(long) == 23_456
    page.fill("#correction textarea", long)
    page.click("#submit")
    expect(page.locator("#message")).to_contain_text(
        "Not saved: The corrected answer has 23,456 characters; the limit is 20,000.")
    assert page.locator("#correction textarea").input_value() == long, "nothing was cut"
    assert app.store.latest_judgment(user.id, item_id) is None
    assert not s.errors and not s.dialogs


def test_my_submissions_load_when_the_tab_opens(app: App, login: Callable[[str], Session]) -> None:
    item_id = ensure_submission(app, "ann1")
    remember(app, "ann1", "default")
    s = login("ann1")
    open_tab(s.page, "My submissions")  # no Refresh press
    prompt = app.store.item(item_id).prompt[-1]["content"]
    expect(s.page.locator("#mine-table")).to_contain_text(prompt[:40])
    assert not s.errors and not s.dialogs


def test_admin_tab_names_its_project(app: App, login: Callable[[str], Session]) -> None:
    remember(app, "admin2", "default")
    s = login("admin2")
    page = s.page
    open_tab(page, "Admin")
    heading = page.locator("#admin-project")
    expect(heading).to_contain_text("Editing project: default")
    guidelines = page.locator("#admin-guidelines textarea")
    expect(guidelines).to_have_value(app.store.project("default").guidelines)

    open_tab(page, "Annotate")
    pick(page, "#project", "pair")
    open_tab(page, "Admin")
    expect(heading).to_contain_text("Editing project: pair")
    expect(guidelines).to_have_value(PAIR_GUIDELINES)

    name = f"new-{secrets.token_hex(3)}"
    page.fill("#new-project textarea, #new-project input", name)
    page.click("#create-project")
    expect(page.locator("#project-msg")).to_contain_text(f"Project {name} ready.")
    expect(heading).to_contain_text(f"Editing project: {name}")
    created = app.store.project(name)
    assert created is not None and created.guidelines != PAIR_GUIDELINES
    expect(guidelines).to_have_value(created.guidelines)  # the new project's, not the old one's
    assert not s.errors and not s.dialogs


def _dashboard_project(app: App, name: str) -> Any:
    """A project with two judged prompts: tags 'unsafe' and 'off tone' once each, and a note."""
    store = app.store
    p = store.update_project(store.ensure_project(name).id, candidates_per_item=2, overlap=2)
    if store.latest_judgments(p.id):
        return p
    store.add_prompts(p.id, [[{"role": "user", "content": f"{name} prompt {i}"}] for i in range(2)])
    for item_id, _, missing in store.items_short_of_candidates(p.id, 2):
        store.add_candidates(item_id, [(f"answer {j} of {item_id}", "m", {}) for j in range(missing)])
    judge = store.add_user(f"{name}-judge", "annotator", "judge-pass-123")
    for tag, note in (("unsafe", 'Check the <b>dose</b> & "units"'), ("off tone", "")):
        item_id = store.next_item(judge, p)
        a, b = store.item(item_id).candidates
        store.submit(judge, item_id, Judgment(ranks={a.id: 1, b.id: 2}, tags={a.id: [tag]}, note=note),
                     secrets.token_hex(16))
    return p


def test_dashboard_draws_equal_tag_counts_and_lists_notes(app: App, login: Callable[[str], Session]) -> None:
    _dashboard_project(app, "dash")
    remember(app, "admin3", "dash")
    s = login("admin3")
    page = s.page
    open_tab(page, "Admin")
    expect(page.locator("#admin-project")).to_contain_text("Editing project: dash")
    page.click("#refresh-dashboard")
    bars = page.locator("#tag-plot g.mark-rect path")
    expect(bars).to_have_count(2)
    heights = [bars.nth(i).bounding_box()["height"] for i in range(2)]
    assert all(h > 10 for h in heights), f"bars of equal counts must be drawn: heights {heights}"
    notes = page.locator("#notes")
    expect(notes).to_contain_text('Check the <b>dose</b> & "units"')  # as text
    expect(notes).to_contain_text("dash-judge")
    expect(notes).to_contain_text("dash prompt")
    assert page.locator("#notes b").count() == 0
    assert not s.errors and not s.dialogs


def test_import_reports_skipped_rows(app: App, login: Callable[[str], Session], tmp_path: Path) -> None:
    store = app.store
    p = store.ensure_project("imports")
    remember(app, "admin3", "imports")
    rows = [{"prompt": "Imported question 1", "responses": ["yes", "no"]},
            {"prompt": "Imported question 2", "responses": ["only one"]},
            {"prompt": "", "responses": ["a", "b"]}]
    path = tmp_path / "cands.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = login("admin3")
    page = s.page
    open_tab(page, "Admin")
    expect(page.locator("#admin-project")).to_contain_text("Editing project: imports")
    page.set_input_files("#cands-file input[type=file]", str(path))
    expect(page.locator("#cands-file")).to_contain_text("cands.jsonl")
    page.click("#import-cands")
    msg = page.locator("#work-msg")
    expect(msg).to_contain_text("2 candidates imported (1 new prompts).")
    expect(msg).to_contain_text("2 rows skipped: line 2 (responses): has one response (at least 2 needed); "
                                "line 3 (prompt): the prompt is empty.")  # in file order
    assert store.counts(p.id) == {"prompts": 1, "candidates": 2, "ready": 1, "judgments": 0}
    assert not s.errors and not s.dialogs


def test_a_page_open_across_a_restart_stays_in_its_project(browser: Any, tmp_path: Path) -> None:
    """The server restarts under an open page: the next submit lands in the user's project, not the first one.

    How the page learns of the restart is a race inside Gradio's client: either the click reaches the new
    server first, whose session state is gone (our handler answers "out of date" and refills the saved
    draft), or the client notices the lost connection first and reloads the page (the load handler refills
    the draft). Both paths are accepted; both must end with the ranks given before the restart saved on the
    clinic item and nothing on the default project's item."""
    from playwright.sync_api import Error as PlaywrightError

    from tests.app.test_app_load import app_load

    store = Store(tmp_path / "feedback.db")
    store.add_user("ann1", "annotator", PASSWORDS["ann1"])
    first = store.ensure_project("default")  # has work too: the fallback would look plausible
    second = store.ensure_project("clinic")
    items = {}
    for project, text in ((first, "Default question?"), (second, "Clinic question?")):
        store.add_prompts(project.id, [[{"role": "user", "content": text}]], source="test")
        items[project.name] = store.item_id_for_prompt(project.id, [{"role": "user", "content": text}])
        store.add_candidates(items[project.name], [(f"{text} answer {j}", "m", {}) for j in range(2)])
    user = store.get_user("ann1")
    store.remember_project(user.id, second.id)
    server = app_load.Server(tmp_path / "feedback.db", log=tmp_path / "server.log").start()
    context = browser.new_context()
    try:
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.goto(server.url + "/login")
        page.fill("#username", "ann1")
        page.fill("#password", PASSWORDS["ann1"])
        page.click("#login")
        expect(page.locator("#prompt")).to_contain_text("Clinic question?")
        page.locator('#rank-0 input[value="1"]').click()
        page.locator('#rank-1 input[value="2"]').click()
        wait_until(lambda: len((store.draft(user.id, items["clinic"]) or {}).get("ranks") or {}) == 2,
                   what="both ranks in the saved draft")
        server.stop()
        server.start()
        messages = []
        deadline = time.monotonic() + 60
        while store.latest_judgment(user.id, items["clinic"]) is None:
            assert time.monotonic() < deadline, f"no submission landed after the restart; messages: {messages}"
            try:
                page.click("#submit", timeout=5000)
                page.wait_for_function("() => /Saved|out of date|Not saved/.test("
                                       "document.querySelector('#message')?.innerText || '')", timeout=3000)
                messages.append(page.locator("#message").inner_text().strip())
            except PlaywrightError:
                pass  # the page is reloading itself, or the click went nowhere while it noticed: click again
        judgment = store.latest_judgment(user.id, items["clinic"])
        assert judgment is not None and len(judgment.judgment.ranks) == 2, "the ranks from before the restart were kept"
        assert store.latest_judgment(user.id, items["default"]) is None, "nothing landed in the other project"
        expect(page.locator("#message")).to_contain_text("Saved")
        assert not any("Not saved" in m for m in messages), messages
    finally:
        context.close()
        server.stop()
        store.close()


def test_a_head_to_head_item_is_judged_and_reported(app: App, login: Callable[[str], Session]) -> None:
    """A head-to-head evaluation through the usual form: the instruction above the two answers and no correction
    boxes; one answer B ranked better, one tie, one both bad, stored as the challenger's votes the display order
    implies; then the admin's dashboard shows the win rate."""
    from feedback_app.headtohead import BOTH_BAD, LOSS, TIE, WIN, outcome_of, sides

    store = app.store
    rows = [([{"role": "user", "content": f"Versus question {i}: what helps a sore throat?"}],
             f"Baseline reply {i}: drink warm tea with honey.", f"Challenger reply {i}: gargle salt water often.")
            for i in range(3)]
    # The rules stored with the evaluation (as `align feedback h2h create --policies` stores them): the dashboard
    # judges with them; every challenger reply follows it.
    policies = ("policies:\n  - name: gargle\n    must_match: ['gargle']\n", "throat.yaml")
    project = store.add_head_to_head("versus", "model-old", "model-new", rows, overlap=2, policies=policies).project
    item_of = {item.prompt[-1]["content"]: item.id for item in store.project_items(project.id)}
    remember(app, "assessor", "versus")
    user = app.user("assessor")
    s = login("assessor")
    page = s.page
    expect(page.locator("#project input")).to_have_value("versus")
    instruction = page.locator("#h2h-instruction")
    outcomes = {}
    for verdict in ("B better", "tie", "both bad"):
        page.wait_for_selector("#response-0 .msg")
        prompt = page.locator("#prompt .msg").last.inner_text()
        item_id = item_of[prompt]
        order = slot_candidates(app, page, item_id)  # candidate id per slot, read from the texts shown
        expect(instruction).to_be_visible()
        expect(instruction).to_contain_text("Which answer is better? Rank it 1 and the other 2")
        for hidden in ("#correction", "#negative", "#correction-of"):
            expect(page.locator(hidden)).to_be_hidden()
        if verdict == "B better":
            page.locator('#rank-1 input[value="1"]').click()
            page.locator('#rank-0 input[value="2"]').click()
            expect_ranks(page, ["2", "1"])
        elif verdict == "tie":
            page.locator('#rank-0 input[value="1"]').click()
            page.locator('#rank-1 input[value="1"]').click()
            expect_ranks(page, ["1", "1"])
        else:
            page.locator("#unacceptable input").check()
        page.click("#submit")
        latest = wait_until(lambda item_id=item_id: store.latest_judgment(user.id, item_id), what="the judgment")
        expect(page.locator("#message")).to_contain_text("Saved.")
        item = store.item(item_id)
        base, chal = sides(item, project)
        assert sorted(order) == sorted([base.id, chal.id])
        j = latest.judgment
        assert (j.correction_of, j.correction, j.negative) == (None, "", "")
        expected = {"B better": WIN if order[1] == chal.id else LOSS, "tie": TIE, "both bad": BOTH_BAD}[verdict]
        assert outcome_of(item, project, j) == expected, (verdict, order, j)
        outcomes[verdict] = expected
        if verdict != "both bad":  # the next item replaces this one
            expect(page.locator("#prompt .msg").last).not_to_have_text(prompt)
    expect(page.locator("#message")).to_contain_text("Nothing more to annotate in project versus.")

    # a ranking project: no instruction, the correction boxes back
    pick(page, "#project", "pair")
    expect(page.locator("#prompt")).to_contain_text(PAIR_PROMPT)
    expect(instruction).to_be_hidden()
    expect(page.locator("#correction textarea")).to_be_visible()
    assert not s.errors and not s.dialogs

    # the admin's dashboard: 1 win (or loss) + 1 tie + 1 both bad, ties and both bad count 1/2
    wins = int(outcomes["B better"] == WIN)
    rate = (wins + 0.5 + 0.5) / 3
    assert f"{rate:.3f}" == ("0.667" if wins else "0.333")
    remember(app, "admin3", "versus")
    a = login("admin3")
    open_tab(a.page, "Admin")
    expect(a.page.locator("#admin-project")).to_contain_text("Editing project: versus")
    a.page.click("#refresh-dashboard")
    report = a.page.locator("#h2h-report")
    expect(report).to_contain_text("challenger model-new vs baseline model-old")
    expect(report).to_contain_text(f"3 votes: {wins} wins, {1 - wins} losses, 1 ties, 1 both bad")
    expect(report).to_contain_text(re.compile(rf"win rate {rate:.3f}  95% CI \[[0-9.]+, [0-9.]+\]"))
    expect(report).to_contain_text(re.compile(r"decisive votes \d/1 = [01]\.000  95% CI \["))
    # the judges table (the experts' row, the stored rules'; no reward-model scores) and the annotator's row
    expect(report).to_contain_text(re.compile(rf"experts\s+3 votes\s+{wins}\s+{1 - wins}\s+1 \(\+1 both bad\)\s+"
                                              rf"{rate:.3f}"))
    expect(report).to_contain_text(re.compile(rf"rules\s+3 prompts\s+3\s+0\s+0\s+1\.000\s+{wins}\.000 "
                                              rf"\({wins}/1 decisive votes\)"))
    expect(report).to_contain_text("rules: throat.yaml (1 rules, stored with the project)")
    expect(report).to_contain_text(re.compile(rf"assessor\s+3\s+{wins}\s+{1 - wins}\s+1\s+1\s+{rate:.3f}"))
    expect(report).to_contain_text("note: no reward-model scores")
    assert not a.errors and not a.dialogs
