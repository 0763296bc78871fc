"""``python -m bench.compat`` (or ``prefix-bench compat``): run the compatibility matrix for
the installed transformers, write ``results/compat/transformers-<version>.{json,md}`` and
re-render the folder's README.md and index.html from every version's results there.

A cell that passed in the committed results of the same transformers version and fails now
is a regression: the command names each one and exits 1. Failures that were failures before
are data, not an error (exit 0). Running part of the matrix (--method, --architecture,
--feature) replaces just those cells.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "results" / "compat"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results folder (default: results/compat)")
    p.add_argument("--method", action="append", help="only these methods (repeatable; default: every registered one)")
    p.add_argument("--architecture", action="append",
                   help="only these architectures (repeatable; default: all, real ones where installed)")
    p.add_argument("--feature", action="append", help="only these features (repeatable)")
    p.add_argument("--baseline", default=None,
                   help="results JSON to check for regressions (default: the folder's file for this transformers)")
    p.add_argument("--no-write", action="store_true", help="run and compare, write nothing")
    p.add_argument("--render", action="store_true",
                   help="run nothing: re-render the folder's markdown and HTML from its JSON results, "
                        "with the current known-cause notes")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the models are tiny, and on a shared machine more threads "
                        "wait on each other: 30x slower measured with 2 on a busy 2-core box)")


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compat", help="the compatibility matrix: methods × architectures × features; "
                                      "exit 1 on a regression", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=execute)


def pinned_spec() -> str | None:
    """The project's transformers requirement (pyproject.toml, else the installed metadata)."""
    import tomllib

    deps: list[str] = []
    pyproject = ROOT / "pyproject.toml"
    if pyproject.is_file():
        deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    else:
        from importlib.metadata import PackageNotFoundError, requires

        try:
            deps = requires("prefix-bench") or []
        except PackageNotFoundError:
            return None
    return next((d for d in deps if d.replace(" ", "").startswith("transformers")), None)


def is_pinned(version: str) -> bool:
    from packaging.requirements import Requirement

    spec = pinned_spec()
    return spec is not None and Requirement(spec).specifier.contains(version, prereleases=True)


def _choose(given: list[str] | None, valid: list[str], what: str) -> list[str]:
    from bench.core.config import ConfigError

    if not given:
        return valid
    unknown = [g for g in given if g not in valid]
    if unknown:
        raise ConfigError(f"unknown {what} {unknown[0]!r}; valid: {', '.join(valid)}")
    return [v for v in valid if v in given] + [g for g in given if g not in valid]


def execute(args: argparse.Namespace) -> int:
    from bench.compat import runner
    from bench.compat.architectures import ARCHITECTURES
    from bench.compat.checks import FEATURE_NAMES
    from bench.report import compat_table
    from methods import METHODS

    if args.render:  # with the notes of the current rules
        from bench.compat.upstream import upstream_note

        docs = compat_table.load_all(Path(args.out))
        for doc in docs:
            for c in doc["cells"]:
                c.pop("note", None)
                note = upstream_note(c["method"], c["architecture"], c["feature"], c["detail"]) \
                    if c["status"] == "fail" else None
                if note:
                    c["note"] = note
            compat_table.write(Path(args.out), doc)
        print(f"compat: re-rendered {len(docs)} version(s) in {args.out}")
        return 0
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    methods = _choose(args.method, METHODS.names(), "method")
    archs = _choose(args.architecture, list(ARCHITECTURES), "architecture")
    features = _choose(args.feature, list(FEATURE_NAMES), "feature")
    out = Path(args.out)
    version = runner.versions()["transformers"]
    baseline_path = Path(args.baseline) if args.baseline else out / f"{compat_table.result_name(version)}.json"
    baseline = compat_table.load(baseline_path) if baseline_path.is_file() else None
    print(f"compat: transformers {version}, {len(methods)} methods × {len(archs)} architectures × "
          f"{len(features)} features" + (f"; baseline {baseline_path}" if baseline else "; no baseline"),
          flush=True)
    doc = runner.run(archs, methods, features, progress=lambda line: print(line, flush=True))
    doc["pinned"] = is_pinned(version)
    partial = bool(args.method or args.architecture or args.feature)
    if partial and baseline is not None and not args.baseline:
        doc = compat_table.merge(baseline, doc)
    counts = compat_table.counts(doc)
    print(f"compat: {counts['pass']} pass, {counts['fail']} fail, {counts['n/a']} n/a in {doc['seconds']:.0f} s "
          f"({doc['threads']} threads)")
    if not args.no_write:
        for path in compat_table.write(out, doc):
            print(f"wrote {path}")
    if baseline is None:
        return 0
    for line in compat_table.changes(baseline, doc):
        print(f"changed: {line}")
    regressed = compat_table.regressions(baseline, doc)
    for line in regressed:
        print(f"REGRESSION: {line}", file=sys.stderr)
    if regressed:
        print(f"compat: {len(regressed)} cell(s) passed in {baseline_path} and fail now", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from bench.core.config import ConfigError
    from bench.core.registry import RegistryError, import_plugins

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    p = argparse.ArgumentParser(prog="python -m bench.compat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--plugin", action="append", metavar="MODULE_OR_FILE",
                   help="import this module or .py file first (it registers methods; repeatable)")
    args = p.parse_args(argv)
    try:
        import_plugins(args.plugin or [])
        return execute(args)
    except (ConfigError, RegistryError) as err:
        print(f"compat: error: {err}", file=sys.stderr)
        return 2
