"""Every check of a matrix that needs no model, run before anything trains."""

from __future__ import annotations

from collections.abc import Iterable

from bench.core.config import ConfigError
from bench.core.registry import UnknownNameError
from bench.run.backbones import BACKBONES, BackboneUnavailableError, check_backbone
from bench.run.data import load_split
from bench.run.formulations import choose_formulation
from bench.run.matrix import Cell
from methods import METHODS
from tasks import DataSettings, cell_task
from tasks.base import DataUnavailableError


def validate_cells(cells: Iterable[Cell], data: DataSettings) -> None:
    """Raises ConfigError naming the bad value: unknown names, bad method options, a
    formulation the backbone cannot run, a backbone whose tokenizer or config does not load
    (a missing package), missing or unreadable data, an empty split."""
    for cell in cells:
        where = f"cell {cell.method}/{cell.task}/{cell.backbone}/P={cell.prefix_length}/seed={cell.seed}"
        for registry, name in ((METHODS, cell.method), (BACKBONES, cell.backbone)):
            if name not in registry:
                raise ConfigError(f"{where}: {registry.unknown_message(name)}")
        try:  # an lm_eval/ task need not be registered: lm-eval's index or an include folder has it
            task = cell_task(cell)
        except (ConfigError, UnknownNameError) as err:
            raise ConfigError(f"{where}: {err}") from None
        method_cls = METHODS.get(cell.method)
        backbone = BACKBONES.get(cell.backbone)
        method_cls.Config.from_dict(cell.method_args, f"{where} method_args")
        cfg = cell.train_config
        choose_formulation(cfg.formulation, task, backbone.causal)
        try:
            task.check_available(data)
            check_backbone(backbone.name, cell.backbone_source)
        except (DataUnavailableError, BackboneUnavailableError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from None
        # Read the data now (cached for the run): a malformed or unreadable file is a config
        # error before any model loads, not a failed cell after one did.
        # a search trial never reads the evaluation split, not even to check it
        for split in (task.train_split,) if cell.is_trial else (task.train_split, task.eval_split):
            try:
                loaded = load_split(cell.task, split, data, cell.task_args)
            except (DataUnavailableError, OSError, ValueError, KeyError) as err:
                raise ConfigError(f"{where}: task {cell.task!r} split {split!r}: cannot read its data: "
                                  f"{type(err).__name__}: {err}") from None
            if not loaded.examples:  # the sampler would wait forever for a first batch
                raise ConfigError(f"{where}: task {cell.task!r} split {split!r} has no examples "
                                  f"({loaded.source.removeprefix('local:')}: a header and no rows?); a cell "
                                  "needs at least one example to train on and one to evaluate")
