"""Text from outside (an upstream's answer) made safe for a terminal: one cell of a table,
or JSON.

An upstream's answer is attacker-controlled: an ANSI escape sequence printed raw
can clear the screen, recolour or rewrite earlier lines, or set the window
title; a bidi override can make the line read otherwise than it is. So control
and format characters are shown escaped, the way Python writes them.

>>> one_line("Service\\r\\n  Unavailable\\x1b[2J\\u202e", 40)
'Service Unavailable\\\\x1b[2J\\\\u202e'
>>> one_line("x" * 30, 10)
'xxxxxxxxx…'
>>> terminal_json('["\\x9b2J"]')  # JSON leaves C1 controls raw: escape them the JSON way
'["\\\\u009b2J"]'
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["one_line", "terminal_json", "width_of"]

#: Unicode categories shown escaped: controls (C0, DEL, C1) and format characters
#: (bidi overrides, zero-width joiners), and lone surrogates.
_ESCAPED = frozenset({"Cc", "Cf", "Cs"})


#: What a JSON writer may leave raw that is not plain ASCII (orjson escapes C0 itself).
_NOT_ASCII = re.compile(r"[^\x20-\x7e\n]")


def _columns(ch: str) -> int:
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def width_of(text: str) -> int:
    """Terminal columns ``text`` takes (wide East Asian characters take two)."""
    return sum(_columns(ch) for ch in text)


def one_line(text: str, width: int) -> str:
    """``text`` on one line of at most ``width`` columns: each run of whitespace (line
    breaks included) becomes one space, control and format characters are escaped
    (``\\x1b``, ``\\u202e``), and a longer text is cut with ``…``."""
    parts: list[str] = []
    space = False
    for ch in text.strip():
        if ch.isspace():
            space = True
            continue
        if space:
            parts.append(" ")
            space = False
        if unicodedata.category(ch) in _ESCAPED:
            parts.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            parts.append(ch)
    out: list[str] = []
    used = 0
    for part in parts:
        cols = width_of(part)
        if used + cols > width:
            while out and used + 1 > width:  # room for the ellipsis
                used -= width_of(out.pop())
            return "".join(out) + "…"
        out.append(part)
        used += cols
    return "".join(out)


def terminal_json(text: str) -> str:
    """JSON text with the control and format characters JSON allows raw (DEL, C1, bidi
    overrides) written as ``\\uXXXX`` escapes: the same document once parsed."""

    def escape(match: re.Match[str]) -> str:
        ch = match.group()
        if unicodedata.category(ch) not in _ESCAPED:
            return ch
        units = ch.encode("utf-16-be")  # a surrogate pair beyond the BMP, as JSON wants
        return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))

    return _NOT_ASCII.sub(escape, text)
