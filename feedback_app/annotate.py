"""The Annotate and My submissions tabs: the ranking form, and what happens when it is used.

Two layers. The handlers (:func:`open_page`, :func:`select_project`, :func:`submit`, :func:`save_draft`,
:func:`clear_ranks`, :func:`my_submissions`, :func:`revise`) are plain functions over the store, the signed-in
user (as :func:`require` returned it), the form's state and a :class:`~feedback_app.store.Judgment`; they
return what to show (:class:`Shown`) and can be called without a page. :class:`Form` and :class:`AnnotatePage`
are the Gradio side: they lay the components out, turn the components' values into a judgment, a
:class:`Shown` into component updates, and wire each event to its handler after :func:`require` named the user.

All model and annotator text reaches the page through :func:`html.escape` (in ``gr.HTML``), as Markdown
rendered without raw HTML or images (answers, guidelines: :mod:`feedback_app.render`), or as plain text
(textboxes, tables, dropdown labels), so HTML and script in an answer are shown, never run.
"""

from __future__ import annotations

import html
import json
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from feedback_app.render import render_guidelines, render_prompt, render_response
from feedback_app.store import (
    MAX_CANDIDATES_PER_ITEM,
    MAX_TEXT,
    Item,
    Judgment,
    Project,
    Store,
    StoreError,
    User,
    display_order,
)

K_MAX = MAX_CANDIDATES_PER_ITEM  # response slots on the page; projects use 2..K_MAX candidates per prompt
LETTERS = "ABCDEFGH"
RANKS = [str(r) for r in range(1, K_MAX + 1)]

SHORTCUTS = ("**Keys** (outside text boxes): `1`-`8` give that response the next rank after the ranks you have "
             "given since this item was shown (ranks filled in from a draft or an earlier submission do not count: "
             "they are replaced as you rank), `Shift`+number gives it the same rank as your last one (a tie), "
             "`0` clears the ranks; `Ctrl`+`Enter` submits.")

# Above the two answers of a head-to-head item: how the usual form records a comparison (the judgment
# feedback_app.headtohead.judgment_for makes of each verdict).
H2H_INSTRUCTION = ("**Which answer is better?** Rank it **1** and the other **2**; rank both **1** for a tie; tick "
                   "**All responses are unacceptable** when both are bad. (An evaluation of two models: there is no "
                   "corrected answer or negative example to give.)")

# The free-text fields and how a message names them; the store refuses longer texts too, but only the
# form can say which box and keep the text in it.
TEXT_FIELDS = (("correction", "The corrected answer"), ("negative", "The negative example"),
               ("note", "The note for the admin"))

OUT_OF_DATE = ("The page was out of date (the server restarted): check this item and submit again. Your saved "
               "draft is filled in.")


class Denied(gr.Error):
    """A handler refused the request (not signed in, wrong role, not your item)."""


def require_role(store: Store, name: str | None, role: str = "annotator") -> User:
    """User ``name`` as the store has it now; raises :class:`Denied` unless active and allowed ``role``.

    Re-read on every call: a role taken away or an account deactivated counts from the next click on."""
    user = store.get_user(name) if name else None
    if user is None or not user.active:
        raise Denied("You are not signed in. Reload the page to sign in again.")
    if role == "admin" and not user.is_admin:
        raise Denied("This action needs the admin role.")
    return user


def require(store: Store, request: gr.Request | None, role: str = "annotator") -> User:
    """The signed-in user of ``request``, re-read from the store; raises unless active and allowed ``role``."""
    return require_role(store, getattr(request, "username", None) if request is not None else None, role)


# ------------------------------------------------------------------------------------------------ handlers


@dataclass(frozen=True)
class Shown:
    """What the annotate tab shows: the project (None: there is none yet), the item to judge in it (None:
    nothing to do), the judgment the form starts from (a draft or the latest submission), the message."""

    project: Project | None
    item: Item | None = None
    prefill: Judgment | None = None
    message: str = ""


@dataclass(frozen=True)
class Submitted:
    """What a submit did: the id of the judgment stored (None: nothing was), the form to show now (None: the
    same form stays, every text in its box, and only ``message`` changes)."""

    judgment_id: int | None
    shown: Shown | None
    message: str = ""


def form_state(user: User, project: Project | None, item: Item | None) -> dict[str, Any]:
    """The form's server-side state: project, item, the candidate ids in the user's display order (slot A
    first) and a per-render random key (the submission key, and what tells the keyboard script a new form is
    shown)."""
    if project is None:
        return {}
    state: dict[str, Any] = {"project_id": project.id}
    if item is not None:
        state.update(item_id=item.id, order=[c.id for c in display_order(user.id, item)], key=secrets.token_hex(16))
    return state


def _letters(letters: list[str]) -> str:
    return letters[0] if len(letters) == 1 else ", ".join(letters[:-1]) + " and " + letters[-1]


def problems(state: dict[str, Any], judgment: Judgment) -> list[str]:
    """What stops the judgment from being saved, in the annotator's terms (response letters, box names)."""
    out = []
    for name, label in TEXT_FIELDS:
        n = len(getattr(judgment, name))
        if n > MAX_TEXT:
            out.append(f"{label} has {n:,} characters; the limit is {MAX_TEXT:,}.")
    order = state.get("order", [])
    missing = [LETTERS[i] for i, cid in enumerate(order[:K_MAX]) if cid not in judgment.ranks]
    if missing and not judgment.all_unacceptable:
        what = f"Response {missing[0]} has" if len(missing) == 1 else f"Responses {_letters(missing)} have"
        out.append(f"{what} no rank: rank every response, or tick 'All responses are unacceptable'.")
    return out


def project_of(store: Store, name: str | None) -> Project | None:
    """The named project, else the first one."""
    projects = store.list_projects()
    return next((p for p in projects if p.name == name), projects[0] if projects else None)


def start_project(store: Store, user: User) -> Project | None:
    """The project the user chose last; else the first with work for them; else the first."""
    remembered = store.remembered_project(user.id)
    if remembered is not None:
        return remembered
    with_work = store.projects_with_work(user)
    return with_work[0][0] if with_work else project_of(store, None)


def elsewhere(store: Store, user: User, project: Project) -> str:
    """Where else the user has work, for the message when ``project`` has none left."""
    others = [f"{html.escape(p.name)} ({n} prompt{'s' if n != 1 else ''})"
              for p, n in store.projects_with_work(user) if p.id != project.id]
    return (f" Projects with work: {', '.join(others)}." if others
            else " No other project has work for you either. Thank you!")


def load_draft(store: Store, user: User, item_id: int) -> Judgment | None:
    """The user's unsubmitted draft of the item, if any."""
    payload = store.draft(user.id, item_id)
    # The store keeps a draft as the JSON object Judgment.to_json writes: read back through from_json, so a
    # draft and a submission are parsed by the same code.
    return Judgment.from_json(json.dumps(payload)) if payload is not None else None


def draft_or_latest(store: Store, user: User, item_id: int) -> Judgment | None:
    """What the form starts from for the item: the user's draft, else their latest submission, else nothing."""
    draft = load_draft(store, user, item_id)
    if draft is not None:
        return draft
    latest = store.latest_judgment(user.id, item_id)
    return latest.judgment if latest else None


def save_draft(store: Store, user: User, state: dict[str, Any], judgment: Judgment) -> bool:
    """Keep ``judgment`` as the user's draft of the form's item; False when the form shows no item or the
    store refuses (an item not, or no longer, assigned to this user): a draft is never worth an error."""
    item_id = state.get("item_id")
    if not item_id:
        return False
    try:
        store.save_draft(user.id, item_id, json.loads(judgment.to_json()))
    except StoreError:
        return False
    return True


def clear_ranks(store: Store, user: User, state: dict[str, Any], judgment: Judgment) -> Judgment:
    """The form's judgment without ranks, kept as the draft (so a reload does not bring the ranks back)."""
    cleared = replace(judgment, ranks={})
    save_draft(store, user, state, cleared)
    return cleared


def next_form(store: Store, user: User, project: Project | None, message: str = "", saved: str = "") -> Shown:
    """The user's next item in ``project`` (claimed now if need be); ``saved``: what the submit that led here
    stored."""
    item_id = store.next_item(user, project) if project else None
    item = store.item(item_id) if item_id else None
    prefill = draft_or_latest(store, user, item.id) if item else None
    if project is not None and item is None:
        name = html.escape(project.name)
        message = (f"{saved} Nothing more to annotate in project {name}." if saved
                   else f"Nothing left for you in project {name}.") + elsewhere(store, user, project)
    elif saved:
        message = f"{saved} Here is the next one."
    return Shown(project, item, prefill, message)


def open_page(store: Store, user: User) -> Shown:
    """The form when the page loads: the next item of the project the user starts in."""
    return next_form(store, user, start_project(store, user))


def header_html(user: User) -> str:
    """The line at the top of the page: who is signed in, and the way out."""
    return (f'<div style="display:flex;justify-content:space-between;align-items:center">'
            f'<h2 style="margin:0">Expert feedback</h2><div>Signed in as <b id="whoami">'
            f'{html.escape(user.name)}</b> ({html.escape(user.role)}) · <a href="/logout">Log out</a>'
            f"</div></div>")


def select_project(store: Store, user: User, name: str | None, state: dict[str, Any] | None) -> Shown | None:
    """The user picked project ``name``: remember it and show its next item. None when the form shows that
    project already (the page load sets the menu, which fires this too)."""
    project = project_of(store, name) if name else None
    if project is None or (state or {}).get("project_id") == project.id:
        return None
    store.remember_project(user.id, project.id)
    return next_form(store, user, project)


def submit(store: Store, user: User, state: dict[str, Any], judgment: Judgment) -> Submitted:
    """Store the user's judgment of the form's item and move on to the next item; refused with a message
    (nothing stored, the form as it is) when the form has a problem or the store says no."""
    if not state.get("item_id"):  # e.g. the server restarted since this page was loaded
        project = store.project(state["project_id"]) if state.get("project_id") else None
        project = project or start_project(store, user)  # the state is gone with the old server
        return Submitted(None, next_form(store, user, project, OUT_OF_DATE))
    found = problems(state, judgment)
    if found:
        return Submitted(None, None, "**Not saved:** " + " ".join(html.escape(p) for p in found))
    try:
        jid, fresh = store.submit(user, state["item_id"], judgment, state["key"])
    except StoreError as e:
        return Submitted(None, None, f"**Not saved:** {html.escape(str(e))}")
    project = store.project(state["project_id"])
    revision = store.revision_of(jid)
    saved = ("Already saved (submitted twice)." if not fresh
             else f"Saved revision {revision}." if revision > 1 else "Saved.")
    return Submitted(jid, next_form(store, user, project, saved=saved))


def my_submissions(store: Store, user: User, name: str | None) -> tuple[list[list[Any]], list[tuple[str, int]]]:
    """The user's latest judgment per prompt in the project, newest first: table rows (time, prompt excerpt,
    revision) and the Revise menu's choices (label, item id)."""
    project = project_of(store, name)
    if project is None:
        return [], []
    rows, choices = [], []
    for sj in store.recent_submissions(user.id, project.id):
        item = store.item(sj.item_id)
        first = item.prompt[-1]["content"] if item else ""
        excerpt = first[:80] + ("…" if len(first) > 80 else "")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(sj.created_at))
        rows.append([when, excerpt, sj.revision])
        choices.append((f"{when} · {excerpt}", sj.item_id))
    return rows, choices


def revise(store: Store, user: User, item_id: int | None) -> Shown:
    """The form for revising the user's own submission of the item; :class:`Denied` for anything else."""
    latest = store.latest_judgment(user.id, int(item_id)) if item_id else None
    if latest is None:
        raise Denied("You can only revise your own submissions.")
    item = store.item(latest.item_id)
    project = store.project(item.project_id) if item else None
    return Shown(project, item, draft_or_latest(store, user, latest.item_id),
                 f"Revising your submission (revision {latest.revision}). Submit to save a new one.")


# ------------------------------------------------------------------------------------------------ the form


def progress_html(text: str, key: str = "") -> str:
    """The progress line; ``key`` (the form's per-render key) tells the keyboard script a new form is shown."""
    return f'<div class="progress" data-form="{html.escape(key)}">{text}</div>'


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

    def show(self, store: Store, user: User, shown: Shown) -> list[Any]:
        """The component updates that show ``shown``."""
        return self.values(store, user, shown.project, shown.item, shown.prefill, shown.message)

    def values(self, store: Store, user: User, project: Project | None, item: Item | None,
               prefill: Judgment | None = None, message: str = "") -> list[Any]:
        """Everything the annotate tab shows for ``item`` (None: nothing to do), prefilled from ``prefill``."""
        if project is None:
            return self._empty({}, progress_html("No project yet: an admin loads prompts first."), "", message)
        progress = store.progress(user, project)
        progress_text = (f"<b>Progress:</b> {progress.done} done of {progress.assigned} assigned"
                         f" · {progress.available} more available")
        state = form_state(user, project, item)
        guidelines = render_guidelines(project.guidelines)
        if item is None:
            return self._empty(state, progress_html(progress_text), guidelines,
                               message or "Nothing to annotate right now. Thank you!")
        by_id = {c.id: c for c in item.candidates}
        order = [by_id[cid] for cid in state["order"]]
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


# ------------------------------------------------------------------------------------------------ the tabs


@dataclass
class AnnotatePage:
    """The Annotate and My submissions tabs' components (:meth:`layout`) and their events (:meth:`wire`)."""

    project_dd: Any
    form: Form
    clear: Any
    mine_tab: Any
    mine_refresh: Any
    mine_table: Any
    mine_pick: Any
    revise: Any

    @classmethod
    def layout(cls) -> AnnotatePage:
        """Lay out both tabs where it is called (inside ``gr.Tabs``)."""
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
                    with gr.Column(visible=False, elem_id=f"slot-{i}", elem_classes=["slot"], min_width=0) as box:
                        # All ranks to start with: a tab left open across a server restart (its per-session
                        # choices gone) can still submit; the store checks 1..K.
                        rank = gr.Radio(label=f"Rank of response {LETTERS[i]}", choices=RANKS, elem_id=f"rank-{i}")
                        text = gr.HTML(elem_id=f"response-{i}")
                        tags = gr.CheckboxGroup(label="Problems", choices=[], elem_id=f"tags-{i}")
                    slots.append(Slot(box, text, rank, tags))
            with gr.Row():
                unacceptable = gr.Checkbox(label="All responses are unacceptable", elem_id="unacceptable")
                clear = gr.Button("Clear ranks (0)", size="sm", elem_id="clear-ranks")
            correction_of = gr.Dropdown(label="My corrected answer replaces response", choices=[],
                                        elem_id="correction-of")
            # No max_length: the browser would cut a long paste without a word; the submit refuses it instead,
            # naming the box and both lengths, and the text stays in the box.
            correction = gr.Textbox(label="Corrected answer (optional)", lines=4, elem_id="correction")
            negative = gr.Textbox(label="Negative example: a plausible answer that must never be given "
                                  "(optional)", lines=3, elem_id="negative")
            note = gr.Textbox(label="Note for the admin (optional)", lines=1, elem_id="note")
            submit_button = gr.Button("Submit (Ctrl+Enter)", variant="primary", elem_id="submit", interactive=False)
            # Made inside this tab, not among the tabs (gr.Tabs holds tabs only: anything else there upsets
            # which tab shows what), and after the form's fields: an event's inputs are in the order their
            # components were made, and API clients send the state last.
            state = gr.State({})
        with gr.Tab("My submissions", id="mine") as mine_tab:
            gr.Markdown("Your latest judgment per prompt, newest first. Pick one and press **Revise**: "
                        "the revision is stored as a new row and replaces the old one in exports.")
            mine_refresh = gr.Button("Refresh", size="sm", elem_id="mine-refresh")
            mine_table = gr.Dataframe(headers=["submitted", "prompt", "revision"], interactive=False,
                                      elem_id="mine-table")
            with gr.Row():
                mine_pick = gr.Dropdown(label="Submission", choices=[], elem_id="mine-pick")
                revise_button = gr.Button("Revise", elem_id="revise")
        form = Form(state, progress, guidelines, prompt, instruction, slots, unacceptable, correction_of, correction,
                    negative, note, submit_button, message)
        return cls(project_dd, form, clear, mine_tab, mine_refresh, mine_table, mine_pick, revise_button)

    def wire(self, store: Store, tabs: Any) -> None:
        """Attach the tabs' events; ``tabs``: the page's ``gr.Tabs`` (Revise switches to the Annotate tab).
        Each event names its user with :func:`require` before anything else."""
        form, state = self.form, self.form.state

        def on_project(name: str | None, st: dict[str, Any], request: gr.Request) -> list[Any]:
            user = require(store, request)
            shown = select_project(store, user, name, st)
            if shown is None:
                return [gr.skip()] * len(form.outputs())  # the form shows this project already (page load)
            return form.show(store, user, shown)

        # .change, once per new value: Gradio's dropdown fires .input on a mouse pick and again when it loses
        # focus (even unchanged), so one pick claimed work twice in parallel, and .select misses a keyboard
        # pick. .change also fires when a handler sets the value: after the page load (the state shows the
        # project already: skipped) and after "Create project" (the form follows the menu to the new project).
        self.project_dd.change(on_project, [self.project_dd, state], form.outputs(), api_name="select_project")

        def on_submit(data: dict[Any, Any], request: gr.Request) -> Any:
            user = require(store, request)
            done = submit(store, user, data[state], form.judgment(data))
            if done.shown is None:  # only the message changes: every text stays in its box
                return {form.message: done.message}
            return dict(zip(form.outputs(), form.show(store, user, done.shown)))

        # The message sits at the top of the tab; the submit button at the bottom: bring the message into view.
        form.submit.click(on_submit, form.inputs(), form.outputs(), api_name="submit", concurrency_limit=32).then(
            None, js="() => { window.scrollTo({top: 0}); }")

        def on_draft(data: dict[Any, Any], request: gr.Request) -> None:
            user = require(store, request)
            save_draft(store, user, data[state], form.judgment(data))

        # Text boxes save on .change: Gradio's Textbox fires .input only on a key press, so a paste or a
        # Backspace would never reach the draft (.change also fires when a load fills the box: same values).
        draft_triggers = [s.rank.input for s in form.slots] + [s.tags.input for s in form.slots] + [
            form.unacceptable.input, form.correction_of.input, form.correction.change, form.negative.change,
            form.note.change]
        gr.on(draft_triggers, on_draft, form.inputs(), None, api_name="save_draft", trigger_mode="always_last",
              show_progress="hidden", concurrency_limit=32)

        def on_clear(data: dict[Any, Any], request: gr.Request) -> list[Any]:
            user = require(store, request)
            clear_ranks(store, user, data[state], form.judgment({**data, **{s.rank: None for s in form.slots}}))
            return [gr.Radio(value=None) for _ in form.slots]

        self.clear.click(on_clear, form.inputs(), [s.rank for s in form.slots], api_name="clear_ranks")

        def on_mine(name: str, request: gr.Request) -> list[Any]:
            user = require(store, request)
            rows, choices = my_submissions(store, user, name)
            return [rows, gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)]

        self.mine_refresh.click(on_mine, self.project_dd, [self.mine_table, self.mine_pick], api_name="my_submissions")
        self.mine_tab.select(on_mine, self.project_dd, [self.mine_table, self.mine_pick],
                             api_name="my_submissions_on_open")

        def on_revise(item_id: int | None, request: gr.Request) -> list[Any]:
            user = require(store, request)
            return [gr.Tabs(selected="annotate"), *form.show(store, user, revise(store, user, item_id))]

        self.revise.click(on_revise, self.mine_pick, [tabs, *form.outputs()], api_name="revise")
