"""A phase's privacy scan (recipe key ``data.pii``): its data files are scanned for personal data before it trains.

``report`` (the default) finds and reports only: a warning per file with findings, and
``<output_dir>/data/pii.json`` (what the pipeline report shows). ``mask`` and ``drop`` write a cleaned copy of each
file with findings beside it, ``<output_dir>/data/<field>.pii-<action><suffix>``, and the phase trains on that
copy (:func:`scan_phase_data` returns the overrides that point it there); ``off`` scans nothing.

The scan reads what the phase reads: a feedback store named as data is scanned as the file it was exported to.
A file already scanned (same content, same action) is not scanned again: ``pii.json`` keeps each file's content
hash, and a cleaned copy this scan wrote, which the processes of a multi-process launch are handed, is taken as
scanned. Findings name the file, line and field, with the personal data masked (:mod:`alignment.data.pii`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignment.data.fingerprint import config_sources, source_digest
from alignment.errors import AlignError
from alignment.files import atomic_write
from alignment.log import get_logger

_LOG = get_logger("data")

FIELDS = ("data.train", "data.validation", "data.test", "data.preferred")
REPORT_FILE = "pii.json"  # under <output_dir>/data/
SHOWN = 20  # findings kept per file in pii.json (the counts cover all of them)
PII_ACTIONS = ("report", "mask", "drop", "off")


def report_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / "data" / REPORT_FILE


def read_report(output_dir: str | Path) -> dict[str, Any] | None:
    """The phase's ``pii.json``, or None when it has none (scan off, or written before the scan existed)."""
    path = report_path(output_dir)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cleaned_from(cfg: Any, dotted: str) -> str | None:
    """The file that field ``dotted`` of a phase's config was cleaned from, when it now names the copy this scan
    wrote (``mask`` or ``drop``); None when it reads its file as given."""
    spec = config_sources(cfg, (dotted,)).get(dotted)
    report = read_report(cfg.output_dir) if spec else None
    for entry in (report or {}).get("files", []):
        if entry["field"] == dotted and entry.get("out") and Path(entry["out"]).resolve() == Path(spec).resolve():
            return entry["file"]
    return None


def _copy_path(output_dir: Path, dotted: str, spec: str, action: str) -> Path:
    """Where the cleaned copy of field ``dotted``'s file goes: its own format when the writer has it (a CSV's
    message cells stay JSON text, as its loader reads them), else JSONL (a saved dataset folder)."""
    from alignment.data.pii import OUTPUT_SUFFIXES

    suffix = Path(spec).suffix.lower()
    suffix = suffix if Path(spec).is_file() and suffix in OUTPUT_SUFFIXES else ".jsonl"
    return output_dir / "data" / f"{dotted.split('.', 1)[1]}.pii-{action}{suffix}"


def scan_phase_data(kind: str, cfg: Any) -> dict[str, str]:
    """Scan the data files phase ``kind``'s config names (see the module docstring); returns ``{dotted field:
    cleaned copy}`` for the files ``mask``/``drop`` replaced (empty for ``report``, ``off``, or nothing found)."""
    from alignment.data.pii import count_line, scan_file

    action = getattr(cfg.data, "pii", "off")
    if action == "off":
        return {}
    if action not in PII_ACTIONS:
        raise AlignError(f"must be one of {', '.join(PII_ACTIONS)}, not {action!r}", field="data.pii")
    output_dir = Path(cfg.output_dir)
    previous = {f["field"]: f for f in (read_report(output_dir) or {}).get("files", [])}
    written_here = {str(Path(f["out"]).resolve()) for f in previous.values() if f.get("out")}
    files, overrides = [], {}
    for dotted, spec in config_sources(cfg, FIELDS).items():
        if str(Path(spec).resolve()) in written_here:
            # a launched process handed the cleaned copy: its scan is the launcher's
            entry = next(f for f in previous.values() if f.get("out") and Path(f["out"]).resolve() ==
                         Path(spec).resolve())
            files.append(entry)
            continue
        digest = source_digest(spec)
        if digest == "missing":
            continue  # the phase's own loader names the missing file
        old = previous.get(dotted)
        if old and old.get("file") == spec and old.get("digest") == digest and old.get("action") == action \
                and (not old.get("out") or Path(old["out"]).exists()):
            entry = old
        else:
            out = _copy_path(output_dir, dotted, spec, action) if action != "report" else None
            scan = scan_file(spec, "report" if out is None else action, out)
            entry = {"field": dotted, "file": spec, "digest": digest, "action": action, "rows": scan.rows,
                     "rows_with_findings": scan.rows_with_findings, "counts": scan.counts(),
                     "findings": [{"kind": f.kind, "line": f.line, "field": f.field, "shown": f.shown}
                                  for f in scan.findings[:SHOWN]],
                     "out": None, "rows_written": None}
            if out is not None:
                if scan.findings:
                    entry.update(out=str(out), rows_written=scan.rows_written, pairs_collapsed=scan.pairs_collapsed)
                else:
                    out.unlink(missing_ok=True)  # nothing to clean: the phase reads the original
            _log_entry(kind, entry, count_line)
        files.append(entry)
        if entry.get("out"):
            overrides[dotted] = entry["out"]
    report = {"action": action, "files": files}
    path = report_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return overrides


def _log_entry(kind: str, entry: dict[str, Any], count_line: Any) -> None:
    if not entry["counts"]:
        _LOG.info(f"[{kind}] data.pii: no personal data found in {entry['file']} ({entry['rows']} records)")
        return
    first = entry["findings"][0]
    where = f"first at line {first['line']}, field '{first['field']}': {first['shown']}"
    done = {"report": "training on it as it is (data.pii: mask or drop cleans it)",
            "mask": f"training on a masked copy, {entry['out']}" + (
                f" ({entry['pairs_collapsed']} pairs left out: masking made chosen and rejected the same)"
                if entry.get("pairs_collapsed") else ""),
            "drop": f"training on a copy without those records ({entry['rows_written']} of {entry['rows']} "
                    f"kept), {entry['out']}"}[entry["action"]]
    _LOG.warning(f"[{kind}] data.pii: personal data in {entry['file']}: {count_line(entry['counts'])} in "
                 f"{entry['rows_with_findings']} of {entry['rows']} records ({where}); {done}")


def summary_line(phase: str, report: dict[str, Any]) -> str:
    """One line for the end of a pipeline run: what the phase's scan found and did."""
    from alignment.data.pii import count_line

    parts = []
    for f in report.get("files", []):
        found = count_line(f.get("counts", {}))
        extra = f" -> {f['out']}" if f.get("out") else ""
        parts.append(f"{f['field']} {f['rows_with_findings']}/{f['rows']} records ({found}){extra}")
    return f"privacy: {phase} (data.pii: {report.get('action')}): " + ("; ".join(parts) or "no data files")
