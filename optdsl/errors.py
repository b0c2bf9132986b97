"""Spec errors: every problem found in a `.opt` file is reported as `path:line:col: error: ...`."""

from __future__ import annotations

from dataclasses import dataclass


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
        if self.source:
            return self
        return SpecError(self.message, self.position, path, source)

    def format(self) -> str:
        if self.position is None:
            return f"{self.path}: error: {self.message}"
        line, column = self.position.line, self.position.column
        text = f"{self.path}:{line}:{column}: error: {self.message}"
        lines = self.source.splitlines()
        if 1 <= line <= len(lines):
            source_line = lines[line - 1]
            # Very long lines are cut around the caret so the message stays readable.
            start = max(0, column - 60)
            excerpt = source_line[start:start + 120].replace("\t", " ")
            caret = " " * (column - 1 - start) + "^"
            text += f"\n    {excerpt}\n    {caret}"
        return text

    def __str__(self) -> str:
        return self.format()
