"""The sweep's closing lines: the kappa x N table of the final metric and the count of trials by how they ended."""

from __future__ import annotations

from collections import Counter

from trainables.status import Status


def grid_table(metric: str, rows: list[tuple[int, float, float | None, str]]) -> list[str]:
    """Lines of a kappa x N table of metric from (order, kappa, value, status) rows, mean over seeds.

    A cell's mean counts finished trials only; '*' marks a cell where some trial did not finish.
    """
    cells: dict[tuple, list] = {}
    for order, kappa, value, status in rows:
        cells.setdefault((order, kappa), []).append((value, status))
    if not cells:
        return []
    orders = sorted({o for o, _ in cells})
    kappas = sorted({k for _, k in cells})
    lines = [f"{metric} (final, mean over seeds; * = some trial diverged/collapsed)",
             "order " + "".join(f"{f'kappa={k:g}':>16}" for k in kappas)]
    for o in orders:
        row = f"N={o:<4}"
        for k in kappas:
            vals = cells.get((o, k), [])
            ok = [v for v, s in vals if v is not None and s == Status.FINISHED]
            flag = "*" if any(s != Status.FINISHED for _, s in vals) else " "
            row += f"{(f'{sum(ok) / len(ok):.4f}' if ok else '-') + flag:>16}"
        lines.append(row)
    return lines


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
