"""Task metrics against independent computations on fixed vectors, and published values
where there are some."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from tasks import TASKS
from tasks.glue import glue_average, glue_task_score
from tasks.metrics import classification_metrics

P = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1])
Y = np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 0])


def test_glue_classification_metrics_match_hand_computation():
    tp = int(((P == 1) & (Y == 1)).sum())
    tn = int(((P == 0) & (Y == 0)).sum())
    fp = int(((P == 1) & (Y == 0)).sum())
    fn = int(((P == 0) & (Y == 1)).sum())
    assert (tp, tn, fp, fn) == (4, 3, 2, 1)
    m = classification_metrics(["accuracy", "f1", "matthews_correlation"], P, Y)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["matthews_correlation"] == pytest.approx(mcc)


def test_stsb_correlations_match_hand_computation():
    p = np.array([0.1, 2.0, 3.5, 4.0, 1.0, 5.0])
    y = np.array([0.0, 2.5, 3.0, 4.5, 1.5, 4.8])
    m = TASKS.get("glue/stsb").compute_metrics(p.tolist(), [type("E", (), {"label": v})() for v in y])
    pc, yc = p - p.mean(), y - y.mean()
    assert m["pearson"] == pytest.approx((pc @ yc) / math.sqrt((pc @ pc) * (yc @ yc)))
    rp, ry = p.argsort().argsort(), y.argsort().argsort()  # no ties: ranks are argsort of argsort
    d = rp - ry
    n = len(p)
    assert m["spearmanr"] == pytest.approx(1 - 6 * (d @ d) / (n * (n * n - 1)))


def test_glue_average_follows_the_leaderboard_rules():
    records = {
        "glue/cola": {"matthews_correlation": 0.5, "accuracy": 0.9},  # CoLA: Matthews only
        "glue/mrpc": {"f1": 0.9, "accuracy": 0.8},  # mean of F1 and accuracy
        "glue/stsb": {"pearson": 0.8, "spearmanr": 0.7},
        "glue/mnli_matched": {"accuracy": 0.8},  # MNLI counts once: mean of m and mm
        "glue/mnli_mismatched": {"accuracy": 0.6},
        "e2e_nlg": {"bleu": 60.0},  # not GLUE: ignored
    }
    assert glue_task_score("glue/mrpc", records["glue/mrpc"]) == pytest.approx(0.85)
    assert glue_task_score("glue/cola", records["glue/cola"]) == pytest.approx(0.5)
    avg, missing = glue_average(records)
    assert avg == pytest.approx((0.5 + 0.85 + 0.75 + 0.7) / 4)
    assert set(missing) == {"glue/sst2", "glue/qqp", "glue/qnli", "glue/rte", "glue/wnli"}
    assert glue_task_score("glue/mrpc", {"f1": 0.9}) is None


# --- generation metrics -----------------------------------------------------------------

HYPS = ["The Eagle is a coffee shop near Burger King .",
        "Alimentum is a family friendly place in the city centre ."]
REFS = [["The Eagle is a coffee shop near Burger King in the riverside area .",
         "There is a coffee shop called The Eagle near Burger King ."],
        ["Alimentum is a family-friendly restaurant in the city centre .",
         "In the city centre there is a family friendly venue named Alimentum ."]]


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def test_bleu_matches_an_independent_implementation():
    """BLEU from the definition (Papineni et al., 2002): clipped n-gram precisions over the
    corpus, closest-reference-length brevity penalty, on the same 13a tokens."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    from tasks.generation_metrics import bleu_mteval

    tok = Tokenizer13a()
    hyps = [tok(h.lower()).split() for h in HYPS]
    refs = [[tok(r.lower()).split() for r in rs] for rs in REFS]
    match, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for h, rs in zip(hyps, refs, strict=True):
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
        for n in range(1, 5):
            counts = _ngrams(h, n)
            most = Counter()
            for r in rs:
                most |= _ngrams(r, n)
            match[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    expected = 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(match, total, strict=True)) / 4)
    assert bleu_mteval(HYPS, REFS) == pytest.approx(expected, rel=1e-9)


def test_bleu_published_value():
    """sacrebleu's documented example (README): 48.53 for these two systems' outputs."""
    from tasks.generation_metrics import bleu_mteval

    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    refs = [["The dog bit the man.", "The dog had bit the man."],
            ["It was not unexpected.", "No one was surprised."],
            ["The man bit him first.", "The man had bitten the dog."]]
    # the published value is case-sensitive; our E2E BLEU lower-cases, which these
    # sentences do not change except "The"/"the" (same n-grams after lower-casing either side)
    assert bleu_mteval(hyps, refs) == pytest.approx(48.53, abs=0.01)


def test_nist_matches_hand_computation():
    """hyp "a b", ref "a b c": info(a) = info(b) = log2(3 words / 1), info(a b) =
    log2(count(a) / count(a b)) = 0; no 3..5-grams in the output. Length ratio 2/3 gives the
    brevity factor exactly 0.5 (that is how beta is defined). NIST = 0.5 * log2(3)."""
    from tasks.generation_metrics import nist_mteval

    assert nist_mteval(["a b"], [["a b c"]]) == pytest.approx(0.5 * math.log2(3))
    # two references: counts pool over both; "x" is in neither, clipping by the best reference
    # info: a:2 b:1 c:1 d:1 words 5 -> a: log2(5/2), b: log2(5/1); (a b): log2(2/1)
    value = nist_mteval(["a b x"], [["a b c", "a d"]])
    unigram = (math.log2(5 / 2) + math.log2(5)) / 3
    bigram = math.log2(2 / 1) / 2
    assert value == pytest.approx(unigram + bigram)  # 3 words vs mean ref length 2.5: no penalty


def test_nist_rewards_overlap_and_differs_from_nltk_as_documented():
    from nltk.translate.nist_score import corpus_nist

    from tasks.generation_metrics import nist_mteval

    good = nist_mteval(HYPS, REFS)
    assert good > nist_mteval(["a b c d", "e f g h"], REFS) >= 0.0
    nltk_value = corpus_nist([[r.lower().split() for r in rs] for rs in REFS], [h.lower().split() for h in HYPS], n=5)
    assert nltk_value < good  # the gap the module note measures on E2E (nltk lower)


def test_rouge_l_matches_lcs_definition():
    """ROUGE-L (Lin, 2004) as COCO computes it: LCS F-measure with beta = 1.2, the best
    reference taken for precision and recall separately."""
    from pycocoevalcap.rouge.rouge import Rouge

    hyp, ref = "the cat sat on the mat", "the cat is on the mat"
    lcs = 5  # the cat . on the mat
    p, r, beta = lcs / 6, lcs / 6, 1.2
    expected = (1 + beta ** 2) * p * r / (r + beta ** 2 * p)
    score, _ = Rouge().compute_score({0: [ref]}, {0: [hyp]})
    assert score == pytest.approx(expected)


@pytest.mark.slow
def test_e2e_metrics_all_five_with_java():
    """Runs the two JVMs (PTB tokenizer, METEOR 1.5): about 15 s."""
    from tasks.generation_metrics import E2E_METRICS, e2e_metrics

    good = e2e_metrics(HYPS, REFS)
    assert list(good) == list(E2E_METRICS)
    exact = e2e_metrics([REFS[0][0], REFS[1][0]], REFS)
    poor = e2e_metrics(["a restaurant .", "a place ."], REFS)
    for m in E2E_METRICS:
        assert exact[m] > good[m] > poor[m], m
    assert exact["bleu"] == pytest.approx(100.0) and 0.9 < exact["meteor"] <= 1.0
    assert exact["rouge_l"] == pytest.approx(1.0)


@pytest.mark.slow
def test_a_reused_meteor_jvm_scores_like_a_fresh_one():
    """One METEOR JVM serves a whole process (tasks/generation_metrics.py)."""
    from tasks.generation_metrics import coco_metrics, drop_meteor, meteor_scorer

    first = coco_metrics(HYPS, REFS)["meteor"]
    other = coco_metrics(["a restaurant .", "a place ."], REFS)["meteor"]
    again = coco_metrics(HYPS, REFS)["meteor"]  # the same JVM, after another call
    assert meteor_scorer() is meteor_scorer()
    drop_meteor()
    fresh = coco_metrics(HYPS, REFS)["meteor"]  # a new JVM
    assert first == again == fresh and other < first


def test_e2e_grouping_scores_against_all_references(data):
    task = TASKS.get("e2e_nlg")
    train = task.load("train", data)
    test = task.load("test", data)
    assert len(train.examples) == 4672 and len(test.examples) == 630  # rows / unique MRs (README)
    assert "devset.csv" in train.notes and sum(len(e.references) for e in test.examples) == 4693
