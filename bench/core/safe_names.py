"""Names that become file names: validated where a person typed them, mapped where a
file did.

A suite name from the command line or a TOML file names ``results/runs/<suite>`` and
``results/tables/<suite>``, so it is checked (:func:`check_name`) and a bad one is a
ConfigError (exit 2). Method, task and backbone names inside a ``records.jsonl`` are
untrusted (a results folder may come from anyone): rendering maps them to safe file-name
parts (:func:`slug`, :func:`unique_stems`) instead of refusing the file. Whatever the
name, :func:`inside` is the last check before a write: the resolved target must be a
file directly in the intended folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from bench.core.config import ConfigError

NAME_RULE = ("letters, digits, '.', '_' and '-' only, starting with a letter or digit, "
             "at most 100 characters, no '..'")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_PART = 64  # two parts and the longest suffix stay far below the 255-byte file-name limit
SEPARATOR = "__"  # between a stem's parts; a part never holds it, so stems cannot be forged


class UnsafePathError(ConfigError):
    """A write would land outside its folder (a hostile name or a planted symlink)."""


def is_name(value: object) -> bool:
    """Whether ``value`` is safe as one path component (NAME_RULE)."""
    return isinstance(value, str) and bool(_NAME.fullmatch(value)) and ".." not in value


def check_name(kind: str, value: object, where: str = "") -> str:
    """``value`` if it is safe as one path component (see NAME_RULE); else ConfigError
    naming ``where``, the kind of name, the value and what is allowed."""
    if is_name(value):
        return value
    prefix = f"{where}: " if where else ""
    raise ConfigError(f"{prefix}{kind} name {value!r} is not allowed (it names a folder); use {NAME_RULE}")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def slug(text: str) -> str:
    """A file-name part for an untrusted name: only ``[A-Za-z0-9._-]``, never ``..``, never
    ``__`` nor a '_' at either end (so the SEPARATOR between parts cannot be forged), never
    starting with '.' or '-', at most MAX_PART characters. ``/`` becomes ``_`` as before
    (``glue/sst2`` -> ``glue_sst2``); any other change appends a hash of the original, so
    names that differ stay apart (``a b`` and ``a?b`` give different slugs)."""
    plain = text.replace("/", "_")
    s = _UNSAFE.sub("_", plain)
    s = re.sub(r"\.{2,}", "_", s)
    s = re.sub(r"_{2,}", "_", s)
    s = s.lstrip("._-").rstrip("_")
    if not s or s != plain or len(s) > MAX_PART:
        s = f"{s[:MAX_PART - 9].rstrip('_') or 'x'}-{_short_hash(text)}"
    return s


def unique_stems(keys: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """One distinct file stem per key (e.g. (task, backbone)): the parts' slugs joined by
    SEPARATOR. Keys whose stems would coincide, also only in case (a case-insensitive
    file system), get a hash of the key appended; keys are taken in sorted order, so the
    same keys always get the same stems."""
    out: dict[tuple[str, ...], str] = {}
    used: set[str] = set()
    for key in sorted(set(keys)):
        stem = SEPARATOR.join(slug(p) for p in key)
        if stem.lower() in used:
            stem = f"{stem}-{_short_hash(chr(0).join(key))}"
        n = 1
        base = stem
        while stem.lower() in used:  # only a crafted name could collide with a hashed stem
            stem, n = f"{base}-{n}", n + 1
        used.add(stem.lower())
        out[key] = stem
    return out


def inside(folder: Path, name: str) -> Path:
    """``folder / name`` for a write, after checking that ``name`` is one plain file name
    and that the resolved target (symlinks followed) is directly in the resolved folder.
    Raises UnsafePathError otherwise: a file outside the folder is never written."""
    target = Path(folder) / name
    real_folder = Path(os.path.realpath(folder))
    if not name or name in (".", "..") or Path(name).name != name or os.sep in name \
            or Path(os.path.realpath(target)).parent != real_folder:
        raise UnsafePathError(f"refusing to write {str(target)!r}: it is not a file directly in {str(folder)!r}")
    return target
