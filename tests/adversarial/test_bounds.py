"""Every numeric option has bounds a run survives, checked at config time: exit 2 naming
the value, the bound and why, before any model loads. Unreadable config files too."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.core.config import LIMITS, MAX_PLANNED_EXAMPLES, ConfigError, TrainConfig

from ._helpers import TINY_SUITE, row, write_rows

SUITE = TINY_SUITE.format(task="glue/sst2").replace('methods = ["lora"]', 'methods = ["lora", "prefix_tuning"]')


def _run(tmp_path, capsys, text: str | bytes, *extra: str) -> tuple[int, str]:
    path = tmp_path / "suite.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = main(["run", "--config", str(path), "--suite", "s", "--results", str(tmp_path / "runs"),
                 "--no-render", *extra])
    return code, capsys.readouterr().err


TRAIN = "train = { train_steps = 2, batch_size = 2, eval_limit = 4, max_length = 32 }"


@pytest.mark.parametrize("edit, needles", [
    (("prefix_lengths = [2]", "prefix_lengths = [100000000]"),
     ["prefix_length 100000000 is above 4096", "the kernel kills the run"]),
    (("prefix_lengths = [2]", "prefix_lengths = [4097]"), ["prefix_length 4097 is above 4096"]),
    (("seeds = [0]", "seeds = [-1]"), ["seeds holds -1", "[0, 4294967295]"]),
    (("seeds = [0]", "seeds = [4294967296]"), ["seeds holds 4294967296", "unsigned 32-bit"]),
    ((TRAIN, "train = { batch_size = 0 }"), ["batch_size must be > 0, got 0"]),
    ((TRAIN, "train = { batch_size = 100000 }"), ["batch_size 100000 is above 4096"]),
    ((TRAIN, "train = { eval_batch_size = 100000 }"), ["eval_batch_size 100000 is above 4096"]),
    ((TRAIN, "train = { train_steps = 10000000 }"), ["train_steps 10000000 is above 1000000"]),
    ((TRAIN, "train = { train_steps = 1000000, batch_size = 4096 }"),
     [f"train_steps x batch_size = 4096000000 is above {MAX_PLANNED_EXAMPLES}"]),
    ((TRAIN, "train = { max_length = 1000000 }"), ["max_length 1000000 is above 8192", "8192 positions"]),
    ((TRAIN, "train = { lr = nan }"), ["key 'lr' has value nan, expected a finite number"]),
    ((TRAIN, "train = { lr = inf }"), ["key 'lr' has value inf, expected a finite number"]),
    ((TRAIN, "train = { lr = -1e-3 }"), ["lr must be > 0"]),
    ((TRAIN, "train = { lr = 0 }"), ["lr must be > 0"]),
    ((TRAIN, "train = { warmup_ratio = 1.0 }"), ["warmup_ratio must be in [0, 1)"]),
    ((TRAIN, "train = { weight_decay = -1.0 }"), ["weight_decay must be >= 0"]),
    ((TRAIN, "train = { max_grad_norm = 0.0 }"), ["max_grad_norm must be > 0"]),
    ((TRAIN, "train = { train_limit = 0 }"), ["train_limit must be > 0"]),
    ((TRAIN, "train = { eval_every = -1 }"), ["eval_every must be >= 0"]),
    ((TRAIN, "train = { train_steps = 9223372036854775807 }"), ["train_steps 9223372036854775807 is above"]),
    ((TRAIN, f"{TRAIN}\nmethod_args.lora = {{ r = 100000000 }}"), ["r 100000000 is above 4096"]),
    ((TRAIN, f"{TRAIN}\nmethod_args.prefix_tuning = {{ mid_dim = 100000000 }}"), ["mid_dim must be in [1, 65536]"]),
])
def test_out_of_range_numbers_exit_2_before_any_model(tmp_path, capsys, no_model, data_dir, edit, needles):
    code, err = _run(tmp_path, capsys, SUITE.replace(*edit), "--data-dir", str(data_dir))
    assert code == 2, err
    assert all(n in err for n in needles), err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_the_bounds_themselves_are_accepted():
    TrainConfig(train_steps=LIMITS["train_steps"][0], batch_size=MAX_PLANNED_EXAMPLES // LIMITS["train_steps"][0],
                max_length=LIMITS["max_length"][0], eval_batch_size=LIMITS["eval_batch_size"][0])
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        TrainConfig(lr=float("inf"))  # also when built in code, not only from TOML


def test_a_bound_prefix_length_and_seed_expand(tmp_path):
    from bench.run.matrix import load_suite

    path = tmp_path / "suite.toml"
    path.write_text(SUITE.replace("prefix_lengths = [2]", "prefix_lengths = [4096]")
                    .replace("seeds = [0]", "seeds = [0, 4294967295]"))
    cells = load_suite(path, "s")
    assert {c.prefix_length for c in cells} == {None, 4096} and {c.seed for c in cells} == {0, 4294967295}


@pytest.mark.parametrize("argv, needle", [
    (["--threads", "-1"], "argument --threads: -1 is outside 0..1024"),
    (["--threads", "100000"], "argument --threads: 100000 is outside 0..1024"),
    (["--threads", "many"], "argument --threads: 'many' is not a whole number"),
])
def test_bad_thread_counts_are_argparse_errors(tmp_path, capsys, argv, needle):
    with pytest.raises(SystemExit) as info:
        _run(tmp_path, capsys, SUITE, *argv)
    assert info.value.code == 2
    assert needle in capsys.readouterr().err


def test_executor_workers_are_bounded(tmp_path, capsys, no_model, data_dir):
    code, err = _run(tmp_path, capsys, SUITE, "--data-dir", str(data_dir), "--executor", "local",
                     "--executor-option", "isolate=true", "--executor-option", "workers=100000")
    assert code == 2 and "workers 100000 is above 256" in err


@pytest.mark.parametrize("content, needle", [
    (None, "is a folder; --config takes a TOML file"),
    (b"[suites.s]\nmethods = [\"l\xf6ra\"]\n", "not valid TOML: not UTF-8 text"),
    (b"\xff\xfe[\x00s\x00]\x00", "not valid TOML: not UTF-8 text"),
    (b"[suites.s\n", "not valid TOML"),
])
def test_unreadable_config_files_exit_2(tmp_path, capsys, no_model, content, needle):
    path = tmp_path / "suite.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    for argv in (["run", "--config", str(path), "--suite", "s", "--dry-run"], ["list", "suites", "--config", str(path)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and str(path) in err and "Traceback" not in err, err


@pytest.mark.parametrize("argv, needle", [
    (["compare", "A", "B", "--min-delta", "nan"], "--min-delta must be a finite number"),
    (["compare", "A", "B", "--memory-ratio", "inf"], "--memory-ratio must be a finite number"),
    (["compare", "A", "B", "--throughput-ratio", "nan"], "--throughput-ratio must be a finite number"),
    (["reproduce", "abc", "--results", "R", "--tolerance", "nan"], "--tolerance must be a finite number >= 0"),
    (["reproduce", "abc", "--results", "R", "--tolerance", "-1"], "--tolerance must be a finite number >= 0"),
])
def test_non_finite_thresholds_exit_2(tmp_path, capsys, argv, needle):
    argv = [str(tmp_path / a) if a in ("A", "B", "R") else a for a in argv]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_reproduce_refuses_a_forged_prefix_length_before_any_model(tmp_path, capsys, no_model):
    from bench.run.matrix import Cell, load_suite

    cell = load_suite(None, "tiny")[0]
    resolved = {**cell.resolved(), "prefix_length": 100_000_000}
    forged = Cell.from_resolved(resolved, suite=cell.suite)
    write_rows(tmp_path, [row(cell_id=forged.id, config=resolved, prefix_length=100_000_000)])
    assert main(["reproduce", forged.id, "--results", str(tmp_path), "--device", "cpu"]) == 2
    assert "prefix_length 100000000 is above 4096" in capsys.readouterr().err


def test_a_recorded_thread_count_is_checked_before_a_pinned_rerun():
    from bench.core.records import ResultRecord
    from bench.run.rerun import _recorded_threads

    for bad in ("abc", "0", "100000000", "²", "-1"):
        with pytest.raises(ConfigError, match="not a thread count"):
            _recorded_threads(ResultRecord(**row(kernels={"threads": bad})), 2)
    assert _recorded_threads(ResultRecord(**row(kernels={"threads": "4"})), 2) == 4
    assert _recorded_threads(ResultRecord(**row(kernels={})), 2) == 2


def test_results_or_tables_that_are_files_exit_2(tmp_path, capsys, no_model, data_dir):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, err = _run(tmp_path, capsys, SUITE, "--data-dir", str(data_dir), "--results", str(a_file))
    assert code == 2 and f"--results {a_file} is not a folder" in err
    write_rows(tmp_path / "runs2", [row()])
    assert main(["render", "--results", str(tmp_path / "runs2"), "--tables", str(a_file), "--all-records"]) == 2
    assert f"--tables {a_file} is not a folder" in capsys.readouterr().err
