"""The admin dashboard's analysis of one project: judgments, annotators, agreement, gold accuracy, tags, notes.

:meth:`Dashboard.build` reads the store once and keeps plain numbers and rows, so the figures can be checked
without a page; :meth:`Dashboard.values` turns them into what the dashboard's components show. Every text
that came from an annotator or a model is escaped where it becomes Markdown or HTML here, and left as plain
text in table cells (tables show text, never markup).
"""

from __future__ import annotations

import html
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from feedback_app.agreement import AgreementReport, agreement
from feedback_app.headtohead import format_summary, project_summary
from feedback_app.store import GoldScore, Project, Store, StoredJudgment, gold_accuracy

DISAGREEMENTS_SHOWN = 50  # the worst first; a longer table is not read


def age_text(seconds: float) -> str:
    """A duration as the admin reads it: minutes, hours or days."""
    minutes = max(0.0, seconds) / 60
    if minutes < 90:
        return f"{round(minutes)} min"
    if minutes < 48 * 60:
        return f"{round(minutes / 60)} h"
    return f"{round(minutes / 1440)} d"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


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
    return [[r[0], r[1], r[2], _when(r[3]) if r[3] else "", r[4], r[5]] for r in sorted(per_user.values())]


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
    the judges, one row per annotator) in a monospace block, every text escaped. The rules judge is the rules
    stored with the project (``align feedback h2h create --policies``), named in its detail line; without them,
    a note says how to add them."""
    lines = format_summary(project_summary(store, project))
    return ('<div class="h2h"><div class="resp-title">Head-to-head evaluation</div>'
            f'<pre class="h2h-report">{html.escape(chr(10).join(lines))}</pre></div>')


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


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@dataclass(frozen=True)
class Dashboard:
    """One project's dashboard, computed from the latest judgment of each annotator per item."""

    judgments: int  # current judgments (an annotator's latest per item)
    annotators: int  # annotators with at least one current judgment
    unacceptable: int  # current judgments marked all unacceptable
    gold_items: int
    report: AgreementReport  # over the items two or more annotators ranked (all-unacceptable ones left out)
    users: list[list[Any]]  # annotator_table's rows
    disagreements: list[list[Any]]  # item id, mean tau, annotators, the prompt's last message (100 characters)
    tags: dict[str, int]  # problem tag -> how often current judgments give it, in first-seen order
    notes: list[list[Any]]  # annotator, prompt excerpt, note, time; newest first

    @classmethod
    def build(cls, store: Store, project: Project) -> Dashboard:
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
        disagreements = []
        for item_id, tau in report.disagreements[:DISAGREEMENTS_SHOWN]:
            item = store.item(int(item_id))
            text = item.prompt[-1]["content"][:100] if item else ""
            disagreements.append([int(item_id), round(tau, 3), ", ".join(sorted(rankings[item_id])), text])
        notes = []
        for sj in sorted((sj for sj in latest if sj.judgment.note.strip()), key=lambda sj: -sj.created_at):
            item = store.item(sj.item_id)
            text = item.prompt[-1]["content"] if item else ""
            notes.append([sj.user_name, text[:100] + ("…" if len(text) > 100 else ""), sj.judgment.note,
                          _when(sj.created_at)])
        return cls(judgments=len(latest), annotators=len(annotators),
                   unacceptable=sum(1 for sj in latest if sj.judgment.all_unacceptable),
                   gold_items=len(store.gold(project.id)), report=report,
                   users=annotator_table(store, project, latest), disagreements=disagreements, tags=dict(tags),
                   notes=notes)

    def summary(self) -> str:
        """The line above the tables (Markdown; only numbers in it)."""
        r = self.report
        return (f"**{self.judgments}** current judgments from **{self.annotators}** annotators · "
                f"**{r.items}** prompts judged by 2+ annotators · mean Kendall tau-b **{_fmt(r.mean_tau)}** · "
                f"Krippendorff's alpha (ordinal) **{_fmt(r.alpha)}** · **{len(r.disagreements)}** prompts "
                f"with strong disagreement (tau ≤ 0) · {self.unacceptable} marked all unacceptable · "
                f"**{self.gold_items}** gold items")

    def values(self) -> list[Any]:
        """Summary text, per-annotator table, disagreement table, tag plot and notes: the dashboard's outputs."""
        # Imported here: the analysis needs neither, so building it (in a test, a script) does not load Gradio.
        import gradio as gr
        import pandas as pd

        tags = self.tags
        tag_df = pd.DataFrame({"tag": list(tags), "count": [tags[t] for t in tags]}) if tags else \
            pd.DataFrame({"tag": [], "count": []})
        # An explicit y range from 0: with every count equal, the plot's automatic range collapses to one
        # value and no bar is drawn.
        plot = gr.BarPlot(value=tag_df, y_lim=[0, max(tags.values(), default=0) + 1])
        return [self.summary(), self.users, self.disagreements, plot, self.notes]


def dashboard_values(store: Store, project: Project) -> list[Any]:
    """Summary text, per-annotator table, disagreement table, tag counts and notes for one project."""
    return Dashboard.build(store, project).values()
