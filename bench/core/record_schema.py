"""The record format's version and the migrations that read older records as current ones.

Every record carries ``schema_version``. Reading one older than ``SCHEMA_VERSION`` applies
the migrations from its version up, in order; reading one newer is refused, naming the
file and line: this code would silently drop the fields it does not know, and a ``run``
over such a folder would re-run cells a newer version already finished.

Versions:
1. the first format.
2. ``inference_params``, ``inference_bytes``, ``inference_path``: what the adapter deploys
   (e.g. the folded prefix), beside the training-time ``trainable_params``/``adapter_bytes``;
   the ``config`` holds the cell's code ``identity`` (bench/core/identity.py) and the id covers it;
   ``eval_examples``/``eval_split_size``: how much of the evaluation split a row scored;
   ``kernels``: the CPU model, instruction sets and kernel libraries in use (bench/measure/reproducible.py).
3. ``precision`` (fp32 | bf16-mixed), ``compiled`` and ``compile_note``, ``padding_fraction`` and
   ``padding_fraction_unbucketed``. A new version, not only new optional fields: a bf16 row's
   throughput and scores mean something else, and an older prefix-bench, which would drop the
   field, must refuse such a file rather than compare its rows with fp32 ones unknowingly.
   Older rows trained in fp32 (the only precision before), uncompiled, padding unmeasured.
4. ``role``, ``holdout_score``, ``best_step``, ``stopped_step``, ``plateaued``, ``search``: the
   learning-rate search's trial rows and early stopping. A new version: a trial row scores the
   held-out slice, not the evaluation split, and an older prefix-bench, which would drop
   ``role``, must refuse such a file rather than tabulate trials as results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.core.config import ConfigError

SCHEMA_VERSION = 4


def _v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    # Schema 1 measured only the training-time adapter: for a prefix trained through an MLP
    # that is not what deploys, so the deployed figures are unknown, not copied over. Its
    # config has no code identity; its cell id matches no current cell, so `run` re-runs it.
    return {**d, "inference_params": None, "inference_bytes": None, "inference_path": "",
            "eval_examples": None, "eval_split_size": None, "schema_version": 2}


def _v2_to_v3(d: dict[str, Any]) -> dict[str, Any]:
    # Before schema 3 the trainer had one precision, fp32, and no compile; a failed row says
    # nothing about how it ran. Its padding was not measured.
    ran = "fp32" if d.get("status") == "ok" else ""
    return {**d, "precision": ran, "compiled": False, "compile_note": "", "padding_fraction": None,
            "padding_fraction_unbucketed": None, "schema_version": 3}


def _v3_to_v4(d: dict[str, Any]) -> dict[str, Any]:
    # Before schema 4 there was no search, held-out slice or early stopping: every row is an
    # ordinary cell's (no trial), scored on the evaluation split only, trained every step of
    # its budget. Its last step is not filled in: a failed row may have stopped anywhere.
    return {**d, "role": "", "holdout_score": None, "best_step": None, "stopped_step": None, "plateaued": None,
            "search": {}, "schema_version": 4}


# MIGRATIONS[v] turns a version-v record into a version v+1 one.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


def upgrade(d: dict[str, Any], where: str) -> dict[str, Any]:
    """``d`` (one parsed record line) as a current-schema record; ``where`` ("file:line")
    names it in the error for a version this code cannot read. A record without a
    ``schema_version`` predates the field's use and is read as version 1."""
    if not isinstance(d, dict):
        return d  # not a record at all: the reader reports the line
    version = d.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"{where}: schema_version {version!r} is not a version this prefix-bench knows "
                          f"(1..{SCHEMA_VERSION})")
    if version > SCHEMA_VERSION:
        raise ConfigError(f"{where}: record schema_version {version} was written by a newer prefix-bench "
                          f"(this one reads 1..{SCHEMA_VERSION}); upgrade prefix-bench or use another "
                          "results folder")
    while version < SCHEMA_VERSION:
        d = MIGRATIONS[version](d)
        version = d["schema_version"]
    return d
