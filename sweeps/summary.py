"""The sweep's closing lines: the kappa x N (and peer) table of the final metric and the count of trials by how they ended."""

from __future__ import annotations

from collections import Counter

from dashboards.cells import RCGM, row_sort_key
from trainables.status import Status


def grid_table(metric: str, rows: list[tuple]) -> list[str]:
    """Lines of a kappa x row table of metric from ((objective, order), kappa, value, status) rows, mean over seeds.

    Rows are ordered and named as in the report (dashboards.cells): RCGM's orders, then the peers.
    A cell's mean counts finished trials only; '*' marks a cell where some trial did not finish.
    """
    cells: dict[tuple, list] = {}
    for row, kappa, value, status in rows:
        cells.setdefault((row, kappa), []).append((value, status))
    if not cells:
        return []
    names = sorted({r for r, _ in cells}, key=row_sort_key)
    kappas = sorted({k for _, k in cells})
    width = max(6, *(len(_row_name(r)) + 1 for r in names))
    lines = [f"{metric} (final, mean over seeds; * = some trial diverged/collapsed)",
             f"{'row':<{width}}" + "".join(f"{f'kappa={k:g}':>16}" for k in kappas)]
    for r in names:
        line = f"{_row_name(r):<{width}}"
        for k in kappas:
            vals = cells.get((r, k), [])
            ok = [v for v, s in vals if v is not None and s == Status.FINISHED]
            flag = "*" if any(s != Status.FINISHED for _, s in vals) else " "
            line += f"{(f'{sum(ok) / len(ok):.4f}' if ok else '-') + flag:>16}"
        lines.append(line)
    return lines


def _row_name(row) -> str:
    """'N=2' for an RCGM order, the objective's name for a peer."""
    return f"N={row[1]}" if row[0] == RCGM else row[0]


def outcome_line(statuses: list[str], recovered: int) -> str:
    """'34 trials: 33 finished, 1 collapsed; 1 of them resumed from its checkpoint' (what a user checks first).

    recovered: trials that resumed from a checkpoint (after an error, or a restarted sweep) and did not fail.
    """
    counts = Counter(str(s) for s in statuses)
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    text = f"{len(statuses)} trials: {parts or 'none ran'}"
    if recovered:
        text += f"; {recovered} of them resumed from a checkpoint (after an error or a restart)"
    return text
