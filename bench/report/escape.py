"""Escaping for every output format. Records are untrusted input to rendering: a method,
task, backbone, suite, metric name or error text is shown as the text it is, never read as
markup, a formula or a control sequence by whatever opens the output.

Every function first replaces control and format characters (newlines, tabs, NUL, bidi
overrides, zero-width marks) by a space: a newline ends a markdown table row or a LaTeX
paragraph inside a cell, and a bidi override makes a name display as another. Other
characters are kept, so ordinary names (``prefix_tuning``, ``glue/sst2``) print unchanged
wherever the format allows.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections.abc import Callable
from urllib.parse import quote

import pandas as pd

__all__ = ["csv_cell", "flatten", "html_text", "latex_label", "latex_text", "map_text", "markdown",
           "plot_label", "url_path"]


def flatten(text: object) -> str:
    """``text`` as one line: control and format characters (Unicode categories C*, line and
    paragraph separators) become spaces."""
    return "".join(" " if unicodedata.category(ch)[0] == "C" or ch in "\u2028\u2029" else ch for ch in str(text))


# LaTeX text mode. One pass over the characters, so no replacement is escaped again.
# Brackets are braced because a row that starts with "[" right after "\\" is read as
# "\\[<length>]"; <, > and | print as other glyphs in the OT1 font encoding.
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "[": "{[}", "]": "{]}", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
          "≠": r"$\neq$", "⚠": "(!)"}  # marks of ours with no text-mode glyph in LaTeX's utf8 input


def latex_text(text: object) -> str:
    """Text for a LaTeX cell, caption or paragraph: every special character escaped."""
    return "".join(_LATEX.get(ch, ch) for ch in flatten(text))


_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9:.\-]")
_LABEL_PLAIN = re.compile(r"[A-Za-z0-9:._/\-]*")


def latex_label(key: str) -> str:
    """A ``\\label``/``\\ref`` key: only letters, digits and ``:.-`` (``_`` and ``/`` become
    ``-``, as before). A key that had any other character also gets a short hash of the
    original, so two names that differ only in such characters keep distinct labels."""
    safe = _LABEL_UNSAFE.sub("-", key)
    if _LABEL_PLAIN.fullmatch(key):
        return safe
    return f"{safe}-{hashlib.sha1(key.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


# GitHub-flavoured markdown. "|" splits table cells even inside code spans unless escaped,
# and "\" is escaped first so a name ending in "\" cannot escape the cell's closing pipe.
# Brackets would start a link or image; GitHub renders "$...$" as math. "<" starts raw HTML
# only before a letter, "/", "!" or "?", and "&" an entity only before "name;" or "#123;":
# just those are escaped, so "n<2" stays readable in the raw file. Emphasis characters
# (* _ ~) are left: they restyle a name at worst, and escaping them would clutter every
# "prefix_tuning".
_MARKDOWN = {"\\": "\\\\", "|": "\\|", "[": "\\[", "]": "\\]", "$": "\\$"}
_HTML_TAG = re.compile(r"<(?=[A-Za-z/!?])")
_ENTITY = re.compile(r"&(?=#?[A-Za-z0-9]+;)")


def markdown(text: object) -> str:
    """Text for a markdown table cell, heading or list item."""
    out = "".join(_MARKDOWN.get(ch, ch) for ch in flatten(text))
    return _HTML_TAG.sub("&lt;", _ENTITY.sub("&amp;", out))


def url_path(name: str) -> str:
    """A relative file name as a link target (markdown ``![](...)``): percent-encoded, so a
    space, parenthesis or ``<`` cannot end the link; the reader decodes it back."""
    return quote(name, safe="")


# A spreadsheet reads a cell starting with one of these as a formula (OWASP "CSV
# injection"); tab and CR become spaces in flatten(), so leading spaces are looked past.
_FORMULA_START = ("=", "+", "-", "@")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: object) -> object:
    """A CSV cell: strings flattened and, when a spreadsheet would run them as a formula,
    prefixed with ``'`` (shown as text). Plain numbers, signed or not, are left as they
    are; so are non-string values (pandas writes those)."""
    if not isinstance(value, str):
        return value
    text = flatten(value)
    if text.lstrip(" ").startswith(_FORMULA_START) and not _NUMBER.fullmatch(text.strip()):
        return "'" + text
    return text


def html_text(text: object) -> str:
    """Text for HTML content or a quoted attribute value."""
    return html.escape(flatten(text), quote=True)


def plot_label(text: object) -> str:
    """A matplotlib text (title, axis label, legend entry, annotation) drawn literally.
    ``bench/report/plots.py`` draws with mathtext off (``text.parse_math``), so ``$...$``, ``}``
    and ``\\`` need no escape there; this flattens control characters and protects a
    leading ``_``, which would make the legend drop the entry (matplotlib's "_nolegend_"
    convention), with a leading space."""
    out = flatten(text)
    return " " + out if out.startswith("_") else out


def map_text(frame: pd.DataFrame, fn: Callable[[object], object]) -> pd.DataFrame:
    """``frame`` with ``fn`` applied to every string cell and to the column names; numbers
    and missing values are left for the writer to format."""
    out = frame.copy()
    for col in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[col]) or pd.api.types.is_bool_dtype(out[col])):
            out[col] = out[col].map(lambda v: fn(v) if isinstance(v, str) else v)
    out.columns = [fn(c) if isinstance(c, str) else c for c in out.columns]
    return out
