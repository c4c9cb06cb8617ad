"""`runs/<run>/report.html`: one self-contained file with curves, adherence and example answers.

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
              ("policy adherence of samples", sorted({k for r in rows for k in r if k.startswith("adherence/")}))]
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


def _adherence_plot(results: list[dict[str, Any]], names: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(7, 1.8 * len(names)), 3.4))
    width = 0.8 / max(len(results), 1)
    for i, r in enumerate(results):
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, [100 * r["adherence"][n] for n in names], width=width, label=r["label"])
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(names))], names, rotation=12)
    ax.set_ylabel("% of answers passing")
    ax.set_ylim(0, 100)
    ax.set_title("Policy adherence on held-out prompts")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def write_report(run_dir: Path, cfg: Any, timings: dict[str, float]) -> Path:
    """Write ``run_dir/report.html`` from what the phases left on disk."""
    e = html.escape
    parts = [f"<h1>Run {e(cfg.name)}</h1>", f"<p>Base model: <code>{e(cfg.model)}</code></p>"]
    parts.append("<h2>Phases</h2><table><tr><th>phase</th><th>kind</th><th>wall time</th></tr>")
    for step in cfg.phases:
        marker = run_dir / step.name / "complete.json"
        seconds = json.loads(marker.read_text())["seconds"] if marker.exists() else None
        shown = f"{seconds:.0f} s" if seconds is not None else "not run"
        parts.append(f"<tr><td>{e(step.name)}</td><td>{e(step.kind)}</td><td>{shown}</td></tr>")
    parts.append("</table>")

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
.pass{{background:#e8f6e8}}</style></head><body>{body}</body></html>"""
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _eval_section(eval_dir: Path, examples: int = 6) -> str:
    e = html.escape
    results_file = eval_dir / "results.json"
    if not results_file.exists():
        return ""
    results = json.loads(results_file.read_text())["results"]
    if not results:
        return ""
    names = list(results[0]["adherence"])
    out = ["<h2>Policy adherence (held-out prompts)</h2>", "<table><tr><th>model</th>"]
    out += [f"<th>{e(n)}</th>" for n in names] + ["<th>mean length (tokens)</th><th>unfinished</th></tr>"]
    for r in results:
        cells = "".join(f"<td>{100 * r['adherence'][n]:.1f}%</td>" for n in names)
        out.append(f"<tr><td>{e(r['label'])}</td>{cells}<td>{r['mean_length_tokens']:.0f}</td>"
                   f"<td>{r['unfinished']}</td></tr>")
    out.append("</table>")
    out.append(_adherence_plot(results, names))
    out.append("<h3>Example answers</h3><table><tr><th>prompt</th>")
    out += [f"<th>{e(r['label'])}</th>" for r in results] + ["</tr>"]
    for i in range(min(examples, len(results[0]["answers"]))):
        out.append(f"<tr><td>{e(results[0]['answers'][i]['prompt'])}</td>")
        for r in results:
            a = r["answers"][i]
            css = "pass" if all(a["checks"].values()) else "fail"
            failed = ", ".join(k for k, ok in a["checks"].items() if not ok)
            note = f"<br><small>breaks: {e(failed)}</small>" if failed else ""
            out.append(f'<td class="{css}"><div class="answer">{e(a["answer"])}</div>{note}</td>')
        out.append("</tr>")
    out.append("</table>")
    return "\n".join(out)
