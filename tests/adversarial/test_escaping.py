"""Hostile names in every output format: method, task, backbone, metric and error text from
records reach LaTeX, markdown, CSV, HTML and matplotlib as the text they are.

Each format gets a structural check that fails on the unescaped output (an unbalanced brace,
a row with an extra column, a live formula or <script>), and LaTeX is compiled when
pdflatex is installed."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from bench.core.records import ResultRecord  # noqa: E402
from bench.report import escape  # noqa: E402
from bench.report.render import render  # noqa: E402

# Each breaks at least one format when written raw.
HOSTILE_METHODS = [
    '=HYPERLINK("http://evil","x")',  # spreadsheet formula
    "-2+3", "+cmd", "@SUM(A1)", "\tTAB", "\rCR",  # more formula starts
    "a|b\nc",  # markdown column and row break
    "<script>alert(1)</script>",  # HTML
    "[x](javascript:alert(1))",  # markdown link
    "$\\frac{1$}", "$x$",  # mathtext (matplotlib raises on the first), LaTeX math
    "}{\\end{table}", "back\\", "[opt]",  # LaTeX braces, a trailing backslash, "\\[" after a row end
    "_u%#&~^",  # every other LaTeX special; a legend drops labels starting with "_"
    "bidi\u202eevil",  # display spoofing
]
TASK = "t$a}s{k"  # characters that are legal in a file name but not in LaTeX or mathtext
BACKBONE = "b<i>b="
METRIC = "acc$^{}$|<i>"
ERROR = "Traceback\n| x | <script>alert(2)</script> $}\\ =1+1"
LATEX_SPECIALS = set("&%$#_{}~^\\")


def hostile_records() -> list[ResultRecord]:
    out = []
    for i, method in enumerate(HOSTILE_METHODS):
        for seed in (0, 1):
            for length in (5, 20):
                score = 0.5 + 0.01 * i + 0.002 * seed + 0.001 * length
                out.append(ResultRecord(
                    cell_id=f"c{i}-{seed}-{length}", suite="s", method=method, task=TASK, backbone=BACKBONE,
                    prefix_length=length, seed=seed, status="ok", main_metric=METRIC, main_score=score,
                    metrics={METRIC: score}, trainable_params=100 * (i + 1) * length, adapter_bytes=400 * length,
                    train_tokens_per_s=1000.0 + 10 * i - length, eval_tokens_per_s=2000.0,
                    peak_memory_bytes=(i + 1) * 10**6 + length))
    out.append(ResultRecord(cell_id="failed", suite="s", method=HOSTILE_METHODS[0], task=TASK, backbone=BACKBONE,
                            prefix_length=50, seed=0, status="failed", error=ERROR))
    return out


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hostile")
    written = render(hostile_records(), out)
    # found by suffix: the file names themselves are another test's subject
    suffixes = {"scores": "__scores.csv", "pareto_png": "__pareto.png", "sensitivity_png": "__sensitivity.png",
                "tex": ".tex"}
    found = {k: next(p for p in written if p.name.endswith(s)) for k, s in suffixes.items()}
    stem = found["tex"].name.removesuffix(".tex")
    return found | {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "leaderboard": out / "leaderboard.md",
                    "html": out / "index.html"}


# ---------------------------------------------------------------- LaTeX

_CONTROL = re.compile(r"\\([A-Za-z]+|.)", re.S)
ALLOWED_COMMANDS = {"begin", "end", "centering", "scriptsize", "toprule", "midrule", "bottomrule", "caption",
                    "label", "textbackslash", "textasciitilde", "textasciicircum", "textless", "textgreater",
                    "textbar", "par", "smallskip", "footnotesize"}


def latex_problems(tex: str) -> list[str]:
    """Structural problems of a rendered table: unbalanced braces, unknown commands,
    specials outside their escapes, rows whose column count differs from the header's."""
    problems = []
    depth, i = 0, 0
    plain = []  # the text with every control sequence removed
    while i < len(tex):
        ch = tex[i]
        if ch == "\\":
            m = _CONTROL.match(tex, i)
            name = m.group(1)
            if name.isalpha() and name not in ALLOWED_COMMANDS:
                problems.append(f"unexpected command \\{name}")
            elif not name.isalpha() and name not in "&%$#_{}\\":
                problems.append(f"unexpected control symbol \\{name!r}")
            if name == "\\" and re.match(r"\s*\[", tex[m.end():]):
                problems.append("a row end followed by '[' (read as \\\\[<length>])")
            plain.append(" ")
            i = m.end()
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                problems.append(f"unbalanced '}}' at {i}")
                depth = 0
        plain.append(ch)
        i += 1
    if depth:
        problems.append(f"{depth} unclosed '{{'")
    bare = "".join(plain)
    for special in "$#%^~_":
        if special in bare:
            problems.append(f"unescaped {special!r}")
    rows = [line for line in tex.splitlines() if line.rstrip().endswith("\\\\")]
    counts = {line.count("&") - line.count("\\&") for line in rows}
    if len(counts) != 1:
        problems.append(f"rows with different column counts: {sorted(counts)}")
    return problems


def test_latex_checker_catches_raw_names():
    """The structural check is not vacuous: the pre-escaping output of a hostile name fails it."""
    raw = "\\begin{tabular}{ll}\n\\toprule\nmethod & x \\\\\n}{\\end{table} & 1 \\\\\n\\end{tabular}\n"
    assert latex_problems(raw)
    assert latex_problems("a & b \\\\\n[opt] & c \\\\\n")  # "\\[" after a row
    assert latex_problems("a & b \\\\\n$x$ & c \\\\\n")


def test_latex_is_structurally_sound(outputs):
    tex = outputs["tex"].read_text(encoding="utf-8")
    assert latex_problems(tex) == []
    label = re.search(r"\\label\{([^}]*)\}", tex).group(1)
    assert re.fullmatch(r"[A-Za-z0-9:.\-]+", label)
    assert escape.latex_text("}{\\end{table}") in tex and "failed §1" in tex
    assert len(re.findall(r"\\par §\d", tex)) == 1  # the failure note, escaped with the rest


PDFLATEX = shutil.which("pdflatex")


@pytest.mark.skipif(PDFLATEX is None, reason="pdflatex not installed; structure is checked above")
def test_latex_compiles(outputs, tmp_path):
    table = outputs["tex"].read_text(encoding="utf-8")
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n"
                   "\\begin{document}\n" + table + "\\end{document}\n", encoding="utf-8")
    proc = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def test_latex_label_keeps_plain_names_and_separates_hostile_ones():
    assert escape.latex_label("tab:glue_sst2__minilm-l6") == "tab:glue-sst2--minilm-l6"
    a, b = escape.latex_label("tab:x}y"), escape.latex_label("tab:x{y")
    assert a != b and re.fullmatch(r"[A-Za-z0-9:.\-]+", a)


# ---------------------------------------------------------------- markdown

def split_row(line: str) -> list[str]:
    """GFM cells of a table row: split on pipes not escaped by a backslash."""
    cells, cur, i = [], "", 0
    body = line.strip()[1:-1] if line.strip().startswith("|") else line
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            cur += body[i:i + 2]
            i += 2
            continue
        if body[i] == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += body[i]
        i += 1
    return cells + [cur]


def tables(md: str) -> list[list[str]]:
    out, cur = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


@pytest.mark.parametrize("kind", ["md", "leaderboard"])
def test_markdown_rows_keep_their_column_count(outputs, kind):
    md = outputs[kind].read_text(encoding="utf-8")
    found = tables(md)
    assert found
    for t in found:
        widths = {len(split_row(line)) for line in t}
        assert len(widths) == 1, f"rows of differing width: {widths}\n" + "\n".join(t)
    board = found[0]
    assert len(board) == 2 + len(HOSTILE_METHODS)  # header, rule, one row per method: no row broken in two
    assert "<script" not in md and not re.search(r"(?<!\\)\]\(javascript", md)
    for target in re.findall(r"!\[[^\]]*\]\(([^)]*)\)", md):  # plot links: percent-encoded file names
        assert re.fullmatch(r"[A-Za-z0-9_.%~-]+", target), target


def test_markdown_checker_catches_a_raw_pipe():
    raw = "| method | x |\n|---|---|\n| a|b | 1 |\n"
    assert {len(split_row(line)) for line in tables(raw)[0]} != {2}


# ---------------------------------------------------------------- CSV

def test_csv_cells_cannot_be_formulas(outputs):
    for kind in ("csv", "scores"):
        with open(outputs[kind], newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        cells = [c for row in rows for c in row]
        for c in cells:
            stripped = c.lstrip(" ")
            if stripped[:1] in ("=", "+", "-", "@"):
                assert re.fullmatch(r"[+-]?[\d.]+(e[+-]?\d+)?", stripped), f"live formula in {kind}: {c!r}"
        assert "'" + HOSTILE_METHODS[0] in cells and "'-2+3" in cells and "'@SUM(A1)" in cells
        assert " TAB" in cells and " CR" in cells  # tab and CR: a space; what follows is no formula


def test_csv_cell_rules():
    assert escape.csv_cell("=1+1") == "'=1+1" and escape.csv_cell("  @x") == "'  @x"
    assert escape.csv_cell("\t=1+1") == "' =1+1" and escape.csv_cell("\r-1+1") == "' -1+1"
    assert escape.csv_cell("-0.0297") == "-0.0297" and escape.csv_cell("+1e-3") == "+1e-3"
    assert escape.csv_cell("-1+1") == "'-1+1" and escape.csv_cell("prefix_tuning") == "prefix_tuning"
    assert escape.csv_cell(0.5) == 0.5 and escape.csv_cell(None) is None


# ---------------------------------------------------------------- HTML

class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts, self.text, self.rows, self.titles = 0, [], [], []
        self._row: list[int] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        elif tag == "tr":
            self.rows.append(0)
        elif tag in ("td", "th"):
            self.rows[-1] += 1
            if "title" in a:
                self.titles.append(a["title"])

    def handle_data(self, data):
        self.text.append(data)


def test_html_has_no_injected_markup(outputs):
    page = outputs["html"].read_text(encoding="utf-8")
    assert page.count("<script") == 1  # the page's own sort script, nothing from a record
    parser = _Page()
    parser.feed(page)
    assert parser.scripts == 1
    text = "".join(parser.text)
    assert "<script>alert(1)</script>" in text  # shown as text
    assert "\u202e" not in page
    assert any("<script>alert(2)</script>" in t for t in parser.titles)  # the failure's error, on hover


# ---------------------------------------------------------------- matplotlib

def test_raw_mathtext_name_breaks_matplotlib_by_default(tmp_path):
    """Why bench/report/plots.py draws with mathtext off: this name, drawn with matplotlib's
    defaults, raises while saving."""
    fig = plt.figure()
    fig.text(0.1, 0.5, "$\\frac{1$}")
    with pytest.raises(ValueError):
        fig.savefig(tmp_path / "raw.png")
    plt.close(fig)


def test_plots_draw_hostile_names_as_written(tmp_path, monkeypatch):
    """Every text of both plots, caught as they are saved: each hostile method name is
    drawn as written (a leading "_" after a space, so the legend keeps it), none through
    mathtext, and saving succeeds."""
    from matplotlib.text import Text

    from bench.report import plots
    drawn: list[Text] = []
    real_save = plots._save

    def spy(fig, path):
        drawn.extend(t for t in fig.findobj(Text) if t.get_text())
        return real_save(fig, path)
    monkeypatch.setattr(plots, "_save", spy)
    written = render(hostile_records(), tmp_path)
    assert sum(p.suffix == ".png" for p in written) == 2
    texts = {t.get_text() for t in drawn}
    for name in HOSTILE_METHODS:
        shown = escape.plot_label(name)
        assert shown in texts, name
        assert shown.strip() == escape.flatten(name).strip()  # nothing but control characters changed
    assert not [t.get_text() for t in drawn if t.get_parse_math()]
    assert any(t.startswith(escape.plot_label(TASK)) for t in texts)  # the title


def test_plots_with_hostile_names_are_written(outputs):
    for kind in ("sensitivity_png", "pareto_png"):
        assert outputs[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the functions themselves

def test_escape_functions_on_every_special():
    assert escape.latex_text("a_b&c%d$e#f{g}h~i^j\\k[l]") == (
        "a\\_b\\&c\\%d\\$e\\#f\\{g\\}h\\textasciitilde{}i\\textasciicircum{}j\\textbackslash{}k{[}l{]}")
    assert escape.markdown("a|b\\|c\nd<e>[f]$") == "a\\|b\\\\\\|c d&lt;e>\\[f\\]\\$"
    assert escape.markdown("n<2, a & b, &amp; </x> <!--") == "n<2, a & b, &amp;amp; &lt;/x> &lt;!--"
    assert escape.html_text('<a href="x">&') == "&lt;a href=&quot;x&quot;&gt;&amp;"
    assert escape.flatten("a\r\nb\x00c\u2028d\u200be") == "a  b c d e"
    for plain in ("prefix_tuning", "glue/sst2", "minilm-l6", "P=20"):
        assert escape.markdown(plain) == plain and escape.plot_label(plain) == plain


def test_the_escaping_and_failure_modules_do_not_import_torch():
    """Rendering never imports torch (house style); these modules are what this change added."""
    code = ("import sys; import bench.report.escape, bench.report.failures, bench.core.outcome, bench.report.latex, bench.report.html_page, "
            "bench.report.plots; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
