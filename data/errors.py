"""The project's own error for bad trial data.

Every check in the loader reports *where* (file, column, CSV line numbers) and *which rule*
was broken, and how to fix it, so a user can repair an export without reading our code.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def format_lines(lines, limit: int = 8) -> str:
    """CSV line numbers (header is line 1) as a short human list: 'lines 3, 7, 9 (+12 more)'."""
    lines = sorted(int(x) for x in lines)
    if not lines:
        return ""
    shown = ", ".join(str(x) for x in lines[:limit])
    more = f" (+{len(lines) - limit} more)" if len(lines) > limit else ""
    word = "line" if len(lines) == 1 else "lines"
    return f"{word} {shown}{more}"


def location(file: str, column: str | None, lines) -> str:
    """'file, column 'c', lines 3, 7': where a problem or a reported change sits."""
    where = file
    if column:
        where += f", column '{column}'"
    if lines:
        where += f", {format_lines(lines)}"
    return where


@dataclass(frozen=True)
class Problem:
    """One broken rule in one place of a dataset."""

    file: str
    rule: str
    column: str | None = None
    lines: tuple[int, ...] = ()
    fix: str | None = None

    def __str__(self) -> str:
        text = f"{location(self.file, self.column, self.lines)}: {self.rule}"
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


@dataclass
class DatasetError(ValueError):
    """Raised when a dataset folder breaks the documented schema; lists every problem found."""

    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"invalid dataset: {self.problems[0]}"
        body = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid dataset ({len(self.problems)} problems):\n{body}"


class ProblemList:
    """Collects problems during one validation stage, then raises them together."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, file, rule, column=None, lines=(), fix=None) -> None:
        self.items.append(Problem(file, rule, column, tuple(int(x) for x in lines), fix))

    def raise_if_any(self) -> None:
        if self.items:
            raise DatasetError(list(self.items))


@dataclass(frozen=True)
class Change:
    """Something the loader accepted but altered (a row dropped, a week remapped): always reported.

    Changes travel with the loaded Dataset (`ds.attrs["changes"]`, JSON), are printed by fit.py
    and saved in run.json, so no data are altered silently.
    """

    file: str
    action: str  # short kind: dropped_duplicate, missed_visit, withdrew_consent, mapped_week, ...
    detail: str  # one sentence for people
    column: str | None = None
    lines: tuple[int, ...] = ()
    count: int = 0

    def __str__(self) -> str:
        return f"{location(self.file, self.column, self.lines)}: {self.detail}"

    def to_dict(self) -> dict:
        return {"file": self.file, "action": self.action, "detail": self.detail, "column": self.column,
                "lines": list(self.lines), "count": int(self.count), "text": str(self)}
