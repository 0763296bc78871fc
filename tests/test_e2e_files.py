"""`prefix-bench data fetch-e2e`: the E2E challenge's CSVs at a pinned commit, each checked by its
sha256, so a run online reads the bytes the committed tables read (issue 16). The fetch is tested
against a file:// mirror of the offline folder; the real URL is never reached from here."""

from __future__ import annotations

import shutil

import pytest

from bench.cli import main
from tasks import DataSettings, e2e_files
from tasks.base import fingerprint_files


@pytest.fixture
def mirror(data_dir, tmp_path):
    """A stand-in for raw.githubusercontent.com/<repo>/<commit>/: the offline folder's files."""
    root = tmp_path / "mirror"
    root.mkdir()
    for name in e2e_files.SHA256:
        shutil.copy(data_dir / "e2e" / name, root / name)
    return root


def test_the_pins_are_the_offline_folders_bytes(data_dir):
    """The committed tables' E2E rows were made from the offline folder: the pin names those bytes."""
    for name, want in e2e_files.SHA256.items():
        assert e2e_files.sha256_of(data_dir / "e2e" / name) == want, name
    assert len(e2e_files.CHALLENGE_COMMIT) == 40 and e2e_files.CHALLENGE_COMMIT in e2e_files.BASE_URL


def test_fetched_files_load_with_the_committed_tables_fingerprint(mirror, data_dir, tmp_path):
    from tasks import TASKS

    out = tmp_path / "data"
    written = e2e_files.fetch(out, mirror.as_uri(), log=lambda _: None)
    assert sorted(p.name for p in written) == sorted(e2e_files.SHA256)
    task = TASKS.get("e2e_nlg")
    fetched = task.load("test", DataSettings(out, allow_hub=False))
    offline = task.load("test", DataSettings(data_dir, allow_hub=False))
    assert fetched.fingerprint == offline.fingerprint == fingerprint_files([data_dir / "e2e" / "testset_w_refs.csv"])
    # a second fetch keeps what is there
    assert e2e_files.fetch(out, mirror.as_uri(), log=lambda _: None) == []


def test_a_changed_byte_is_refused_and_nothing_is_written(mirror, tmp_path):
    body = (mirror / "devset.csv").read_bytes()
    (mirror / "devset.csv").write_bytes(body[:-2] + b"X\n")
    out = tmp_path / "data"
    with pytest.raises(e2e_files.FetchError, match="sha256 .* expected fc26"):
        e2e_files.fetch(out, mirror.as_uri(), log=lambda _: None)
    assert list((out / "e2e").iterdir()) == []


def test_a_different_file_already_there_is_not_overwritten(mirror, tmp_path, capsys):
    out = tmp_path / "data"
    (out / "e2e").mkdir(parents=True)
    (out / "e2e" / "devset.csv").write_text("mr,ref\nsomebody's,own\n")
    assert main(["data", "fetch-e2e", "--data-dir", str(out)]) == 1
    assert "exists with sha256" in capsys.readouterr().err
    assert (out / "e2e" / "devset.csv").read_text() == "mr,ref\nsomebody's,own\n"


def test_an_unreachable_source_is_a_clear_error(tmp_path):
    with pytest.raises(e2e_files.FetchError, match="could not fetch"):
        e2e_files.fetch(tmp_path / "data", (tmp_path / "nowhere").as_uri(), log=lambda _: None)
