"""A decision trace as Markdown: what a clinician opens from the card and a compliance officer reviews.

It renders the stored trace dict (``Analysis.trace``: version, model identity, prompt digest, evidence,
images, steps, report) without needing anything else, so the viewer, the review app and an export all show
the same text. Every step appears in order with its time since the first step; the model's raw answers and
tool results are shown as written, in fences that their own content cannot close.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

MAX_BLOCK_CHARS = 2000


def _cell(value: Any) -> str:
    """A table cell: one line, pipes escaped."""
    return " ".join(str(value if value is not None else "").split()).replace("|", "\\|")


def _short(digest: Any, length: int = 16) -> str:
    return f"`{str(digest)[:length]}`" if digest else "-"


def _fenced(text: str, language: str = "") -> str:
    """A fenced block longer than any backtick run inside ``text``, cut at MAX_BLOCK_CHARS."""
    if len(text) > MAX_BLOCK_CHARS:
        text = text[:MAX_BLOCK_CHARS] + f"\n... [{len(text) - MAX_BLOCK_CHARS} more characters]"
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]] | list[Any]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _seconds(detail: Mapping[str, Any]) -> str:
    timings = detail.get("timings") or {}
    total = timings.get("total_s")
    return f"{float(total) * 1000:.0f} ms" if total is not None else "-"


def _model_section(model: Mapping[str, Any], prompt_sha256: Any) -> list[str]:
    lines = ["## Model", ""]
    if model.get("untrained"):
        lines += ["> **Untrained test model**: its output is random and means nothing clinically.", ""]
    rows = [
        (key, model.get(key))
        for key in ("family", "architecture", "model_type", "dtype", "attention", "device", "parameter_count")
    ]
    rows += [("weights sha256", model.get("weights_sha256")), ("prompt sha256", prompt_sha256)]
    return lines + _table(("", "value"), rows) + [""]


def _evidence_section(
    evidence: Sequence[Mapping[str, Any]], images: Sequence[Mapping[str, Any]]
) -> list[str]:
    lines = [f"## Evidence in the context ({len(evidence)})", ""]
    if evidence:
        rows = [
            (
                f"`{e.get('id')}`",
                e.get("resource_type"),
                e.get("version_id"),
                _short(e.get("sha256")),
                e.get("display"),
            )
            for e in evidence
        ]
        lines += _table(("id", "type", "version", "sha256", "display"), rows)
    else:
        lines.append("None.")
    lines += ["", f"## Images ({len(images)})", ""]
    if images:
        image_rows = [
            (f"`img:{i.get('sop_uid')}:{i.get('frame', 0)}`", i.get("series_uid"), i.get("frame", 0))
            for i in images
        ]
        lines += _table(("citation", "series", "frame"), image_rows)
    else:
        lines.append("None.")
    return [*lines, ""]


def _prompt(detail: Mapping[str, Any]) -> list[str]:
    lines = [
        f"Context: {len(detail.get('evidence_ids') or [])} evidence items, "
        f"{len(detail.get('images') or [])} images."
    ]
    if detail.get("tools"):
        lines.append("Tools offered: " + ", ".join(f"`{t}`" for t in detail["tools"]) + ".")
    if detail.get("budgets"):
        lines.append("Budgets: " + ", ".join(f"{k} {v}" for k, v in detail["budgets"].items()) + ".")
    if detail.get("prompt_sha256"):
        lines.append(f"Prompt sha256 {_short(detail['prompt_sha256'], 64)}.")
    return lines


def _generation(detail: Mapping[str, Any]) -> list[str]:
    how = "constrained" if detail.get("constrained") else "unconstrained"
    end = "stopped" if detail.get("stopped") else "cut off at the token limit"
    lines = [
        f"{detail.get('token_count')} tokens ({how}, {end}) after a {detail.get('prompt_token_count')}-token "
        f"prompt, {_seconds(detail)}."
    ]
    if detail.get("prompt_sha256"):
        lines.append(
            f"Prompt sha256 {_short(detail['prompt_sha256'], 64)}; images: {len(detail.get('images') or [])}."
        )
    return [*lines, "", _fenced(str(detail.get("text", "")), "json")]


def _tool_call(detail: Mapping[str, Any]) -> list[str]:
    status = "ok" if detail.get("ok") else f"refused: **{detail.get('error_kind')}** — {detail.get('error')}"
    lines = [
        f"`{detail.get('tool')}` — {status} ({float(detail.get('elapsed_s') or 0) * 1000:.0f} ms).",
        "",
        "Arguments:",
        "",
        _fenced(json.dumps(detail.get("arguments") or {}, sort_keys=True), "json"),
    ]
    evidence = detail.get("evidence") or []
    if evidence:
        lines += [
            "",
            "Evidence read: "
            + ", ".join(f"`{e.get('id')}` ({_short(e.get('sha256'), 12)})" for e in evidence),
        ]
    if detail.get("images"):
        lines += ["", "Images: " + ", ".join(f"`{i}`" for i in detail["images"])]
    if detail.get("ok"):
        lines += ["", "Result:", "", _fenced(str(detail.get("result", "")), "json")]
    return lines


def _verification(detail: Mapping[str, Any]) -> list[str]:
    verdicts = detail.get("verdicts") or []
    rows = [
        (
            f"{v.get('section')} {int(v.get('index', 0)) + 1}",
            "verified" if v.get("supported") else "rejected",
            v.get("reason") or "",
            (v.get("statement") or {}).get("text", ""),
            ", ".join((v.get("statement") or {}).get("citations") or []),
        )
        for v in verdicts
    ]
    supported = sum(1 for v in verdicts if v.get("supported"))
    lines = [f"{supported} of {len(verdicts)} statements verified."]
    return lines + (
        ["", *_table(("statement", "verdict", "reason", "text", "citations"), rows)] if rows else []
    )


def _report(detail: Mapping[str, Any]) -> list[str]:
    report = detail.get("report") or {}
    return [
        f"{len(report.get('findings') or [])} findings, "
        f"{len(report.get('impression') or [])} impression statements."
    ]


def _citations(detail: Mapping[str, Any]) -> list[str]:
    dropped = detail.get("dropped") or []
    line = f"{len(detail.get('allowed') or [])} ids citable."
    return [line + (" Dropped as unknown: " + ", ".join(f"`{d}`" for d in dropped) + "." if dropped else "")]


RENDERERS: dict[str, tuple[str, Callable[[Mapping[str, Any]], list[str]]]] = {
    "prompt": ("Context assembled", _prompt),
    "agent_step": ("Model step", _generation),
    "tool_call": ("Tool call", _tool_call),
    "action_error": (
        "Unusable answer",
        lambda d: [f"{d.get('error')} (returned to the model as the result)."],
    ),
    "agent_stop": (
        "Tool phase ended",
        lambda d: [
            f"Reason: **{d.get('reason')}**; {d.get('steps')} steps, "
            f"{d.get('tool_calls')} calls, {d.get('tokens')} tokens."
        ],
    ),
    "report_prompt": ("Report prompt", _prompt),
    "generation": ("Report generated", _generation),
    "parse_error": (
        "Report not parseable",
        lambda d: [f"{d.get('error')}; nothing of it is shown as a statement."],
    ),
    "citations": ("Citations checked", _citations),
    "report": ("Draft", _report),
    "verification": ("Verification", _verification),
}


def _at(step: Mapping[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(step.get("at")))
    except ValueError:
        return None


def render_trace_markdown(trace: Mapping[str, Any]) -> str:
    """The whole trace as Markdown: header, model and digests, context evidence, then every step in order."""
    steps: Sequence[Mapping[str, Any]] = trace.get("steps") or []
    title = f"# Decision trace {trace.get('analysis_id') or ''}".rstrip()
    lines = [title, "", f"Trace format version {trace.get('version', '?')}."]
    if trace.get("elapsed_s") is not None:
        lines[-1] += f" Analysis took {float(trace['elapsed_s']):.2f} s."
    lines.append("")
    model: Mapping[str, Any] = (
        trace.get("model") or next((s.get("detail") for s in steps if s.get("kind") == "model"), {}) or {}
    )
    lines += _model_section(model, trace.get("prompt_sha256"))
    lines += _evidence_section(trace.get("evidence") or [], trace.get("images") or [])
    lines += [f"## Steps ({len(steps)})", ""]
    start = next((t for t in map(_at, steps) if t is not None), None)
    for number, step in enumerate(steps, start=1):
        kind = str(step.get("kind"))
        if kind == "model":
            continue
        title_text, render = RENDERERS.get(
            kind, (kind, lambda d: [_fenced(json.dumps(d, sort_keys=True, default=str), "json")])
        )
        at = _at(step)
        offset = f" (+{(at - start).total_seconds():.3f} s)" if at and start else ""
        index = (step.get("detail") or {}).get("step")
        suffix = (
            f" {int(index) + 1}" if isinstance(index, int) and kind in ("agent_step", "tool_call") else ""
        )
        lines += [f"### {number}. {title_text}{suffix}{offset}", ""]
        lines += render(step.get("detail") or {})
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
