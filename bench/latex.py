"""LaTeX tables (booktabs) for papers: the leaderboard of one slice as a ``table`` float.

tabulate's ``latex_booktabs`` does the escaping (``_``, ``%``, ``&`` ...); the ± and †
in cells are left as Unicode, which LaTeX's default UTF-8 input (2018+) maps to
\\textpm and \\textdagger. Needs ``\\usepackage{booktabs}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tabulate import tabulate

if TYPE_CHECKING:
    from bench.render import SliceView


_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _escape(text: str) -> str:
    """For the caption, which tabulate does not see; one pass so no escape is re-escaped."""
    return "".join(_SPECIAL.get(ch, ch) for ch in text)


def slice_latex(v: SliceView) -> str:
    body = tabulate(v.board, headers="keys", tablefmt="latex_booktabs", showindex=False, disable_numparse=True)
    direction = "higher" if v.higher_is_better else "lower"
    caption = (f"{_escape(v.title)}: {_escape(v.metric)}, mean ± std over seeds with n and a 95\\% bootstrap "
               f"CI ({direction} is better).")
    if v.collapsed:
        caption += " † a run collapsed to predicting one class."
    label = "tab:" + v.stem.replace("_", "-")
    return ("\\begin{table}[t]\n\\centering\n\\scriptsize\n" + body + "\n"
            f"\\caption{{{caption}}}\n\\label{{{label}}}\n\\end{{table}}\n")
