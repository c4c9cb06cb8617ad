"""The expert feedback app: a FastAPI server with our login and the Gradio interface mounted behind it.

Security model, in three layers:

1. ``SessionMiddleware``: every request except the login page needs a valid session cookie (see
   :mod:`feedback_app.auth`); anything else gets 401 (or a redirect to the login page for a browser page).
   This covers Gradio's every route, documented or not: config, API info, queue, uploads, files.
2. Gradio's ``auth_dependency`` names the user of each event (``gr.Request.username``).
3. Every handler calls :func:`require` with the role it needs, which re-reads the user's current row:
   a hidden tab or button is never the permission.

All model and annotator text reaches the page through :func:`html.escape` (in ``gr.HTML``), as Markdown
rendered without raw HTML or images (answers, guidelines: :mod:`feedback_app.render`), or as plain text
(textboxes, tables, dropdown labels), so HTML and script in an answer are shown, never run.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import secrets
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from feedback_app.agreement import AGGREGATIONS, agreement
from feedback_app.auth import COOKIE, SESSION_SECONDS, LoginThrottle, Sessions, make_cookie
from feedback_app.candidates import GenerationSettings, import_candidates, load_prompts, start_generation
from feedback_app.export import export_store, summary_lines, write_export
from feedback_app.headtohead import format_summary, project_summary
from feedback_app.render import render_guidelines, render_prompt, render_response
from feedback_app.security import Guard, Uploads
from feedback_app.store import (
    DEFAULT_CLAIM_TTL_MINUTES,
    LINEAGE_HEADERS,
    MAX_TEXT,
    GoldScore,
    Item,
    Judgment,
    Project,
    Store,
    StoredJudgment,
    StoreError,
    User,
    display_order,
    gold_accuracy,
    lineage_rows,
)

# The Export's "Pairs across annotators" menu, in the admin's words (feedback_app/export.py has the details).
AGGREGATE_INFO = ("Where annotators of one prompt disagree. all: every annotator's pairs as they are; majority: "
                  "the order most annotators chose (ties dropped); drop_contradicted: only pairs nobody ordered "
                  "the other way; agreement_weight: both orders, each weighted by its share of the votes.")
K_MAX = 8  # response slots on the page; projects use 2..K_MAX candidates per prompt
LETTERS = "ABCDEFGH"
RANKS = [str(r) for r in range(1, K_MAX + 1)]

SHORTCUTS = ("**Keys** (outside text boxes): `1`-`8` give that response the next rank after the ranks you have "
             "given since this item was shown (ranks filled in from a draft or an earlier submission do not count: "
             "they are replaced as you rank), `Shift`+number gives it the same rank as your last one (a tie), "
             "`0` clears the ranks; `Ctrl`+`Enter` submits.")

# The next rank continues from the ranks given on this page view only (by key or mouse): counting the ranks
# restored from a draft would make the first key press give rank 5 of 4. A new form (another item, or the
# same item shown again) carries a new random key in #progress's data-form attribute; the memory is reset
# when it changes, and on 0 / "Clear ranks".
KEYBOARD_JS = """
<script>
(() => {
  const visible = (el) => el && el.offsetParent !== null;
  let formKey = null;
  let given = new Map();  // rank group id -> rank given on this view
  const sync = () => {
    const el = document.querySelector('#progress [data-form]');
    const key = el ? el.getAttribute('data-form') : null;
    if (key !== formKey) { formKey = key; given = new Map(); }
  };
  document.addEventListener('click', (e) => {
    const t = e.target;
    if (!t || !t.closest) return;
    if (t.closest('#clear-ranks')) { sync(); given = new Map(); return; }
    const group = t.tagName === 'INPUT' && t.type === 'radio' ? t.closest('[id^="rank-"]') : null;
    if (group) { sync(); given.set(group.id, parseInt(t.value)); }
  }, true);
  document.addEventListener('keydown', (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') {
      const b = document.querySelector('#submit'); if (b) { e.preventDefault(); b.click(); } return;
    }
    const t = e.target;
    if (t && (t.tagName === 'TEXTAREA' || t.isContentEditable ||
              (t.tagName === 'INPUT' && !['radio', 'checkbox'].includes(t.type)))) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.code === 'Digit0' || e.code === 'Numpad0') {
      const c = document.querySelector('#clear-ranks'); if (c) { e.preventDefault(); c.click(); } return;
    }
    const m = /^(?:Digit|Numpad)([1-8])$/.exec(e.code); if (!m) return;
    const group = document.querySelector('#rank-' + (parseInt(m[1]) - 1));
    if (!visible(group)) return;
    sync();
    const others = [...given].filter(([id]) => id !== group.id && visible(document.getElementById(id)));
    const top = Math.max(0, ...others.map(([, r]) => r));
    const rank = e.shiftKey ? Math.max(1, top) : top + 1;
    const input = group.querySelector('input[value="' + rank + '"]');
    if (input) { e.preventDefault(); given.set(group.id, rank); input.click(); }
  });
})();
</script>
"""

# Answers sit side by side in columns, so answer A and answer D are compared without scrolling: on a wide
# screen every answer of the prompt in one row (at most four to a row, as five to eight would be too narrow to
# read: those wrap after the fourth), two columns on a narrower one, one on a phone. The four-column width is a
# quarter of the row (gaps out, 1px spare for rounding) and auto-fit collapses the tracks no answer fills, so
# two or three answers share the whole row. Hidden slots are display:none and take no cell. Each answer is in
# a box of bounded height that scrolls on its own, its rank control above the text and its tags below:
# the rank controls stay in one line, in view, however long one answer is.
CSS = """
.msg {white-space: pre-wrap; overflow-wrap: anywhere; padding: 8px 12px; border-radius: 8px;
      border: 1px solid var(--border-color-primary); margin: 4px 0; font-size: 15px; line-height: 1.45}
.role {font-weight: 600; font-size: 12px; text-transform: uppercase; opacity: .7; margin-top: 6px}
.resp-title {font-weight: 700; margin: 4px 0}
#answers {display: grid !important; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 12px;
          align-items: start}
@media (min-width: 1200px) {
  #answers {grid-template-columns: repeat(auto-fit, minmax(calc((100% - 36px) / 4 - 1px), 1fr))}
}
@media (max-width: 640px) {
  #answers {grid-template-columns: minmax(0, 1fr)}
}
#answers > .slot {min-width: 0 !important; border: 1px solid var(--border-color-primary); border-radius: 8px;
                  padding: 6px}
.md {white-space: normal}
.md.answer {max-height: min(50vh, 560px); overflow: auto}
.md pre {overflow-x: auto; padding: 8px; border-radius: 6px; background: var(--background-fill-secondary)}
.md code, .md pre {font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px}
.md pre code {white-space: pre}
.md table {border-collapse: collapse; border: 0; margin: 6px 0; display: block; overflow-x: auto}
.md th, .md td {border: 1px solid var(--border-color-primary); padding: 4px 8px; text-align: left}
.md p {margin: 4px 0}
.md h1, .md h2, .md h3, .md h4 {margin: 8px 0 4px}
.h2h-report {font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; white-space: pre;
             overflow-x: auto; padding: 8px; border-radius: 6px; background: var(--background-fill-secondary)}
"""

# Above the two answers of a head-to-head item: how the usual form records a comparison (the judgment
# feedback_app.headtohead.judgment_for makes of each verdict).
H2H_INSTRUCTION = ("**Which answer is better?** Rank it **1** and the other **2**; rank both **1** for a tie; tick "
                   "**All responses are unacceptable** when both are bad. (An evaluation of two models: there is no "
                   "corrected answer or negative example to give.)")


class Denied(gr.Error):
    """A handler refused the request (not signed in, wrong role, not your item)."""


def require(store: Store, request: gr.Request | None, role: str = "annotator") -> User:
    """The signed-in user, re-read from the store; raises unless active and allowed ``role``."""
    name = getattr(request, "username", None) if request is not None else None
    user = store.get_user(name) if name else None
    if user is None or not user.active:
        raise Denied("You are not signed in. Reload the page to sign in again.")
    if role == "admin" and not user.is_admin:
        raise Denied("This action needs the admin role.")
    return user


# ------------------------------------------------------------------------------------------------ the form

# The free-text fields and how a message names them; the store refuses longer texts too, but only the
# form can say which box and keep the text in it.
TEXT_FIELDS = (("correction", "The corrected answer"), ("negative", "The negative example"),
               ("note", "The note for the admin"))


def progress_html(text: str, key: str = "") -> str:
    """The progress line; ``key`` (the form's per-render key) tells the keyboard script a new form is shown."""
    return f'<div class="progress" data-form="{html.escape(key)}">{text}</div>'


def _letters(letters: list[str]) -> str:
    return letters[0] if len(letters) == 1 else ", ".join(letters[:-1]) + " and " + letters[-1]


@dataclass
class Slot:
    box: Any
    text: Any
    rank: Any
    tags: Any


@dataclass
class Form:
    """The annotate tab's components, in the order the handlers return them."""

    state: Any
    progress: Any
    guidelines: Any
    prompt: Any
    instruction: Any  # shown for a head-to-head item only
    slots: list[Slot]
    unacceptable: Any
    correction_of: Any
    correction: Any
    negative: Any
    note: Any
    submit: Any
    message: Any

    def outputs(self) -> list[Any]:
        return [self.state, self.progress, self.guidelines, self.prompt, *[s.box for s in self.slots],
                *[s.text for s in self.slots], *[s.rank for s in self.slots], *[s.tags for s in self.slots],
                self.unacceptable, self.correction_of, self.correction, self.negative, self.note, self.submit,
                self.message, self.instruction]

    def inputs(self) -> set[Any]:
        return {self.state, *[s.rank for s in self.slots], *[s.tags for s in self.slots], self.unacceptable,
                self.correction_of, self.correction, self.negative, self.note}

    def judgment(self, data: dict[Any, Any]) -> Judgment:
        """The form's values as a judgment keyed by candidate id (the state maps slots to candidates)."""
        order: list[int] = data[self.state].get("order", [])
        ranks, tags = {}, {}
        for slot, cid in zip(self.slots, order):
            value = data[slot.rank]
            if value not in (None, ""):
                ranks[cid] = int(value)
            if data[slot.tags]:
                tags[cid] = list(data[slot.tags])
        letter = data[self.correction_of]
        correction_of = order[LETTERS.index(letter)] if letter and letter in LETTERS[: len(order)] else None
        return Judgment(ranks=ranks, all_unacceptable=bool(data[self.unacceptable]), tags=tags,
                        correction_of=correction_of, correction=data[self.correction] or "",
                        negative=data[self.negative] or "", note=data[self.note] or "")

    def problems(self, data: dict[Any, Any]) -> list[str]:
        """What stops the form from being saved, in the annotator's terms (response letters, box names)."""
        out = []
        for name, label in TEXT_FIELDS:
            n = len(data[getattr(self, name)] or "")
            if n > MAX_TEXT:
                out.append(f"{label} has {n:,} characters; the limit is {MAX_TEXT:,}.")
        k = len(data[self.state].get("order", []))
        missing = [LETTERS[i] for i, slot in enumerate(self.slots[:k]) if data[slot.rank] in (None, "")]
        if missing and not data[self.unacceptable]:
            what = f"Response {missing[0]} has" if len(missing) == 1 else f"Responses {_letters(missing)} have"
            out.append(f"{what} no rank: rank every response, or tick 'All responses are unacceptable'.")
        return out

    def values(self, store: Store, user: User, project: Project | None, item: Item | None,
               prefill: Judgment | None = None, message: str = "") -> list[Any]:
        """Everything the annotate tab shows for ``item`` (None: nothing to do), prefilled from ``prefill``."""
        if project is None:
            return self._empty({}, progress_html("No project yet: an admin loads prompts first."), "", message)
        progress = store.progress(user, project)
        progress_text = (f"<b>Progress:</b> {progress.done} done of {progress.assigned} assigned"
                         f" · {progress.available} more available")
        state = {"project_id": project.id}
        guidelines = render_guidelines(project.guidelines)
        if item is None:
            return self._empty(state, progress_html(progress_text), guidelines,
                               message or "Nothing to annotate right now. Thank you!")
        order = display_order(user.id, item)
        state.update(item_id=item.id, order=[c.id for c in order], key=secrets.token_hex(16))
        j = prefill or Judgment()
        k = len(order)
        rank_choices = [str(r) for r in range(1, k + 1)]
        tags_choices = list(project.tags)
        boxes, texts, ranks, tags = [], [], [], []
        for i in range(K_MAX):
            if i < k:
                c = order[i]
                boxes.append(gr.Column(visible=True))
                texts.append(render_response(LETTERS[i], c.text))
                rank = j.ranks.get(c.id)
                ranks.append(gr.Radio(choices=rank_choices, value=str(rank) if rank else None,
                                      label=f"Rank of response {LETTERS[i]} (1 = best)"))
                tags.append(gr.CheckboxGroup(choices=tags_choices,
                                             value=[t for t in j.tags.get(c.id, []) if t in tags_choices]))
            else:
                boxes.append(gr.Column(visible=False))
                texts.append("")
                ranks.append(gr.Radio(choices=[], value=None))
                tags.append(gr.CheckboxGroup(choices=[], value=[]))
        letters = list(LETTERS[:k])
        corr_letter = LETTERS[state["order"].index(j.correction_of)] if j.correction_of in state["order"] else None
        # A head-to-head item is an evaluation, never exported for training: no correction or negative example
        # to give (the store refuses one), and the instruction says how the ranks record the comparison.
        h2h = project.is_head_to_head
        if h2h:
            corr_letter, correction, negative = None, "", ""
        else:
            correction, negative = j.correction, j.negative
        return [state, progress_html(progress_text, state["key"]), guidelines, render_prompt(item.prompt), *boxes,
                *texts, *ranks, *tags, gr.Checkbox(value=j.all_unacceptable),
                gr.Dropdown(choices=[] if h2h else letters, value=corr_letter, visible=not h2h),
                gr.Textbox(value=correction, visible=not h2h), gr.Textbox(value=negative, visible=not h2h), j.note,
                gr.Button(interactive=True), message, gr.Markdown(value=H2H_INSTRUCTION if h2h else "", visible=h2h)]

    def _empty(self, state: dict[str, Any], progress: str, guidelines: str, message: str) -> list[Any]:
        n = len(self.slots)
        return [state, progress, guidelines, "", *[gr.Column(visible=False)] * n, *[""] * n,
                *[gr.Radio(choices=[], value=None)] * n, *[gr.CheckboxGroup(choices=[], value=[])] * n,
                gr.Checkbox(value=False), gr.Dropdown(choices=[], value=None, visible=True),
                gr.Textbox(value="", visible=True), gr.Textbox(value="", visible=True), "",
                gr.Button(interactive=False), message, gr.Markdown(value="", visible=False)]


def _draft_or_latest(store: Store, user: User, item_id: int) -> Judgment | None:
    draft = store.draft(user.id, item_id)
    if draft is not None:
        return Judgment.from_json(json.dumps(draft))
    latest = store.latest_judgment(user.id, item_id)
    return latest.judgment if latest else None


# ------------------------------------------------------------------------------------------------ the interface


def build_blocks(store: Store, uploads: Uploads | None = None) -> gr.Blocks:
    with gr.Blocks(title="Expert feedback", analytics_enabled=False) as demo:
        header = gr.HTML()
        with gr.Tabs(selected="annotate") as tabs:
            with gr.Tab("Annotate", id="annotate"):
                with gr.Row():
                    project_dd = gr.Dropdown(label="Project", choices=[], scale=1, elem_id="project")
                    progress = gr.HTML(elem_id="progress")
                # Next to the progress line: after a submit the page scrolls here, so the outcome is in view.
                message = gr.Markdown(elem_id="message")
                with gr.Accordion("Guidelines", open=True):
                    guidelines = gr.HTML(elem_id="guidelines")
                gr.Markdown(SHORTCUTS)
                prompt = gr.HTML(elem_id="prompt")
                instruction = gr.Markdown(visible=False, elem_id="h2h-instruction")
                slots = []
                with gr.Row(elem_id="answers"):
                    for i in range(K_MAX):
                        with gr.Column(visible=False, elem_id=f"slot-{i}", elem_classes=["slot"],
                                       min_width=0) as box:
                            # All ranks to start with: a tab left open across a server restart (its
                            # per-session choices gone) can still submit; the store checks 1..K.
                            rank = gr.Radio(label=f"Rank of response {LETTERS[i]}", choices=RANKS, elem_id=f"rank-{i}")
                            text = gr.HTML(elem_id=f"response-{i}")
                            tags = gr.CheckboxGroup(label="Problems", choices=[], elem_id=f"tags-{i}")
                        slots.append(Slot(box, text, rank, tags))
                with gr.Row():
                    unacceptable = gr.Checkbox(label="All responses are unacceptable", elem_id="unacceptable")
                    clear = gr.Button("Clear ranks (0)", size="sm", elem_id="clear-ranks")
                correction_of = gr.Dropdown(label="My corrected answer replaces response", choices=[],
                                            elem_id="correction-of")
                # No max_length: the browser would cut a long paste without a word; the submit refuses
                # it instead, naming the box and both lengths, and the text stays in the box.
                correction = gr.Textbox(label="Corrected answer (optional)", lines=4, elem_id="correction")
                negative = gr.Textbox(label="Negative example: a plausible answer that must never be given "
                                      "(optional)", lines=3, elem_id="negative")
                note = gr.Textbox(label="Note for the admin (optional)", lines=1, elem_id="note")
                submit = gr.Button("Submit (Ctrl+Enter)", variant="primary", elem_id="submit", interactive=False)
            with gr.Tab("My submissions", id="mine") as mine_tab:
                gr.Markdown("Your latest judgment per prompt, newest first. Pick one and press **Revise**: "
                            "the revision is stored as a new row and replaces the old one in exports.")
                mine_refresh = gr.Button("Refresh", size="sm", elem_id="mine-refresh")
                mine_table = gr.Dataframe(headers=["submitted", "prompt", "revision"], interactive=False,
                                          elem_id="mine-table")
                with gr.Row():
                    mine_pick = gr.Dropdown(label="Submission", choices=[], elem_id="mine-pick")
                    revise = gr.Button("Revise", elem_id="revise")
            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                admin = AdminSection(store, project_dd, uploads)
        state = gr.State({})
        form = Form(state, progress, guidelines, prompt, instruction, slots, unacceptable, correction_of, correction,
                    negative, note, submit, message)
        timer = gr.Timer(2.0, active=False)

        def project_of(name: str | None) -> Project | None:
            """The named project, else the first one."""
            projects = store.list_projects()
            return next((p for p in projects if p.name == name), projects[0] if projects else None)

        def start_project(user: User) -> Project | None:
            """The project the user chose last; else the first with work for them; else the first."""
            remembered = store.remembered_project(user.id)
            if remembered is not None:
                return remembered
            with_work = store.projects_with_work(user)
            return with_work[0][0] if with_work else project_of(None)

        def elsewhere(user: User, project: Project) -> str:
            others = [f"{html.escape(p.name)} ({n} prompt{'s' if n != 1 else ''})"
                      for p, n in store.projects_with_work(user) if p.id != project.id]
            return (f" Projects with work: {', '.join(others)}." if others
                    else " No other project has work for you either. Thank you!")

        def next_form(user: User, project: Project | None, message: str = "", saved: str = "") -> list[Any]:
            """The user's next item in ``project``; ``saved``: what the submit that led here stored."""
            item_id = store.next_item(user, project) if project else None
            item = store.item(item_id) if item_id else None
            prefill = _draft_or_latest(store, user, item.id) if item else None
            if project is not None and item is None:
                name = html.escape(project.name)
                message = (f"{saved} Nothing more to annotate in project {name}." if saved
                           else f"Nothing left for you in project {name}.") + elsewhere(user, project)
            elif saved:
                message = f"{saved} Here is the next one."
            return form.values(store, user, project, item, prefill, message)

        def on_load(request: gr.Request) -> list[Any]:
            user = require(store, request)
            project = start_project(user)
            names = [p.name for p in store.list_projects()]
            head = (f'<div style="display:flex;justify-content:space-between;align-items:center">'
                    f'<h2 style="margin:0">Expert feedback</h2><div>Signed in as <b id="whoami">'
                    f'{html.escape(user.name)}</b> ({html.escape(user.role)}) · <a href="/logout">Log out</a>'
                    f"</div></div>")
            return [head, gr.Tab(visible=user.is_admin), gr.Timer(active=user.is_admin),
                    gr.Dropdown(choices=names, value=project.name if project else None),
                    *next_form(user, project)]

        demo.load(on_load, None, [header, admin_tab, timer, project_dd, *form.outputs()], api_name="load")

        def on_project(name: str | None, st: dict[str, Any], request: gr.Request) -> list[Any]:
            user = require(store, request)
            project = project_of(name) if name else None
            if project is None or (st or {}).get("project_id") == project.id:
                return [gr.skip()] * len(form.outputs())  # the form shows this project already (page load)
            store.remember_project(user.id, project.id)
            return next_form(user, project)

        # .change, once per new value: Gradio's dropdown fires .input on a mouse pick and again when it loses
        # focus (even unchanged), so one pick claimed work twice in parallel, and .select misses a keyboard
        # pick. .change also fires when a handler sets the value: after the page load (the state shows the
        # project already: skipped) and after "Create project" (the form follows the menu to the new project).
        project_dd.change(on_project, [project_dd, state], form.outputs(), api_name="select_project")

        def on_submit(data: dict[Any, Any], request: gr.Request) -> Any:
            user = require(store, request)
            st = data[state]
            if not st.get("item_id"):  # e.g. the server restarted since this page was loaded
                project = store.project(st["project_id"]) if st.get("project_id") else None
                project = project or start_project(user)  # the state is gone with the old server
                return dict(zip(form.outputs(), next_form(
                    user, project, "The page was out of date (the server restarted): check this item and submit "
                    "again. Your saved draft is filled in.")))
            problems = form.problems(data)
            if problems:  # only the message changes: every text stays in its box
                return {message: "**Not saved:** " + " ".join(html.escape(p) for p in problems)}
            try:
                jid, fresh = store.submit(user, st["item_id"], form.judgment(data), st["key"])
            except StoreError as e:
                return {message: f"**Not saved:** {html.escape(str(e))}"}
            project = store.project(st["project_id"])
            revision = store.revision_of(jid)
            saved = ("Already saved (submitted twice)." if not fresh
                     else f"Saved revision {revision}." if revision > 1 else "Saved.")
            return dict(zip(form.outputs(), next_form(user, project, saved=saved)))

        # The message sits at the top of the tab; the submit button at the bottom: bring the message into view.
        submit.click(on_submit, form.inputs(), form.outputs(), api_name="submit", concurrency_limit=32).then(
            None, js="() => { window.scrollTo({top: 0}); }")

        def on_draft(data: dict[Any, Any], request: gr.Request) -> None:
            user = require(store, request)
            st = data[state]
            if st.get("item_id"):
                try:  # the store refuses drafts of items not assigned to this user
                    store.save_draft(user.id, st["item_id"], json.loads(form.judgment(data).to_json()))
                except StoreError:
                    pass

        # Text boxes save on .change: Gradio's Textbox fires .input only on a key press, so a paste or a
        # Backspace would never reach the draft (.change also fires when a load fills the box: same values).
        draft_triggers = [s.rank.input for s in slots] + [s.tags.input for s in slots] + [
            unacceptable.input, correction_of.input, correction.change, negative.change, note.change]
        gr.on(draft_triggers, on_draft, form.inputs(), None, api_name="save_draft", trigger_mode="always_last",
              show_progress="hidden", concurrency_limit=32)

        def on_clear(data: dict[Any, Any], request: gr.Request) -> list[Any]:
            on_draft({**data, **{s.rank: None for s in slots}}, request)
            return [gr.Radio(value=None) for _ in slots]

        clear.click(on_clear, form.inputs(), [s.rank for s in slots], api_name="clear_ranks")

        def on_mine(name: str, request: gr.Request) -> list[Any]:
            user = require(store, request)
            project = project_of(name)
            if project is None:
                return [[], gr.Dropdown(choices=[], value=None)]
            rows, choices = [], []
            for sj in store.recent_submissions(user.id, project.id):
                item = store.item(sj.item_id)
                first = item.prompt[-1]["content"] if item else ""
                excerpt = first[:80] + ("…" if len(first) > 80 else "")
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(sj.created_at))
                rows.append([when, excerpt, sj.revision])
                choices.append((f"{when} · {excerpt}", sj.item_id))
            return [rows, gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)]

        mine_refresh.click(on_mine, project_dd, [mine_table, mine_pick], api_name="my_submissions")
        mine_tab.select(on_mine, project_dd, [mine_table, mine_pick], api_name="my_submissions_on_open")

        def on_revise(item_id: int | None, request: gr.Request) -> list[Any]:
            user = require(store, request)
            latest = store.latest_judgment(user.id, int(item_id)) if item_id else None
            if latest is None:
                raise Denied("You can only revise your own submissions.")
            item = store.item(latest.item_id)
            project = store.project(item.project_id) if item else None
            values = form.values(store, user, project, item, _draft_or_latest(store, user, latest.item_id),
                                 f"Revising your submission (revision {latest.revision}). Submit to save a new one.")
            return [gr.Tabs(selected="annotate"), *values]

        revise.click(on_revise, mine_pick, [tabs, *form.outputs()], api_name="revise")
        admin.wire(timer)
    return demo


# ------------------------------------------------------------------------------------------------ admin


class AdminSection:
    """The admin tab: project settings, prompts and candidates, dashboard, export, users.

    Constructing it lays out the components where it is called (inside the Admin tab); ``wire`` attaches
    the handlers once the rest of the page exists."""

    def __init__(self, store: Store, project_dd: Any, uploads: Uploads | None = None) -> None:
        self.store = store
        self.project_dd = project_dd
        # Uploaded files are read only from the server's private upload folder (None: any path, for tests
        # that build the page without a server).
        self.uploads = uploads
        # Every setting, load, import, dashboard and export below acts on the project picked on the Annotate
        # tab: say which, in words that change with the pick.
        self.heading = gr.Markdown(elem_id="admin-project")
        with gr.Accordion("Project", open=True):
            with gr.Row():
                self.new_name = gr.Textbox(label="New project name", elem_id="new-project", scale=3)
                self.create = gr.Button("Create project", elem_id="create-project", scale=1)
            self.guidelines = gr.Textbox(label="Guidelines (Markdown; a change makes a new guideline version)",
                                         lines=6, elem_id="admin-guidelines")
            with gr.Row():
                self.tags = gr.Textbox(label="Problem tags (comma separated)", elem_id="admin-tags")
                self.k = gr.Number(label="Candidates per prompt", precision=0, minimum=2, maximum=K_MAX)
                self.overlap = gr.Number(label="Annotators per prompt", precision=0, minimum=1)
                self.batch = gr.Number(label="Prompts claimed at once", precision=0, minimum=1)
            self.save = gr.Button("Save project settings", elem_id="save-project")
            # The serving order, saved on its own (like the claim expiry): the settings button above keeps
            # the inputs API clients already send it.
            with gr.Row():
                self.uncertain_first = gr.Checkbox(
                    label="Serve uncertain first: prompts whose two best answers the reward model scores closest "
                          "come first (scores from `align feedback score`; unscored prompts after them)",
                    value=False, elem_id="uncertain-first", scale=3)
                self.save_order = gr.Button("Save serving order", elem_id="save-serving-order", scale=1)
            self.project_msg = gr.Markdown(elem_id="project-msg")
        with gr.Accordion("Prompts and candidates", open=True):
            with gr.Row():
                self.prompts_file = gr.File(label="Prompts file (JSONL/JSON/CSV/Parquet)", type="filepath",
                                            elem_id="prompts-file")
                self.cands_file = gr.File(label="Candidates file (prompt + responses)", type="filepath",
                                          elem_id="cands-file")
            with gr.Row():
                self.load_prompts = gr.Button("Load prompts", elem_id="load-prompts")
                self.import_cands = gr.Button("Import candidates", elem_id="import-cands")
            with gr.Row():
                self.model = gr.Textbox(label="Model (alias or directory)", value="smollm2-135m-instruct")
                self.temperature = gr.Number(label="Temperature", value=0.8)
                self.top_p = gr.Number(label="top_p", value=0.95)
                self.max_tokens = gr.Number(label="Max new tokens", value=192, precision=0)
                self.gen_batch = gr.Number(label="Batch size", value=16, precision=0)
            self.generate = gr.Button("Generate candidates in the background", elem_id="generate")
            self.work_msg = gr.Markdown(elem_id="work-msg")
            self.jobs = gr.Markdown(elem_id="jobs")
        with gr.Accordion("Dashboard", open=True):
            self.refresh = gr.Button("Refresh dashboard", elem_id="refresh-dashboard")
            self.summary = gr.Markdown(elem_id="dashboard-summary")
            # A head-to-head evaluation's report (feedback_app.headtohead.format_summary); hidden for a ranking
            # project. Filled by a handler of its own, so the dashboard's outputs stay what API clients expect.
            self.h2h_report = gr.HTML(visible=False, elem_id="h2h-report")
            self.per_user = gr.Dataframe(headers=["annotator", "items judged", "revisions", "last activity",
                                                  "open claims", "oldest open claim", "gold judged",
                                                  "gold accuracy"],
                                         interactive=False, elem_id="per-user")
            # Gold items: orderings the admin knows, against which the table above scores each annotator.
            with gr.Row():
                self.gold_file = gr.File(label="Gold orderings (JSONL: item_id or prompt, ordering best first)",
                                         type="filepath", elem_id="gold-file")
                self.import_gold = gr.Button("Import gold orderings", elem_id="import-gold")
            self.gold_msg = gr.Markdown(elem_id="gold-msg")
            # Claims: how long one holds before another annotator may take the item, and releasing the
            # claims of an annotator who left (or of one prompt) at once.
            with gr.Row():
                self.claim_ttl = gr.Number(label="Claims expire after (minutes; 0 = never)", precision=0, minimum=0,
                                           elem_id="claim-ttl")
                self.save_ttl = gr.Button("Save claim expiry", elem_id="save-claim-ttl")
            with gr.Row():
                # Custom values allowed: the handler checks the name (and the role of the caller) itself.
                self.release_who = gr.Dropdown(label="Annotator with open claims", choices=[], allow_custom_value=True,
                                               elem_id="release-annotator")
                self.release_user = gr.Button("Release this annotator's open claims",
                                              elem_id="release-annotator-claims")
                self.release_item_id = gr.Number(label="Prompt (item id)", precision=0, minimum=1,
                                                 elem_id="release-item")
                self.release_item = gr.Button("Release this prompt's open claims", elem_id="release-item-claims")
            self.claims_msg = gr.Markdown(elem_id="claims-msg")
            self.disagree = gr.Dataframe(headers=["item", "mean tau", "annotators", "prompt"], interactive=False,
                                         elem_id="disagreements")
            self.tag_plot = gr.BarPlot(x="tag", y="count", title="Problem tags (latest judgments)",
                                       elem_id="tag-plot")
            self.notes = gr.Dataframe(headers=["annotator", "prompt", "note", "time"], interactive=False,
                                      label="Notes for the admin (latest judgments, newest first)",
                                      elem_id="notes", wrap=True)
            # Rounds: which model wrote the candidates and what it was trained on (Store.rounds); filled by a
            # handler of its own on the same refresh, so the dashboard's outputs stay what API clients expect.
            self.rounds = gr.Dataframe(headers=list(LINEAGE_HEADERS), interactive=False, wrap=True,
                                       label="Rounds and lineage: each model that wrote candidates, and the store "
                                             "snapshot it was trained on", elem_id="rounds")
        with gr.Accordion("Export", open=True):
            self.policy = gr.Radio(["all", "best-vs-rest", "adjacent"], value="all", label="Pairs from rankings",
                                   elem_id="pair-policy")
            # Beside the button: what becomes of the pairs when the annotators of one item disagree (the same
            # choice as `align feedback export --aggregate`; see feedback_app/export.py).
            with gr.Row():
                self.aggregate = gr.Dropdown(list(AGGREGATIONS), value="all", label="Pairs across annotators",
                                             info=AGGREGATE_INFO, elem_id="export-aggregate", scale=3)
                self.export = gr.Button("Export training data", elem_id="export", scale=1)
            self.export_msg = gr.Markdown(elem_id="export-msg")
            self.export_files = gr.File(label="Exported files", file_count="multiple", elem_id="export-files")
        with gr.Accordion("Users", open=False):
            self.users = gr.Dataframe(headers=["name", "role", "active"], interactive=False, elem_id="users")
            with gr.Row():
                self.user_name = gr.Textbox(label="New user name", elem_id="new-user")
                self.user_role = gr.Radio(["annotator", "admin"], value="annotator", label="Role")
                self.add_user = gr.Button("Add user (password shown once)", elem_id="add-user")
            self.user_msg = gr.Markdown(elem_id="user-msg")

    def _uploaded(self, path: str) -> bool:
        """A file in the private upload folder (the request layer checked that this user uploaded it)."""
        return self.uploads is None or self.uploads.inside(path) is not None

    def _project(self, name: str | None) -> Project:
        project = self.store.project(name) if name else None
        if project is None:
            project = self.store.ensure_project("default")
        return project

    def wire(self, timer: Any) -> None:
        store = self.store
        settings_out = [self.guidelines, self.tags, self.k, self.overlap, self.batch]
        # What a project pick shows: the settings saved together, and the claim expiry and the serving order
        # saved on their own.
        shown = [self.heading, *settings_out, self.claim_ttl, self.uncertain_first]

        def settings(p: Project | None) -> list[Any]:
            """The heading, the settings fields, the claim expiry and the serving order for project ``p``."""
            if p is None:
                return ["### No project selected", "", "", 4, 2, 5, DEFAULT_CLAIM_TTL_MINUTES, False]
            return [f"### Editing project: {html.escape(p.name)}\nSettings, prompts, candidates, dashboard and "
                    "export on this tab apply to this project; pick another in the Project menu of the Annotate tab.",
                    p.guidelines, ", ".join(p.tags), p.candidates_per_item, p.overlap, p.assign_batch,
                    p.claim_ttl_minutes, p.uncertain_first]

        def show_settings(name: str | None, request: gr.Request) -> list[Any]:
            # Fires for everyone when the page sets the project; only admins get the settings, quietly.
            if not require(store, request).is_admin:
                return [gr.skip()] * len(shown)
            return settings(store.project(name) if name else None)

        self.project_dd.change(show_settings, self.project_dd, shown, api_name="admin_settings")

        def create(name: str, request: gr.Request) -> list[Any]:
            require(store, request, "admin")
            name = (name or "").strip()
            if not name:
                return [gr.Dropdown(), "Give the project a name.", *[gr.skip()] * len(shown)]
            project = store.ensure_project(name)
            # The new project's settings at once: the dropdown's own change event may answer later.
            return [gr.Dropdown(choices=[p.name for p in store.list_projects()], value=name),
                    f"Project **{html.escape(name)}** ready.", *settings(project)]

        self.create.click(create, self.new_name, [self.project_dd, self.project_msg, *shown],
                          api_name="admin_create_project")

        def save(name: str, guidelines: str, tags: str, k: float, overlap: float, batch: float,
                 request: gr.Request) -> str:
            require(store, request, "admin")
            project = self._project(name)
            try:
                p = store.update_project(project.id, guidelines=guidelines, tags=(tags or "").split(","),
                                         candidates_per_item=int(k or 0), overlap=int(overlap or 0),
                                         assign_batch=int(batch or 0))
            except StoreError as e:
                return f"**Not saved:** {html.escape(str(e))}"
            return f"Saved. Guideline version {p.guideline_version}."

        self.save.click(save, [self.project_dd, *settings_out], self.project_msg, api_name="admin_save_project")

        def save_order(name: str | None, on: bool | None, request: gr.Request) -> str:
            require(store, request, "admin")  # the role checked here: an API call skips the hidden tab
            project = self._project(name)
            p = store.update_project(project.id, uncertain_first=bool(on))
            return serving_order_text(store, p)

        self.save_order.click(save_order, [self.project_dd, self.uncertain_first], self.project_msg,
                              api_name="admin_save_uncertain_first")

        def load(name: str, path: str | None, request: gr.Request) -> str:
            require(store, request, "admin")
            if not path:
                return "Choose a prompts file first."
            if not self._uploaded(path):
                return "**Not loaded:** upload the file again."
            skipped: list[str] = []
            try:
                prompts = load_prompts(path, skipped)
            except Exception as e:  # AlignError names file, line and field
                return f"**Not loaded:** {html.escape(_without_folder(str(e), path))}"
            added, dup = store.add_prompts(self._project(name).id, prompts, source=Path(path).name)
            return f"{added} prompts added ({dup} already in the project).{skipped_text(skipped)}"

        self.load_prompts.click(load, [self.project_dd, self.prompts_file], self.work_msg,
                                api_name="admin_load_prompts")

        def imp(name: str, path: str | None, request: gr.Request) -> str:
            require(store, request, "admin")
            if not path:
                return "Choose a candidates file first."
            if not self._uploaded(path):
                return "**Not imported:** upload the file again."
            skipped: list[str] = []
            try:
                n_prompts, n_cands = import_candidates(store, self._project(name).id, path, skipped)
            except Exception as e:
                return f"**Not imported:** {html.escape(_without_folder(str(e), path))}"
            return f"{n_cands} candidates imported ({n_prompts} new prompts).{skipped_text(skipped)}"

        self.import_cands.click(imp, [self.project_dd, self.cands_file], self.work_msg,
                                api_name="admin_import_candidates")

        def gen(name: str, model: str, temperature: float, top_p: float, max_tokens: float, batch: float,
                request: gr.Request) -> str:
            user = require(store, request, "admin")
            project = self._project(name)
            settings = GenerationSettings(model=(model or "").strip() or "smollm2-135m-instruct",
                                          k=project.candidates_per_item, temperature=float(temperature or 0),
                                          top_p=float(top_p or 0), max_new_tokens=int(max_tokens or 0),
                                          batch_size=int(batch or 0))
            try:
                job = start_generation(store, project.id, settings, user.id)
            except StoreError as e:
                return f"**Not started:** {html.escape(str(e))}"
            return f"Generation job {job} started."

        self.generate.click(gen, [self.project_dd, self.model, self.temperature, self.top_p, self.max_tokens,
                                  self.gen_batch], self.work_msg, api_name="admin_generate")

        def jobs(name: str | None, request: gr.Request) -> str:
            require(store, request, "admin")
            project = store.project(name) if name else None
            if project is None:
                return ""
            c = store.counts(project.id)
            lines = [f"**{c['prompts']}** prompts · **{c['candidates']}** candidates · **{c['ready']}** ready to "
                     f"annotate · **{c['judgments']}** judgments"]
            for j in store.jobs(project.id, limit=5):
                pct = f"{100 * j.done / j.total:.0f}%" if j.total else ""
                lines.append(f"- job {j.id} ({j.kind}, {html.escape(j.params.get('model', ''))}): **{j.status}** "
                             f"{j.done}/{j.total} {pct} {html.escape(j.message)}")
            return "\n".join(lines)

        timer.tick(jobs, self.project_dd, self.jobs, api_name="admin_jobs", show_progress="hidden")

        def dashboard(name: str | None, request: gr.Request) -> list[Any]:
            require(store, request, "admin")
            return dashboard_values(store, self._project(name))

        self.refresh.click(dashboard, self.project_dd,
                           [self.summary, self.per_user, self.disagree, self.tag_plot, self.notes],
                           api_name="admin_dashboard")

        def lineage(name: str | None, request: gr.Request) -> list[list[Any]]:
            # The role checked here: the table names model directories on the server, for admins only.
            require(store, request, "admin")
            return lineage_rows(store.rounds(self._project(name).id))

        self.refresh.click(lineage, self.project_dd, self.rounds, api_name="admin_lineage")

        def h2h_report(name: str | None, request: gr.Request) -> Any:
            require(store, request, "admin")  # the role checked here: an API call skips the hidden tab
            project = self._project(name)
            if not project.is_head_to_head:
                return gr.HTML(value="", visible=False)
            return gr.HTML(value=h2h_report_html(store, project), visible=True)

        self.refresh.click(h2h_report, self.project_dd, self.h2h_report, api_name="admin_h2h_report")
        self.wire_claims()

        def import_gold(name: str | None, path: str | None, request: gr.Request) -> list[Any]:
            require(store, request, "admin")
            if not path:
                return ["Choose a gold orderings file first.", gr.skip()]
            if not self._uploaded(path):
                return ["**Not imported:** upload the file again.", gr.skip()]
            project = self._project(name)
            try:
                marked, cleared = store.import_gold(project.id, path, source=Path(path).name)
            except StoreError as e:  # names file, line and field; nothing of the file was stored
                return [f"**Not imported:** {html.escape(_without_folder(str(e), path))}", gr.skip()]
            n = len(store.gold(project.id))
            text = (f"{marked} item{'s' if marked != 1 else ''} marked gold"
                    + (f", {cleared} cleared" if cleared else "")
                    + f". Project **{html.escape(project.name)}** has {n} gold item{'s' if n != 1 else ''}.")
            return [text, annotator_table(store, project)]

        self.import_gold.click(import_gold, [self.project_dd, self.gold_file], [self.gold_msg, self.per_user],
                               api_name="admin_import_gold")

        def export(name: str | None, policy: str | None, aggregate: str | None, request: gr.Request) -> list[Any]:
            require(store, request, "admin")
            project = self._project(name)
            # An API call can send any text: export_store refuses a pair policy or aggregation that is not one
            # (nothing chosen is the default). Nothing is written then, and the files of an earlier export are no
            # longer offered (they were made under other settings).
            try:
                result = export_store(store, project=project.name, pairs=policy or "all", aggregate=aggregate or "all")
            except StoreError as e:
                return [f"**Not exported:** {html.escape(str(e), quote=False)}", None]
            folder = self.uploads.export_folder() if self.uploads else Path(tempfile.mkdtemp(prefix="align-export-"))
            stamp = time.strftime("%Y%m%d-%H%M%S")
            paths = write_export(result, folder / f"{project.name}-{stamp}.jsonl")
            return ["\n".join(f"- {html.escape(line.strip())}" for line in summary_lines(result)),
                    [str(p) for p in paths]]

        self.export.click(export, [self.project_dd, self.policy, self.aggregate], [self.export_msg, self.export_files],
                          api_name="admin_export")

        def users(request: gr.Request) -> list[list[Any]]:
            require(store, request, "admin")
            return [[u.name, u.role, "yes" if u.active else "no"] for u in store.list_users()]

        def add_user(name: str, role: str, request: gr.Request) -> list[Any]:
            require(store, request, "admin")
            password = secrets.token_urlsafe(12)
            try:
                store.add_user(name or "", role, password)
            except StoreError as e:
                return [users(request), f"**Not added:** {html.escape(str(e))}"]
            return [users(request), f"User **{html.escape(name)}** added. Password (shown once): `{password}`"]

        self.add_user.click(add_user, [self.user_name, self.user_role], [self.users, self.user_msg],
                            api_name="admin_add_user")
        self.refresh.click(users, None, self.users, api_name="admin_users")

    def wire_claims(self) -> None:
        """Claim expiry and releases. Each handler checks the caller's role itself, like every admin handler."""
        store = self.store

        def who_choices(project: Project) -> Any:
            """The annotators with open claims in the project, for the release menu."""
            now = store.clock()
            choices = [(f"{c.user_name} · {c.count} open, oldest {age_text(now - c.oldest_at)}", c.user_name)
                       for c in store.open_claims(project)]
            return gr.Dropdown(choices=choices, value=None)

        def claims_view(name: str | None, request: gr.Request) -> Any:
            require(store, request, "admin")
            return who_choices(self._project(name))

        self.refresh.click(claims_view, self.project_dd, self.release_who, api_name="admin_claims")

        def save_ttl(name: str | None, minutes: float | None, request: gr.Request) -> str:
            require(store, request, "admin")
            project = self._project(name)
            try:
                p = store.update_project(project.id, claim_ttl_minutes=int(minutes or 0))
            except StoreError as e:
                return f"**Not saved:** {html.escape(str(e))}"
            if not p.claim_ttl_minutes:
                return f"Claims in project **{html.escape(p.name)}** never expire."
            return (f"Claims in project **{html.escape(p.name)}** expire after {p.claim_ttl_minutes} minutes "
                    f"({age_text(60 * p.claim_ttl_minutes)}) without a submission.")

        self.save_ttl.click(save_ttl, [self.project_dd, self.claim_ttl], self.claims_msg,
                            api_name="admin_save_claim_ttl")

        def after_release(project: Project, message: str) -> list[Any]:
            return [message, annotator_table(store, project), who_choices(project)]

        def release_user(name: str | None, who: str | None, request: gr.Request) -> list[Any]:
            require(store, request, "admin")
            project = self._project(name)
            user = store.get_user(who.strip()) if who and who.strip() else None
            if user is None:
                text = (f"No user **{html.escape(who.strip())}**." if who and who.strip()
                        else "Pick an annotator with open claims first.")
                return [text, gr.skip(), gr.skip()]
            n = store.release_claims(project.id, user_id=user.id)
            label = f"**{html.escape(user.name)}** in project **{html.escape(project.name)}**"
            text = (f"Released {n} open claim{'s' if n != 1 else ''} of {label}: those prompts can be claimed by "
                    "others now." if n else f"No open claims of {label}.")
            return after_release(project, text)

        self.release_user.click(release_user, [self.project_dd, self.release_who],
                                [self.claims_msg, self.per_user, self.release_who], api_name="admin_release_user")

        def release_item(name: str | None, item_id: float | None, request: gr.Request) -> list[Any]:
            require(store, request, "admin")
            project = self._project(name)
            if not item_id or not 1 <= item_id < 2**31:
                return ["Enter the item id of a prompt first.", gr.skip(), gr.skip()]
            n = store.release_claims(project.id, item_id=int(item_id))
            label = f"prompt {int(item_id)} in project **{html.escape(project.name)}**"
            text = (f"Released {n} open claim{'s' if n != 1 else ''} on {label}: it can be claimed again now."
                    if n else f"No open claims on {label}.")
            return after_release(project, text)

        self.release_item.click(release_item, [self.project_dd, self.release_item_id],
                                [self.claims_msg, self.per_user, self.release_who], api_name="admin_release_item")


def serving_order_text(store: Store, project: Project) -> str:
    """What the saved serving order means for the project now: how many prompts the scores order, by which
    reward model, or that there are no scores yet."""
    name = html.escape(project.name)
    if not project.uncertain_first:
        return f"Project **{name}** serves prompts in the usual order."
    summary = store.score_summary(project.id)
    if summary is None or not summary.items:
        return (f"Project **{name}** serves uncertain first, but none of its prompts has reward-model scores yet: "
                "score them with `align feedback score --project NAME --reward-model DIR`. Until then, the usual "
                "order.")
    models = ", ".join(f"{html.escape(path)} (weights {digest[:12]})" for path, digest in summary.reward_models)
    n = summary.items
    return (f"Project **{name}** serves uncertain first: {n} prompt{'s' if n != 1 else ''} scored by {models}, "
            "smallest gap between the two best answers first; unscored prompts after them.")


def age_text(seconds: float) -> str:
    """A duration as the admin reads it: minutes, hours or days."""
    minutes = max(0.0, seconds) / 60
    if minutes < 90:
        return f"{round(minutes)} min"
    if minutes < 48 * 60:
        return f"{round(minutes / 60)} h"
    return f"{round(minutes / 1440)} d"


def _without_folder(message: str, path: str) -> str:
    """An error message about an uploaded file, naming the file but not the server's folders."""
    return message.replace(str(Path(path).parent) + os.sep, "")


def skipped_text(skipped: list[str]) -> str:
    """The rows an import left out, for the admin's message ("" when none)."""
    if not skipped:
        return ""
    shown = "; ".join(html.escape(s) for s in skipped[:10])
    more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    return f"\n\n**{len(skipped)} row{'s' if len(skipped) != 1 else ''} skipped:** {shown}{more}."


def annotator_rows(store: Store, project: Project, latest: list[StoredJudgment] | None = None) -> list[list[Any]]:
    """Activity per annotator: judged items, revisions, last activity, open claims, oldest one (the dashboard
    shows these with the gold columns: :func:`annotator_table`)."""
    latest = store.latest_judgments(project.id) if latest is None else latest
    per_user: dict[str, list[Any]] = {}
    for sj in latest:
        row = per_user.setdefault(sj.user_name, [sj.user_name, 0, 0, 0.0, 0, ""])
        row[1] += 1
        row[2] += sj.revision - 1
        row[3] = max(row[3], sj.created_at)
    now = store.clock()
    for c in store.open_claims(project):  # annotators who claimed but never submitted are listed too
        row = per_user.setdefault(c.user_name, [c.user_name, 0, 0, 0.0, 0, ""])
        row[4] = c.count
        row[5] = age_text(now - c.oldest_at) + (f" ({c.expired} expired)" if c.expired else "")
    return [[r[0], r[1], r[2], time.strftime("%Y-%m-%d %H:%M", time.localtime(r[3])) if r[3] else "", r[4], r[5]]
            for r in sorted(per_user.values())]


def gold_text(score: GoldScore | None) -> str:
    """An annotator's gold accuracy for the table: the mean pairwise agreement, and the judgments not scored."""
    if score is None or not score.judged:
        return ""
    text = "n/a" if score.accuracy is None else f"{score.accuracy:.3f}"
    unscored = score.judged - score.scored
    return text + (f" ({unscored} all unacceptable)" if unscored else "")


def annotator_table(store: Store, project: Project, latest: list[StoredJudgment] | None = None) -> list[list[Any]]:
    """The dashboard's per-annotator table: :func:`annotator_rows` and, per annotator, the gold items they
    judged and their accuracy on them (:func:`feedback_app.store.gold_accuracy`). Admins only: it is computed
    from the gold orderings."""
    latest = store.latest_judgments(project.id) if latest is None else latest
    scores = gold_accuracy(latest, store.gold(project.id))
    out = []
    for row in annotator_rows(store, project, latest):
        score = scores.get(row[0])
        out.append([*row, score.judged if score else 0, gold_text(score)])
    return out


def h2h_report_html(store: Store, project: Project) -> str:
    """The head-to-head report of an evaluation project for the dashboard: the lines of
    :func:`feedback_app.headtohead.format_summary` (win rate with its bootstrap and Wilson intervals, vote counts,
    the judges, one row per annotator) in a monospace block, every text escaped."""
    lines = format_summary(project_summary(store, project))
    return ('<div class="h2h"><div class="resp-title">Head-to-head evaluation</div>'
            f'<pre class="h2h-report">{html.escape(chr(10).join(lines))}</pre></div>')


def dashboard_values(store: Store, project: Project) -> list[Any]:
    """Summary text, per-annotator table, disagreement table, tag counts and notes for one project."""
    import pandas as pd

    latest = store.latest_judgments(project.id)
    rankings: dict[str, dict[str, dict[str, float]]] = {}
    annotators: set[str] = set()
    tags: Counter[str] = Counter()
    for sj in latest:
        annotators.add(sj.user_name)
        if not sj.judgment.all_unacceptable and sj.judgment.ranks:
            rankings.setdefault(str(sj.item_id), {})[sj.user_name] = {
                str(c): float(r) for c, r in sj.judgment.ranks.items()}
        for values in sj.judgment.tags.values():
            tags.update(values)
    report = agreement(rankings)
    users_table = annotator_table(store, project, latest)
    dis = []
    for item_id, tau in report.disagreements[:50]:
        item = store.item(int(item_id))
        text = item.prompt[-1]["content"][:100] if item else ""
        dis.append([int(item_id), round(tau, 3), ", ".join(sorted(rankings[item_id])), text])
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    unacceptable = sum(1 for sj in latest if sj.judgment.all_unacceptable)
    summary = (f"**{len(latest)}** current judgments from **{len(annotators)}** annotators · "
               f"**{report.items}** prompts judged by 2+ annotators · mean Kendall tau-b **{fmt(report.mean_tau)}** · "
               f"Krippendorff's alpha (ordinal) **{fmt(report.alpha)}** · **{len(report.disagreements)}** prompts "
               f"with strong disagreement (tau ≤ 0) · {unacceptable} marked all unacceptable · "
               f"**{len(store.gold(project.id))}** gold items")
    tag_df = pd.DataFrame({"tag": list(tags), "count": [tags[t] for t in tags]}) if tags else \
        pd.DataFrame({"tag": [], "count": []})
    # An explicit y range from 0: with every count equal, the plot's automatic range collapses to one
    # value and no bar is drawn.
    plot = gr.BarPlot(value=tag_df, y_lim=[0, max(tags.values(), default=0) + 1])
    notes = []
    for sj in sorted((sj for sj in latest if sj.judgment.note.strip()), key=lambda sj: -sj.created_at):
        item = store.item(sj.item_id)
        text = item.prompt[-1]["content"] if item else ""
        notes.append([sj.user_name, text[:100] + ("…" if len(text) > 100 else ""), sj.judgment.note,
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(sj.created_at))])
    return [summary, users_table, dis, plot, notes]


# ------------------------------------------------------------------------------------------------ server


LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Sign in · Expert feedback</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;background:#f6f7f9;display:flex;justify-content:center;padding-top:10vh}}
form{{background:#fff;padding:28px 32px;border-radius:12px;box-shadow:0 2px 12px #0001;width:320px}}
label{{display:block;margin:12px 0 4px}}input{{width:100%;padding:8px;box-sizing:border-box;font-size:15px}}
button{{margin-top:18px;width:100%;padding:10px;font-size:15px;background:#ea580c;color:#fff;border:0;border-radius:8px}}
.err{{color:#b91c1c;margin-top:10px}}</style></head><body>
<form method="post" action="/login"><h2 style="margin-top:0">Expert feedback</h2>
<label for="username">User name</label><input id="username" name="username" autocomplete="username" autofocus>
<label for="password">Password</label><input id="password" name="password" type="password"
autocomplete="current-password"><button id="login" type="submit">Sign in</button>{error}</form></body></html>"""

LOGOUT_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Log out</title></head>
<body style="font-family:system-ui,sans-serif;padding:10vh 20vw"><form method="post" action="/logout">
<p>Log out of the expert feedback app on every device?</p><button id="logout" type="submit">Log out</button>
<a href="/">Back</a></form></body></html>"""


DEFAULT_MAX_UPLOAD_MB = 100


def create_app(store: Store, *, secure_cookies: bool = False, upload_dir: str | Path | None = None,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, allowed_origins: tuple[str, ...] = (),
               throttle: LoginThrottle | None = None) -> FastAPI:
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
    def login_page() -> HTMLResponse:
        return HTMLResponse(LOGIN_PAGE.format(error=""))

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        name = str(form.get("username") or "").strip()[:256]
        password = str(form.get("password") or "")
        client = request.client.host if request.client else "?"  # the proxy-resolved peer (see serve)
        if throttle.blocked(name, client) > 0:
            return HTMLResponse(LOGIN_PAGE.format(error='<p class="err">Too many failed attempts from here. '
                                                  "Wait a few minutes and try again.</p>"), status_code=429)
        delay = throttle.delay(name)
        if delay:
            await asyncio.sleep(delay)
        user = await run_in_threadpool(store.authenticate, name, password)  # scrypt: off the event loop
        if user is None:
            throttle.failed(name, client)
            return HTMLResponse(LOGIN_PAGE.format(error='<p class="err">Wrong user name or password.</p>'),
                                status_code=401)
        throttle.succeeded(name, client)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, make_cookie(store.secret(), user), max_age=SESSION_SECONDS, httponly=True,
                            samesite="strict", secure=secure_cookies)
        return response

    @app.get("/logout", response_class=HTMLResponse)
    def logout_page() -> HTMLResponse:
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

    demo = build_blocks(store, uploads)
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
          allowed_origins: tuple[str, ...] = ()) -> None:
    """Run the app until interrupted (``align app``)."""
    import uvicorn

    store = Store(store_path)
    store.ensure_project("default")
    interrupted = store.fail_interrupted_jobs()
    if interrupted:
        print(f"[app] {interrupted} generation job(s) were cut off by the last shutdown; start them again")
    if not any(u.is_admin for u in store.list_users()):
        print("[app] no admin yet: add one with `align app users add NAME --role admin --store "
              f"{store_path}`")
    print(f"[app] feedback store: {store.url}")
    print(f"[app] open http://{host}:{port}/ (binds to {host}; use --host 0.0.0.0 to serve a network)")
    app = create_app(store, secure_cookies=secure_cookies, max_upload_mb=max_upload_mb,
                     allowed_origins=allowed_origins)
    try:
        # X-Forwarded-For rewrites the client address (which the login throttle counts) only when it comes
        # from a proxy named here; uvicorn would otherwise trust it from 127.0.0.1.
        uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=bool(trusted_proxies),
                    forwarded_allow_ips=list(trusted_proxies) or None)
    finally:
        shutil.rmtree(app.state.upload_folder, ignore_errors=True)
