"""Runs cells: validate everything first, then train and evaluate each unfinished cell,
appending one record per cell. Backbones are loaded once per process and copied per cell,
so no cell can change the weights another cell sees."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from bench import efficiency, flops, identity, memory, provenance, reproducible, staleness
from bench.backbones import BACKBONES, BackboneUnavailableError, load_backbone, resolve_source
from bench.config import ConfigError
from bench.formulations import Formulation, choose_formulation
from bench.matrix import Cell
from bench.outcome import score_problem
from bench.record_check import problem_summary
from bench.records import ResultRecord, read_records, write_atomic
from bench.torn_tail import set_aside_torn_tail
from bench.trainer import EvalResult, TrainStats, evaluate, train
from methods import METHODS, Anatomy, AttachContext
from tasks import TASKS, DataSettings
from tasks.base import DataUnavailableError, Example, Split

if TYPE_CHECKING:
    from bench.executors import Executor

_SPLITS: dict[tuple, Split] = {}


def validate_cells(cells: Iterable[Cell], data: DataSettings) -> None:
    """Every check that needs no model: raises ConfigError naming the bad value."""
    for cell in cells:
        where = f"cell {cell.method}/{cell.task}/{cell.backbone}/P={cell.prefix_length}/seed={cell.seed}"
        for registry, name in ((METHODS, cell.method), (TASKS, cell.task), (BACKBONES, cell.backbone)):
            if name not in registry:
                raise ConfigError(f"{where}: {registry.unknown_message(name)}")
        method_cls = METHODS.get(cell.method)
        task = TASKS.get(cell.task)
        backbone = BACKBONES.get(cell.backbone)
        method_cls.Config.from_dict(cell.method_args, f"{where} method_args")
        cfg = cell.train_config
        choose_formulation(cfg.formulation, task, backbone.causal)
        try:
            task.check_available(data)
            resolve_source(backbone, cell.backbone_source)
        except (DataUnavailableError, BackboneUnavailableError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from None
        # Read the data now (cached for the run): a malformed or unreadable file is a config
        # error before any model loads, not a failed cell after one did.
        for split in (task.train_split, task.eval_split):
            try:
                loaded = load_split(cell.task, split, data)
            except (DataUnavailableError, OSError, ValueError, KeyError) as err:
                raise ConfigError(f"{where}: task {cell.task!r} split {split!r}: cannot read its data: "
                                  f"{type(err).__name__}: {err}") from None
            if not loaded.examples:  # the sampler would wait forever for a first batch
                raise ConfigError(f"{where}: task {cell.task!r} split {split!r} has no examples "
                                  f"({loaded.source.removeprefix('local:')}: a header and no rows?); a cell "
                                  "needs at least one example to train on and one to evaluate")


def data_fingerprint(task_name: str, data: DataSettings) -> str:
    """The task's data as a row records it ("train/eval" fingerprints); reads it if needed."""
    task = TASKS.get(task_name)
    return (f"{load_split(task_name, task.train_split, data).fingerprint}/"
            f"{load_split(task_name, task.eval_split, data).fingerprint}")


def load_split(task_name: str, split: str, data: DataSettings) -> Split:
    key = (task_name, split, data)
    if key not in _SPLITS:
        _SPLITS[key] = TASKS.get(task_name).load(split, data)
    return _SPLITS[key]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters outside the backbone body (a sequence-classification head)."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    return [p for n, p in model.named_parameters() if not n.startswith(prefix)]


def reset_head(model: nn.Module, seed: int) -> None:
    """A fresh head per cell, drawn from the cell's seed (not from load order)."""
    prefix = getattr(model, "base_model_prefix", "")
    std = getattr(model.config, "initializer_range", 0.02)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.startswith(prefix) or not isinstance(module, nn.Linear):
                continue
            module.weight.copy_(torch.randn(module.weight.shape, generator=g) * std)
            if module.bias is not None:
                module.bias.zero_()


def _subset(examples: list[Example], limit: int | None, seed: int | None) -> list[Example]:
    if limit is None or limit >= len(examples):
        return examples
    if seed is None:
        return examples[:limit]
    g = torch.Generator().manual_seed(seed)
    return [examples[i] for i in torch.randperm(len(examples), generator=g)[:limit].tolist()]


def run_cell(cell: Cell, data: DataSettings, device: torch.device, results_dir: Path | None = None) -> ResultRecord:
    """Train and evaluate one cell; returns its record: ok, or failed when its main score is
    missing, NaN or infinite (``checked_score``). Raises on any other failure, also when the
    code is no longer what the cell was planned with (its row would claim an identity it
    was not computed with: e.g. a queued Slurm job after an edit)."""
    started = provenance.now()
    if cell.threads:  # a pinned cell runs with the settings its id hashes
        provenance.apply_torch_settings(cell.threads, cell.deterministic)
    task = TASKS.get(cell.task)
    method_cls = METHODS.get(cell.method)
    now = identity.cell_identity(method_cls, task)
    if cell.identity != now:
        changed = ", ".join(identity.identity_changes(cell.identity, now))
        raise RuntimeError(f"the code changed since this cell was planned ({changed}); "
                           "run the suite again to plan it with the current code")
    backbone = BACKBONES.get(cell.backbone)
    cfg = cell.train_config
    form_cls = choose_formulation(cfg.formulation, task, backbone.causal)

    train_split = load_split(cell.task, task.train_split, data)
    eval_split = load_split(cell.task, task.eval_split, data)
    loaded = load_backbone(cell.backbone, form_cls.head, task.num_labels, cell.backbone_source, device)
    formulation: Formulation = form_cls(task, loaded.tokenizer, cfg.max_length)
    flops.peak_flops(device, next(loaded.model.parameters()).dtype)  # once per process, off the cell clock
    task.preload()
    wall_start = time.perf_counter()  # after the once-per-process loads: harness overhead is per cell
    eval_seconds = [0.0]

    seed_everything(cell.seed)
    memory.reset_peak(device)
    model = copy.deepcopy(loaded.model)
    head = head_parameters(model) if form_cls.head == "seq_cls" else []
    if head:
        reset_head(model, cell.seed)
    method = method_cls(method_cls.Config.from_dict(cell.method_args, cell.method), cell.prefix_length)
    ctx = AttachContext(loaded.tokenizer, Anatomy.of(model), cell.seed, device)
    adapter = method.attach(model, ctx)
    for p in head:  # the task head trains with every method (PEFT may have frozen it)
        p.requires_grad_(True)
    trainable = sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    total = sum(p.numel() for p in adapter.parameters())

    train_examples = _subset(train_split.examples, cfg.train_limit, cell.seed)
    eval_examples = _subset(eval_split.examples, cfg.eval_limit, None)
    label = f"{cell.method} P={cell.prefix_length} s{cell.seed}"

    def periodic(step: int) -> float:
        res = evaluate(adapter, formulation, eval_examples, cfg.eval_batch_size, device, desc="eval")
        eval_seconds[0] += res.seconds
        return task.compute_metrics(res.predictions, eval_examples)[task.main_metric]

    stats = train(adapter, formulation, train_examples, cfg, cell.seed, device, desc=f"train {label}",
                  periodic_eval=periodic)
    t_eval = time.perf_counter()
    own = task.evaluate_adapted(adapter, loaded.tokenizer, device, cfg.eval_limit)  # e.g. lm-eval
    if own is None:
        result = evaluate(adapter, formulation, eval_examples, cfg.eval_batch_size, device, desc=f"eval {label}")
        metrics = task.compute_metrics(result.predictions, eval_examples)
    else:
        result, metrics = EvalResult([], 0, time.perf_counter() - t_eval), own
    peak, peak_kind = memory.peak_bytes(device)

    deployed = adapter.inference_state_dict()
    adapter_path, adapter_bytes, curve_path = "", 0, ""
    inference_path, inference_bytes = "", None
    if results_dir is not None:
        adapter_path, adapter_bytes = save_adapter(adapter, results_dir / "adapters" / f"{cell.id}.safetensors")
        inference_path, inference_bytes = adapter_path, adapter_bytes
        if not same_tensors(deployed, adapter.trainable_state_dict()):
            inference_path, inference_bytes = save_state(
                deployed, results_dir / "adapters" / f"{cell.id}.inference.safetensors")
        curve_path = save_curves(results_dir / "curves" / f"{cell.id}.json", stats)
    samples_path = ""
    if results_dir is not None and task.kind == "generation":
        samples_path = save_samples(results_dir / "samples" / f"{cell.id}.jsonl", eval_examples, result.predictions)
    compute = sum(stats.step_seconds) + eval_seconds[0] + result.seconds
    overhead = efficiency.harness_overhead(time.perf_counter() - wall_start, compute)
    eff = efficiency.train_mfu(adapter, cfg.batch_size, stats.tokens, len(stats.step_tokens),
                               stats.tokens_per_s(), device, head_share=formulation.head_share(adapter))

    sha, dirty = provenance.git_state()
    collapsed = task.kind == "classification" and len(set(result.predictions)) == 1 and len(result.predictions) > 1
    notes = "; ".join(n for n in (train_split.notes, eval_split.notes) if n)
    return checked_score(ResultRecord(
        cell_id=cell.id, suite=cell.suite, method=cell.method, task=cell.task, backbone=cell.backbone,
        prefix_length=cell.prefix_length, seed=cell.seed, status="ok",
        main_metric=task.main_metric, main_score=metrics.get(task.main_metric), metrics=metrics,
        collapsed=collapsed, trainable_params=trainable, total_params=total,
        adapter_bytes=adapter_bytes, adapter_path=adapter_path,
        inference_params=sum(t.numel() for t in deployed.values()), inference_bytes=inference_bytes,
        inference_path=inference_path,
        eval_examples=len(eval_examples), eval_split_size=len(eval_split.examples),
        train_seconds=stats.seconds, eval_seconds=result.seconds, train_steps=len(stats.losses),
        train_tokens=stats.tokens, train_tokens_per_s=stats.tokens_per_s(),
        eval_tokens_per_s=result.tokens_per_s, step_seconds_median=stats.median_step_seconds(),
        first_loss=stats.losses[0] if stats.losses else None,
        final_loss=float(np.mean(stats.losses[-10:])) if stats.losses else None,
        peak_memory_bytes=peak, peak_memory_kind=peak_kind,
        peak_reserved_bytes=memory.peak_reserved_bytes(device), **eff,
        steps_to_target=efficiency.steps_to_target(stats.losses), harness_overhead=overhead,
        formulation=formulation.name, lr=cfg.lr or 0.0,
        config=cell.resolved(), versions=provenance.package_versions(), git_sha=sha, git_dirty=dirty,
        device=provenance.device_name(device), kernels=reproducible.kernel_provenance(),
        backbone_source=loaded.source,
        data_source=f"train={train_split.source} eval={eval_split.source}",
        data_fingerprint=data_fingerprint(cell.task, data), data_notes=notes,
        curve_path=curve_path, samples_path=samples_path, gen_tokens_per_s=formulation.gen_tokens_per_s(),
        started_at=started, finished_at=provenance.now(),
    ))


def checked_score(record: ResultRecord) -> ResultRecord:
    """``record``, failed instead of ok when its main score is missing, NaN or infinite: a
    run without a usable number must not count as finished (tables would average it away and
    ``run`` would never retry it). Its metrics and costs are kept for diagnosis."""
    problem = score_problem(record.main_metric, record.main_score)
    if record.main_score is None:
        problem = f"the task's metrics {sorted(record.metrics)} hold no main metric {record.main_metric!r}"
    if not problem:
        return record
    return dataclasses.replace(record, status="failed", error=f"{problem}; the run is recorded as failed")


def save_samples(path: Path, examples: list[Example], predictions: list, limit: int = 100) -> str:
    """The first ``limit`` generated texts with their input and references, as JSON lines
    beside the row (a metric alone does not show whether outputs are sentences)."""
    lines = [json.dumps({"input": ex.text_a, "output": pred, "references": list(ex.references)},
                        ensure_ascii=False) + "\n"
             for ex, pred in list(zip(examples, predictions, strict=True))[:limit]]
    write_atomic(path, "".join(lines).encode("utf-8"))
    return str(path)


def save_curves(path: Path, stats: TrainStats) -> str:
    """Per-step loss, periodic evaluations and method step logs (e.g. gate values), kept
    beside the row so the record stays flat."""
    write_atomic(path, json.dumps({"loss": stats.losses, "step_seconds": stats.step_seconds,
                                   "evals": stats.evals, "step_logs": stats.step_logs}).encode())
    return str(path)


def save_adapter(adapter: nn.Module, path: Path) -> tuple[str, int]:
    """Trained state as safetensors (never pickle), written atomically."""
    return save_state(adapter.trainable_state_dict(), path)


def save_state(state: dict[str, torch.Tensor], path: Path) -> tuple[str, int]:
    """Tensors as safetensors (never pickle), written atomically; returns (path, bytes)."""
    from safetensors.torch import save

    write_atomic(path, save({k: v.detach().contiguous().cpu().clone() for k, v in state.items()}))
    return str(path), path.stat().st_size


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """True when two states hold the very same tensors (a method whose deployed state is its
    trained state): then one file serves both, with no copy of e.g. a fully tuned model."""
    return a.keys() == b.keys() and all(a[k].data_ptr() == b[k].data_ptr() and a[k].shape == b[k].shape
                                        for k in a)


def failed_record(cell: Cell, err: BaseException, started: str) -> ResultRecord:
    sha, dirty = provenance.git_state()
    tb = traceback.format_exception_only(type(err), err)[-1].strip()
    return ResultRecord(
        cell_id=cell.id, suite=cell.suite, method=cell.method, task=cell.task, backbone=cell.backbone,
        prefix_length=cell.prefix_length, seed=cell.seed, status="failed", error=tb[:2000],
        config=cell.resolved(), versions=provenance.package_versions(), git_sha=sha, git_dirty=dirty,
        kernels=reproducible.kernel_provenance(), started_at=started, finished_at=provenance.now())


def run_cells(cells: list[Cell], results_dir: Path, data: DataSettings, device: torch.device | str,
              retry_failed: bool = False, log: Callable[[str], None] = print,
              executor: Executor | None = None, threads: int = 0,
              plugins: tuple[str, ...] = (), reproducible_mode: bool = False) -> dict[str, int]:
    """Run every unfinished cell with ``executor`` (default: in this process); returns counts
    (cells, ran, skipped, failed). The results folder is checked writable and everything is
    validated before any model loads. Cells are pinned to the executor's threads and the
    deterministic-algorithms setting (both are in a cell's id). Each cell is claimed before
    it runs (bench/claims.py): a second driver on the same folder runs other cells, never the
    same ones; cells it finds running elsewhere are looked at again at the end and otherwise
    left to that run (counted as skipped). Each row is in the store before it is reported."""
    from bench import claims
    from bench.executors import CellJob, LocalExecutor

    validate_cells(cells, data)
    try:
        claims.check_writable(results_dir)
    except OSError as err:
        raise ConfigError(f"results folder {results_dir} is not writable ({err.strerror or err}"
                          f"{': ' + str(err.filename) if err.filename else ''}); nothing was run: "
                          "fix its permissions or choose another folder with --results") from None
    repaired = set_aside_torn_tail(results_dir)  # a crash may have torn the last row
    if repaired:
        log(repaired)
    executor = executor or LocalExecutor()
    if reproducible_mode:  # a fixed count, not one derived from this machine's cores
        threads = threads or reproducible.DEFAULT_THREADS
    cells = pinned_cells(cells, executor, threads, reproducible_mode)  # before any id is compared
    records, problems = read_records(results_dir)
    if problems:
        log(problem_summary(problems))
    # validate_cells has read every task's data: its fingerprints cost nothing more
    fingerprints = {t: data_fingerprint(t, data) for t in {c.task for c in cells}}
    plan = staleness.plan(cells, records, fingerprints, retry_failed)
    todo = sorted(plan.todo, key=lambda c: (c.backbone, c.task))  # share loaded backbones and data
    counts = {"cells": len(cells), "skipped": len(cells) - len(todo), "ran": 0, "failed": 0}
    if plan.stale:
        log(plan.describe())
    log(f"{len(cells)} cells, {counts['skipped']} already finished, {len(todo)} to run -> {results_dir}"
        f" ({executor.name} executor, {executor.threads_per_cell(threads)} threads per cell)")
    # absolute: workers (child processes, Ray, Slurm) may start in another directory
    job = CellJob(data, str(device), str(Path(results_dir).resolve()), threads, plugins=tuple(plugins),
                  reproducible=reproducible_mode)
    if reproducible_mode:
        reproducible.export_env()  # inherited by every worker this driver starts
    held = claims.DriverClaims(Path(results_dir), log, fingerprints)
    try:
        for last_look, pending in ((False, todo), (True, None)):
            pending = held.recheck() if last_look else pending
            for record in executor.run(held.take(pending, last_look), job, log):
                held.release(record.cell_id)
                _report(record, counts, len(todo), job.run_id, log)
    finally:
        held.release_all()
    if held.elsewhere:
        log(f"{len(held.elsewhere)} cell(s) still running elsewhere, left to that run")
    counts["skipped"] = len(cells) - counts["ran"]
    return counts


def pinned_cells(cells: list[Cell], executor: Executor | None = None, threads: int = 0,
                 reproducible_mode: bool = False) -> list[Cell]:
    """``cells`` as ``run_cells`` runs them: pinned to the torch threads ``executor`` gives
    each cell and to the deterministic-algorithms setting, both part of their ids (the bytes
    differ at 1 and 2 threads)."""
    from bench.executors import LocalExecutor

    threads = (executor or LocalExecutor()).threads_per_cell(threads)
    deterministic = reproducible_mode or torch.are_deterministic_algorithms_enabled()
    return [c.pinned(threads, deterministic) for c in cells]


def _report(record: ResultRecord, counts: dict[str, int], total: int, run_id: str,
            log: Callable[[str], None]) -> None:
    head = (f"[{counts['ran'] + 1}/{total}] {record.method} {record.task} {record.backbone} "
            f"P={record.prefix_length} seed={record.seed}")
    if record.run_id != run_id:  # a worker found the row of another run and did not train
        log(f"{head}: finished elsewhere meanwhile, not run again")
        return
    counts["ran"] += 1
    if record.status != "ok":
        counts["failed"] += 1
        log(f"{head}: FAILED {record.error}")
    else:
        flag = " (collapsed to one class)" if record.collapsed else ""
        log(f"{head}: {record.main_metric}={record.main_score:.4f}{flag} "
            f"loss {record.first_loss:.3f}->{record.final_loss:.3f}, "
            f"{record.train_tokens_per_s:.0f} train tok/s, "
            f"{record.train_seconds + record.eval_seconds:.0f} s")
