"""prefix-bench compare: same results -> exit 0; a metric lowered past its CI, a
throughput/memory regression or a cell missing from B -> exit 1 naming the cell."""

from __future__ import annotations

import dataclasses

import pytest
from _records_fixture import make_records

from bench.cli import main
from bench.core.records import append_record


def write(folder, records):
    for r in records:
        append_record(folder, r)
    return str(folder)


@pytest.fixture
def base():
    return make_records()


def test_compare_against_itself_exits_0(tmp_path, base, capsys):
    a = write(tmp_path / "a", base)
    assert main(["compare", a, a]) == 0
    assert "no regression in 10 shared cell(s)" in capsys.readouterr().out


def test_metric_lowered_beyond_ci_fails_naming_the_cell(tmp_path, base, capsys):
    a = write(tmp_path / "a", base)
    lowered = [dataclasses.replace(r, main_score=r.main_score - 0.02)
               if (r.method, r.prefix_length) == ("residual_prefix", 20) else r for r in base]
    b = write(tmp_path / "b", lowered)
    assert main(["compare", a, b]) == 1
    err = capsys.readouterr().err
    assert "REGRESSION residual_prefix/glue/sst2/minilm-l6/P=20: metric worse" in err
    assert err.count("REGRESSION") == 1
    # a move inside the CI is not a regression; --min-delta tolerates a small one outside it
    inside = [dataclasses.replace(r, main_score=r.main_score - 0.001)
              if (r.method, r.prefix_length) == ("residual_prefix", 20) else r for r in base]
    assert main(["compare", a, write(tmp_path / "c", inside)]) == 0
    assert main(["compare", a, b, "--min-delta", "0.05"]) == 0


def test_a_better_metric_is_reported_not_failed(tmp_path, base, capsys):
    a = write(tmp_path / "a", base)
    better = [dataclasses.replace(r, main_score=r.main_score + 0.05) if r.method == "lora" else r for r in base]
    assert main(["compare", a, write(tmp_path / "b", better)]) == 0
    assert "metric better" in capsys.readouterr().out


def test_throughput_and_memory_regressions(tmp_path, base, capsys):
    a = write(tmp_path / "a", base)
    slow = [dataclasses.replace(r, train_tokens_per_s=r.train_tokens_per_s * 0.5) if r.method == "lora" else r
            for r in base]
    assert main(["compare", a, write(tmp_path / "b", slow)]) == 1
    assert "lora/glue/sst2/minilm-l6/P=none: throughput x0.50" in capsys.readouterr().err
    assert main(["compare", a, str(tmp_path / "b"), "--throughput-ratio", "0.4"]) == 0
    fat = [dataclasses.replace(r, peak_memory_bytes=r.peak_memory_bytes * 2) if r.prefix_length == 5 else r
           for r in base]
    assert main(["compare", a, write(tmp_path / "c", fat)]) == 1
    assert capsys.readouterr().err.count("memory x2.00") == 3


def test_missing_cells_and_bad_input(tmp_path, base, capsys):
    a = write(tmp_path / "a", base)
    b = write(tmp_path / "b", [r for r in base if r.method != "lora"])
    assert main(["compare", a, b]) == 1
    captured = capsys.readouterr()
    assert "lora/glue/sst2/minilm-l6/P=none: only in A" in captured.out
    assert "REGRESSION lora/glue/sst2/minilm-l6/P=none: missing in B" in captured.err
    assert main(["compare", a, b, "--fail-on-missing"]) == 1
    assert main(["compare", a, b, "--allow-missing"]) == 0
    assert main(["compare", b, a]) == 0  # a cell only in B is new, not a regression
    assert main(["compare", a, str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", a, a, "--memory-ratio", "0.5"]) == 2


def test_one_seed_has_no_ci_to_print(tmp_path, capsys):
    one = write(tmp_path / "a", make_records(methods=("lora",), seeds=(0,)))
    assert main(["compare", one, one]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| lora/"))
    assert "— (n=1)" in row and "0.8490–0.8490" not in row


def test_rows_of_an_older_identity_are_left_out_not_averaged(tmp_path, capsys):
    recs = make_records(methods=("lora",), seeds=(0, 1))
    newer = dataclasses.replace(recs[0], cell_id="lora-new", config={"method": "lora", "identity": "new"},
                                main_score=0.5)
    folder = write(tmp_path / "a", [*recs, newer])
    assert main(["compare", folder, folder]) == 0
    out = capsys.readouterr()
    assert "left out 2 older row(s)" in out.err and "0.5000 (n=1)" in out.out


def test_different_weights_of_one_backbone_are_refused(tmp_path, base, capsys):
    """The offline 4-bit SmolLM2 and the hub's bf16 checkpoint share a name, not weights."""
    def weighted(tag):
        return [dataclasses.replace(r, config={**r.config, "weights": tag}) for r in base]

    a = write(tmp_path / "a", weighted("gguf-q4_1-dequantised-fp32"))
    b = write(tmp_path / "b", weighted("hub-bf16"))
    assert main(["compare", a, b]) == 2
    err = capsys.readouterr().err
    assert "different weights" in err and "gguf-q4_1-dequantised-fp32" in err and "hub-bf16" in err
    assert main(["compare", a, a]) == 0


def test_a_cells_weights_are_part_of_its_id():
    from bench.run.driver import pinned_cells
    from bench.run.matrix import load_suite

    cell = load_suite(None, "smoke")[0]
    pinned = pinned_cells([cell])[0]
    assert pinned.weights == "original-fp32"  # MiniLM: the same weights offline and online
    assert pinned.id != pinned.pinned(pinned.threads, pinned.deterministic, "hub-bf16").id
