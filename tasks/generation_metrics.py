"""Data-to-text metrics computed as the E2E NLG Challenge's official script does
(https://github.com/tuetschek/e2e-metrics): BLEU and NIST the way MT-Eval (mteval-v13a)
computes them, METEOR, ROUGE-L and CIDEr from the MS-COCO caption evaluation code.

No E2E metrics package is on PyPI, so the parts come from well-kept libraries:
- BLEU: sacrebleu with the 13a tokenizer, lower-cased: sacrebleu reimplements mteval-v13a's
  BLEU (same tokenization, closest-reference length, multiple references per output).
- NIST: nltk's ``corpus_nist`` (n = 5) on the same 13a tokens. Deviation: nltk computes the
  information weights and brevity penalty as the NIST paper states; mteval's Perl script
  differs in details (e.g. counting over the reference set as a whole), so NIST values are
  close to, not identical with, the official numbers. No mteval is installable here to
  measure the gap; compare against the official script before citing NIST to two decimals.
- METEOR (1.5, the jar pycocoevalcap bundles; needs Java), ROUGE-L and CIDEr(-D) from
  ``pycocoevalcap``, after its PTB tokenizer (also Java), exactly the COCO pipeline the
  E2E script runs.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

E2E_METRICS = ("bleu", "nist", "meteor", "rouge_l", "cider")


class MetricUnavailableError(RuntimeError):
    """A metric's dependency (a package or Java) is missing."""


def _check_refs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} outputs for {len(references)} reference sets")
    empty = [i for i, r in enumerate(references) if not r]
    if empty:
        raise ValueError(f"outputs {empty[:5]} have no references")


def bleu_mteval(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (0-100), mteval-v13a style, any number of references per output."""
    import sacrebleu

    _check_refs(hypotheses, references)
    width = max(len(r) for r in references)
    # sacrebleu takes reference *streams*; outputs with fewer references pad with None
    streams = [[r[k] if k < len(r) else None for r in references] for k in range(width)]
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams, tokenize="13a", lowercase=True).score)


def nist_mteval_tokens(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 5) -> float:
    """Corpus NIST (nltk) on mteval-13a tokens, lower-cased. See the module note."""
    from nltk.translate.nist_score import corpus_nist
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    _check_refs(hypotheses, references)
    tok = Tokenizer13a()

    def split(s: str) -> list[str]:
        return tok(s.lower()).split()

    try:
        return float(corpus_nist([[split(r) for r in refs] for refs in references],
                                 [split(h) for h in hypotheses], n=n))
    except ZeroDivisionError:  # every output empty
        return 0.0


def coco_metrics(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                 meteor: bool = True) -> dict[str, float]:
    """METEOR, ROUGE-L and CIDEr as the COCO caption evaluation computes them."""
    try:
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as err:
        raise MetricUnavailableError("E2E metrics need pycocoevalcap (pip install pycocoevalcap)") from err
    if shutil.which("java") is None:
        raise MetricUnavailableError("pycocoevalcap's tokenizer and METEOR need Java (java on PATH)")
    _check_refs(hypotheses, references)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    # an empty output would make the PTB tokenizer drop the line; score it as a blank
    res = tokenizer.tokenize({i: [{"caption": h if h.strip() else "."}] for i, h in enumerate(hypotheses)})
    out = {"rouge_l": float(Rouge().compute_score(gts, res)[0]),
           "cider": float(Cider().compute_score(gts, res)[0])}
    if meteor:
        scorer = Meteor()  # one JVM per call (~10 s); its __del__ ends the process
        out["meteor"] = float(scorer.compute_score(gts, res)[0])
        del scorer
    return out


def e2e_metrics(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """The five E2E challenge metrics. BLEU on the 0-100 scale, the rest as their tools
    report them (METEOR, ROUGE-L in 0-1; NIST and CIDEr unbounded)."""
    hyps = [h.strip() for h in hypotheses]
    out = {"bleu": bleu_mteval(hyps, references), "nist": nist_mteval_tokens(hyps, references)}
    out.update(coco_metrics(hyps, references))
    return {k: out[k] for k in E2E_METRICS}
