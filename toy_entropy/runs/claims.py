"""Claims: what an experiment set out to show, the number it measured, and whether it held.

``holds`` is always computed from ``measured`` by the claim's criterion, never written by hand.
A claim of the paper that does not reproduce is reported with ``holds: false``: a result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Claim", "less_than", "greater_than", "between", "format_claims_table"]


@dataclass(frozen=True)
class Claim:
    """One checked statement of an experiment (see docs/OUTPUTS.md)."""

    id: str
    statement: str
    measured: Any
    expected: str
    holds: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(value: float) -> bool:
    return value is not None and math.isfinite(float(value))


def less_than(claim_id: str, statement: str, measured: float, bound: float) -> Claim:
    """Claim that ``measured < bound``."""
    measured = float(measured)
    holds = _finite(measured) and measured < bound
    return Claim(claim_id, statement, measured, f"< {bound:g}", bool(holds))


def greater_than(claim_id: str, statement: str, measured: float, bound: float) -> Claim:
    """Claim that ``measured > bound``."""
    measured = float(measured)
    holds = _finite(measured) and measured > bound
    return Claim(claim_id, statement, measured, f"> {bound:g}", bool(holds))


def between(claim_id: str, statement: str, measured: float, low: float, high: float) -> Claim:
    """Claim that ``low <= measured <= high``."""
    measured = float(measured)
    holds = _finite(measured) and low <= measured <= high
    return Claim(claim_id, statement, measured, f"in [{low:g}, {high:g}]", bool(holds))


def _format_measured(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_format_measured(v)}" for k, v in value.items())
    return str(value)


def format_claims_table(claims: Sequence[Claim | dict]) -> str:
    """A plain-text table of claims for the terminal."""
    rows = [c.to_dict() if isinstance(c, Claim) else c for c in claims]
    header = ("holds", "id", "measured", "expected")
    table = [header] + [
        ("yes" if r["holds"] else "NO", r["id"], _format_measured(r["measured"]), r["expected"])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
