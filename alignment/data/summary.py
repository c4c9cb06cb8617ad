"""`align data validate FILE --kind K`: the errors, or a summary worth reading before training.

The summary gives rows, the recognised format, token-length percentiles with the model's tokenizer
(the chat template applied, as training sees it) and duplicate counts, so a truncation or a
de-duplication surprise shows up before a run, not after.
"""

from __future__ import annotations

from typing import Any

from alignment.data.dedup import count_duplicates
from alignment.data.formats import load_dataset_file, to_conversation
from alignment.data.io import LINE_COLUMN


def _texts(record: dict[str, Any], kind: str) -> list[list[dict[str, str]] | str]:
    """The sequences training would tokenize for one normalised record."""
    if kind == "sft":
        return [record["messages"]] if "messages" in record else [record["text"]]
    if kind == "preference":
        return [record["prompt"] + record["chosen"], record["prompt"] + record["rejected"]]
    if kind == "ranked":
        return [record["prompt"] + r for r in record["responses"]]
    if kind == "unpaired":
        return [record["prompt"] + record["completion"]]
    return [record["prompt"]]


def percentiles(values: list[int], qs: tuple[int, ...] = (50, 90, 95, 99, 100)) -> dict[int, int]:
    """Nearest-rank percentiles (no interpolation: every value shown is a real length)."""
    ordered = sorted(values)
    out = {}
    for q in qs:
        rank = max(1, -(-q * len(ordered) // 100))  # ceil(q/100 * n)
        out[q] = ordered[rank - 1]
    return out


def summarise(path: str, kind: str, model: str | None, trust_remote_code: bool = False) -> dict[str, Any]:
    ds, info = load_dataset_file(path, kind)
    summary: dict[str, Any] = {
        "file": path, "rows": len(ds), "kind": kind, "variant": info.variant,
        "columns": [c for c in ds.column_names if c != LINE_COLUMN],
        "exact_duplicates": count_duplicates(ds, kind, info.variant, "exact"),
        "whitespace_duplicates": count_duplicates(ds, kind, info.variant, "whitespace"),
    }
    if model:
        from alignment.config import ModelOptions
        from alignment.modeling import load_tokenizer

        tokenizer = load_tokenizer(model, ModelOptions(trust_remote_code=trust_remote_code))
        lengths = []
        for record in ds:
            for seq in _texts(to_conversation(record, kind, info.variant), kind):
                if isinstance(seq, str):
                    lengths.append(len(tokenizer(seq, add_special_tokens=False)["input_ids"]))
                else:
                    add_prompt = seq[-1]["role"] != "assistant"
                    text = tokenizer.apply_chat_template(seq, tokenize=False, add_generation_prompt=add_prompt)
                    lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        summary["token_lengths"] = percentiles(lengths) if lengths else {}
    return summary


def validate_command(path: str, kind: str, model: str | None, trust_remote_code: bool = False, *,
                     pii: str | None = None, out: str | None = None, pii_fail: bool = False,
                     phone_regions: str | None = None) -> int:
    """Validate and summarise; with ``pii`` (report / mask / drop) scan for personal data too (see
    :mod:`alignment.data.pii`). Exit status 0, or 1 with ``pii_fail`` when personal data was found."""
    if pii is None and (out is not None or pii_fail or phone_regions is not None):
        from alignment.errors import AlignError

        raise AlignError("--out, --pii-fail and --phone-regions go with --pii (report, mask or drop)")
    if pii is not None:  # a mistake in the options fails before the tokenizer loads, not after
        from alignment.data.pii import check_action

        check_action(pii, out, path)
    regions = _regions(phone_regions)
    s = summarise(path, kind, model, trust_remote_code)
    print(f"{s['file']}: OK, {s['rows']} rows, {s['kind']} data ({s['variant']})")
    print(f"  columns: {', '.join(s['columns'])}")
    print(f"  duplicates: {s['exact_duplicates']} exact, {s['whitespace_duplicates']} up to whitespace")
    if s.get("token_lengths"):
        p = s["token_lengths"]
        shown = ", ".join(f"p{q} {v}" for q, v in p.items() if q != 100)
        print(f"  tokens per sequence ({model}): {shown}, max {p[100]}")
    if pii is None:
        return 0
    lines, found = _pii(path, pii, out, regions)
    for line in lines:
        print(line)
    return 1 if pii_fail and found else 0


def _regions(phone_regions: str | None) -> tuple[str, ...]:
    """``--phone-regions US,GB`` -> ("US", "GB"), each checked against libphonenumber's regions."""
    from alignment.data.pii import DEFAULT_PHONE_REGIONS

    if phone_regions is None:
        return DEFAULT_PHONE_REGIONS
    from alignment.errors import AlignError

    regions = tuple(r.strip().upper() for r in phone_regions.split(",") if r.strip())
    try:
        import phonenumbers
    except ImportError:
        return regions  # the scan itself says what is missing
    unknown = [r for r in regions if r not in phonenumbers.SUPPORTED_REGIONS]
    if unknown or not regions:
        raise AlignError(f"--phone-regions takes two-letter region codes (US, GB, DE, ...), comma-separated; "
                         f"not {', '.join(unknown) or repr(phone_regions)}")
    return regions


def _pii(path: str, action: str, out: str | None, regions: tuple[str, ...]) -> tuple[list[str], bool]:
    """The personal-data scan's lines (every finding, masked; what was written), and whether anything was found."""
    from alignment.data.pii import LABELS, count_line, scan_file

    result = scan_file(path, action, out, phone_regions=regions)
    if not result.findings:
        lines = [f"  personal data: none found ({', '.join(LABELS.values())}; names are not detected)"]
    else:
        lines = [f"  personal data: {len(result.findings)} finding(s) in {result.rows_with_findings} of {result.rows} "
                 f"rows ({count_line(result.counts())})", *(f"    {finding}" for finding in result.findings)]
    if action == "mask":
        lines.append(f"  wrote {out}: {result.rows_written} rows, {len(result.findings)} finding(s) replaced by "
                     "placeholders (<EMAIL>, <PHONE>, ...)" + (
                         f"; {result.pairs_collapsed} pair(s) left out, masking made chosen and rejected the same"
                         if result.pairs_collapsed else ""))
    elif action == "drop":
        lines.append(f"  wrote {out}: {result.rows_written} rows ({result.rows_with_findings} with personal data "
                     "left out)")
    return lines, bool(result.findings)
