"""The report: one Markdown table of medians and ratios, the targets, JSON lines.

Every scenario adds rows to one ``Report``; a row is a figure with a column per
implementation (pika_rpc, raw pika, Celery 5 ``rpc://``: each cell the median over the
runs of one kind) and the ratios pika_rpc/raw and pika_rpc/Celery. A target is a
figure (a ratio of medians, or a value) with a bound and a verdict. A scenario whose
figures do not fit those columns (``e2e``: a row per client and worker) adds a table of
its own (``table``), printed after the main one.
"""

from __future__ import annotations

import json
import operator
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from .harness import median_of

COLUMNS = ['pika_rpc', 'raw pika', 'Celery 5 rpc://', 'pika_rpc/raw', 'pika_rpc/Celery', 'note']
OPS: Dict[str, Callable[[float, float], bool]] = {
    '>=': operator.ge,
    '<=': operator.le,
    '<': operator.lt,
    '==': operator.eq,
}
Cols = Sequence[Optional[str]]  # kind names of the pika_rpc, raw pika, Celery cells


def fmt(v: Optional[float], unit: str = '') -> str:
    if v is None:
        return 'n/a'
    if abs(v) >= 100:
        s = f'{v:,.0f}'
    elif abs(v) >= 10:
        s = f'{v:.1f}'
    else:
        s = f'{v:.3g}'
    return f'{s}{unit}'


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or not b:
        return None
    return a / b


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(str(h))] + [len(str(r[i])) for r in rows]) for i, h in enumerate(header)]
    line = lambda cells: '| ' + ' | '.join(str(c).ljust(w) for c, w in zip(cells, widths)) + ' |'
    out = [line(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
    out += [line(r) for r in rows]
    return '\n'.join(out)


class Report:
    """Rows and targets, built from ``runs`` (kind name -> results of its runs)."""

    def __init__(self, runs: Dict[str, List[Dict]], repeats: int) -> None:
        self.runs = runs
        self.repeats = repeats
        self.rows: List[List[str]] = []
        self.targets: List[Dict[str, Any]] = []
        self.tables: List[Tuple[str, str, List[str]]] = []

    def has(self, kind: str) -> bool:
        return kind in self.runs

    def ok_runs(self, kind: Optional[str]) -> List[Dict]:
        """The runs of ``kind`` that did not fail."""
        return [r for r in self.runs.get(kind or '', []) if 'error' not in r]

    def ran(
        self, pattern: str, values: Iterable[Any], impls: Sequence[str]
    ) -> Iterator[Tuple[Any, Tuple[str, ...]]]:
        """``(value, kind names of impls)`` for each value whose first kind ran (kind
        ``pattern.format(value) + '.' + impl``)."""
        for value in values:
            kinds = tuple(f'{pattern.format(value)}.{impl}' for impl in impls)
            if self.has(kinds[0]):
                yield value, kinds

    def unsupported(self, kind: str) -> Optional[str]:
        """Why ``kind`` could not run here (``{'unsupported': why}`` from each of its runs:
        a pika_rpc feature this checkout lacks), or None."""
        rs = self.runs.get(kind) or []
        if rs and all('unsupported' in x for x in rs):
            return str(rs[0]['unsupported'])
        return None

    def med(self, kind: Optional[str], key: str) -> Optional[float]:
        return median_of(self.runs.get(kind, []), key) if kind else None

    def row(
        self, figure: str, key: str, cols: Cols, unit: str = '', note: str = ''
    ) -> Tuple[Optional[float], ...]:
        """Medians of ``key`` per column and their ratios; returns the three medians."""
        kinds = (list(cols) + [None, None])[:3]
        vals = [self.med(k, key) for k in kinds]

        def cell(kind: Optional[str], v: Optional[float]) -> str:
            if not kind:
                return '-'
            failed = sum(1 for r in self.runs.get(kind, []) if 'error' in r)
            return fmt(v, unit) + (f' ({failed} failed run(s))' if failed else '')

        self.rows.append(
            [figure]
            + [cell(k, v) for k, v in zip(kinds, vals)]
            + [fmt(ratio(vals[0], vals[1])), fmt(ratio(vals[0], vals[2])), note]
        )
        return tuple(vals)

    def totals(self, figure: str, keys: Sequence[str], cols: Cols, note: str = '') -> None:
        """Sums over all runs (one hang in one run matters), 'a / b / c' per column."""

        def cell(kind: Optional[str]) -> str:
            if not kind or kind not in self.runs:
                return '-'
            return ' / '.join(
                str(sum(int(r.get(k) or 0) for r in self.ok_runs(kind))) for k in keys
            )

        kinds = (list(cols) + [None, None])[:3]
        self.rows.append([figure] + [cell(k) for k in kinds] + ['', '', note])

    def line(
        self,
        figure: str,
        pr: str = '',
        raw: str = '',
        celery: str = '',
        pr_raw: str = '',
        pr_celery: str = '',
        note: str = '',
    ) -> None:
        """A row of given cells (what a median cannot say)."""
        self.rows.append([figure, pr, raw, celery, pr_raw, pr_celery, note])

    def table(self, title: str, table: str, notes: Sequence[str] = ()) -> None:
        """A table of its own (Markdown), printed after the main one with its notes."""
        self.tables.append((title, table, list(notes)))

    def target(
        self,
        name: str,
        value: Optional[float],
        op: str,
        bound: Optional[float],
        want: Optional[str] = None,
    ) -> None:
        """``value op bound`` is the verdict (None when either is unknown)."""
        met = None if value is None or bound is None else bool(OPS[op](value, bound))
        self.targets.append(
            {'target': name, 'want': want or f'{op} {fmt(bound)}', 'value': value, 'met': met}
        )

    def target_ratio(
        self, name: str, a: Optional[float], b: Optional[float], op: str, bound: float
    ) -> None:
        """``a / b op bound`` is the verdict."""
        self.target(name, ratio(a, b), op, bound)

    def text(self) -> str:
        table = markdown_table([f'figure (median of {self.repeats})'] + COLUMNS, self.rows)
        trows = [
            [
                t['target'],
                t['want'],
                fmt(t['value']),
                {True: 'met', False: 'MISSED', None: 'n/a'}[t['met']],
            ]
            for t in self.targets
        ]
        ttable = (
            markdown_table(['target', 'wanted', 'measured (ratio or value)', 'verdict'], trows)
            if trows
            else ''
        )
        extra = ''.join(
            f'\n\n{title}:\n\n{t}' + ''.join(f'\n\n{n}' for n in notes)
            for title, t, notes in self.tables
        )
        return (
            'Ratios are pika_rpc / other: for rates higher favours pika_rpc; for latencies, '
            'CPU, connections and memory lower does.\n\n'
            + table
            + extra
            + '\n\nTargets (ratios of medians in this run):\n\n'
            + ttable
        )

    def json_lines(self, params: Dict[str, Dict[str, Any]]) -> List[str]:
        """One line per kind (params, medians of its numbers, every run), one per target."""
        out = []
        for kind, rs in self.runs.items():
            keys = sorted(
                {
                    k
                    for r in rs
                    for k in r
                    if isinstance(r[k], (int, float)) and not isinstance(r[k], bool)
                }
            )
            out.append(
                json.dumps(
                    {
                        'bench': 'bench',
                        'kind': kind,
                        'impl': kind.split('.', 1)[1],
                        'params': params[kind],
                        'median': {k: median_of(rs, k) for k in keys},
                        'runs': rs,
                    }
                )
            )
        for t in self.targets:
            out.append(json.dumps({'bench': 'bench', **t}))
        return out
