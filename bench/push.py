"""``prefix-bench push``: a suite's records and tables as a dataset, on the Hugging Face hub
(``--repo OWNER/NAME``) or in a local folder (``--repo file:///abs/path`` or ``--to-dir PATH``).

Both targets get the same files, under ``<suite>/``: ``records.jsonl`` as stored,
``record.schema.json`` (the JSON Schema its rows satisfy) and ``tables/``, every plain file
of the rendered tables folder (``records.parquet`` among them). The suite's folder on the
target is mirrored: files of an earlier push that this one no longer has are removed.

Nothing is pushed from records that do not validate: a suite name that is not a plain
folder name, a row that does not fit the record schema, a row of another suite, no rows, or
no rendered ``records.parquet``. A file name of the tables folder becomes a path on the
target only if it is a plain file name (bench/core/safe_names.py); others are left out and
named. Offline (``HF_HUB_OFFLINE``) or without a token, a hub push fails at once, saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from bench.core.config import ConfigError
from bench.core.record_check import problem_summary
from bench.core.record_formats import json_schema
from bench.core.records import RECORDS_FILE, read_records, write_atomic
from bench.core.safe_names import check_name, inside

RESULTS_ROOT = Path("results")  # as bench/cli.py: results/runs/SUITE, results/tables/SUITE
TABLES = "tables"
SCHEMA_FILE = "record.schema.json"
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


@dataclass
class Bundle:
    """What one push sends: paths inside the suite's folder -> their bytes."""

    suite: str
    files: dict[str, bytes] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)  # table-folder entries that are not plain files


def collect(suite: str, results_dir: Path, tables_dir: Path) -> Bundle:
    """The suite's push, read and checked (ConfigError, naming the problem, when it cannot be pushed)."""
    suite = check_name("suite", suite, "push")
    records, problems = read_records(results_dir)
    if problems:
        raise ConfigError(f"push: refusing to push {results_dir / RECORDS_FILE}: {problem_summary(problems)}")
    if not records:
        raise ConfigError(f"push: no records in {results_dir}: nothing to push")
    others = sorted({r.suite for r in records if r.suite != suite})
    if others:
        raise ConfigError(f"push: refusing to push {results_dir / RECORDS_FILE}: it holds rows of suite(s) "
                          f"{', '.join(map(repr, others))[:300]}, not only of {suite!r}")
    if not (tables_dir / "records.parquet").is_file():
        raise ConfigError(f"push: no rendered tables in {tables_dir} (records.parquet is missing): "
                          f"run `prefix-bench render --suite {suite}` first")
    bundle = Bundle(suite)
    bundle.files[RECORDS_FILE] = (results_dir / RECORDS_FILE).read_bytes()
    bundle.files[SCHEMA_FILE] = (json.dumps(json_schema(), indent=2, sort_keys=True) + "\n").encode()
    for entry in sorted(tables_dir.iterdir()):
        if entry.name.startswith("."):
            continue  # a writer's temporary file
        if not _PLAIN.fullmatch(entry.name) or ".." in entry.name or entry.is_symlink() or not entry.is_file():
            bundle.left_out.append(entry.name)
            continue
        bundle.files[f"{TABLES}/{entry.name}"] = entry.read_bytes()
    return bundle


def write_bundle(bundle: Bundle, target: Path) -> list[Path]:
    """Mirror ``bundle`` into ``target/<suite>/`` (every write checked to land in its folder)."""
    target.mkdir(parents=True, exist_ok=True)
    root = inside(target, bundle.suite)
    written = []
    for rel, data in bundle.files.items():
        folder = root
        *parents, name = rel.split("/")
        for part in parents:
            folder = inside(folder, part)
            folder.mkdir(exist_ok=True)
        written.append(write_atomic(inside(folder, name), data))
    for folder in (root, root / TABLES):  # files an earlier push had and this one has not
        for old in folder.iterdir() if folder.is_dir() and not folder.is_symlink() else ():
            if (old.is_file() or old.is_symlink()) and old not in written and not old.name.startswith("."):
                old.unlink()
    return written


def local_target(repo: str) -> Path | None:
    """The folder of a ``file://`` target, or None for a hub repo id."""
    if not repo.startswith("file:"):
        return None
    url = urlparse(repo)
    if url.netloc not in ("", "localhost") or not url.path.startswith("/"):
        raise ConfigError(f"push --repo {repo!r}: a local target is file:///ABSOLUTE/PATH")
    return Path(unquote(url.path))


def push_to_hub(bundle: Bundle, repo_id: str, private: bool = False) -> str:
    """Upload the bundle to dataset repo ``repo_id`` under ``<suite>/``; the commit's URL.
    Fails at once (ConfigError) offline, without a token, or for a malformed repo id."""
    import huggingface_hub
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"push --repo {repo_id!r} is not a Hugging Face repo id (OWNER/NAME): {err}") from None
    if "/" not in repo_id:
        raise ConfigError(f"push --repo {repo_id!r}: name the owner too (OWNER/NAME)")
    if huggingface_hub.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise ConfigError(f"push --repo {repo_id}: the hub is off (HF_HUB_OFFLINE is set), nothing was sent; "
                          "push to a local folder with --to-dir PATH or --repo file:///PATH, or unset HF_HUB_OFFLINE")
    if huggingface_hub.get_token() is None:
        raise ConfigError(f"push --repo {repo_id}: no Hugging Face token (set HF_TOKEN or run `hf auth login`); "
                          "nothing was sent")
    api = huggingface_hub.HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prefix-bench-push-") as tmp:
        write_bundle(bundle, Path(tmp))
        info = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=Path(tmp) / bundle.suite,
                                 path_in_repo=bundle.suite, delete_patterns="*",
                                 commit_message=f"prefix-bench push: suite {bundle.suite}")
    return str(getattr(info, "commit_url", info))


def cmd_push(args: argparse.Namespace) -> int:
    suite = check_name("suite", args.suite, "--suite")
    results = Path(args.results) if args.results else RESULTS_ROOT / "runs" / suite
    tables = Path(args.tables) if args.tables else RESULTS_ROOT / "tables" / suite
    bundle = collect(suite, results, tables)
    for name in bundle.left_out:
        print(f"push: left out tables entry {name!r} (not a plain file with a plain name)")
    folder = Path(args.to_dir) if args.to_dir else local_target(args.repo)
    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"push: {folder} is not a folder")
        written = write_bundle(bundle, folder)
        print(f"push: wrote {len(written)} files to {folder / bundle.suite}")
        return 0
    url = push_to_hub(bundle, args.repo, private=args.private)
    print(f"push: uploaded {len(bundle.files)} files to dataset {args.repo} under {bundle.suite}/: {url}")
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="upload a suite's records and tables to a Hugging Face dataset repo "
                                    "(or copy them to a local folder)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo", help="dataset repo id OWNER/NAME, or file:///ABSOLUTE/PATH for a local folder")
    where.add_argument("--to-dir", help="a local folder instead of the hub (the same files)")
    p.add_argument("--suite", default="default", help="suite to push (default: default)")
    p.add_argument("--results", default=None, help="records folder (default: results/runs/SUITE)")
    p.add_argument("--tables", default=None, help="rendered tables folder (default: results/tables/SUITE)")
    p.add_argument("--private", action="store_true", help="create the hub repo private (when it does not exist)")
    p.set_defaults(func=cmd_push)
