"""A static HTML leaderboard: one self-contained file (plots embedded as data: URIs, a few
lines of inline JS to sort a table by clicking its header). No server, no external assets,
so it can be opened from a CI artifact or a file:// URL.

Hand-written rather than pandas ``to_html`` because each cell needs a ``data-sort`` value
(the number behind "0.8123 ± 0.0100 (n=3)") for numeric sorting.
"""

from __future__ import annotations

import base64
import math
import re

import pandas as pd

from bench.report.escape import html_text
from bench.report.failures import MARK
from bench.report.search_view import SEARCH_NOTE, SEARCH_TITLE
from bench.report.summary import PICKED_NOTE, SUMMARY_TITLE, VERDICTS_TITLE
from bench.report.views import (
    COLLAPSE_NOTE,
    NOISY,
    NOISY_NOTE,
    OLDER_NOTE,
    SliceView,
    paired_display,
    pareto_display,
    sensitivity_display,
)

_NUMBER = re.compile(r"^[+−-]?[\d,]*\.?\d+(?:[eE][+-]?\d+)?")
_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_NOTE_MARK = re.compile(re.escape(MARK) + r"(\d+)")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table.board { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 14px; }
table.board th, table.board td { border: 1px solid #bbb; padding: 4px 8px; text-align: right;
  white-space: nowrap; }
table.board th { background: #e8eef7; cursor: pointer; user-select: none; }
table.board td:first-child, table.board th:first-child { text-align: left; }
table.board tr:nth-child(even) td { background: #f6f6f6; }
th.asc::after { content: " ▲"; } th.desc::after { content: " ▼"; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.note { color: #666; font-size: 13px; }
td.failed { color: #a00; cursor: help; }
#summary th { background: #dcefe0; }
.banner { background: #fff3cd; border: 1px solid #e0c060; padding: 6px 10px; font-weight: bold; }
"""

# Click a header: sort rows by that column's data-sort (numbers) or text; click again to flip.
SCRIPT = """
document.querySelectorAll('table.board').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var asc = !th.classList.contains('asc');
      table.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
      th.classList.add(asc ? 'asc' : 'desc');
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var key = function (r) { var c = r.cells[col], v = c.dataset.sort;
        return v === undefined || v === '' ? c.textContent : parseFloat(v); };
      rows.sort(function (a, b) { var x = key(a), y = key(b);
        if (typeof x === 'number' && typeof y === 'number') { if (isNaN(x)) return 1; if (isNaN(y)) return -1;
          return asc ? x - y : y - x; }
        return asc ? String(x).localeCompare(String(y)) : String(y).localeCompare(String(x)); });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def sort_value(text: str) -> float | None:
    """The number a displayed cell sorts by: its leading number, scaled by a byte unit."""
    t = str(text).strip()
    m = _NUMBER.match(t)
    if not m:
        return None
    value = float(m.group(0).replace(",", "").replace("−", "-"))
    unit = t[m.end():].split()[:1]
    return value * _UNITS.get(unit[0], 1) if unit else value


def table_html(frame: pd.DataFrame, table_id: str, notes: dict[int, str] | None = None) -> str:
    """A sortable table; a cell marked with a failure note (``§k``) shows the note's text
    (the failed seeds and their errors) on hover."""
    notes = notes or {}
    head = "".join(f"<th>{html_text(c)}</th>" for c in frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for v in row:
            text = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            num = sort_value(text)
            attr = f' data-sort="{num!r}"' if num is not None else ""
            hover = [notes[int(k)] for k in _NOTE_MARK.findall(text) if int(k) in notes]
            if hover:
                attr += f' class="failed" title="{html_text(" / ".join(hover))}"'
            cells.append(f"<td{attr}>{html_text(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="board" id="{html_text(table_id)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _img(path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html_text(path.stem)}" src="data:image/png;base64,{data}">'


def slice_html(v: SliceView) -> str:
    direction = "higher" if v.higher_is_better else "lower"
    notes = {n.number: n.text for n in v.notes.values()}
    parts = [f'<section id="{html_text(v.stem)}"><h2>{html_text(v.title)}: {html_text(v.metric)}</h2>',
             f'<p class="note">mean ± std over seeds, n and 95% t-interval; {direction} is better. '
             "Click a header to sort.</p>"]
    if v.banner:
        parts.append(f'<p class="banner">{html_text(v.banner)}</p>')
    if v.context:
        parts.append(f'<p class="note">{html_text(v.context)}</p>')
    parts.append(table_html(v.board, f"board-{v.stem}", notes))
    if notes:
        parts.append('<p class="note">Failed runs (left out of every statistic):</p><ul class="note">'
                     + "".join(f"<li>{html_text(notes[k])}</li>" for k in sorted(notes)) + "</ul>")
    if v.unstable:
        parts.append('<p class="note">Unstable cells:</p><ul class="note">'
                     + "".join(f"<li>{html_text(t)}</li>" for t in v.unstable) + "</ul>")
    if v.board["train tok/s"].astype(str).str.endswith(NOISY).any():
        parts.append(f'<p class="note">{html_text(NOISY_NOTE)}</p>')
    if v.collapsed:
        parts.append(f'<p class="note">{html_text(COLLAPSE_NOTE)}</p>')
    if v.subset_note:
        parts.append(f'<p class="note">{html_text(v.subset_note)}</p>')
    if v.left_out:
        parts.append(f'<p class="note">{html_text(OLDER_NOTE.format(n=v.left_out))}</p>')
    if len(v.paired):
        parts += ["<h3>Paired comparisons</h3>", table_html(paired_display(v.paired), f"paired-{v.stem}")]
    if len(v.sens_scores) or any(p is not None for _, p in v.notes):
        parts += ["<h3>Prefix-length sensitivity</h3>",
                  table_html(sensitivity_display(v.sens_scores, v.notes), f"sensitivity-{v.stem}", notes)]
    if "sensitivity" in v.images:
        parts.append(_img(v.images["sensitivity"]))
    if len(v.pareto) or v.notes:
        parts += ["<h3>Pareto views (★ on the frontier)</h3>", table_html(pareto_display(v.pareto, v.notes), f"pareto-{v.stem}", notes)]
    if "pareto" in v.images:
        parts.append(_img(v.images["pareto"]))
    return "\n".join(parts) + "</section>"


def summary_html(overview: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    """The answer first (bench/report/summary.py): methods × tables, then the verdicts."""
    if overview.empty:
        return ""
    parts = [f'<section id="answer"><h2>{html_text(SUMMARY_TITLE)}</h2>', table_html(overview, "summary")]
    if overview.astype(str).apply(lambda c: c.str.contains(r"\*\)", regex=True)).any().any():
        parts.append(f'<p class="note">{html_text(PICKED_NOTE)}</p>')
    if len(verdicts):
        parts += [f"<h3>{html_text(VERDICTS_TITLE)}</h3>", table_html(verdicts, "verdicts")]
    return "\n".join(parts) + "</section>"


def search_html(searched: pd.DataFrame) -> str:
    """How each learning rate was chosen (bench/report/search_view.py), below the answer."""
    if searched.empty:
        return ""
    return (f'<section id="search"><h2>{html_text(SEARCH_TITLE)}</h2>{table_html(searched, "search")}'
            f'<p class="note">{html_text(SEARCH_NOTE)}</p></section>')


def page(views: list[SliceView], overview: pd.DataFrame | None = None, verdicts: pd.DataFrame | None = None,
         title: str = "prefix-bench leaderboard", searched: pd.DataFrame | None = None) -> str:
    toc = "".join(f'<li><a href="#{html_text(v.stem)}">{html_text(v.title)}</a></li>' for v in views)
    body = "\n".join(slice_html(v) for v in views)
    top = summary_html(overview if overview is not None else pd.DataFrame(),
                       verdicts if verdicts is not None else pd.DataFrame())
    top += search_html(searched if searched is not None else pd.DataFrame())
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html_text(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html_text(title)}</h1>{top}\n"
            f"<h2>Per table</h2><ul>{toc}</ul>\n{body}\n"
            f"<script>{SCRIPT}</script></body></html>\n")
