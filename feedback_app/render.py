"""HTML for the annotate page: model answers and guidelines as sanitised Markdown, prompts as plain text.

Answers are written in Markdown (headings, lists, tables, code), and an expert judges them better when
they read as the end user would see them. The text comes from a model or an import, so it is hostile
until proven otherwise: raw HTML is never passed through (markdown-it escapes it as text), images are
not rendered at all (a remote image is a tracking pixel, and it loads without a click), and links keep
only the targets markdown-it's ``validateLink`` accepts (no ``javascript:``, ``vbscript:``, ``file:``)
and no ``data:`` at all; they open in a new tab and carry no referrer.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Sequence
from typing import Any

from markdown_it import MarkdownIt

LINK_REL = "noopener noreferrer nofollow"


@functools.cache
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"]).disable("image")
    default_validate = md.validateLink

    def validate_link(url: str) -> bool:
        # markdown-it lets data:image/... through for images; with images off, no data: URL is a link.
        return default_validate(url) and not url.strip().lower().startswith("data:")

    md.validateLink = validate_link  # type: ignore[method-assign]

    def link_open(self: Any, tokens: Sequence[Any], idx: int, options: Any, env: Any) -> str:
        tokens[idx].attrSet("rel", LINK_REL)
        tokens[idx].attrSet("target", "_blank")
        return self.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


def render_markdown(text: str) -> str:
    """``text`` as sanitised HTML: CommonMark with tables and strikethrough, no raw HTML, no images."""
    return _markdown().render(text or "")


def render_prompt(prompt: list[dict[str, str]]) -> str:
    """The conversation so far, as escaped plain text: what the user typed, exactly."""
    parts = [f'<div class="role">{html.escape(m["role"])}</div><div class="msg">{html.escape(m["content"])}</div>'
             for m in prompt]
    return '<div class="prompt">' + "".join(parts) + "</div>"


def render_response(letter: str, text: str) -> str:
    """One candidate answer, rendered as Markdown in a box that scrolls on its own."""
    return (f'<div class="resp-title">Response {letter}</div>'
            f'<div class="msg md answer">{render_markdown(text)}</div>')


def render_guidelines(text: str) -> str:
    return f'<div class="md guidelines-text">{render_markdown(text)}</div>' if text else ""
