"""The admin tab: project settings, prompts and candidates, dashboard, gold items, claims, export, users.

Each action is a plain function over the store, the acting user and the event's inputs, which checks the
admin role itself (:func:`~feedback_app.annotate.require_role`, the user's current row): a hidden tab or
button is never the permission, and an API call or a unit test gets the same refusal. They return plain
values (Markdown, table rows, a :class:`~feedback_app.dashboard.Dashboard`); :class:`AdminSection` lays the
tab out and turns those into component updates, after :func:`~feedback_app.annotate.require` named the user
of the request.
"""

from __future__ import annotations

import html
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr

from alignment.config import ModelOptions
from feedback_app.agreement import AGGREGATIONS
from feedback_app.annotate import K_MAX, require, require_role
from feedback_app.candidates import GenerationSettings, import_candidates, load_prompts, start_generation
from feedback_app.dashboard import Dashboard, age_text, annotator_table, h2h_report_html, serving_order_text
from feedback_app.export import export_store, summary_lines, write_export
from feedback_app.security import Uploads
from feedback_app.store import (
    DEFAULT_CLAIM_TTL_MINUTES,
    LINEAGE_HEADERS,
    Project,
    Store,
    StoreError,
    User,
    lineage_rows,
)

# The Export's "Pairs across annotators" menu, in the admin's words (feedback_app/export.py has the details).
AGGREGATE_INFO = ("Where annotators of one prompt disagree. all: every annotator's pairs as they are; majority: "
                  "the order most annotators chose (ties dropped); drop_contradicted: only pairs nobody ordered "
                  "the other way; agreement_weight: both orders, each weighted by its share of the votes.")
DEFAULT_MODEL = "smollm2-135m-instruct"


def _admin(store: Store, user: User) -> User:
    return require_role(store, user.name, "admin")


def project_or_default(store: Store, name: str | None) -> Project:
    """The named project; the default project (made if need be) when there is no such project."""
    project = store.project(name) if name else None
    if project is None:
        project = store.ensure_project("default")
    return project


def uploaded(uploads: Uploads | None, path: str) -> bool:
    """A file in the private upload folder (the request layer checked that this user uploaded it). Without
    ``uploads`` (a page built without a server, in tests) any path."""
    return uploads is None or uploads.inside(path) is not None


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


# ------------------------------------------------------------------------------------------------ project


def settings_values(p: Project | None) -> list[Any]:
    """The heading, the settings fields (guidelines, tags, candidates, overlap, batch), the claim expiry and
    the serving order for project ``p``."""
    if p is None:
        return ["### No project selected", "", "", 4, 2, 5, DEFAULT_CLAIM_TTL_MINUTES, False]
    return [f"### Editing project: {html.escape(p.name)}\nSettings, prompts, candidates, dashboard and "
            "export on this tab apply to this project; pick another in the Project menu of the Annotate tab.",
            p.guidelines, ", ".join(p.tags), p.candidates_per_item, p.overlap, p.assign_batch,
            p.claim_ttl_minutes, p.uncertain_first]


def project_settings(store: Store, user: User, name: str | None) -> list[Any] | None:
    """:func:`settings_values` of the named project for an admin; None for anyone else. The page asks for
    everyone when it sets the project, so an annotator is answered quietly, not refused."""
    if not require_role(store, user.name).is_admin:
        return None
    return settings_values(store.project(name) if name else None)


def create_project(store: Store, user: User, name: str | None) -> tuple[str, Project | None]:
    """Make the project (or find it): the message and the project, None when no name was given."""
    _admin(store, user)
    name = (name or "").strip()
    if not name:
        return "Give the project a name.", None
    return f"Project **{html.escape(name)}** ready.", store.ensure_project(name)


def save_project(store: Store, user: User, name: str | None, guidelines: str, tags: str, k: float | None,
                 overlap: float | None, batch: float | None) -> str:
    """Save the settings fields; a changed guideline text makes a new guideline version."""
    _admin(store, user)
    project = project_or_default(store, name)
    try:
        p = store.update_project(project.id, guidelines=guidelines, tags=(tags or "").split(","),
                                 candidates_per_item=int(k or 0), overlap=int(overlap or 0),
                                 assign_batch=int(batch or 0))
    except StoreError as e:
        return f"**Not saved:** {html.escape(str(e))}"
    return f"Saved. Guideline version {p.guideline_version}."


def save_serving_order(store: Store, user: User, name: str | None, on: bool | None) -> str:
    """Serve uncertain prompts first (or not); the message says what that means with the scores there are."""
    _admin(store, user)
    project = project_or_default(store, name)
    return serving_order_text(store, store.update_project(project.id, uncertain_first=bool(on)))


# ------------------------------------------------------------------------------------------------ prompts


def load_prompts_file(store: Store, user: User, name: str | None, path: str | None,
                      uploads: Uploads | None = None) -> str:
    """Add the prompts of an uploaded file to the project."""
    _admin(store, user)
    if not path:
        return "Choose a prompts file first."
    if not uploaded(uploads, path):
        return "**Not loaded:** upload the file again."
    skipped: list[str] = []
    try:
        prompts = load_prompts(path, skipped)
    except Exception as e:  # AlignError names file, line and field
        return f"**Not loaded:** {html.escape(_without_folder(str(e), path))}"
    added, dup = store.add_prompts(project_or_default(store, name).id, prompts, source=Path(path).name)
    return f"{added} prompts added ({dup} already in the project).{skipped_text(skipped)}"


def import_candidates_file(store: Store, user: User, name: str | None, path: str | None,
                           uploads: Uploads | None = None) -> str:
    """Add the prompts and answers of an uploaded candidates file to the project."""
    _admin(store, user)
    if not path:
        return "Choose a candidates file first."
    if not uploaded(uploads, path):
        return "**Not imported:** upload the file again."
    skipped: list[str] = []
    try:
        n_prompts, n_cands = import_candidates(store, project_or_default(store, name).id, path, skipped)
    except Exception as e:
        return f"**Not imported:** {html.escape(_without_folder(str(e), path))}"
    return f"{n_cands} candidates imported ({n_prompts} new prompts).{skipped_text(skipped)}"


def generate(store: Store, user: User, name: str | None, model: str | None, temperature: float | None,
             top_p: float | None, max_tokens: float | None, batch: float | None,
             options: ModelOptions | None = None) -> str:
    """Start a background job that writes the project's missing candidates with ``model``, loaded with
    ``options`` (the server's, from `align app --dtype/--attn-implementation/--trust-remote-code`: whether a
    model's own code may run is decided by who starts the server, never by a request)."""
    user = _admin(store, user)
    project = project_or_default(store, name)
    settings = GenerationSettings(model=(model or "").strip() or DEFAULT_MODEL, k=project.candidates_per_item,
                                  temperature=float(temperature or 0), top_p=float(top_p or 0),
                                  max_new_tokens=int(max_tokens or 0), batch_size=int(batch or 0), options=options)
    try:
        job = start_generation(store, project.id, settings, user.id)
    except StoreError as e:
        return f"**Not started:** {html.escape(str(e))}"
    return f"Generation job {job} started."


def jobs_text(store: Store, user: User, name: str | None) -> str:
    """The project's counts and its last five jobs ("" without a project)."""
    _admin(store, user)
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


# ------------------------------------------------------------------------------------------------ dashboard


def dashboard(store: Store, user: User, name: str | None) -> Dashboard:
    """The project's dashboard (gold accuracy included: admins only)."""
    _admin(store, user)
    return Dashboard.build(store, project_or_default(store, name))


def lineage(store: Store, user: User, name: str | None) -> list[list[Any]]:
    """The project's rounds: the table names model directories on the server, for admins only."""
    _admin(store, user)
    return lineage_rows(store.rounds(project_or_default(store, name).id))


def h2h_report(store: Store, user: User, name: str | None) -> str | None:
    """The head-to-head report (HTML, escaped) of an evaluation project; None for a ranking project."""
    _admin(store, user)
    project = project_or_default(store, name)
    return h2h_report_html(store, project) if project.is_head_to_head else None


def import_gold(store: Store, user: User, name: str | None, path: str | None,
                uploads: Uploads | None = None) -> tuple[str, list[list[Any]] | None]:
    """Mark the items of an uploaded gold file (all or nothing): the message and the per-annotator table
    scored on the new gold (None when nothing was imported)."""
    _admin(store, user)
    if not path:
        return "Choose a gold orderings file first.", None
    if not uploaded(uploads, path):
        return "**Not imported:** upload the file again.", None
    project = project_or_default(store, name)
    try:
        marked, cleared = store.import_gold(project.id, path, source=Path(path).name)
    except StoreError as e:  # names file, line and field; nothing of the file was stored
        return f"**Not imported:** {html.escape(_without_folder(str(e), path))}", None
    n = len(store.gold(project.id))
    text = (f"{marked} item{'s' if marked != 1 else ''} marked gold" + (f", {cleared} cleared" if cleared else "")
            + f". Project **{html.escape(project.name)}** has {n} gold item{'s' if n != 1 else ''}.")
    return text, annotator_table(store, project)


# ------------------------------------------------------------------------------------------------ claims


def claim_choices(store: Store, project: Project) -> list[tuple[str, str]]:
    """The annotators with open claims in the project, for the release menu: (label, user name)."""
    now = store.clock()
    return [(f"{c.user_name} · {c.count} open, oldest {age_text(now - c.oldest_at)}", c.user_name)
            for c in store.open_claims(project)]


def open_claims(store: Store, user: User, name: str | None) -> list[tuple[str, str]]:
    """:func:`claim_choices` of the named project."""
    _admin(store, user)
    return claim_choices(store, project_or_default(store, name))


def save_claim_ttl(store: Store, user: User, name: str | None, minutes: float | None) -> str:
    """How long a claim holds before another annotator may take the item (0: for ever)."""
    _admin(store, user)
    project = project_or_default(store, name)
    try:
        p = store.update_project(project.id, claim_ttl_minutes=int(minutes or 0))
    except StoreError as e:
        return f"**Not saved:** {html.escape(str(e))}"
    if not p.claim_ttl_minutes:
        return f"Claims in project **{html.escape(p.name)}** never expire."
    return (f"Claims in project **{html.escape(p.name)}** expire after {p.claim_ttl_minutes} minutes "
            f"({age_text(60 * p.claim_ttl_minutes)}) without a submission.")


def release_annotator(store: Store, user: User, name: str | None, who: str | None) -> tuple[str, Project | None]:
    """Release the open claims of annotator ``who`` in the project: the message and the project whose
    claims changed (None when no such annotator was named: nothing to refresh)."""
    _admin(store, user)
    project = project_or_default(store, name)
    target = store.get_user(who.strip()) if who and who.strip() else None
    if target is None:
        return (f"No user **{html.escape(who.strip())}**." if who and who.strip()
                else "Pick an annotator with open claims first."), None
    n = store.release_claims(project.id, user_id=target.id)
    label = f"**{html.escape(target.name)}** in project **{html.escape(project.name)}**"
    return (f"Released {n} open claim{'s' if n != 1 else ''} of {label}: those prompts can be claimed by others "
            "now." if n else f"No open claims of {label}."), project


def release_item(store: Store, user: User, name: str | None, item_id: float | None) -> tuple[str, Project | None]:
    """Release every open claim on one prompt of the project: the message and the project whose claims
    changed (None when no item id was given)."""
    _admin(store, user)
    project = project_or_default(store, name)
    if not item_id or not 1 <= item_id < 2**31:
        return "Enter the item id of a prompt first.", None
    n = store.release_claims(project.id, item_id=int(item_id))
    label = f"prompt {int(item_id)} in project **{html.escape(project.name)}**"
    return (f"Released {n} open claim{'s' if n != 1 else ''} on {label}: it can be claimed again now."
            if n else f"No open claims on {label}."), project


# ------------------------------------------------------------------------------------------------ export, users


def export_training_data(store: Store, user: User, name: str | None, policy: str | None, aggregate: str | None,
                         uploads: Uploads | None = None) -> tuple[str, list[str] | None]:
    """Export the project's judgments as training files: the summary (Markdown) and the files written, or the
    refusal and None."""
    _admin(store, user)
    project = project_or_default(store, name)
    # An API call can send any text: export_store refuses a pair policy or aggregation that is not one
    # (nothing chosen is the default). Nothing is written then, and the files of an earlier export are no
    # longer offered (they were made under other settings).
    try:
        result = export_store(store, project=project.name, pairs=policy or "all", aggregate=aggregate or "all")
    except StoreError as e:
        return f"**Not exported:** {html.escape(str(e), quote=False)}", None
    folder = uploads.export_folder() if uploads else Path(tempfile.mkdtemp(prefix="align-export-"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    paths = write_export(result, folder / f"{project.name}-{stamp}.jsonl")
    return "\n".join(f"- {html.escape(line.strip())}" for line in summary_lines(result)), [str(p) for p in paths]


def user_rows(store: Store, user: User) -> list[list[Any]]:
    """Every account: name, role, active."""
    _admin(store, user)
    return [[u.name, u.role, "yes" if u.active else "no"] for u in store.list_users()]


def add_user(store: Store, user: User, name: str | None, role: str) -> tuple[list[list[Any]], str]:
    """Add an account with a random password, shown once in the message; the accounts table after it."""
    _admin(store, user)
    password = secrets.token_urlsafe(12)
    try:
        store.add_user(name or "", role, password)
    except StoreError as e:
        return user_rows(store, user), f"**Not added:** {html.escape(str(e))}"
    return user_rows(store, user), f"User **{html.escape(name or '')}** added. Password (shown once): `{password}`"


# ------------------------------------------------------------------------------------------------ the tab


class AdminSection:
    """The admin tab's components and their events.

    Constructing it lays out the components where it is called (inside the Admin tab); ``wire`` attaches
    the handlers once the rest of the page exists."""

    def __init__(self, store: Store, project_dd: Any, uploads: Uploads | None = None,
                 model_options: ModelOptions | None = None) -> None:
        self.store = store
        self.model_options = model_options  # how generation jobs load their model (the server's options)
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
                self.model = gr.Textbox(label="Model (alias or directory)", value=DEFAULT_MODEL)
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

    def wire(self, timer: Any) -> None:
        """Attach the tab's events; ``timer`` ticks the jobs list. Every event names its user with
        :func:`~feedback_app.annotate.require` (admin role) and calls the module's function of the same job."""
        store, uploads = self.store, self.uploads
        settings_out = [self.guidelines, self.tags, self.k, self.overlap, self.batch]
        # What a project pick shows: the settings saved together, and the claim expiry and the serving order
        # saved on their own.
        shown = [self.heading, *settings_out, self.claim_ttl, self.uncertain_first]

        def admin(request: gr.Request) -> User:
            return require(store, request, "admin")

        def show_settings(name: str | None, request: gr.Request) -> list[Any]:
            # Fires for everyone when the page sets the project; only admins get the settings, quietly.
            values = project_settings(store, require(store, request), name)
            return [gr.skip()] * len(shown) if values is None else values

        self.project_dd.change(show_settings, self.project_dd, shown, api_name="admin_settings")

        def on_create(name: str, request: gr.Request) -> list[Any]:
            message, project = create_project(store, admin(request), name)
            if project is None:
                return [gr.Dropdown(), message, *[gr.skip()] * len(shown)]
            # The new project's settings at once: the dropdown's own change event may answer later.
            return [gr.Dropdown(choices=[p.name for p in store.list_projects()], value=project.name), message,
                    *settings_values(project)]

        self.create.click(on_create, self.new_name, [self.project_dd, self.project_msg, *shown],
                          api_name="admin_create_project")

        def on_save(name: str, guidelines: str, tags: str, k: float, overlap: float, batch: float,
                    request: gr.Request) -> str:
            return save_project(store, admin(request), name, guidelines, tags, k, overlap, batch)

        self.save.click(on_save, [self.project_dd, *settings_out], self.project_msg, api_name="admin_save_project")

        def on_save_order(name: str | None, on: bool | None, request: gr.Request) -> str:
            return save_serving_order(store, admin(request), name, on)

        self.save_order.click(on_save_order, [self.project_dd, self.uncertain_first], self.project_msg,
                              api_name="admin_save_uncertain_first")

        def on_load(name: str, path: str | None, request: gr.Request) -> str:
            return load_prompts_file(store, admin(request), name, path, uploads)

        self.load_prompts.click(on_load, [self.project_dd, self.prompts_file], self.work_msg,
                                api_name="admin_load_prompts")

        def on_import(name: str, path: str | None, request: gr.Request) -> str:
            return import_candidates_file(store, admin(request), name, path, uploads)

        self.import_cands.click(on_import, [self.project_dd, self.cands_file], self.work_msg,
                                api_name="admin_import_candidates")

        def on_generate(name: str, model: str, temperature: float, top_p: float, max_tokens: float, batch: float,
                        request: gr.Request) -> str:
            return generate(store, admin(request), name, model, temperature, top_p, max_tokens, batch,
                            self.model_options)

        self.generate.click(on_generate, [self.project_dd, self.model, self.temperature, self.top_p,
                                          self.max_tokens, self.gen_batch], self.work_msg, api_name="admin_generate")

        def on_jobs(name: str | None, request: gr.Request) -> str:
            return jobs_text(store, admin(request), name)

        timer.tick(on_jobs, self.project_dd, self.jobs, api_name="admin_jobs", show_progress="hidden")

        def on_dashboard(name: str | None, request: gr.Request) -> list[Any]:
            return dashboard(store, admin(request), name).values()

        self.refresh.click(on_dashboard, self.project_dd,
                           [self.summary, self.per_user, self.disagree, self.tag_plot, self.notes],
                           api_name="admin_dashboard")

        def on_lineage(name: str | None, request: gr.Request) -> list[list[Any]]:
            return lineage(store, admin(request), name)

        self.refresh.click(on_lineage, self.project_dd, self.rounds, api_name="admin_lineage")

        def on_h2h_report(name: str | None, request: gr.Request) -> Any:
            report = h2h_report(store, admin(request), name)
            return gr.HTML(value="", visible=False) if report is None else gr.HTML(value=report, visible=True)

        self.refresh.click(on_h2h_report, self.project_dd, self.h2h_report, api_name="admin_h2h_report")
        self.wire_claims()

        def on_import_gold(name: str | None, path: str | None, request: gr.Request) -> list[Any]:
            message, table = import_gold(store, admin(request), name, path, uploads)
            return [message, gr.skip() if table is None else table]

        self.import_gold.click(on_import_gold, [self.project_dd, self.gold_file], [self.gold_msg, self.per_user],
                               api_name="admin_import_gold")

        def on_export(name: str | None, policy: str | None, aggregate: str | None, request: gr.Request) -> list[Any]:
            message, files = export_training_data(store, admin(request), name, policy, aggregate, uploads)
            return [message, files]

        self.export.click(on_export, [self.project_dd, self.policy, self.aggregate],
                          [self.export_msg, self.export_files], api_name="admin_export")

        def on_users(request: gr.Request) -> list[list[Any]]:
            return user_rows(store, admin(request))

        def on_add_user(name: str, role: str, request: gr.Request) -> list[Any]:
            rows, message = add_user(store, admin(request), name, role)
            return [rows, message]

        self.add_user.click(on_add_user, [self.user_name, self.user_role], [self.users, self.user_msg],
                            api_name="admin_add_user")
        self.refresh.click(on_users, None, self.users, api_name="admin_users")

    def wire_claims(self) -> None:
        """Claim expiry and releases. Each handler checks the caller's role itself, like every admin handler."""
        store = self.store

        def who_menu(choices: list[tuple[str, str]]) -> Any:
            return gr.Dropdown(choices=choices, value=None)

        def on_claims(name: str | None, request: gr.Request) -> Any:
            return who_menu(open_claims(store, require(store, request, "admin"), name))

        self.refresh.click(on_claims, self.project_dd, self.release_who, api_name="admin_claims")

        def on_save_ttl(name: str | None, minutes: float | None, request: gr.Request) -> str:
            return save_claim_ttl(store, require(store, request, "admin"), name, minutes)

        self.save_ttl.click(on_save_ttl, [self.project_dd, self.claim_ttl], self.claims_msg,
                            api_name="admin_save_claim_ttl")

        def after_release(message: str, project: Project | None) -> list[Any]:
            if project is None:
                return [message, gr.skip(), gr.skip()]
            return [message, annotator_table(store, project), who_menu(claim_choices(store, project))]

        def on_release_user(name: str | None, who: str | None, request: gr.Request) -> list[Any]:
            return after_release(*release_annotator(store, require(store, request, "admin"), name, who))

        self.release_user.click(on_release_user, [self.project_dd, self.release_who],
                                [self.claims_msg, self.per_user, self.release_who], api_name="admin_release_user")

        def on_release_item(name: str | None, item_id: float | None, request: gr.Request) -> list[Any]:
            return after_release(*release_item(store, require(store, request, "admin"), name, item_id))

        self.release_item.click(on_release_item, [self.project_dd, self.release_item_id],
                                [self.claims_msg, self.per_user, self.release_who], api_name="admin_release_item")
