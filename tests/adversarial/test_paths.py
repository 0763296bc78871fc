"""No write outside the results or tables folder, whatever a records file or suite names.

Names typed by a person (a suite) are refused with exit 2; names read from records are
mapped to safe file names; every write is checked against its folder last.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.cli import main
from bench.core.config import ConfigError
from bench.core.safe_names import SEPARATOR, UnsafePathError, check_name, inside, slug, unique_stems
from tasks import task_facts

from ._helpers import row, tree, write_rows

ESCAPES = ["../../x", "../../../x", "/tmp/abs"]  # each slice draws a plot (~1 s): a few suffice here
MORE = ["..", ".", "", "a/../../b", "~", "-rf", "a__b", "x" * 300, "é/ü", "nul\x00byte", "new\nline", "C:\\win",
        "..\\..\\x", "glue/sst2", "glue_sst2", "GLUE_SST2", "x__scores", "leaderboard", "index.html"]
SAFE_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def test_render_of_hostile_names_writes_only_in_the_tables_folder(tmp_path, monkeypatch, capsys):
    """The acceptance test: rows naming ../../x as backbone, task, method and suite."""
    work = tmp_path / "a" / "b" / "c"
    rows = [row(seed=seed, cell_id=f"c{i}-{seed}", backbone=name, task=name, method=name, suite=name)
            for i, name in enumerate(ESCAPES) for seed in (0, 1)]
    rows += [row(cell_id="mixed", backbone="../../../etc", task="glue/sst2")]
    write_rows(work / "runs", rows)
    monkeypatch.chdir(work)
    before = tree(tmp_path)
    assert main(["render", "--results", "runs", "--tables", "tables", "--all-records", "--quiet"]) == 0
    new = tree(tmp_path) - before
    assert new and all(p.startswith("a/b/c/tables") for p in new), sorted(new)
    files = [Path(p).name for p in new if p != "a/b/c/tables"]
    assert all(SAFE_FILE.fullmatch(f) and ".." not in f for f in files), files
    # every slice got its own files: nothing overwrote another slice
    slices = len(ESCAPES) + 1  # + mixed
    assert len([f for f in files if f.endswith(".md")]) == slices + 2  # + leaderboard.md, glue_average.md
    assert "wrote" in capsys.readouterr().out


def test_many_more_names_each_get_their_own_files_in_the_folder(tmp_path):
    from bench.core.records import ResultRecord
    from bench.report.render import render

    out = tmp_path / "deep" / "tables"
    records = [ResultRecord(**row(cell_id=f"{i}-{j}", task=t, backbone=b, method=t))
               for i, t in enumerate(MORE) for j, b in enumerate(MORE[:2])]
    before = tree(tmp_path)
    written = render(records, out, plots=False, facts=task_facts())
    new = tree(tmp_path) - before
    assert all(p.startswith("deep") for p in new)
    assert len(set(written)) == len(written)  # no slice overwrote another's file
    assert len([p for p in written if p.suffix == ".md"]) == len(MORE) * 2 + 2


def test_a_hostile_suite_name_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys, no_model,
                                                                    data_dir):
    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "esc.toml"
    suite.write_text('[suites."../../../esc"]\nmethods = ["lora"]\ntasks = ["glue/sst2"]\n'
                     'backbones = ["tiny-llama"]\nprefix_lengths = [2]\nseeds = [0]\n')
    before = tree(tmp_path.parent)
    for argv in (["run", "--config", str(suite), "--suite", "../../../esc", "--data-dir", str(data_dir)],
                 ["run", "--config", str(suite), "--suite", "../../../esc", "--dry-run"],
                 ["render", "--suite", "../../../esc"],
                 ["render", "--suite", "../../../esc", "--results", str(tmp_path)],
                 ["reproduce", "abc", "--suite", "../../../esc"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "suite name '../../../esc' is not allowed" in err and "letters, digits" in err, err
    assert tree(tmp_path.parent) == before


@pytest.mark.parametrize("name", ["default", "claims-ptv2", "a.b_c-1", "S"])
def test_suite_names_in_use_stay_valid(name):
    assert check_name("suite", name) == name


@pytest.mark.parametrize("name", ["", "..", "../x", "a/b", ".hidden", "-x", "a..b", "x" * 101, "a b", "é"])
def test_bad_suite_names_name_the_value_and_the_rule(name):
    with pytest.raises(ConfigError, match=r"suite name .* is not allowed .* letters, digits"):
        check_name("suite", name)


def test_a_planted_symlink_is_not_followed_out_of_the_tables_folder(tmp_path, capsys):
    outside = tmp_path / "victim.md"
    outside.write_text("precious")
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "glue_sst2__minilm-l6.md").symlink_to(outside)
    write_rows(tmp_path / "runs", [row()])
    code = main(["render", "--results", str(tmp_path / "runs"), "--tables", str(tables), "--all-records",
                 "--quiet"])
    assert code == 2
    assert "refusing to write" in capsys.readouterr().err
    assert outside.read_text() == "precious"


def test_inside_refuses_anything_but_a_plain_name_in_the_folder(tmp_path):
    assert inside(tmp_path, "a.md") == tmp_path / "a.md"
    for bad in ("", ".", "..", "../a.md", "sub/a.md", "/etc/passwd"):
        with pytest.raises(UnsafePathError, match="refusing to write"):
            inside(tmp_path, bad)


def test_known_names_keep_their_file_names():
    assert slug("glue/sst2") == "glue_sst2" and slug("minilm-l6") == "minilm-l6"
    assert unique_stems([("glue/sst2", "minilm-l6")]) == {("glue/sst2", "minilm-l6"): "glue_sst2__minilm-l6"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_slug_is_always_one_safe_file_name_part(text):
    s = slug(text)
    assert SAFE_FILE.fullmatch(s) and ".." not in s and SEPARATOR not in s and not s.endswith("_")
    assert len(s) <= 64 and slug(text) == s


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["glue/sst2", "glue_sst2", "GLUE_sst2", "a b", "a_b", "a?b", "", "..",
                                           "x__y", "x", "y"]) | st.text(max_size=8),
                          st.sampled_from(["m", "M", "y__scores", "y", "_y", "y_"]) | st.text(max_size=8)),
                max_size=8))
def test_stems_are_distinct_even_ignoring_case(keys):
    stems = unique_stems(keys)
    assert set(stems) == set(keys)
    lowered = [s.lower() for s in stems.values()]
    assert len(set(lowered)) == len(lowered)
    # a stem plus a suffix never equals another stem plus another suffix
    names = [f"{s}{suffix}" for s in stems.values() for suffix in (".csv", "__scores.csv", "__pareto.csv")]
    assert len(set(n.lower() for n in names)) == len(names)
