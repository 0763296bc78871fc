"""Shared fixtures: offline data folder, a tiny suite file, a temp results folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests never reach the hub; the offline data folder stands in.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("PREFIX_BENCH_DATA_DIR", SHARED_DATA))
    if not (path / "glue" / "sst2" / "dev.tsv").is_file():
        pytest.skip(f"offline GLUE data not found at {path} (set PREFIX_BENCH_DATA_DIR)")
    return path


@pytest.fixture
def data(data_dir: Path):
    from tasks import DataSettings
    return DataSettings(data_dir=data_dir, allow_hub=False)
