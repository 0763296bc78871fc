"""``prefix-bench export CELL_ID --format peft``: a recorded cell's trained adapter as a
Hugging Face PEFT adapter folder, loadable with ``peft.PeftModel.from_pretrained``.

The harness names no method. A method says which PEFT type it exports to
(``Method.peft_export_type``) and its adapter produces the PEFT config and tensors
(``Adapter.peft_export``). This module rebuilds the cell from its (untrusted) record,
loads the backbone and the trained state, builds PEFT's model from the exported config on
a fresh copy of the backbone, sets the method's tensors and the trained task head (our
sequence-classification formulation trains the head with every method: PEFT's
``modules_to_save``), checks that PEFT's model gives the adapter's logits on an unpadded
probe, and writes the folder with ``save_pretrained``.

PEFT's prefix methods place prefixes and prompts in front of left padding and count the
padding into the positions (README, "Trustworthy cells: padding"): on left-padded rows an
exported prefix or prompt differs from ours, on unpadded and right-padded rows it agrees.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core.config import ConfigError
from bench.core.safe_names import check_name

if TYPE_CHECKING:  # torch loads only when an export runs: the CLI builds this parser for every command
    import torch
    from torch import nn

    from bench.core.records import ResultRecord

FORMATS = ("peft",)
TASK_TYPES = {"causal_lm": "CAUSAL_LM", "seq_cls": "SEQ_CLS"}
# the probe check: |PEFT - ours| <= ATOL + RTOL * |ours| on every logit
ATOL, RTOL = 1e-4, 1e-4
PROBE_TEXT = "prefix-bench export check: a short unpadded sentence."
METADATA = "prefix_bench_export.json"


class ExportMismatchError(RuntimeError):
    """PEFT's model built from the export does not give the adapter's logits."""


@dataclass
class Rebuilt:
    """A recorded cell's adapter with its trained state loaded (eval mode)."""

    adapter: Any
    loaded: Any  # the shared LoadedBackbone: copy its model before changing it
    head: str  # the formulation's head: "causal_lm" or "seq_cls"
    weights: str  # the backbone's weights tag (bench/run/backbones.py weights_of)
    task: Any


@dataclass(frozen=True)
class Exported:
    out_dir: Path
    peft_type: str
    task_type: str
    head_modules: tuple[str, ...]
    max_abs_diff: float  # on the probe, PEFT's logits against ours


def exportable_methods() -> list[str]:
    from methods import METHODS

    return [name for name, cls in METHODS.items() if cls.peft_export_type]


def not_exportable(method: str, why: str = "") -> ConfigError:
    return ConfigError(f"method {method!r} cannot be exported in PEFT's format{': ' + why if why else ''}; "
                       f"exportable methods: {', '.join(exportable_methods()) or 'none'}")


def head_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The task head's top-level modules (what ``bench.run.cell.head_parameters`` trains:
    everything outside the backbone body), by name, e.g. {"classifier": Linear}."""
    from bench.run.cell import head_parameters

    head = {id(p) for p in head_parameters(model)}
    return {name: child for name, child in model.named_children()
            if any(id(p) in head for p in child.parameters())}


def adapter_file(results_dir: Path, record: ResultRecord) -> Path:
    """The trained state beside the records (``adapters/<cell_id>.safetensors``); the
    record's own ``adapter_path`` only when it names that same file (a moved folder)."""
    own = results_dir / "adapters" / f"{record.cell_id}.safetensors"
    if own.is_file():
        return own
    recorded = Path(record.adapter_path) if record.adapter_path else None
    if recorded is not None and recorded.name == own.name and recorded.is_file():
        return recorded
    raise ConfigError(f"cell {record.cell_id} has no saved adapter: {own} does not exist"
                      + (f" (its record names {record.adapter_path})" if record.adapter_path else
                         " (it ran without a results folder)"))


def rebuild(record: ResultRecord, results_dir: Path, device: torch.device | str = "cpu") -> Rebuilt:
    """A recorded cell's adapter with its trained state. ConfigError for a record that
    cannot be rebuilt faithfully or a method with no PEFT equivalent, before any model is
    loaded."""
    import copy

    import torch

    from bench.core.identity import cell_identity, identity_changes
    from bench.core.registry import UnknownNameError
    from bench.run.backbones import BACKBONES, load_backbone, weights_of
    from bench.run.cell import head_parameters
    from bench.run.formulations import choose_formulation
    from bench.run.rerun import stored_cell
    from methods import METHODS, Anatomy, AttachContext
    from methods.base import load_adapter
    from tasks import cell_task

    cell = stored_cell(record)
    if cell.id != record.cell_id:
        raise ConfigError(f"cell {record.cell_id}: its stored config hashes to {cell.id}; the record was edited or "
                          "written by an incompatible version, so its adapter cannot be rebuilt faithfully")
    try:
        method_cls, task, backbone = METHODS.get(cell.method), cell_task(cell), BACKBONES.get(cell.backbone)
    except UnknownNameError as err:
        raise ConfigError(f"cell {record.cell_id}: {err} (a plugin's? load it with --plugin)") from None
    if not method_cls.peft_export_type:
        raise not_exportable(cell.method, "PEFT has no equivalent of its adapter")
    weights = weights_of(cell.backbone, cell.backbone_source)
    if cell.weights and cell.weights != weights:
        raise ConfigError(f"cell {record.cell_id} trained on backbone {cell.backbone!r} with weights "
                          f"{cell.weights!r}; here its source {cell.backbone_source!r} gives {weights!r}")
    changes = identity_changes(cell.identity, cell_identity(method_cls, task))
    if changes:
        print(f"export: the code changed since cell {record.cell_id} ran ({', '.join(changes)}); its adapter is "
              "loaded with today's code", file=sys.stderr)
    head = choose_formulation(cell.train_config.formulation, task, backbone.causal).head
    path = adapter_file(results_dir, record)
    loaded = load_backbone(cell.backbone, head, task.num_labels, cell.backbone_source, device)
    model = copy.deepcopy(loaded.model)
    method = method_cls(method_cls.Config.from_dict(cell.method_args, cell.method), cell.prefix_length)
    adapter = method.attach(model, AttachContext(loaded.tokenizer, Anatomy.of(model), cell.seed,
                                                 torch.device(device)))
    if head == "seq_cls":  # trained with every method, so part of the saved state (bench/run/cell.py attach)
        for p in head_parameters(model):
            p.requires_grad_(True)
    load_adapter(adapter, path)
    return Rebuilt(adapter.eval(), loaded, head, weights, task)


def peft_model(adapter: nn.Module, base: nn.Module, task_type: str, method: str = "") -> tuple[Any, tuple[str, ...]]:
    """PEFT's model on ``base`` (which it takes over) holding ``adapter``'s exported state and
    task head; and the head's module names. ConfigError when the adapter has no PEFT form."""
    import peft
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    exported = adapter.peft_export(task_type)
    if exported is None:
        raise not_exportable(method or type(adapter).__name__, "PEFT has no equivalent of its adapter")
    config, tensors = exported
    heads = head_modules(adapter.model) if task_type == "SEQ_CLS" else {}
    if heads:
        config.modules_to_save = list(dict.fromkeys([*(config.modules_to_save or []), *heads]))
    pm = peft.get_peft_model(base, config)
    template = get_peft_model_state_dict(pm)
    state = dict(tensors)
    ours = dict(adapter.model.named_parameters())
    for module in heads:
        for name, _ in heads[module].named_parameters():
            param = f"{module}.{name}"
            key = next((k for k in (f"base_model.model.{param}", f"base_model.{param}") if k in template), None)
            if key is None:
                raise RuntimeError(f"PEFT's state has no key for the task head's {param!r}: {sorted(template)[:8]}")
            state[key] = ours[param].detach().clone()
    missing, unexpected = set(template) - set(state), set(state) - set(template)
    if missing or unexpected:
        raise RuntimeError(f"the exported state does not fit PEFT's model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    for key, value in state.items():
        if value.shape != template[key].shape:
            raise RuntimeError(f"exported tensor {key!r} has shape {tuple(value.shape)}, PEFT's model "
                               f"expects {tuple(template[key].shape)}")
    device = next(pm.parameters()).device
    set_peft_model_state_dict(pm, {k: v.to(device) for k, v in state.items()})
    # (its unexpected keys name a prompt, which the prompt encoder loads itself): check what
    # save_pretrained will write instead
    for key, value in get_peft_model_state_dict(pm).items():
        if not torch.equal(value.to(state[key].device), state[key].to(value.dtype)):
            raise RuntimeError(f"PEFT's model does not hold the exported {key!r}")
    return pm.eval(), tuple(heads)


def probe_batch(tokenizer: Any, device: torch.device | str) -> dict[str, torch.Tensor]:
    enc = tokenizer([PROBE_TEXT], return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def logits_gap(adapter: nn.Module, pm: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """max |PEFT - ours| over the logits; ExportMismatchError beyond ATOL + RTOL * |ours|."""
    import torch

    with torch.no_grad():
        ours = adapter(**batch).logits.float()
        theirs = pm(**batch).logits.float()
    if ours.shape != theirs.shape:
        raise ExportMismatchError(f"PEFT's logits have shape {tuple(theirs.shape)}, ours {tuple(ours.shape)}")
    gap = (theirs - ours).abs()
    if not bool((gap <= ATOL + RTOL * ours.abs()).all()):
        raise ExportMismatchError(f"PEFT's model built from the export gives other logits than the adapter on an "
                                  f"unpadded probe: max |difference| {float(gap.max()):.3g} > {ATOL:g} + "
                                  f"{RTOL:g} x |logit|; nothing was written")
    return float(gap.max())


def save_peft(adapter: nn.Module, base: nn.Module, task_type: str, tokenizer: Any, out_dir: Path,
              method: str = "", base_model_name: str | None = None) -> Exported:
    """Build PEFT's model for ``adapter`` on ``base`` (a fresh copy of the backbone, which
    PEFT takes over), check its logits against the adapter's on an unpadded probe, and
    write it to ``out_dir`` with ``save_pretrained``. Nothing is written on a mismatch."""
    pm, heads = peft_model(adapter, base, task_type, method)
    gap = logits_gap(adapter, pm, probe_batch(tokenizer, next(base.parameters()).device))
    config = pm.peft_config["default"]
    if base_model_name is not None:
        config.base_model_name_or_path = base_model_name
    if config.modules_to_save:  # PEFT appends its own head names to ours on every wrap
        config.modules_to_save = list(dict.fromkeys(config.modules_to_save))
    out_dir.mkdir(parents=True, exist_ok=True)
    pm.save_pretrained(str(out_dir), save_embedding_layers=False)
    peft_type = config.peft_type.value if hasattr(config.peft_type, "value") else str(config.peft_type)
    return Exported(out_dir, peft_type, task_type, heads, gap)


def export_peft(record: ResultRecord, results_dir: Path, out_dir: Path) -> Exported:
    """Write ``record``'s adapter as a PEFT adapter folder in ``out_dir``, with
    ``prefix_bench_export.json`` beside it (the cell, its weights, the formulation)."""
    import copy

    from bench.run.backbones import BACKBONES

    cell = rebuild(record, results_dir)
    backbone = BACKBONES.get(record.backbone)
    # the hub id when the hub holds the very weights the cell trained on; else PEFT's default (the local path)
    hub = backbone.hub_id if backbone.hub_id and dict(backbone.weights).get("hub") == cell.weights else None
    done = save_peft(cell.adapter, copy.deepcopy(cell.loaded.model), TASK_TYPES[cell.head], cell.loaded.tokenizer,
                     out_dir, record.method, hub)
    meta = {"cell_id": record.cell_id, "suite": record.suite, "method": record.method, "task": record.task,
            "backbone": record.backbone, "weights": cell.weights, "backbone_source": record.backbone_source,
            "prefix_length": record.prefix_length, "seed": record.seed, "formulation": record.formulation,
            "peft_type": done.peft_type, "task_type": done.task_type, "head_modules": list(done.head_modules),
            "probe_max_abs_diff": done.max_abs_diff, "label_names": list(cell.task.label_names)}
    if cell.adapter.extra_positions or cell.adapter.extra_keys_per_layer:
        meta["note"] = ("PEFT puts prefixes and prompts in front of left padding and counts the padding into the "
                        "positions: pad on the right, or score rows unpadded, to get the benchmark's logits")
    if record.formulation == "verbalizer":  # what turns the LM's logits into the task's predictions
        meta.update(prompt=cell.task.prompt, label_words=list(cell.task.label_words))
    (out_dir / METADATA).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return done


def cmd_export(args: argparse.Namespace) -> int:
    from bench.run.rerun import find_record

    if args.format not in FORMATS:
        raise ConfigError(f"--format {args.format!r}: valid formats are {', '.join(FORMATS)}")
    results = Path(args.results) if args.results else Path("results") / "runs" / check_name("suite", args.suite,
                                                                                          "--suite")
    record = find_record(results, args.cell_id)
    out = Path(args.out) if args.out else results / "exports" / args.format / record.cell_id
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is not a folder")
    try:
        done = export_peft(record, results, out)
    except ExportMismatchError as err:
        print(f"prefix-bench: export failed: {err}", file=sys.stderr)
        return 1
    print(f"exported {record.cell_id} ({record.method}, {record.task}, {record.backbone}) as PEFT "
          f"{done.peft_type} ({done.task_type}{', head ' + ', '.join(done.head_modules) if done.head_modules else ''})"
          f" to {done.out_dir}; probe max |PEFT - ours| = {done.max_abs_diff:.2g}")
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a recorded cell's trained adapter in another library's format "
                                      "(peft: PeftModel.from_pretrained loads it)")
    p.add_argument("cell_id", help="the record's cell_id (a unique prefix is enough)")
    p.add_argument("--format", default="peft", help=f"target format: {', '.join(FORMATS)} (default peft)")
    p.add_argument("--results", default=None, help="records folder (default: results/runs/SUITE)")
    p.add_argument("--suite", default="default", help="suite whose default records folder to read")
    p.add_argument("--out", default=None, help="output folder (default: RESULTS/exports/FORMAT/CELL_ID)")
    p.set_defaults(func=cmd_export)
