"""Fuzzers. Record rows: render and compare never raise and never write outside the tables
folder. Suite files: ``run --dry-run`` either validates (exit 0, every cell in bounds) or
exits 2 with a message; never a traceback, never a file written."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.cli import main
from bench.core.config import LIMITS, TrainConfig
from bench.core.records import ResultRecord, read_records
from bench.report.render import render
from bench.run.matrix import load_suite

from ._helpers import row, tree, write_rows

# -- record rows ------------------------------------------------------------------------------

NAMES = st.sampled_from(["../../x", "/etc/passwd", "..", ".", "", "a$\\b$", "$", "{x}", "%s", "<b>", "a|b", "\\",
                         "\x00", "x" * 300, "glue/sst2", "glue_sst2", "minilm-l6", "lora", "prefix_tuning",
                         "accuracy", "f1", "x__scores", "leaderboard", "ok"]) | st.text(max_size=10)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), NAMES)
ANY_JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
                        max_leaves=8)
FLOATS = st.floats(allow_nan=True, allow_infinity=False) | st.sampled_from([0.0, 1e308, -1e308, 5e-324])
COUNTS = st.integers(0, 2**63 - 1) | st.integers(0, 10)
# Values of the field's own type (often extreme), so the search gets past the schema into
# rendering; ANY_JSON mixes in wrong types as well.
PLAUSIBLE = {
    **{k: NAMES for k in ("cell_id", "suite", "method", "task", "backbone", "main_metric", "peak_memory_kind",
                          "error", "formulation")},
    "status": st.sampled_from(["ok", "ok", "ok", "failed"]) | NAMES,
    "prefix_length": st.none() | st.integers(1, 2**63 - 1) | st.sampled_from([1, 5, 20]),
    "seed": st.integers(-2**63, 2**63 - 1) | st.integers(0, 3),
    "main_score": st.none() | FLOATS,
    "metrics": st.dictionaries(NAMES, FLOATS, max_size=3),
    "collapsed": st.booleans(),
    **{k: COUNTS for k in ("trainable_params", "adapter_bytes", "peak_memory_bytes", "train_steps")},
    **{k: st.floats(0, 1e308) for k in ("train_tokens_per_s", "eval_tokens_per_s", "train_seconds")},
    "config": st.dictionaries(NAMES, ANY_JSON, max_size=2),
}
ROWS = st.fixed_dictionaries({}, optional={k: st.one_of(v, v, ANY_JSON) for k, v in PLAUSIBLE.items()}).map(
    lambda changes: row(**changes))
LINES = st.one_of(ROWS, ROWS, ROWS, ANY_JSON.map(lambda v: json.dumps(v, allow_nan=True)), st.binary(max_size=20))
FILES = st.lists(LINES, max_size=8)


def _silently(*argv: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(list(argv))


def _outside(root: Path, before: set[str], allowed: str) -> list[str]:
    return sorted(p for p in tree(root) - before if not (p == allowed or p.startswith(allowed + "/")))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FILES, FILES)
def test_fuzzed_rows_render_and_compare_without_raising(a, b):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_rows(root / "a", a)
        write_rows(root / "b", b)
        before = tree(root)
        records, _ = read_records(root / "a")
        assert all(isinstance(r, ResultRecord) for r in records)
        written = render(records, root / "tables", plots=False)
        assert all(p.parent == root / "tables" for p in written)
        assert _outside(root, before, "tables") == []
        assert _silently("compare", str(root / "a"), str(root / "b")) in (0, 1, 2)  # 2: nothing finished
        assert _outside(root, before, "tables") == []


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ROWS, min_size=1, max_size=4))
@example([row(method="a$\\b$", main_metric="$\\frac{$", task="t$^$", prefix_length=p, cell_id=str(p))
          for p in (5, 20)])  # TeX in a name was a traceback before bench/report/plots.py turned mathtext off
def test_fuzzed_rows_through_the_cli_with_plots_stay_in_the_folder(rows):
    # plots cost about a second per slice here, hence the few examples
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_rows(root / "runs", rows)
        before = tree(root)
        code = _silently("render", "--results", str(root / "runs"), "--tables", str(root / "tables"),
                         "--all-records", "--quiet")
        assert code in (0, 1)  # 1: no usable record
        assert _outside(root, before, "tables") == []


# -- suite files ------------------------------------------------------------------------------

NUMBERS = ["0", "1", "-1", "2", "4096", "4097", "100000000", "4294967295", "4294967296", "9223372036854775807",
           "-9223372036854775808", "nan", "inf", "-inf", "1e308", "1.5", "1e-3", "0.0", "true", '"3"']
TRAIN_KEYS = ["lr", "train_steps", "batch_size", "eval_batch_size", "max_length", "warmup_ratio", "weight_decay",
              "max_grad_norm", "train_limit", "eval_limit", "eval_every", "log_every"]
SUITE_NAMES = ["s", "../../esc", "..", "", "a b", "x" * 101, "ok-name.1", "é", "/abs", "s\\t"]
# in-range values too, so that some files validate and the checks after the first are reached
NUMBER = st.sampled_from(NUMBERS) | st.sampled_from(["1", "2", "4", "32", "0.1", "1e-3", "200"])
TRAIN = st.dictionaries(st.sampled_from(TRAIN_KEYS), NUMBER, max_size=4).map(
    lambda d: "{ " + ", ".join(f"{k} = {v}" for k, v in d.items()) + " }")
ARRAY = st.lists(NUMBER, max_size=3).map(lambda v: "[" + ", ".join(v) + "]")
METHOD_ARGS = st.sampled_from([
    "{ lora = { r = 100000000 } }", "{ lora = { r = 4096 } }", "{ lora = { r = 0 } }", "{ lora = { dropout = nan } }",
    "{ prefix_tuning = { mid_dim = 100000000 } }", "{ prefix_tuning = { mid_dim = 1 } }",
    "{ prefix_tuning = { init_std = inf } }", "{ lora = [1] }"])
MUTATIONS = {"prefix_lengths": ARRAY, "seeds": ARRAY, "train": TRAIN, "method_args": METHOD_ARGS,
             "overrides": TRAIN.map(lambda t: f"{{ lora = {t} }}"),
             "backbone_overrides": TRAIN.map(lambda t: f'{{ "tiny-llama" = {t} }}')}
BASE = {"methods": '["lora", "prefix_tuning"]', "tasks": '["glue/sst2"]', "backbones": '["tiny-llama"]',
        "prefix_lengths": "[2]", "seeds": "[0]", "train": "{ train_steps = 2, batch_size = 2 }"}


@st.composite
def suite_files(draw) -> tuple[bytes, str]:
    """(file bytes, --suite): a valid suite with a few values replaced, under a name that
    may try to leave its folder; sometimes bytes that are not UTF-8 or not TOML."""
    name = draw(st.sampled_from(SUITE_NAMES) | st.just("s"))
    keys = draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=3, unique=True))
    body = {**BASE, **{k: draw(MUTATIONS[k]) for k in keys}}
    text = f"[suites.{json.dumps(name)}]\n" + "\n".join(f"{k} = {v}" for k, v in body.items()) + "\n"
    data = text.encode()
    if draw(st.integers(0, 9)) == 0:  # damage it: invalid UTF-8 or cut mid-line
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.sampled_from([b"\xff", b"\xc3", b"", b"\x00"])) + data[cut:]
    return data, draw(st.sampled_from([name, name, name, "s"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suite_files())
def test_fuzzed_suite_files_validate_or_exit_2(data_dir, file_and_suite):
    content, suite = file_and_suite
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "suite.toml"
        path.write_bytes(content)
        before = tree(root)
        code = _silently("run", "--dry-run", "--config", str(path), "--suite", suite, "--data-dir", str(data_dir))
        assert code in (0, 2)
        assert tree(root) == before  # a dry run writes nothing, anywhere
        if code == 0:  # what validated is in bounds
            for cell in load_suite(path, suite):
                assert cell.prefix_length is None or 1 <= cell.prefix_length <= LIMITS["prefix_length"][0]
                assert 0 <= cell.seed <= LIMITS["seed"][0]
                cfg = TrainConfig(**cell.train)
                assert cfg.train_steps * cfg.batch_size <= 10_000_000 and math.isfinite(cfg.lr)
