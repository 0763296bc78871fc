"""lm-evaluation-harness tasks (Gao et al., https://github.com/EleutherAI/lm-evaluation-harness)
run on the adapted model in memory.

An ``LmEvalTask`` trains on a named *source* task of ours (e.g. ``glue/rte`` through its
verbalizer) and evaluates with lm-eval's own task definition, prompts and metrics: the
harness's ``HFLM`` wraps the adapted model (through ``HarnessModel``, so every method's
forward and generate, prefix included, is what lm-eval calls), and
``lm_eval.simple_evaluate`` scores it. Metrics and their standard errors land in the
record (``acc``, ``acc_stderr``, ...).

Local tasks (YAML + JSONL in ``tasks/lm_eval_local/``, built from real GLUE dev rows) run
offline; hub tasks (arc_easy, hellaswag, boolq, piqa, winogrande) need the Hugging Face
hub for their data and say so before any model loads when the hub is disabled.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks.base import TASKS, DataSettings, DataUnavailableError, Example, Metric, Split, Task, register_task

LOCAL_DIR = Path(__file__).resolve().parent / "lm_eval_local"
REPO_ROOT = LOCAL_DIR.parent.parent


class HarnessModel(nn.Module):
    """What lm-eval's ``HFLM`` needs from a ``PreTrainedModel``, in front of an Adapter.

    HFLM calls ``model(input_ids).logits`` (positional, no mask: its batches are padded on
    the right and only real positions are read) and ``model.generate(input_ids=...,
    max_length=..., ...)``. The Adapter takes keyword arguments, and a prefix method's
    ``generate`` puts placeholder ids in front, so ``max_length`` is turned into
    ``max_new_tokens`` here (else the prefix would eat the generation budget).
    """

    def __init__(self, adapter: nn.Module, base: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter
        self.config = base.config
        self.name_or_path = getattr(base, "name_or_path", "prefix-bench-adapter")

    @property
    def device(self) -> torch.device:
        return next(self.adapter.parameters()).device

    def tie_weights(self) -> None:
        """HFLM calls this on models it is handed; the backbone's ties are already in place."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.adapter(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        # HFLM reads logits by position from the start of the input: a method that puts
        # virtual tokens in front (prompt tuning) returns P more positions, which must go
        if out.logits.shape[1] > input_ids.shape[1]:
            out.logits = out.logits[:, -input_ids.shape[1]:]
        return out

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_length: int | None = None, **kwargs: Any) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if max_length is not None and "max_new_tokens" not in kwargs:
            kwargs["max_new_tokens"] = max(1, max_length - input_ids.shape[1])
        return self.adapter.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def _resolved_local_dir(out: Path) -> Path:
    """Copy the local task YAMLs with their repo-relative ``data_files`` made absolute, so
    the harness finds the JSONL whatever the working directory (a worker may start
    elsewhere)."""
    import yaml

    for src in LOCAL_DIR.glob("*.yaml"):
        cfg = yaml.safe_load(src.read_text())
        files = cfg.get("dataset_kwargs", {}).get("data_files", {})
        for split, rel in list(files.items()):
            files[split] = str((REPO_ROOT / rel).resolve())
        (out / src.name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


class LmEvalTask(Task):
    """Train on ``train_source`` (one of our tasks); evaluate with lm-eval task ``harness_task``."""

    def __init__(self, *, name: str, harness_task: str, train_source: str, metrics: tuple[Metric, ...],
                 main_metric: str = "acc", local: bool = False, hub_dataset: str = "",
                 num_fewshot: int = 0, batch_size: int = 16) -> None:
        source = TASKS.get(train_source)
        self.name = name
        self.harness_task = harness_task
        self.train_source = train_source
        self.local = local
        self.hub_dataset = hub_dataset
        self.num_fewshot = num_fewshot
        self.batch_size = batch_size
        self.metrics = metrics
        self.main_metric = main_metric
        # training goes through the source task's formulation, so its shape is ours
        self.kind = source.kind
        self.label_names = source.label_names
        self.label_words = source.label_words
        self.prompt = source.prompt
        self.train_split = source.train_split
        self.eval_split = source.eval_split
        self.version = "1"
        self.citation = f"evaluated with lm-evaluation-harness task {harness_task!r}; trained on {train_source}"

    @property
    def source(self) -> Task:
        return TASKS.get(self.train_source)

    @property
    def majority_baseline_applies(self) -> bool:
        return False  # the evaluation set is the harness's, not the source's

    def depends_on(self) -> tuple[Any, ...]:
        # trained through the source task; a local task's prompt and rows are files of its own
        if not self.local:
            return (self.source,)
        stem = self.harness_task.removesuffix("_local")
        return (self.source, LOCAL_DIR / f"{self.harness_task}.yaml", *sorted(LOCAL_DIR.glob(f"{stem}_*.jsonl")))

    def describe(self) -> str:
        where = "local files" if self.local else "needs the hub"
        return (f"lm-eval task {self.harness_task} ({where}), trained on {self.train_source}; "
                f"metrics {', '.join(m.name for m in self.metrics)} (main {self.main_metric})")

    def check_available(self, data: DataSettings) -> None:
        try:
            import lm_eval  # noqa: F401
        except ImportError as err:
            raise DataUnavailableError(f"task {self.name!r} needs lm-eval (pip install 'lm-eval==0.4.*')") from err
        self.source.check_available(data)
        if not self.local and not data.allow_hub:
            raise DataUnavailableError(
                f"task {self.name!r} (lm-eval task {self.harness_task!r}) needs the Hugging Face hub for "
                f"its dataset {self.hub_dataset or '(the harness task’s dataset)'}; the hub is disabled "
                "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE). Offline, use a local task such as "
                f"{', '.join(n for n in TASKS.names() if n.endswith('_local'))}")

    def load(self, split: str, data: DataSettings) -> Split:
        return self.source.load(split, data)

    def compute_metrics(self, predictions: Sequence[Any], examples: Sequence[Example]) -> dict[str, float]:
        """The source task's metrics on its own evaluation split (periodic evaluations)."""
        return self.source.compute_metrics(predictions, examples)

    def evaluate_adapted(self, adapter: nn.Module, tokenizer: Any, device: torch.device,
                         limit: int | None = None) -> dict[str, float]:
        """Run the harness task on ``adapter`` in memory; metric name -> value, with
        ``<metric>_stderr`` beside each metric lm-eval gives one for."""
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        adapter.eval()
        adapter.fold()  # as the shared evaluator does: inference with the method folded
        base = getattr(adapter, "model", adapter)
        model = HarnessModel(adapter, getattr(base, "get_base_model", lambda: base)())
        padding_side = tokenizer.padding_side
        extra: dict[str, Any] = {}
        if tokenizer.eos_token_id is None and tokenizer.bos_token_id is None:
            # a WordPiece tokenizer (the tiny plumbing models): no BOS/EOS for the harness's
            # empty-context prefix, and [CLS]/[SEP] must not wrap every string it encodes
            extra = {"prefix_token_id": tokenizer.sep_token_id, "add_bos_token": False}
        try:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size,
                      max_length=getattr(model.config, "max_position_embeddings", 2048), device=str(device),
                      **extra)
            with tempfile.TemporaryDirectory(prefix="lm-eval-tasks-") as tmp:
                # a local task needs only its own folder: indexing lm-eval's thousands of
                # built-in task files costs seconds per cell
                manager = (TaskManager(include_path=str(_resolved_local_dir(Path(tmp))), include_defaults=False)
                           if self.local else TaskManager())
                out = lm_eval.simple_evaluate(model=lm, tasks=[self.harness_task], task_manager=manager,
                                              num_fewshot=self.num_fewshot, limit=limit,
                                              log_samples=False, bootstrap_iters=1000, random_seed=0,
                                              numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
        finally:
            tokenizer.padding_side = padding_side  # HFLM may change it; our formulations rely on it
        return flatten_results(out["results"][self.harness_task])


def flatten_results(block: dict[str, Any]) -> dict[str, float]:
    """lm-eval's ``{"acc,none": 0.8, "acc_stderr,none": 0.01, "alias": ...}`` -> our flat
    ``{"acc": 0.8, "acc_stderr": 0.01}`` (the filter name is dropped when it is "none",
    kept as a suffix otherwise). Non-numeric entries and "N/A" stderrs are left out."""
    out: dict[str, float] = {}
    for key, value in block.items():
        if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else f"{metric}_{filt}"
        if math.isfinite(float(value)):
            out[name] = float(value)
    return out


_ACC = (Metric("acc"),)
_ACC_NORM = (Metric("acc"), Metric("acc_norm"))

register_task(LmEvalTask(name="lm_eval/sst2_local", harness_task="sst2_local", train_source="glue/sst2",
                         metrics=_ACC, local=True))
register_task(LmEvalTask(name="lm_eval/rte_local", harness_task="rte_local", train_source="glue/rte",
                         metrics=_ACC, local=True))
# Hub tasks for online users. They train on glue/rte (offline-available, a yes/no reasoning
# source); register other pairings with LmEvalTask(...) as needed.
for _task, _hub, _metrics, _main in (
        ("arc_easy", "allenai/ai2_arc", _ACC_NORM, "acc"),
        ("hellaswag", "Rowan/hellaswag", _ACC_NORM, "acc_norm"),
        ("boolq", "super_glue/boolq", _ACC, "acc"),
        ("piqa", "baber/piqa", _ACC_NORM, "acc"),
        ("winogrande", "allenai/winogrande", _ACC, "acc")):
    register_task(LmEvalTask(name=f"lm_eval/{_task}", harness_task=_task, train_source="glue/rte",
                             metrics=_metrics, main_metric=_main, hub_dataset=_hub))
