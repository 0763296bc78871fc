"""Installed use: the data folder is found without nox (env var, user config, default
folder), and `prefix-bench data check` says which tasks can run offline from it."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.core.config import ConfigError
from tasks.base import DATA_DIR_ENV, DataSettings, default_data_dir, find_data_dir, user_config_file


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    return tmp_path


def test_discovery_order(home, monkeypatch):
    assert find_data_dir() == (None, "none found (the hub)")
    default_data_dir().mkdir(parents=True)
    assert find_data_dir() == (str(default_data_dir()), "the default folder")
    user_config_file().parent.mkdir(parents=True)
    user_config_file().write_text('data_dir = "/somewhere/data"\n')
    assert find_data_dir() == ("/somewhere/data", str(user_config_file()))
    monkeypatch.setenv(DATA_DIR_ENV, "/from/env")
    assert find_data_dir() == ("/from/env", f"${DATA_DIR_ENV}")
    assert DataSettings.from_env("/explicit").data_dir.as_posix() == "/explicit"


def test_a_bad_user_config_is_a_clear_error(home):
    user_config_file().parent.mkdir(parents=True)
    user_config_file().write_text("data_dir = 3\n")
    with pytest.raises(ConfigError, match="data_dir must be a folder path"):
        find_data_dir()


def test_data_check_names_what_is_missing(home, data_dir, capsys):
    partial = home / "partial"
    (partial / "glue" / "sst2").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (partial / "glue" / "sst2" / name).write_bytes((data_dir / "glue" / "sst2" / name).read_bytes())
    suite = home / "s.toml"
    suite.write_text('[suites.s]\nmethods = ["lora"]\ntasks = ["glue/sst2", "glue/rte"]\nbackbones = ["tiny-bert"]\n'
                     'prefix_lengths = [1]\nseeds = [0]\n')
    assert main(["data", "check", "--data-dir", str(partial), "--suite", "s", "--config", str(suite)]) == 1
    out = capsys.readouterr().out
    assert "ok       glue/sst2" in out and "MISSING  glue/rte" in out and "1 of 2 task(s)" in out
    assert main(["data", "check", "--data-dir", str(data_dir), "--suite", "s", "--config", str(suite)]) == 0
