"""LaTeX tables (booktabs) for papers: the leaderboard of one slice as a ``table`` float.

Every cell, header and caption goes through ``escape.latex_text`` and the label through
``escape.latex_label``: names come from records, which are untrusted, and a single ``}``
or ``$`` in a method name would otherwise break the document. The ± and † in cells are left
as Unicode, which LaTeX's default UTF-8 input (2018+) maps to \\textpm and \\textdagger.
Needs ``\\usepackage{booktabs}``.
"""

from __future__ import annotations

import pandas as pd

from bench.report.escape import latex_label, latex_text
from bench.report.views import SliceView


def booktabs(frame: pd.DataFrame) -> str:
    """``frame`` as a booktabs ``tabular``, every cell escaped (missing values empty)."""
    def row(values) -> str:
        return " & ".join("" if v is None or (isinstance(v, float) and v != v) else latex_text(v)
                          for v in values) + r" \\"

    lines = [f"\\begin{{tabular}}{{{'l' * len(frame.columns)}}}", r"\toprule", row(frame.columns), r"\midrule",
             *(row(r) for r in frame.itertuples(index=False)), r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def slice_latex(v: SliceView) -> str:
    direction = "higher" if v.higher_is_better else "lower"
    caption = (f"{latex_text(v.title)}: {latex_text(v.metric)}, mean ± std over seeds with n and a 95\\% t-interval "
               f"({direction} is better).")
    if v.collapsed:
        caption += " † a run collapsed to predicting one class."
    if v.subset_note:
        caption += " " + latex_text(v.subset_note)
    # failed runs: one line each below the table, so the caption stays short
    notes = "".join(f"\\par {latex_text(n.text)}\n" for n in sorted(v.notes.values(), key=lambda n: n.number))
    notes += "".join(f"\\par {latex_text(t)}\n" for t in v.unstable)
    notes += "".join(f"\\par {latex_text(t)}\n" for t in (v.banner, v.context) if t)
    if notes:
        notes = "\\smallskip{\\footnotesize\n" + notes + "\\par}\n"
    label = latex_label("tab:" + v.stem)
    return ("\\begin{table}[t]\n\\centering\n\\scriptsize\n" + booktabs(v.board) + "\n" + notes +
            f"\\caption{{{caption}}}\n\\label{{{label}}}\n\\end{{table}}\n")
