"""The result row: everything one cell produced, flat (scalars plus one level of
``metrics``), as one JSON line of ``records.jsonl``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from bench.core.record_schema import SCHEMA_VERSION

# peak_memory_kind of a CPU peak that is the process's high-water mark, not the cell's
# (bench/measure/memory.py, where the OS cannot reset it per cell)
PROCESS_PEAK = "cpu_peak_rss_process"


@dataclass
class ResultRecord:
    """Everything one cell produced. Scalars only, plus one level of ``metrics``."""

    cell_id: str
    suite: str
    method: str
    task: str
    backbone: str
    prefix_length: int | None
    seed: int
    status: str  # ok | failed
    error: str = ""
    main_metric: str = ""
    main_score: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    collapsed: bool = False  # every prediction is one class: flagged, not a number like others
    trainable_params: int = 0
    total_params: int = 0
    adapter_bytes: int = 0  # the trained state as saved (training time: e.g. a prefix's MLP included)
    adapter_path: str = ""
    # what one deploys (the adapter's inference_state_dict: e.g. the folded prefix); None
    # where unknown (records of schema 1 measured only the training-time adapter)
    inference_params: int | None = None
    inference_bytes: int | None = None
    # examples evaluated and the evaluation split's size: a subset of a task with corpus-level
    # metrics (E2E's CIDEr and NIST weights) is comparable to nothing (tables mark it)
    eval_examples: int | None = None
    eval_split_size: int | None = None
    inference_path: str = ""  # the same file as adapter_path when nothing folds away
    curve_path: str = ""
    samples_path: str = ""  # generation tasks: a JSONL of generated texts beside the row
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_steps: int = 0
    train_tokens: int = 0
    train_tokens_per_s: float = 0.0
    eval_tokens_per_s: float = 0.0
    gen_tokens_per_s: float = 0.0  # generation tasks: new tokens per second while decoding
    step_seconds_median: float = 0.0
    first_loss: float | None = None
    final_loss: float | None = None
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""
    peak_reserved_bytes: int = 0  # CUDA max reserved (allocator cache included); 0 on CPU
    # efficiency, defined in bench/measure/efficiency.py and bench/measure/flops.py
    mfu: float | None = None
    peak_flops: float = 0.0
    achieved_flops: float = 0.0
    steps_to_target: int | None = None
    harness_overhead: float | None = None
    formulation: str = ""
    lr: float = 0.0
    # how the step ran (bench/run/trainer.py, bench/run/precision.py): the resolved precision
    # (fp32 | bf16-mixed; "" where unknown: a failed row), whether every step ran through
    # torch.compile, and why a requested compile did not
    precision: str = ""
    compiled: bool = False
    compile_note: str = ""
    # share of the trained batches' token positions that were padding, and what plain seeded
    # batches of the same examples would have padded (length buckets: bucket_window)
    padding_fraction: float | None = None
    padding_fraction_unbucketed: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    git_sha: str = ""
    git_dirty: bool = False
    device: str = ""
    # bench/measure/reproducible.py: CPU model, instruction sets in use, kernel libraries, threads
    kernels: dict[str, str] = field(default_factory=dict)
    backbone_source: str = ""
    data_source: str = ""
    data_fingerprint: str = ""
    data_notes: str = ""
    started_at: str = ""
    finished_at: str = ""
    # the driver run that wrote the row: tells a row this run produced from one it found
    run_id: str = ""
    # cells trained together in one pass with this one, itself included (bench/run/packed.py);
    # None: trained alone. Optional and added without a schema bump: older rows read as None,
    # and an older reader ignores it (the row is otherwise the same in form)
    packed_with: int | None = None
    # the learning-rate search and early stopping (bench/run/search.py, bench/run/trainer.py):
    # role "trial": a search trial, scored on the held-out slice only, never shown in tables;
    # holdout_score: the held-out main metric of the kept parameters (None: no held-out slice);
    # best_step: the step whose parameters were kept, stopped_step: the step training ended;
    # plateaued: True stopped by patience, False the step budget ran out still improving,
    # None early stopping off; search: a final cell's grid, scores, chosen, trials, cost_s (and,
    # trials run on Ray Tune: scheduler, stopped_early); a Tune trial's scheduler, stopped_by_scheduler
    role: str = ""
    holdout_score: float | None = None
    best_step: int | None = None
    stopped_step: int | None = None
    plateaued: bool | None = None
    search: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, allow_nan=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResultRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
