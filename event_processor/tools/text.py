"""Text the tools print: one-line previews of untrusted text, decoded bodies, counted nouns."""

from __future__ import annotations

import base64
import binascii
import codecs
from collections.abc import Mapping

# Characters of a body shown in previews.
PREVIEW_CHARS = 160


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    """One line, cut at `limit` characters; control and other unprintable characters escaped."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def decoded_preview(body: str, limit: int = PREVIEW_CHARS) -> str | None:
    """The start of a base64 body, decoded, if it is base64 of UTF-8 text (the fleet's format).

    The daemon reads a body the same way (`contract.parse.decode_body`): a body that starts with `{` or
    `[` is JSON as it is; otherwise base64, whitespace ignored (it may be line-wrapped). Only a
    prefix is decoded: a preview never costs a whole 1 MiB body.
    """
    compact = "".join(body[: limit * 2].split())
    compact = compact[: len(compact) - len(compact) % 4]
    if not compact or body.lstrip().startswith(("{", "[")):
        return None
    try:
        raw = base64.b64decode(compact, validate=True)
        # Incremental: a character cut at the end of the prefix is not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=False)
    except (binascii.Error, UnicodeDecodeError):
        return None
    return preview(text, limit) if text else None


def body_preview(body: str, limit: int = PREVIEW_CHARS) -> str:
    """A submission body as a person wants to see it: decoded if base64 (and labelled so),
    else as it is; cut and escaped either way."""
    text = decoded_preview(body, limit)
    return preview(body, limit) if text is None else f"(base64-decoded) {text}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def counts(by_name: Mapping[str, int]) -> str:
    """`a: 2, b: 1`: most first, then by name."""
    return ", ".join(f"{k}: {n}" for k, n in sorted(by_name.items(), key=lambda i: (-i[1], i[0])))
