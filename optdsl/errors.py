"""Spec errors: every problem found in a `.opt` file is reported as

    path:line:column: error: message
        the source line
        ^

Lines and columns are 1-based and count characters (a tab is one column). In the excerpt, tabs
are expanded to 4-column stops and control characters are shown as their Unicode control
pictures, with the caret placed to match.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

EXCERPT_WIDTH = 100  # very long lines are cut around the caret


@dataclass(frozen=True)
class Position:
    """A 1-based line and column in a spec file."""

    line: int
    column: int


class SpecError(Exception):
    """A problem in a spec, located in its source text."""

    def __init__(self, message: str, position: Position | None = None, path: str = "<spec>", source: str = ""):
        super().__init__(message)
        self.message = message
        self.position = position
        self.path = path
        self.source = source

    def located(self, path: str, source: str) -> "SpecError":
        """Attach the file this error belongs to (errors are raised before the path is known)."""
        if self.source or self.path != "<spec>":
            return self
        return SpecError(self.message, self.position, path, source)

    def format(self) -> str:
        if self.position is None:
            return f"{self.path}: error: {self.message}"
        line, column = self.position.line, self.position.column
        text = f"{self.path}:{line}:{column}: error: {self.message}"
        lines = self.source.split("\n")
        if 1 <= line <= len(lines):  # (an empty file has one empty line)
            excerpt, offset = render_line(lines[line - 1], column)
            text += f"\n    {excerpt}\n    {' ' * offset}^"
        return text

    def __str__(self) -> str:
        return self.format()


def _cell(ch: str, at: int) -> str:
    """How one source character is displayed, `at` display columns into the line."""
    if ch == "\t":
        return " " * (4 - at % 4)
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)  # control pictures: ␀ ␁ ...
    if code == 0x7F:
        return "\u2421"
    if unicodedata.category(ch) in ("Zl", "Zp", "Cf", "Cs", "Co", "Cn"):
        return "\ufffd"
    return ch


def _width(text: str) -> int:
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def render_line(line: str, column: int, width: int = EXCERPT_WIDTH) -> tuple[str, int]:
    """The displayed excerpt of `line` and the display offset of the caret for `column`."""
    cells, widths, at = [], [], 0
    for ch in line:
        cell = _cell(ch, at)
        cells.append(cell)
        widths.append(_width(cell))
        at += widths[-1]
    index = min(max(column - 1, 0), len(cells))
    start, before = index, 0
    while start > 0 and before + widths[start - 1] <= width // 2:
        start -= 1
        before += widths[start]
    end, shown = start, 0
    while end < len(cells) and shown + widths[end] <= width:
        shown += widths[end]
        end += 1
    prefix = "..." if start > 0 else ""
    suffix = "..." if end < len(cells) else ""
    excerpt = prefix + "".join(cells[start:end]) + suffix
    return excerpt, len(prefix) + sum(widths[start:index])
