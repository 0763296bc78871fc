"""The compatibility matrix as tables: markdown and HTML from the JSON documents that
``python -m bench.compat`` writes (one per transformers version), the cross-version summary,
and the regression check against a committed document. Works from that data alone: no
torch, no method, no task.

A document: ``{"schema", "versions": {"transformers", "torch", "peft", "python"}, "features":
[{"name", "title", "doc"}], "methods": [...], "architectures": [{"name", "causal", "note",
"source"}], "skipped": {arch: why}, "cells": [{"method", "architecture", "feature", "status"
(pass | fail | n/a), "detail", "note"? (whose cause: transformers', PEFT's, or ours and open), "seconds"}], "seconds", "pinned"}``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.report.escape import html_text, markdown

SCHEMA = 1
PASS, FAIL, NA = "pass", "fail", "n/a"
MARK = "§"
SYMBOL = {PASS: "✓", FAIL: "✗", NA: "n/a"}


def result_name(transformers_version: str) -> str:
    return f"transformers-{transformers_version}"


def load(path: Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: compatibility results schema {doc.get('schema')!r}, expected {SCHEMA}")
    return doc


def load_all(folder: Path) -> list[dict[str, Any]]:
    """Every version's document in ``folder``, newest transformers first."""
    docs = [load(p) for p in sorted(Path(folder).glob(result_name("*") + ".json"))]
    return sorted(docs, key=lambda d: version_key(d["versions"]["transformers"]), reverse=True)


def version_key(version: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.+-]", version))


def key(cell: dict[str, Any]) -> tuple[str, str, str]:
    return cell["method"], cell["architecture"], cell["feature"]


def merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new``'s cells over ``old``'s (a run of part of the matrix keeps the rest)."""
    if old is None or old["versions"] != new["versions"]:
        return new
    cells = {key(c): c for c in old["cells"]}
    cells.update({key(c): c for c in new["cells"]})

    def union(a: list, b: list, name: Any = lambda x: x) -> list:
        """``a``'s order, items replaced by ``b``'s of the same name, then ``b``'s new ones."""
        fresh = {name(x): x for x in b}
        have = {name(x) for x in a}
        return [fresh.get(name(x), x) for x in a] + [x for x in b if name(x) not in have]

    out = dict(new, cells=list(cells.values()), partial=True,
               methods=union(old["methods"], new["methods"]),
               architectures=union(old["architectures"], new["architectures"], lambda a: a["name"]),
               features=union(old["features"], new["features"], lambda f: f["name"]),
               skipped={**old.get("skipped", {}), **new.get("skipped", {})})
    return out


def regressions(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Each cell that passed in ``baseline`` and fails in ``current``, as one line."""
    before = {key(c): c for c in baseline["cells"]}
    out = []
    for cell in current["cells"]:
        old = before.get(key(cell))
        if old and old["status"] == PASS and cell["status"] == FAIL:
            out.append(f"{cell['method']} × {cell['architecture']} × {cell['feature']}: passed, now fails: "
                       f"{cell['detail']}")
    return out


def changes(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Every other status change (fixes, newly not applicable), one line each."""
    before = {key(c): c for c in baseline["cells"]}
    out = []
    for cell in current["cells"]:
        old = before.get(key(cell))
        if old and old["status"] != cell["status"] and not (old["status"] == PASS and cell["status"] == FAIL):
            out.append(f"{cell['method']} × {cell['architecture']} × {cell['feature']}: "
                       f"{old['status']} -> {cell['status']}")
    return out


class _Notes:
    """Numbered notes: each distinct failure or not-applicable text once."""

    def __init__(self) -> None:
        self.texts: dict[str, int] = {}

    def ref(self, cell: dict[str, Any]) -> int:
        text = cell_text(cell)
        return self.texts.setdefault(text, len(self.texts) + 1)


def cell_text(cell: dict[str, Any]) -> str:
    text = cell["detail"]
    if cell.get("note"):
        text += f" — {cell['note']}"
    return text


def _grid(doc: dict[str, Any]) -> tuple[list[str], list[tuple[str, str]], dict[tuple, dict]]:
    features = [f["name"] for f in doc["features"]]
    archs = [a["name"] for a in doc["architectures"]]
    rows = [(m, a) for m in doc["methods"] for a in archs]
    return features, rows, {key(c): c for c in doc["cells"]}


def counts(doc: dict[str, Any]) -> dict[str, int]:
    out = {PASS: 0, FAIL: 0, NA: 0}
    for c in doc["cells"]:
        out[c["status"]] += 1
    return out


def _header(doc: dict[str, Any]) -> str:
    v = doc["versions"]
    pinned = " (the pinned version)" if doc.get("pinned") else ""
    return (f"transformers {v['transformers']}{pinned}, torch {v['torch']}, peft {v['peft']}, "
            f"Python {v['python']}")


def markdown_version(doc: dict[str, Any]) -> str:
    """One version's table: rows method × architecture, columns features, notes below."""
    features, rows, cells = _grid(doc)
    titles = {f["name"]: f["title"] for f in doc["features"]}
    notes = _Notes()
    c = counts(doc)
    lines = [f"# Compatibility: transformers {markdown(doc['versions']['transformers'])}", "",
             markdown(_header(doc)) + f". {c[PASS]} pass, {c[FAIL]} fail, {c[NA]} not applicable.", "",
             f"✓ pass · ✗ {MARK}k fail (note k: the error's first line) · n/a {MARK}k not applicable (why). "
             "What each column checks is listed under the table; regenerate with `nox -s compat`.", "",
             "| method | architecture | " + " | ".join(markdown(titles[f]) for f in features) + " |",
             "| --- | --- | " + " | ".join(":-:" for _ in features) + " |"]
    for method, arch in rows:
        out = []
        for f in features:
            cell = cells.get((method, arch, f))
            if cell is None:
                out.append("")
            elif cell["status"] == PASS:
                out.append(SYMBOL[PASS])
            else:
                out.append(f"{SYMBOL[cell['status']]} {MARK}{notes.ref(cell)}")
        lines.append(f"| {markdown(method)} | {markdown(arch)} | " + " | ".join(out) + " |")
    lines += ["", "## Notes", ""]
    lines += [f"- {MARK}{n}: {markdown(text)}" for text, n in notes.texts.items()]
    lines += ["", "## Columns", ""]
    lines += [f"- **{markdown(f['title'])}** (`{f['name']}`): {markdown(f['doc'])}" for f in doc["features"]]
    lines += ["", "## Architectures", ""]
    lines += [f"- **{markdown(a['name'])}** ({markdown(a['source'])}): {markdown(a['note'])}"
              for a in doc["architectures"]]
    lines += [f"- {markdown(name)}: skipped, {markdown(why)}" for name, why in doc.get("skipped", {}).items()]
    return "\n".join(lines) + "\n"


def _differences(docs: list[dict[str, Any]]) -> list[tuple[tuple[str, str, str], list[str]]]:
    """Cells whose status differs between versions: (key, status per version)."""
    grids = [{key(c): c["status"] for c in d["cells"]} for d in docs]
    keys = sorted(set().union(*grids)) if grids else []
    return [(k, [g.get(k, "") for g in grids]) for k in keys if len({g.get(k, "") for g in grids}) > 1]


def markdown_index(docs: list[dict[str, Any]]) -> str:
    """The folder's README: what is covered, per-version counts, cross-version differences."""
    lines = ["# Will prefix tuning work on my model?", "",
             "Every registered method on every architecture below, each feature checked in isolation "
             "(pass, fail with the error's first line, or not applicable with why), per transformers "
             "version. Tiny random configs (width 32, 2 layers) built from transformers' own config "
             "classes, plus the real backbones whose packages are installed. Regenerate with "
             "`nox -s compat` (one venv per transformers version); a cell that passed in the committed "
             "table and fails now makes it exit 1. Source: `bench/compat/`.", "",
             "| transformers | torch | peft | architectures | methods | features | pass | fail | n/a | table |",
             "| --- | --- | --- | --: | --: | --: | --: | --: | --: | --- |"]
    for d in docs:
        v, c = d["versions"], counts(d)
        name = result_name(v["transformers"])
        pinned = " (pinned)" if d.get("pinned") else ""
        lines.append(f"| {markdown(v['transformers'])}{pinned} | {markdown(v['torch'])} | {markdown(v['peft'])} | "
                     f"{len(d['architectures'])} | {len(d['methods'])} | {len(d['features'])} | {c[PASS]} | "
                     f"{c[FAIL]} | {c[NA]} | [{name}.md]({name}.md) |")
    diffs = _differences(docs)
    if len(docs) > 1:
        lines += ["", "## Cells that differ between versions", ""]
        if not diffs:
            lines.append("None.")
        else:
            heads = [d["versions"]["transformers"] for d in docs]
            lines += ["| method | architecture | feature | " + " | ".join(map(markdown, heads)) + " |",
                      "| --- | --- | --- | " + " | ".join(":-:" for _ in heads) + " |"]
            for (m, a, f), statuses in diffs:
                lines.append(f"| {markdown(m)} | {markdown(a)} | {markdown(f)} | "
                             + " | ".join(SYMBOL.get(s, "—") for s in statuses) + " |")
    for d in docs:
        # one line per cause: cells with the same note together (their numbers differ), else per error
        failing: dict[str, list[str]] = {}
        for c in d["cells"]:
            if c["status"] == FAIL:
                text = c["note"] if c.get("note") else c["detail"]
                failing.setdefault(text, []).append(f"{c['method']} × {c['architecture']} × {c['feature']}")
        lines += ["", f"## Failures under transformers {markdown(d['versions']['transformers'])}", ""]
        lines += [f"- {len(where)} cell(s), {markdown(', '.join(where))}: {markdown(text)}"
                  for text, where in failing.items()] or ["None."]
    lines += ["", "The HTML page [index.html](index.html) shows every version's table with each cell's detail "
              "on hover; the raw results are the `.json` files beside this one."]
    return "\n".join(lines) + "\n"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: 3px 6px; text-align: center; white-space: nowrap; }
th { background: #e8eef7; } td.name { text-align: left; }
td.pass { background: #e3f4e3; } td.fail { background: #f8dcdc; color: #900; cursor: help; }
td.na { background: #f0f0f0; color: #777; cursor: help; }
.note { color: #555; font-size: 13px; }
"""


def html_page(docs: list[dict[str, Any]]) -> str:
    """Every version's table on one static page; each cell's detail as its hover text."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>prefix-bench compatibility</title>",
             f"<style>{STYLE}</style></head><body><h1>Will prefix tuning work on my model?</h1>",
             "<p class='note'>✓ pass, ✗ fail, n/a not applicable; hover a cell for its detail. Regenerate with "
             "<code>nox -s compat</code>.</p>"]
    for d in docs:
        features, rows, cells = _grid(d)
        titles = {f["name"]: f["title"] for f in d["features"]}
        notes = _Notes()
        c = counts(d)
        parts.append(f"<h2>transformers {html_text(d['versions']['transformers'])}</h2>"
                     f"<p class='note'>{html_text(_header(d))}. {c[PASS]} pass, {c[FAIL]} fail, "
                     f"{c[NA]} not applicable.</p><table><thead><tr><th>method</th><th>architecture</th>"
                     + "".join(f"<th title='{html_text(f['doc'])}'>{html_text(titles[f['name']])}</th>"
                               for f in d["features"]) + "</tr></thead><tbody>")
        for method, arch in rows:
            tds = []
            for f in features:
                cell = cells.get((method, arch, f))
                if cell is None:
                    tds.append("<td></td>")
                    continue
                cls = {PASS: "pass", FAIL: "fail", NA: "na"}[cell["status"]]
                mark = SYMBOL[cell["status"]] + ("" if cell["status"] == PASS else f" {MARK}{notes.ref(cell)}")
                tds.append(f"<td class='{cls}' title='{html_text(cell_text(cell))}'>{html_text(mark)}</td>")
            parts.append(f"<tr><td class='name'>{html_text(method)}</td><td class='name'>{html_text(arch)}</td>"
                         + "".join(tds) + "</tr>")
        parts.append("</tbody></table><ol class='note'>")
        parts += [f"<li value='{n}'>{html_text(text)}</li>" for text, n in notes.texts.items()]
        parts.append("</ol>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write(folder: Path, doc: dict[str, Any]) -> list[Path]:
    """Write ``doc`` (JSON and markdown) into ``folder`` and re-render the folder's index
    (README.md, index.html) from every version's document there."""
    folder.mkdir(parents=True, exist_ok=True)
    name = result_name(doc["versions"]["transformers"])
    written = [folder / f"{name}.json", folder / f"{name}.md", folder / "README.md", folder / "index.html"]
    written[0].write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    written[1].write_text(markdown_version(doc), encoding="utf-8")
    docs = load_all(folder)
    written[2].write_text(markdown_index(docs), encoding="utf-8")
    written[3].write_text(html_page(docs), encoding="utf-8")
    return written
