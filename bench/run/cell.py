"""One cell's life, as named stages around one small context:

    prepare -> attach -> train -> evaluate -> persist -> record

``prepare`` checks the code is what the cell was planned with and loads data, backbone and
formulation (once per process); ``attach`` seeds, copies the backbone (no cell can change
the weights another sees), draws a fresh head and attaches the method; ``train`` and
``evaluate`` run the shared loop; ``persist`` writes the artefacts beside the row; ``record``
builds the flat row.

With ``holdout`` > 0 a slice of the training split is held out (bench/run/data.py): periodic
evaluations and early stopping score it, and the row's ``holdout_score`` is its main metric
for the kept parameters. A search trial (``Cell.role`` "trial") never loads the evaluation
split: its final evaluation, and so its metrics, are the held-out slice's. A trial run under a
search scheduler (``on_eval``: Ray Tune's, bench/run/executors/tune_trials.py) reports each
periodic held-out score to it and may be stopped early; its row's ``search`` says so."""

from __future__ import annotations

import copy
import dataclasses
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.core import identity
from bench.core.config import TrainConfig
from bench.core.outcome import score_problem
from bench.core.records import ResultRecord
from bench.measure import efficiency, flops, memory, provenance, reproducible
from bench.run.artefacts import same_tensors, save_adapter, save_curves, save_samples, save_state
from bench.run.backbones import BACKBONES, LoadedBackbone, load_backbone
from bench.run.data import data_fingerprint, load_split, split_holdout, subset
from bench.run.formulations import Formulation, choose_formulation
from bench.run.matrix import Cell
from bench.run.precision import Precision, fp32_evaluation
from bench.run.trainer import EvalResult, TrainStats, evaluate, train
from methods import METHODS, Anatomy, AttachContext
from tasks import DataSettings, cell_task
from tasks.base import Example, Split, Task


@dataclass
class CellRun:
    """What the stages hand on: set by ``prepare``, then filled in stage by stage."""

    cell: Cell
    data: DataSettings
    device: torch.device
    task: Task
    cfg: TrainConfig
    started: str
    train_split: Split
    eval_split: Split
    loaded: LoadedBackbone
    formulation: Formulation
    precision: Precision  # the cell's, resolved ("auto" of a cell run unpinned: here)
    wall_start: float  # after the once-per-process loads: harness overhead is per cell
    adapter: Any = None
    trainable: int = 0
    total: int = 0
    train_examples: list[Example] = field(default_factory=list)
    eval_examples: list[Example] = field(default_factory=list)
    holdout_examples: list[Example] = field(default_factory=list)  # from the training split, never trained on
    holdout_metrics: dict[str, float] = field(default_factory=dict)  # of the kept parameters
    stats: TrainStats = field(default_factory=TrainStats)
    periodic_eval_seconds: float = 0.0
    result: EvalResult = field(default_factory=lambda: EvalResult([], 0, 0.0))
    metrics: dict[str, float] = field(default_factory=dict)
    peak: tuple[int, str] = (0, "")
    saved: dict[str, Any] = field(default_factory=dict)  # ResultRecord fields of the artefacts
    on_eval: Callable[[int, float], bool] | None = None  # a search scheduler's hook (bench/run/trainer.py)

    @property
    def label(self) -> str:
        trial = f" trial lr={self.cfg.lr:g}" if self.cell.is_trial and self.cfg.lr else ""
        return f"{self.cell.method} P={self.cell.prefix_length} s{self.cell.seed}{trial}"

    @property
    def scored_examples(self) -> list[Example]:
        """What the final evaluation scored: the held-out slice for a trial, else the evaluation examples."""
        return self.holdout_examples if self.cell.is_trial else self.eval_examples

    @property
    def higher_is_better(self) -> bool:
        """The main metric's direction, as the task declares it (reporting reads the same)."""
        return self.task.facts().higher_is_better.get(self.task.main_metric, True)


def run_cell(cell: Cell, data: DataSettings, device: torch.device, results_dir: Path | None = None,
             on_eval: Callable[[int, float], bool] | None = None) -> ResultRecord:
    """Train and evaluate one cell; returns its record: ok, or failed when its main score is
    missing, NaN or infinite (``checked_score``). Raises on any other failure, also when the
    code is no longer what the cell was planned with (its row would claim an identity it
    was not computed with: e.g. a queued Slurm job after an edit). ``on_eval``: see ``train``."""
    run = prepare(cell, data, device)
    run.on_eval = on_eval
    attach(run)
    train_stage(run)
    evaluate_stage(run)
    persist(run, results_dir)
    return checked_score(record(run))


def prepare(cell: Cell, data: DataSettings, device: torch.device) -> CellRun:
    started = provenance.now()
    if cell.threads:  # a pinned cell runs with the settings its id hashes
        provenance.apply_torch_settings(cell.threads, cell.deterministic)
    task = cell_task(cell)
    now = identity.cell_identity(METHODS.get(cell.method), task)
    if cell.identity != now:
        changed = ", ".join(identity.identity_changes(cell.identity, now))
        raise RuntimeError(f"the code changed since this cell was planned ({changed}); "
                           "run the suite again to plan it with the current code")
    if cell.search and "lr" not in (cell.selection.get("chosen") or {}):
        raise RuntimeError("this final cell of a learning-rate search was given no chosen lr: the driver chooses it "
                           "from its trial cells' rows (`prefix-bench run` runs them first)")
    cfg = cell.train_config
    precision = Precision.of(cfg.precision, device)
    cfg = dataclasses.replace(cfg, precision=precision.name)
    form_cls = choose_formulation(cfg.formulation, task, BACKBONES.get(cell.backbone).causal)
    train_split = load_split(cell.task, task.train_split, data, cell.task_args)
    # a trial selects on the held-out slice: it must not even read the evaluation split
    eval_split = Split([], "not read (a search trial)", "") if cell.is_trial else load_split(cell.task, task.eval_split,
                                                                                              data, cell.task_args)
    loaded = load_backbone(cell.backbone, form_cls.head, task.num_labels, cell.backbone_source, device)
    formulation = form_cls(task, loaded.tokenizer, cfg.max_length)
    flops.peak_flops(device, precision.dtype)  # once per process, off the cell clock
    task.preload()
    return CellRun(cell, data, device, task, cfg, started, train_split, eval_split, loaded, formulation,
                   precision, wall_start=time.perf_counter())


def attach(run: CellRun, share_frozen: bool = False) -> None:
    """``share_frozen``: the copy shares the backbone's frozen weights instead of copying
    them (packed cells, bench/run/packed.py: their methods leave those weights unchanged)."""
    cell = run.cell
    seed_everything(cell.seed)
    memory.reset_peak(run.device)
    model = copy_backbone(run.loaded.model, run.formulation.head == "seq_cls", share_frozen)
    head = head_parameters(model) if run.formulation.head == "seq_cls" else []
    if head:
        reset_head(model, cell.seed)
    method_cls = METHODS.get(cell.method)
    method = method_cls(method_cls.Config.from_dict(cell.method_args, cell.method), cell.prefix_length)
    run.adapter = method.attach(model, AttachContext(run.loaded.tokenizer, Anatomy.of(model), cell.seed, run.device))
    for p in head:  # the task head trains with every method (PEFT may have frozen it)
        p.requires_grad_(True)
    if not share_frozen:  # shared weights stay as loaded: autocast casts them to the same values each step
        run.precision.prepare(run.adapter)  # bf16-mixed: this cell's frozen matmul weights in bf16, once
    run.trainable = sum(p.numel() for p in run.adapter.parameters() if p.requires_grad)
    run.total = sum(p.numel() for p in run.adapter.parameters())
    run.train_examples, run.holdout_examples = split_holdout(run.train_split.examples, run.cfg.holdout,
                                                             run.cfg.train_limit, cell.seed)
    run.eval_examples = subset(run.eval_split.examples, run.cfg.eval_limit, None)


def train_stage(run: CellRun) -> None:
    run.stats = train(run.adapter, run.formulation, run.train_examples, run.cfg, run.cell.seed, run.device,
                      desc=f"train {run.label}", periodic_eval=lambda step: periodic_eval(run),
                      higher_is_better=run.higher_is_better, on_eval=run.on_eval)
    run.stats.evals_on = "holdout" if run.holdout_examples else "eval"


def periodic_eval(run: CellRun) -> float:
    """The main score now (a point of the convergence curve; early stopping's signal): on the
    held-out slice when the cell has one, else on the evaluation examples."""
    if run.holdout_examples:
        res, metrics = score_holdout(run)
    else:
        res = _evaluate(run, run.eval_examples, "eval")
        metrics = run.task.compute_metrics(res.predictions, run.eval_examples)
    run.periodic_eval_seconds += res.seconds
    return float(metrics.get(run.task.main_metric, float("nan")))


def score_holdout(run: CellRun) -> tuple[EvalResult, dict[str, float]]:
    """The task's metrics on the held-out slice for the adapter as it stands."""
    res = _evaluate(run, run.holdout_examples, "holdout")
    return res, run.task.compute_metrics(res.predictions, run.holdout_examples)


def _evaluate(run: CellRun, examples: list[Example], desc: str) -> EvalResult:
    """``evaluate`` in the cell's ``eval_order``, each distinct input once. "length" runs the
    examples sorted by token length, so a batch pads little, and puts the predictions back in
    the given order: the same predictions, because no method's output depends on the rest of
    its batch (positions come from the attention mask: tests/test_padding_invariance.py). For
    the same reason an input that occurs again is predicted once and its prediction repeated:
    E2E's held-out slice has a row per reference, about 8 per MR, each a beam search."""
    first: dict[tuple[str, str | None], int] = {}
    for i, e in enumerate(examples):
        first.setdefault((e.text_a, e.text_b), i)
    if len(first) == len(examples):
        return _evaluate_in_order(run, examples, desc)
    res = _evaluate_in_order(run, [examples[i] for i in first.values()], desc)
    slot = {key: k for k, key in enumerate(first)}
    return dataclasses.replace(res, predictions=[res.predictions[slot[e.text_a, e.text_b]] for e in examples])


def _evaluate_in_order(run: CellRun, examples: list[Example], desc: str) -> EvalResult:
    if run.cfg.eval_order != "length" or len(examples) < 2:
        return evaluate(run.adapter, run.formulation, examples, run.cfg.eval_batch_size, run.device, desc=desc)
    lengths = run.formulation.token_lengths(examples)
    order = sorted(range(len(examples)), key=lengths.__getitem__)
    res = evaluate(run.adapter, run.formulation, [examples[i] for i in order], run.cfg.eval_batch_size,
                   run.device, desc=desc)
    predictions: list = [None] * len(examples)
    for k, i in enumerate(order):
        predictions[i] = res.predictions[k]
    return dataclasses.replace(res, predictions=predictions)


def evaluate_stage(run: CellRun) -> None:
    if run.cell.is_trial:  # its metrics are the held-out slice's; the evaluation split is not read
        run.result, run.metrics = score_holdout(run)
        run.holdout_metrics = run.metrics
        run.peak = memory.peak_bytes(run.device)
        return
    t_eval = time.perf_counter()
    with fp32_evaluation(run.adapter):  # lm-eval's forwards too: fp32, as every evaluation
        own = run.task.evaluate_adapted(run.adapter, run.loaded.tokenizer, run.device, run.cfg.eval_limit)
    if own is None:
        run.result = _evaluate(run, run.eval_examples, f"eval {run.label}")
        run.metrics = run.task.compute_metrics(run.result.predictions, run.eval_examples)
    else:
        run.result, run.metrics = EvalResult([], 0, time.perf_counter() - t_eval), own
    if run.holdout_examples:  # the kept parameters' held-out score, beside the evaluation split's
        res, run.holdout_metrics = score_holdout(run)
        run.periodic_eval_seconds += res.seconds
    run.peak = memory.peak_bytes(run.device)


def persist(run: CellRun, results_dir: Path | None) -> None:
    """Adapter (trained and, where it folds to something else, deployed), curves, samples."""
    deployed = run.adapter.inference_state_dict()
    saved: dict[str, Any] = {"inference_params": sum(t.numel() for t in deployed.values()),
                             "adapter_path": "", "adapter_bytes": 0, "inference_path": "",
                             "inference_bytes": None, "curve_path": "", "samples_path": ""}
    if results_dir is not None:
        cid = run.cell.id
        path, size = save_adapter(run.adapter, results_dir / "adapters" / f"{cid}.safetensors")
        saved.update(adapter_path=path, adapter_bytes=size, inference_path=path, inference_bytes=size)
        if not same_tensors(deployed, run.adapter.trainable_state_dict()):
            path, size = save_state(deployed, results_dir / "adapters" / f"{cid}.inference.safetensors")
            saved.update(inference_path=path, inference_bytes=size)
        saved["curve_path"] = save_curves(results_dir / "curves" / f"{cid}.json", run.stats)
        if run.task.kind == "generation":
            saved["samples_path"] = save_samples(results_dir / "samples" / f"{cid}.jsonl", run.scored_examples,
                                                 run.result.predictions)
    run.saved = saved


def record(run: CellRun) -> ResultRecord:
    cell, stats, result, task = run.cell, run.stats, run.result, run.task
    compute = sum(stats.step_seconds) + run.periodic_eval_seconds + result.seconds
    overhead = efficiency.harness_overhead(time.perf_counter() - run.wall_start, compute)
    eff = efficiency.train_mfu(run.adapter, run.cfg.batch_size, stats.tokens, len(stats.step_tokens),
                               stats.tokens_per_s(), run.device, head_share=run.formulation.head_share(run.adapter),
                               dtype=run.precision.dtype)
    sha, dirty = provenance.git_state()
    collapsed = task.kind == "classification" and len(set(result.predictions)) == 1 and len(result.predictions) > 1
    notes = "; ".join(n for n in (run.train_split.notes, run.eval_split.notes) if n)
    scored = len(run.scored_examples)
    eval_source = "held-out slice of train" if cell.is_trial else run.eval_split.source
    holdout = run.holdout_metrics.get(task.main_metric) if run.holdout_examples else None
    return ResultRecord(
        cell_id=cell.id, suite=cell.suite, method=cell.method, task=cell.task, backbone=cell.backbone,
        prefix_length=cell.prefix_length, seed=cell.seed, status="ok",
        main_metric=task.main_metric, main_score=run.metrics.get(task.main_metric), metrics=run.metrics,
        collapsed=collapsed, trainable_params=run.trainable, total_params=run.total, **run.saved,
        eval_examples=scored, eval_split_size=scored if cell.is_trial else len(run.eval_split.examples),
        train_seconds=stats.seconds, eval_seconds=result.seconds, train_steps=len(stats.losses),
        train_tokens=stats.tokens, train_tokens_per_s=stats.tokens_per_s(),
        eval_tokens_per_s=result.tokens_per_s, step_seconds_median=stats.median_step_seconds(),
        first_loss=stats.losses[0] if stats.losses else None,
        final_loss=float(np.mean(stats.losses[-10:])) if stats.losses else None,
        peak_memory_bytes=run.peak[0], peak_memory_kind=run.peak[1],
        peak_reserved_bytes=memory.peak_reserved_bytes(run.device), **eff,
        steps_to_target=efficiency.steps_to_target(stats.losses), harness_overhead=overhead,
        formulation=run.formulation.name, lr=run.cfg.lr or 0.0, precision=stats.precision,
        compiled=stats.compiled, compile_note=stats.compile_note, padding_fraction=stats.padding_fraction,
        padding_fraction_unbucketed=stats.padding_fraction_unbucketed,
        config=cell.resolved(), versions=provenance.package_versions(), git_sha=sha, git_dirty=dirty,
        device=provenance.device_name(run.device), kernels=reproducible.kernel_provenance(),
        backbone_source=run.loaded.source,
        data_source=f"train={run.train_split.source} eval={eval_source}",
        data_fingerprint=data_fingerprint(cell.task, run.data, eval_split=not cell.is_trial,
                                          task_args=cell.task_args), data_notes=notes,
        gen_tokens_per_s=run.formulation.gen_tokens_per_s(),
        started_at=run.started, finished_at=provenance.now(),
        role=cell.role, holdout_score=None if holdout is None else float(holdout), best_step=stats.best_step,
        stopped_step=len(stats.losses), plateaued=stats.plateaued, search=search_field(cell, stats),
    )


def search_field(cell: Cell, stats: TrainStats) -> dict[str, Any]:
    """The row's ``search``: a final cell's selection; for a trial run under a search scheduler,
    which one and whether it stopped the trial before its step budget (at ``stopped_step``)."""
    search = dict(cell.selection)
    if "scheduler" in search:
        search["stopped_by_scheduler"] = stats.scheduler_stop
    return search


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def copy_backbone(model: nn.Module, fresh_head: bool, share_frozen: bool = False) -> nn.Module:
    """A copy of the shared backbone for one cell. With ``share_frozen`` its frozen weights are
    the shared tensors themselves (the copy costs no weight memory); a head the cell draws
    afresh (``fresh_head``) is still copied."""
    if not share_frozen:
        return copy.deepcopy(model)
    own = {id(p) for p in head_parameters(model)} if fresh_head else set()
    memo: dict[int, Any] = {id(p): p for p in model.parameters() if not p.requires_grad and id(p) not in own}
    return copy.deepcopy(model, memo)


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


def failed_record(cell: Cell, err: BaseException, started: str) -> ResultRecord:
    sha, dirty = provenance.git_state()
    tb = traceback.format_exception_only(type(err), err)[-1].strip()
    return ResultRecord(
        cell_id=cell.id, suite=cell.suite, method=cell.method, task=cell.task, backbone=cell.backbone,
        prefix_length=cell.prefix_length, seed=cell.seed, status="failed", error=tb[:2000], role=cell.role,
        search=dict(cell.selection),
        config=cell.resolved(), versions=provenance.package_versions(), git_sha=sha, git_dirty=dirty,
        kernels=reproducible.kernel_provenance(), started_at=started, finished_at=provenance.now())
