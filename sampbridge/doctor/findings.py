"""The doctor's findings: one line each, with a level and a fix."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["GUIDE", "LEVELS", "Finding", "exit_status", "format_finding", "report"]

#: The levels, mildest first.
LEVELS = ("OK", "INFO", "WARN", "FAIL")
#: Where each finding is explained.
GUIDE = 'docs/user-guide.md, "When a click does nothing"'


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report.

    Attributes
    ----------
    level : {"OK", "INFO", "WARN", "FAIL"}
        How bad it is.
    topic : str
        What was checked (``hub``, ``DS9``, ``cone service``, ``results folder``).
    text : str
        What was found, one sentence.
    fix : str
        What to do about it (empty for ``OK``).
    """

    level: str
    topic: str
    text: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, not {self.level!r}")


def format_finding(f: Finding) -> str:
    """Return the finding's line: ``WARN  results folder: ... -> fix: ...``.

    Parameters
    ----------
    f : Finding
        The finding.
    """
    line = f"{f.level:<4}  {f.topic}: {f.text}"
    return f"{line} -> {f.fix}" if f.fix else line


def exit_status(findings: Iterable[Finding]) -> int:
    """Return 0 when no finding is a ``WARN`` or ``FAIL``, else 1."""
    return 1 if any(f.level in ("WARN", "FAIL") for f in findings) else 0


def report(findings: list[Finding]) -> list[str]:
    """Return the lines to print: one per finding, then a summary line.

    Parameters
    ----------
    findings : list of Finding
        In the order checked.
    """
    lines = [format_finding(f) for f in findings]
    bad = [f for f in findings if f.level in ("WARN", "FAIL")]
    if not bad:
        lines.append(f"all {len(findings)} checks passed")
    else:
        fails = sum(f.level == "FAIL" for f in bad)
        lines.append(f"{fails} FAIL, {len(bad) - fails} WARN of {len(findings)} checks; "
                     f"each is explained in {GUIDE}")
    return lines
