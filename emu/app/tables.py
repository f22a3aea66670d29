"""Plain-text tables that never cut a number.

A table is a list of headers and rows of strings. On a terminal of a given
width, a table too wide first wraps its headers at spaces (each column then
needs only its longest word or cell); if it is still too wide, it is printed
as several tables one under the other, each repeating the first column
(the names); names are shortened (a '~' where text was cut) only when even
one column beside them would not fit. Numbers are never shortened: a cell is only cut in the first
column, and only when it is not a number. Without a width (output to a
pipe or a file) the table is as wide as its content: one header line, no
padding after the last column.
"""
from __future__ import annotations

import re
import shutil
import sys

GAP = 2             # spaces between columns
MIN_NAME = 8        # a shortened first column keeps at least this many characters
_NUMBER = re.compile(r"^[-+]?[\d.,]+(e[-+]?\d+)?%?$|^-$")


def width_of(stream=None) -> int | None:
    """The width to fit: the terminal's (COLUMNS when set) if stream is a
    terminal, else None (no limit)."""
    stream = stream or sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        return None
    return shutil.get_terminal_size((80, 24)).columns


def _wrap(text: str, width: int) -> list[str]:
    """text on lines of at most width characters, broken at spaces (a word
    longer than width stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def _shorten(text: str, width: int) -> str:
    if len(text) <= width or _NUMBER.match(text):
        return text
    return text[:width - 1] + "~"


def _render(headers, rows, right, widths, wrap: bool) -> list[str]:
    heads = [_wrap(h, w) if wrap else [h] for h, w in zip(headers, widths)]
    depth = max(len(h) for h in heads)
    heads = [[""] * (depth - len(h)) + h for h in heads]        # bottom-aligned header lines

    def line(cells):
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return (" " * GAP).join(parts).rstrip()
    out = [line([h[i] for h in heads]) for i in range(depth)]
    out.append(line(["-" * w for w in widths]))
    out += [line(r) for r in rows]
    return out


def format_table(headers, rows, *, width: int | None = None, right=None) -> str:
    """The table as text (see the module docstring). right[i] says whether
    column i is right-aligned (default: the columns of numbers and '-')."""
    headers = [str(h) for h in headers]
    rows = [[str(c) for c in r] for r in rows]
    if right is None:
        right = [bool(rows) and all(_NUMBER.match(r[i]) for r in rows) for i in range(len(headers))]
    right = list(right)

    def natural(col, wrap):
        head = max((len(w) for w in headers[col].split()), default=0) if wrap else len(headers[col])
        return max([head, *(len(r[col]) for r in rows)])

    def total(widths):
        return sum(widths) + GAP * (len(widths) - 1)

    widths = [natural(i, False) for i in range(len(headers))]
    if width is None or total(widths) <= width:
        return "\n".join(_render(headers, rows, right, widths, False))
    widths = [natural(i, True) for i in range(len(headers))]
    if total(widths) <= width or len(headers) <= 1:
        return "\n".join(_render(headers, rows, right, widths, True))
    # shorten the names in the first column only as far as the widest column beside it needs
    need = width - GAP - max(widths[1:])
    if widths[0] > need:
        first = max(need, MIN_NAME, max((len(w) for w in headers[0].split()), default=0))
        rows = [[_shorten(r[0], first), *r[1:]] for r in rows]
        widths[0] = max([len(r[0]) for r in rows] + [max((len(w) for w in headers[0].split()), default=0)])
    if total(widths) <= width:
        return "\n".join(_render(headers, rows, right, widths, True))
    # several tables, each with the first column
    blocks, cols = [], list(range(1, len(headers)))
    while cols:
        take = [0]
        for c in cols:
            if len(take) > 1 and total([widths[i] for i in take + [c]]) > width:
                break
            take.append(c)
        cols = cols[len(take) - 1:]
        blocks.append("\n".join(_render([headers[i] for i in take], [[r[i] for i in take] for r in rows],
                                        [right[i] for i in take], [widths[i] for i in take], True)))
    return "\n\n".join(blocks)

