"""`runs/<run>/report.html`: one self-contained file with whether learning worked, curves, RM diagnostics,
evaluation and example answers.

Plots are matplotlib PNGs embedded as base64, so the file can be mailed or attached to a ticket.
All model text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from alignment.early_stopping import REPORT_FILE as EARLY_STOPPING_FILE
from alignment.evaluation.records import EvalReport, ModelResult, RewardComparison, RewardSummary, VsBaseline
from alignment.run import TEST_METRICS_FILE
from alignment.tracking import read_metrics


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _curves(phase: str, rows: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", ("train/loss", "eval/loss")),
              ("reward accuracy", ("rewards/accuracies", "eval/rewards/accuracies")),
              ("reward margin", ("rewards/margins", "eval/rewards/margins")),
              ("reward", ("objective/scores", "objective/rewards")),
              ("KL to the reference", ("objective/kl",)),
              ("policy adherence of samples", sorted({k for r in rows for k in r if k.startswith("adherence/")})),
              ("rule reward per rule", sorted({k for r in rows for k in r if k.startswith("rule_reward/")})),
              # group estimators: how many prompts' answers differed at all (the rest teach nothing)
              ("prompts with a learning signal", ("rollout/informative_prompts",))]
    panels = [(title, [k for k in keys if any(k in r for r in rows)]) for title, keys in panels]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return ""
    cols = min(3, len(panels))
    n_rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(5.5 * cols, 3.2 * n_rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if key.startswith("eval") else None,
                    label=key)
        ax.set_xlabel("step")
        ax.set_title(f"{phase}: {title}")
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(fig)


def _rm_section(rm_dir: Path) -> str:
    """Verdict, diagnostics table, score histograms and the calibration curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = html.escape
    path = rm_dir / "diagnostics.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    rows = [("held-out pairs", d["pairs"]), ("pairwise accuracy", f"{d['accuracy']:.3f}"),
            ("chosen score", f"{d['chosen_mean']:+.3f} ± {d['chosen_std']:.3f}"),
            ("rejected score", f"{d['rejected_mean']:+.3f} ± {d['rejected_std']:.3f}"),
            ("corr(score, length) within labels / overall",
             f"{d.get('length_correlation_within', float('nan')):+.3f} / {d['length_correlation']:+.3f}"),
            ("prefers the longer answer", f"{d['prefers_longer']:.2f} (data: {d['data_prefers_longer']:.2f})"),
            ("expected calibration error", f"{d['ece']:.3f}"),
            ("training score mean / std (for PPO)", f"{d['train_score_mean']:+.3f} / {d['train_score_std']:.3f}")]
    table = "".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in rows)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.4))
    scores = d.get("scores", {})
    if scores:
        a1.hist(scores["chosen"], bins=20, alpha=0.6, label="chosen")
        a1.hist(scores["rejected"], bins=20, alpha=0.6, label="rejected")
        a1.set_title("held-out scores")
        a1.set_xlabel("reward")
        a1.legend()
    bins = d["calibration"]
    a2.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    a2.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o", label="reward model")
    a2.set_xlabel("predicted P(chosen preferred)")
    a2.set_ylabel("observed rate")
    a2.set_title("calibration")
    a2.legend()
    return (f"<h2>Reward model diagnostics</h2><p><b>{e(d['verdict'])}</b></p><table>{table}</table>"
            f"{_png(fig)}")


def _adherence_plot(results: list[ModelResult], names: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(7, 1.8 * len(names)), 3.4))
    width = 0.8 / max(len(results), 1)
    for i, r in enumerate(results):
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, [100 * r.adherence[n] for n in names], width=width, label=r.label)
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(names))], names, rotation=12)
    ax.set_ylabel("% of answers passing")
    ax.set_ylim(0, 100)
    ax.set_title("Policy adherence on held-out prompts")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def write_report(run_dir: Path, cfg: Any, timings: dict[str, float],
                 verdicts: list[dict[str, Any]] | None = None, head_to_head: list[str] | None = None) -> Path:
    """Write ``run_dir/report.html`` from what the phases left on disk.

    ``verdicts``: :func:`alignment.verdict.run_verdicts`'s, when the caller has them; else read from disk.
    ``head_to_head``: the experts' head-to-head report as text lines
    (:func:`alignment.pipeline.head_to_head_lines`, which reads the feedback store); None: no such section.
    """
    e = html.escape
    if verdicts is None:
        from alignment.verdict import run_verdicts

        verdicts = run_verdicts(run_dir, cfg)[0]
    parts = [f"<h1>Run {e(cfg.name)}</h1>", f"<p>Base model: <code>{e(cfg.model)}</code></p>",
             _verdict_section(verdicts)]
    parts.append('<h2>Phases</h2><table id="phases"><tr><th>phase</th><th>kind</th><th>wall time</th></tr>')
    total = 0.0
    for step in cfg.phases:
        marker = run_dir / step.name / "complete.json"
        seconds = json.loads(marker.read_text())["seconds"] if marker.exists() else None
        total += seconds or 0.0
        shown = _duration(seconds) if seconds is not None else "not run"
        parts.append(f"<tr><td>{e(step.name)}</td><td>{e(step.kind)}</td><td>{shown}</td></tr>")
    parts.append(f"<tr><th>total</th><th></th><th>{_duration(total)}</th></tr></table>")
    parts.append("<p><small>Wall time of each phase's last complete run; a re-run skips complete "
                 "phases.</small></p>")

    parts.append(_test_section(split_test_rows(run_dir, cfg)))
    parts.append(_early_stopping_section(early_stopping_rows(run_dir, cfg)))
    parts.append(_data_section(data_prep_rows(run_dir, cfg)))
    parts.append(_head_to_head_section(head_to_head))
    for step in cfg.phases:
        if step.kind == "eval":
            parts.append(_eval_section(run_dir / step.name))
            continue
        if step.kind == "rm":
            parts.append(_rm_section(run_dir / step.name))
        rows = read_metrics(run_dir / step.name / "metrics.jsonl")
        if rows:
            final = [r["eval/loss"] for r in rows if isinstance(r.get("eval/loss"), (int, float))]
            summary = f"final validation loss {final[-1]:.4f}" if final else ""
            parts.append(f"<h2>{e(step.name)} ({e(step.kind)})</h2><p>{summary}</p>{_curves(step.name, rows)}")

    body = "\n".join(p for p in parts if p)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(cfg.name)} report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;
text-align:left}}.answer{{white-space:pre-wrap;font-size:0.9em}}.fail{{background:#fde8e8}}
.pass{{background:#e8f6e8}}.plots{{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}}
.plots img{{max-width:calc(50% - 0.5em)}}td.num{{text-align:right}}.verdict-learned{{background:#c9ecc9}}
.verdict-no-gain{{background:#fdebc0}}.verdict-regressed{{background:#f7c4c4}}
.verdict-not-measured{{background:#e6e6e6}}</style></head><body>{body}</body></html>"""
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


TEST_METRICS = ("loss", "rewards/accuracies", "rewards/margins")  # shown when the phase has them


def split_test_rows(run_dir: Path, cfg: Any) -> list[dict[str, Any]]:
    """Per training phase that scored a held-out test set (its ``test_metrics.json``): its name, kind, number of
    test examples and ``[(metric, final validation value or None, test value)]`` for :data:`TEST_METRICS`."""
    out = []
    for step in cfg.phases:
        path = run_dir / step.name / TEST_METRICS_FILE
        if step.kind == "eval" or not path.exists():
            continue
        test = json.loads(path.read_text())
        rows = read_metrics(run_dir / step.name / "metrics.jsonl")
        metrics = []
        for name in TEST_METRICS:
            if not isinstance(test.get(f"test/{name}"), (int, float)):
                continue
            seen = [r[f"eval/{name}"] for r in rows if isinstance(r.get(f"eval/{name}"), (int, float))]
            metrics.append((name, seen[-1] if seen else None, test[f"test/{name}"]))
        out.append({"phase": step.name, "kind": step.kind, "examples": test.get("examples"), "metrics": metrics})
    return out


def split_test_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The end-of-run text of :func:`split_test_rows`: one line per phase."""
    lines = []
    for r in rows:
        shown = ", ".join(f"{name} {test:.4f} (validation {_num(val, '.4f')})" for name, val, test in r["metrics"])
        lines.append(f"test split: {r['phase']} ({r['kind']}, {r['examples']} examples): {shown}")
    return lines


def _table(table_id: str, headers: list[str], rows: list[list[str]], note: str = "") -> str:
    """An HTML table (cells already escaped or formatted) with an optional small-print note under it."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    small = f"<p><small>{note}</small></p>" if note else ""
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>{small}'


def _cell(cell: str) -> str:
    """A ``<td>``; a cell already starting with ``<td`` (a class on it) is kept as it is."""
    return cell if cell.startswith("<td") else f"<td>{cell}</td>"


def _test_section(rows: list[dict[str, Any]]) -> str:
    """The "Test split" table: each phase's test metrics beside its final validation metrics."""
    if not rows:
        return ""
    e = html.escape
    cells = [[f"{e(r['phase'])} ({e(r['kind'])})", e(name), f'<td class="num">{_num(val, ".4f")}</td>',
              f'<td class="num">{test:.4f}</td>', f'<td class="num">{e(str(r["examples"]))}</td>']
             for r in rows for name, val, test in r["metrics"]]
    return "<h2>Test split</h2>" + _table(
        "test-split", ["phase", "metric", "validation (final)", "test", "test examples"], cells,
        "Held-out test examples (<code>data.test</code>, or a <code>test</code> fraction of <code>data.split</code>): "
        "never trained on nor used for validation or early stopping; each phase scored them once with its saved "
        "model.")


def early_stopping_rows(run_dir: Path, cfg: Any) -> list[dict[str, Any]]:
    """Per training phase that ran with early stopping (its ``early_stopping.json``): its name and kind, the
    metric and mode, the best step and value (the saved model's), the step it stopped at (None: it ran to the
    end) and the last step evaluated."""
    out = []
    for step in cfg.phases:
        path = run_dir / step.name / EARLY_STOPPING_FILE
        if step.kind == "eval" or not path.exists():
            continue
        saved = json.loads(path.read_text())
        steps = [e["step"] for e in saved.get("evaluations", []) if isinstance(e.get("step"), int)]
        out.append({"phase": step.name, "kind": step.kind, "metric": saved.get("metric"), "mode": saved.get("mode"),
                    "best_step": saved.get("best_step"), "best_value": saved.get("best_value"),
                    "stopped_at_step": saved.get("stopped_at_step"), "last_step": max(steps, default=None)})
    return out


def _stopping(row: dict[str, Any]) -> str:
    """Where training ended: "step N" when it stopped early, else that it ran to its last step."""
    if row["stopped_at_step"] is not None:
        return f"step {row['stopped_at_step']}"
    return f"did not stop (ran to step {_num(row['last_step'], 'd')})"


def early_stopping_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The end-of-run text of :func:`early_stopping_rows`: one line per phase."""
    return [f"early stopping: {r['phase']} ({r['kind']}): {r['metric']} ({r['mode']}) best "
            f"{_num(r['best_value'], '.4f')} at step {_num(r['best_step'], 'd')} (the saved model); stopped: "
            f"{_stopping(r)}" for r in rows]


def _early_stopping_section(rows: list[dict[str, Any]]) -> str:
    """The "Early stopping" table: per phase, the metric, the best (saved) step and value, and the stop step."""
    if not rows:
        return ""
    e = html.escape
    cells = [[f"{e(r['phase'])} ({e(r['kind'])})", f"{e(str(r['metric']))} ({e(str(r['mode']))})",
              f'<td class="num">{_num(r["best_step"], "d")}</td>',
              f'<td class="num">{_num(r["best_value"], ".4f")}</td>',
              e(_stopping(r))] for r in rows]
    return "<h2>Early stopping</h2>" + _table(
        "early-stopping", ["phase", "metric", "best step", "best value", "stopped at"], cells,
        "Phases run with <code>train.early_stopping</code>: each saved the model of its best step (the best held-out "
        "value), not its last; a phase stops when the metric has not improved in <code>patience</code> evaluations "
        "in a row.")


def data_prep_rows(run_dir: Path, cfg: Any) -> list[dict[str, Any]]:
    """Per training phase that scanned its data for personal data (``data/pii.json``) or curated it
    (``curation.json``): its name, kind, the two reports (None where absent) and the clusters plot's path."""
    from alignment.data.curate import PHASE_PLOT, PHASE_REPORT
    from alignment.data.phase_pii import read_report

    out = []
    for step in cfg.phases:
        if step.kind == "eval":
            continue
        phase_dir = run_dir / step.name
        curation_path, plot = phase_dir / PHASE_REPORT, phase_dir / PHASE_PLOT
        curation = json.loads(curation_path.read_text(encoding="utf-8")) if curation_path.exists() else None
        pii = read_report(phase_dir)
        if pii or curation:
            out.append({"phase": step.name, "kind": step.kind, "pii": pii, "curation": curation,
                        "plot": plot if curation and plot.exists() else None})
    return out


def _removed(curation: dict[str, Any]) -> str:
    return ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in curation.get("removed", {}).items()) or "none"


def data_prep_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The end-of-run text of :func:`data_prep_rows`: what each phase's privacy scan and curation did."""
    from alignment.data.phase_pii import summary_line

    lines = []
    for r in rows:
        if r["pii"]:
            lines.append(summary_line(r["phase"], r["pii"]))
        if c := r["curation"]:
            clusters = f"; {len(c['clusters'])} prompt clusters" if c.get("clusters") else ""
            lines.append(f"curation: {r['phase']}: kept {c['kept']} of {c['records']} records (removed: "
                         f"{_removed(c)}){clusters}")
    return lines


def _data_section(rows: list[dict[str, Any]]) -> str:
    """The "Data preparation" section: the privacy scan's findings per file, and what curation kept, with the
    prompt clusters (sizes, diversity, a representative) and their plot."""
    if not rows:
        return ""
    from alignment.data.pii import LABELS

    e = html.escape
    out = ["<h2>Data preparation</h2>"]
    pii = [[f"{e(r['phase'])} ({e(r['kind'])})", f"<code>{e(f['file'])}</code> ({e(f['field'])})",
            f'<td class="num">{f["rows"]}</td>',
            f'<td class="{"fail" if f["rows_with_findings"] else "pass"} num">{f["rows_with_findings"]}</td>',
            e(", ".join(f"{LABELS.get(k, k)} {n}" for k, n in f["counts"].items()) or "none"),
            e(f["action"] if not f.get("out")
              else f"{f['action']}: trained on {f['out']} ({f['rows_written']} records)"),
            "<br>".join(e(f"line {x['line']}, {x['field']}: {x['shown']}") for x in f["findings"][:5])]
           for r in rows if r["pii"] for f in r["pii"]["files"]]
    if pii:
        out.append("<h3>Personal data</h3>" + _table(
            "privacy", ["phase", "file", "records", "with personal data", "found", "data.pii", "first findings"], pii,
            "E-mails, phone numbers, card numbers (Luhn), IBANs (mod 97), US SSNs and IP addresses; names are not "
            "detected. Values are shown masked. <code>data.pii: mask</code> or <code>drop</code> trains on a cleaned "
            "copy."))
    for r in rows:
        if not (c := r["curation"]):
            continue
        settings = c.get("settings", {})
        near = settings.get("near_dup_threshold")
        out.append(f"<h3>Curation: {e(r['phase'])}</h3><p><code>{e(str(c.get('file', '')))}</code>: kept "
                   f"{c['kept']} of {c['records']} records; removed: {e(_removed(c))} (near duplicates: "
                   f"{'Jaccard &ge; ' + str(near) if near is not None else 'off'}"
                   f"{', retrieval around ' + e(str(settings.get('seeds'))) if settings.get('seeds') else ''}).</p>")
        if c.get("clusters"):
            cells = [[str(x["cluster"]), f'<td class="num">{x["size"]}</td>',
                      f'<td class="num">{x["diversity"]:.2f}</td>', e(x["representative"])]
                     for x in c["clusters"][:12]]
            more = len(c["clusters"]) - len(cells)
            out.append(_table(f"clusters-{e(r['phase'])}", ["cluster", "prompts", "diversity", "representative"],
                              cells, f"Prompt clusters ({e(c.get('embedding', {}).get('backend', ''))} embeddings, "
                              "KMeans); diversity: mean distance to the cluster's centre."
                              + (f" {more} more in curation.json." if more > 0 else "")))
        if r["plot"]:
            data = base64.b64encode(Path(r["plot"]).read_bytes()).decode()
            out.append(f'<img alt="prompt clusters of {e(r["phase"])}" src="data:image/png;base64,{data}">')
    return "\n".join(out)


def _head_to_head_section(lines: list[str] | None) -> str:
    if not lines:
        return ""
    return ("<h2>Head-to-head: the experts' blind votes</h2><pre id=\"head-to-head\">"
            + html.escape("\n".join(lines)) + "</pre>")


def _verdict_section(verdicts: list[dict[str, Any]]) -> str:
    """"Did learning work?": per policy phase, its start model, adherence and RM win rate before -> after,
    a coloured status, and for a phase that did not learn the likely cause and what to change."""
    if not verdicts:
        return ""
    import re

    from alignment.verdict import MIN_NET, Z

    def e(text: str) -> str:  # escaped, then the recipe keys in `backticks` as code
        return re.sub(r"`([^`<>]+)`", r"<code>\1</code>", html.escape(text))

    def before_after(pair: dict[str, Any] | None, fmt: str) -> str:
        if not pair or pair.get("after") is None:
            return "–"
        return f"{_num(pair.get('before'), fmt)} → {_num(pair['after'], fmt)}"

    out = ['<h2>Did learning work?</h2><table id="verdicts"><tr><th>phase</th><th>started from</th>'
           "<th>status</th><th>adherence (all policies)</th><th>RM win rate vs base</th><th>verdict</th></tr>"]
    for v in verdicts:
        overall = (v.get("adherence") or {}).get("all")
        adherence = "–" if overall is None else f"{100 * overall['before']:.1f}% → {100 * overall['after']:.1f}%"
        rm = before_after((v.get("rm") or {}).get("win_rate_vs_base"), ".2f")
        text = e(v["summary"])
        if v.get("cause"):
            text += f"<br><b>Likely cause:</b> {e(v['cause'])}<br><b>Try:</b> {e(v['fix'])}"
        if v.get("notes"):
            text += "<br><small>Also: " + e(" ".join(v["notes"])) + "</small>"
        css = html.escape("verdict-" + v["status"].replace(" ", "-"))
        out.append(f"<tr><td>{e(v['phase'])}</td><td>{e(v['start'])}</td><td class=\"{css}\">{e(v['status'])}</td>"
                   f'<td class="num">{adherence}</td><td class="num">{rm}</td><td>{text}</td></tr>')
    out.append(f"</table><p><small>Each policy phase against the model it started from, on the eval phase's "
               f"held-out prompts. Adherence: the share of answers passing every policy; a change counts when it "
               f"exceeds {Z:g} standard errors of the per-prompt difference and {MIN_NET} answers, else it is "
               "no gain. The per-policy rates are in the evaluation table below; the verdicts also in the eval "
               "phase's results.json.</small></p>")
    return "\n".join(out)


def _duration(seconds: float) -> str:
    """``42 s``, ``12 min 5 s`` or ``2 h 3 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _num(value: Any, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _length_plot(results: list[ModelResult]) -> str:
    """RM score against answer length, one colour per model: a longer-is-better hack slopes up and right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for r, marker in zip(results, "osD^vP*X" * len(results)):  # markers tell overlapping models apart
        pts = [(a.tokens, a.rm_score) for a in r.answers
               if isinstance(a.rm_score, (int, float)) and a.tokens is not None]
        corr = r.reward.length_corr_tokens if r.reward else None
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=16, alpha=0.6, marker=marker,
                   label=f"{r.label} (r = {_num(corr, '+.2f')})")
    ax.set_xlabel("answer length (tokens)")
    ax.set_ylabel("reward-model score")
    ax.set_title("RM score vs answer length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig).replace('alt="plot"', 'alt="RM score vs answer length"', 1)


def _eval_section(eval_dir: Path, examples: int = 6) -> str:
    """The evaluation table (policies, reward model, lengths), its plots, and example answers side by side."""
    e = html.escape
    results_file = eval_dir / "results.json"
    if not results_file.exists():
        return ""
    report = EvalReport.read(results_file)
    results = report.results
    if not results:
        return ""
    names = list(results[0].adherence)
    rm = report.reward_model
    scored = rm is not None and any(r.reward for r in results)
    # a file written before the baseline was recorded: the first model is the one the others were compared with
    baseline = report.baseline.label if report.baseline else results[0].label
    out = [f"<h2>Evaluation: Policy adherence{' and reward-model scores' if scored else ''} on "
           f"{len(results[0].answers)} held-out prompts</h2>"]
    if scored:
        out.append(f"<p>Judged by the policy checks and the reward model <code>{e(str(rm.model))}</code>; "
                   f"win rates and P(better) are against <b>{e(baseline)}</b>, prompt by prompt. "
                   f"Correlation of RM score and answer length over all answers: "
                   f"r = {_num(rm.length_corr_tokens, '+.2f')}.</p>")
    else:
        out.append("<p>Judged by the policy checks (no reward model: <code>evaluation.reward_model</code> is off "
                   "or the pipeline has no rm phase).</p>")
    head = [*(f"adherence: {n}" for n in names)]
    if scored:
        head += ["RM mean score", f"win rate vs {baseline}", f"mean P(better than {baseline})"]
    head += ["mean length (tokens)", f"Δ tokens vs {baseline}"]
    head += ["corr(RM score, length)"] if scored else []
    head += ["unfinished"]
    out.append('<table id="evaluation"><tr><th>model</th>' + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
    for r in results:
        vs = r.vs_baseline or VsBaseline(baseline=baseline)
        pair = vs.rm or RewardComparison()
        reward = r.reward or RewardSummary()
        is_base = r.label == baseline
        cells = [f"{100 * r.adherence[n]:.1f}%" for n in names]
        if scored:
            cells += [_num(reward.mean, "+.3f")]
            cells += ["baseline", "baseline"] if is_base else [_num(pair.win_rate, ".3f"), _num(pair.p_a, ".3f")]
        delta = "baseline" if is_base else _num(vs.length_delta_tokens, "+.1f")
        cells += [f"{r.mean_length_tokens:.1f}", delta]
        if scored:
            cells += [_num(reward.length_corr_tokens, "+.2f")]
        cells += [str(r.unfinished)]
        out.append(f"<tr><td>{e(r.label)}</td>" + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    out.append("</table>")
    if scored:
        out.append("<p><small>Win rate: share of prompts where the reward model scores the answer above the "
                   f"{e(baseline)} model's answer (ties count half). P(better): the mean of sigmoid(r - r<sub>"
                   f"{e(baseline)}</sub>), the Bradley-Terry probability the reward model was trained to predict. "
                   "A reward that grows with length (a high correlation, the points climbing to the right below) "
                   "is the classic reward hack: check the length columns before trusting a win rate. A policy "
                   "trained against this same reward model (PPO) has optimised its judge: its adherence says more "
                   "than its score.</small></p>")
    plots = [_adherence_plot(results, names)] if names else []
    if scored:
        plots.append(_length_plot(results))
    out.append('<div class="plots">' + "".join(plots) + "</div>")
    out.append("<h3>Example answers</h3><table><tr><th>prompt</th>")
    out += [f"<th>{e(r.label)}</th>" for r in results] + ["</tr>"]
    for i in range(min(examples, len(results[0].answers))):
        out.append(f"<tr><td>{e(results[0].answers[i].prompt)}</td>")
        for r in results:
            a = r.answers[i]
            css = "pass" if all(a.checks.values()) else "fail"
            failed = ", ".join(k for k, ok in a.checks.items() if not ok)
            notes = [f"breaks: {e(failed)}"] if failed else []
            if isinstance(a.rm_score, (int, float)):
                notes.append(f"RM score {a.rm_score:+.3f}")
            if a.tokens is not None:
                notes.append(f"{a.tokens} tokens")
            note = f"<br><small>{' · '.join(notes)}</small>"
            out.append(f'<td class="{css}"><div class="answer">{e(a.answer)}</div>{note}</td>')
        out.append("</tr>")
    out.append("</table>")
    return "\n".join(out)
