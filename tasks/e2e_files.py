"""The E2E NLG Challenge's own CSVs, pinned: the organisers' repository at one commit, each file
checked by its sha256 (``prefix-bench data fetch-e2e``).

The hub's ``tuetschek/e2e_nlg`` has no commit sha this project could look up offline, so a run
that loads it cannot say which state it read. These files can: they are the bytes the offline data
folder holds (the committed tables' E2E data, the same ``data_fingerprint``), fetched from a fixed
commit and refused when a byte differs. The training file is the challenge's devset, as offline.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

CHALLENGE_REPO = "tuetschek/e2e-dataset"
# its newest commit; the two files are unchanged since they were added (8255f7c, 2018-01-23)
CHALLENGE_COMMIT = "ab0d967dd5729ce455ef14ba9ffafc456a335264"
BASE_URL = f"https://raw.githubusercontent.com/{CHALLENGE_REPO}/{CHALLENGE_COMMIT}"
SHA256 = {
    "devset.csv": "fc26b78cdb849c80545f513b223d1e051138b43882eeb79e3eb153e689c864f9",
    "testset_w_refs.csv": "edc8db685e39bb9824d5bd70c18b1c9b0412d14b527aa960e2d1c8251ee15ccd",
}
MAX_BYTES = 16 << 20  # each file is about 1.2 MB: anything far larger is not it


class FetchError(RuntimeError):
    """A file could not be fetched, or its bytes are not the pinned ones."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(data_dir: Path, base_url: str = BASE_URL, log=print) -> list[Path]:
    """Write the pinned files into ``data_dir/e2e/``; a file already there with the pinned sha256
    is kept. A file there with other bytes is left alone and refused (it is somebody's data), and
    a download whose sha256 differs is never written: nothing half-written or unverified stays."""
    folder = Path(data_dir) / "e2e"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, want in SHA256.items():
        target = folder / name
        if target.exists():
            have = sha256_of(target)
            if have != want:
                raise FetchError(f"{target} exists with sha256 {have}, not the challenge's {want}: "
                                 "move it away to fetch the pinned file")
            log(f"  kept     {target} (sha256 matches)")
            continue
        url = f"{base_url}/{name}"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (a fixed https or a test's file URL)
                body = resp.read(MAX_BYTES + 1)
        except OSError as err:
            raise FetchError(f"could not fetch {url}: {err}") from err
        got = hashlib.sha256(body).hexdigest()
        if len(body) > MAX_BYTES or got != want:
            raise FetchError(f"{url}: sha256 {got}, expected {want}; nothing written")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log(f"  fetched  {target} ({len(body):,} bytes, sha256 matches)")
        written.append(target)
    return written


if __name__ == "__main__":  # `python tasks/e2e_files.py DIR`: standard library only, before any install
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python tasks/e2e_files.py DATA_DIR  (writes DATA_DIR/e2e/)")
    try:
        fetch(Path(sys.argv[1]))
    except FetchError as err:
        sys.exit(f"error: {err}")
