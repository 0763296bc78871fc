"""Bad input never reaches a model: malformed suites (random TOML documents and dicts)
give either valid cells or a ConfigError, never another exception; each kind of config
error names the file, the key and the bad value; the CLI exits 2 before loading a model."""

from __future__ import annotations

import dataclasses  # noqa: E402
import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.core.config import ConfigError
from bench.run.backbones import BACKBONES  # noqa: E402
from bench.run.matrix import AXES, SUITE_KEYS, Cell, expand, load_suite
from methods import METHODS  # noqa: E402

METHOD_NAMES = ["prefix_tuning", "prompt_tuning", "lora", "full_finetune", "nope"]
NAMES = METHOD_NAMES + ["glue/sst2", "glue/cola", "tiny-llama", "tiny-gpt2", ""]
TRAIN_KEYS = ["lr", "train_steps", "batch_size", "warmup_ratio", "max_length", "eval_limit", "formulation",
              "max_grad_norm", "bogus"]
METHOD_KEYS = sorted({f.name for _, cls in METHODS.items() for f in dataclasses.fields(cls.Config)}) + ["bogus"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.integers(), st.floats(),
                    st.text(max_size=8), st.sampled_from(NAMES + ["auto", "verbalizer", "classification"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(TRAIN_KEYS + NAMES), inner, max_size=4)),
    max_leaves=12)
train_tables = st.dictionaries(st.sampled_from(TRAIN_KEYS), st.one_of(
    scalars, st.integers(1, 64), st.floats(1e-6, 0.9)), max_size=4)
# Near-valid suites: a valid one with a few keys replaced by plausible or wild values, so the
# search reaches the deep checks (overrides, method args, excludes), not just the first one.
plausible = {
    "methods": st.lists(st.sampled_from(METHOD_NAMES), min_size=1, max_size=3),
    "tasks": st.lists(st.sampled_from(["glue/sst2", "glue/cola", "nope"]), min_size=1, max_size=2),
    "backbones": st.lists(st.sampled_from(sorted(BACKBONES.names()) + ["nope"]), min_size=1, max_size=2),
    "prefix_lengths": st.lists(st.integers(-1, 8), max_size=3),
    "seeds": st.lists(st.one_of(st.integers(-2, 3), st.integers()), min_size=1, max_size=3),
    "train": train_tables,
    "overrides": st.dictionaries(st.sampled_from(METHOD_NAMES), train_tables, max_size=2),
    "backbone_overrides": st.dictionaries(st.sampled_from(["tiny-llama", "tiny-gpt2"]), train_tables, max_size=2),
    "method_args": st.dictionaries(st.sampled_from(METHOD_NAMES), st.dictionaries(
        st.sampled_from(METHOD_KEYS), scalars, max_size=3), max_size=2),
    "exclude": st.lists(st.dictionaries(st.sampled_from(["method", "task", "seed", "prefix_length", "bogus"]),
                                        st.one_of(scalars, st.sampled_from(METHOD_NAMES)), max_size=2), max_size=2),
    "backbone_source": st.sampled_from(["auto", "local", "hub", "x"]),
    "description": scalars,
    "bogus": scalars,
}
VALID_SUITE = {"methods": ["prefix_tuning", "lora"], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
               "prefix_lengths": [2], "seeds": [0]}
mutations = st.lists(st.sampled_from(sorted(plausible)), max_size=3, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: st.one_of(plausible[k], plausible[k], plausible[k], values)
                                        for k in keys}))
near_valid = st.tuples(
    mutations,
    st.one_of(st.just(set()), st.just(set()), st.sets(st.sampled_from(AXES), max_size=1)),
    st.one_of(st.none(), st.none(), train_tables, values),
).map(lambda t: {"suites": {"s": {**{k: v for k, v in VALID_SUITE.items() if k not in t[1]}, **t[0]}},
                 **({} if t[2] is None else {"defaults": t[2]})})
wild = st.one_of(st.fixed_dictionaries({}, optional={"defaults": values, "suites": values, "extra": values}),
                 values)


def _expand_or_config_error(doc: object) -> None:
    try:
        cells = expand(doc, "s", "fuzz.toml")  # type: ignore[arg-type]
    except ConfigError as err:
        assert str(err), "a ConfigError must say what is wrong"
        return
    assert cells and all(isinstance(c, Cell) for c in cells)
    assert len({c.id for c in cells}) == len(cells)
    for c in cells:
        c.train_config  # noqa: B018  (every cell's config is valid)
        assert c.prefix_length is None or c.prefix_length >= 1
        assert all(not isinstance(v, float) or math.isfinite(v) for v in c.train.values())


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid)
def test_mutated_suites_give_cells_or_config_error(doc):
    _expand_or_config_error(doc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wild)
def test_random_dicts_give_cells_or_config_error(doc):
    _expand_or_config_error(doc)


toml_values = st.one_of(
    st.sampled_from(['"prefix_tuning"', '"lora"', '"glue/sst2"', '"tiny-llama"', '"nope"', "0", "-1", "3",
                     "2.5", "nan", "inf", "-inf", "true", "[]", "{}", '["lora"]', '["glue/sst2"]',
                     '["tiny-llama"]', "[1, 2]", "[0]", "[1, 1]", '[1, "a"]', "{ lr = 0.1 }",
                     "{ train_steps = 0 }", "{ bogus = 1 }", '{ lora = { r = 0 } }', '{ lora = { r = 4 } }',
                     "1e400", '"\\u0000"']),
    st.text(max_size=6).map(lambda t: repr(t)))
toml_docs = st.lists(st.tuples(st.sampled_from(list(SUITE_KEYS) + ["bogus"]), toml_values), max_size=10).map(
    lambda kv: "[suites.s]\n" + "\n".join(f"{k} = {v}" for k, v in kv))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(toml_docs)
def test_random_toml_documents_give_cells_or_config_error(text):
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # load_toml turns these into ConfigError (tested below)
    _expand_or_config_error(doc)


# -- each kind of error names the file, the key and the value ---------------------------------

VALID = """
[suites.s]
methods = ["prefix_tuning", "lora"]
tasks = ["glue/sst2"]
backbones = ["tiny-llama"]
prefix_lengths = [2]
seeds = [0]
"""


def _suite_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suites.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("edit, pattern", [
    (("prefix_lengths = [2]", "prefix_lengths = [0]"), r"prefix_lengths holds 0.*>= 1"),
    (("prefix_lengths = [2]", "prefix_lengths = [-3]"), r"prefix_lengths holds -3"),
    (("prefix_lengths = [2]", 'prefix_lengths = ["2"]'), r"'prefix_lengths' holds '2', expected int"),
    (("seeds = [0]", "seeds = []"), r"'seeds' must be a non-empty list, got \[\]"),
    (('methods = ["prefix_tuning", "lora"]', 'methods = ["prefix_tunning"]'),
     r"unknown method 'prefix_tunning' \(did you mean 'prefix_tuning'\?\); valid methods: .*lora"),
    (('tasks = ["glue/sst2"]', 'tasks = ["glue/sst3"]'), r"unknown task 'glue/sst3'.*valid tasks: .*glue/sst2"),
    (('backbones = ["tiny-llama"]', 'backbones = ["tiny-lama"]'),
     r"unknown backbone 'tiny-lama'.*valid backbones: .*tiny-llama"),
    (("seeds = [0]", "seeds = [0]\nlearning_rate = 1"), r"unknown key\(s\) 'learning_rate'; valid keys: description"),
    (("seeds = [0]", "seeds = [0]\ntrain = { lr = \"fast\" }"), r"key 'lr' has value 'fast', expected"),
    (("seeds = [0]", "seeds = [0]\ntrain = { lr = nan }"), r"key 'lr' has value nan, expected a finite number"),
    (("seeds = [0]", "seeds = [0]\ntrain = { train_steps = 0 }"), r"train_steps must be > 0, got 0"),
    (("seeds = [0]", "seeds = [0]\ntrain = { batchsize = 4 }"), r"unknown key\(s\) 'batchsize' \(did you mean 'batch_size'\?\); valid keys: lr"),
    (("seeds = [0]", "seeds = [0]\nmethod_args.lora = { r = 0 }"), r"method_args.lora.*r must be >= 1, got 0"),
    (("seeds = [0]", "seeds = [0]\nmethod_args.lora = { rank = 4 }"), r"unknown key\(s\) 'rank'; valid keys: r"),
    (("seeds = [0]", "seeds = [0]\noverrides.full_finetune = { lr = 1.0 }"),
     r"overrides.full_finetune: 'full_finetune' is not on this suite's axis; valid: prefix_tuning, lora"),
])
def test_config_errors_name_file_key_and_value(tmp_path, edit, pattern):
    path = _suite_file(tmp_path, VALID.replace(*edit))
    with pytest.raises(ConfigError, match=pattern) as info:
        load_suite(path, "s")
    assert str(path) in str(info.value)


def test_duplicate_suite_and_bad_toml_name_the_file(tmp_path):
    path = _suite_file(tmp_path, VALID + VALID)
    with pytest.raises(ConfigError, match=r"suites.toml: not valid TOML: .*\('suites', 's'\)") as info:
        load_suite(path, "s")
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match=r"unknown suite 'z'; valid suites: s"):
        load_suite(_suite_file(tmp_path, VALID), "z")
    with pytest.raises(ConfigError, match="does not exist"):
        load_suite(tmp_path / "missing.toml", "s")


# -- data files: malformed or unreadable -> ConfigError before any model -------------------------

@pytest.fixture
def bad_data(tmp_path, data_dir):
    """A data folder holding a copy of SST-2 dev as both splits, which each test then breaks."""
    folder = tmp_path / "data" / "glue" / "sst2"
    folder.mkdir(parents=True)
    lines = (data_dir / "glue" / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[:50]
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path / "data"


def _validate(data_root: Path):
    from bench.run.data import _SPLITS
    from bench.run.validate import validate_cells
    from tasks import DataSettings

    _SPLITS.clear()  # the loader caches splits per process
    cells = expand(tomllib.loads(VALID), "s", "suites.toml")
    validate_cells(cells, DataSettings(data_root, allow_hub=False))


@pytest.mark.parametrize("damage, pattern", [
    (lambda p: p.write_text(p.read_text() + "a sentence with no label\n"), r"malformed row 51: expected 2"),
    (lambda p: p.write_text(p.read_text() + "a sentence\tpositive\n"),
     r"row 51 cannot be read \(DataUnavailableError: .*'positive'"),
    (lambda p: p.write_bytes(p.read_bytes() + b"caf\xe9\t1\n"), r"UnicodeDecodeError"),
    (lambda p: (p.unlink(), p.mkdir()), r"train.tsv\); the hub is disabled .* the file is missing"),
])
def test_bad_data_files_are_config_errors_naming_the_file(bad_data, damage, pattern):
    damage(bad_data / "glue" / "sst2" / "train.tsv")
    with pytest.raises(ConfigError, match=pattern) as info:
        _validate(bad_data)
    assert "train.tsv" in str(info.value) and "glue/sst2" in str(info.value)


# -- the CLI: exit 2, the bad value and the valid ones, no model loaded --------------------------

@pytest.fixture
def no_model(monkeypatch):
    import bench.run.cell

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for an invalid run")
    monkeypatch.setattr(bench.run.cell, "load_backbone", refuse)


@pytest.mark.parametrize("argv, needle, valid", [
    (["--method", "lorra"], "unknown method 'lorra'", "prompt_tuning"),
    (["--task", "glue/sst9"], "unknown task 'glue/sst9'", "glue/sst2"),
    (["--backbone", "gpt5"], "unknown backbone 'gpt5'", "tiny-llama"),
    (["--suite", "nosuch"], "unknown suite 'nosuch'", "tiny"),
    (["--executor", "dask"], "unknown executor 'dask'", "ray"),
    (["--executor", "ray", "--executor-option", "gpu=1"], "unknown key(s) 'gpu'", "gpus_per_cell"),
    (["--plugin", "no_such_plugin_module"], "plugin 'no_such_plugin_module'", "could not be imported"),
])
def test_cli_rejects_bad_names_before_any_model(no_model, capsys, tmp_path, data_dir, argv, needle, valid):
    from bench.cli import main

    base = ["run", "--suite", "tiny", "--results", str(tmp_path), "--no-render", "--data-dir", str(data_dir)]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert needle in err and valid in err
    assert not (tmp_path / "records.jsonl").exists()


def test_cli_rejects_unknown_toml_key_before_any_model(no_model, capsys, tmp_path, data_dir):
    from bench.cli import main

    path = _suite_file(tmp_path, VALID.replace("seeds = [0]", "seeds = [0]\nsteps = 10"))
    assert main(["run", "--config", str(path), "--suite", "s", "--results", str(tmp_path / "r"),
                 "--no-render", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) 'steps'" in err and str(path) in err and "prefix_lengths" in err


def test_cli_rejects_broken_data_before_any_model(no_model, capsys, bad_data, tmp_path):
    from bench.cli import main
    from bench.run.data import _SPLITS

    _SPLITS.clear()
    tsv = bad_data / "glue" / "sst2" / "dev.tsv"
    tsv.write_text(tsv.read_text() + "broken row\n")
    assert main(["run", "--suite", "tiny", "--results", str(tmp_path / "r"), "--no-render",
                 "--data-dir", str(bad_data)]) == 2
    assert "dev.tsv: malformed row 51" in capsys.readouterr().err


def test_suite_executor_table(no_model, capsys, tmp_path, data_dir):
    from bench.cli import main
    from bench.run.matrix import executor_table

    path = _suite_file(tmp_path, VALID + 'executor = { name = "slurm", partition = "gpu", gpus_per_cell = 1 }\n')
    assert executor_table(path, "s") == ({"name": "slurm", "partition": "gpu", "gpus_per_cell": 1},
                                         f"{path} [suites.s].executor")
    ids = {c.id for c in load_suite(path, "s")}
    assert ids == {c.id for c in load_suite(_suite_file(tmp_path, VALID), "s")}  # not part of the id
    with pytest.raises(ConfigError, match=r"'executor' must be a table with a 'name'"):
        load_suite(_suite_file(tmp_path, VALID + 'executor = "ray"\n'), "s")
    path = _suite_file(tmp_path, VALID + 'executor = { name = "ray", gpus = 1 }\n')
    assert main(["run", "--config", str(path), "--suite", "s", "--results", str(tmp_path / "r"),
                 "--no-render", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{path} [suites.s].executor 'ray': unknown key(s) 'gpus'" in err and "gpus_per_cell" in err


# -- safety: no pickle, no remote code unless a backbone asks, plugins only when named ----------

def test_no_pickle_loading_and_no_remote_code_by_default():
    import re

    from bench.run.backbones import BACKBONES

    root = Path(__file__).resolve().parent.parent
    pattern = re.compile(r"torch\.load\(|pickle\.loads?\(|trust_remote_code\s*=\s*True")
    hits = [f"{p.relative_to(root)}:{i}" for pkg in ("bench", "methods", "tasks") for p in (root / pkg).rglob("*.py")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert hits == [], "adapters load with safetensors only; remote code only per backbone"
    assert [name for name, bb in BACKBONES.items() if bb.trust_remote_code] == []


def test_plugins_are_imported_only_when_named(monkeypatch):
    import sys

    from bench.core.registry import RegistryError, import_plugins
    from methods import METHODS

    assert "faulty_plugin" not in sys.modules and "test_faulty" not in METHODS
    with pytest.raises(RegistryError, match="'no.such.module' could not be imported"):
        import_plugins(["no.such.module"])
    import_plugins(["faulty_plugin"])
    try:
        assert "test_faulty" in METHODS
    finally:
        METHODS._items.pop("test_faulty", None)
        sys.modules.pop("faulty_plugin", None)
