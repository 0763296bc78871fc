"""Command line: ``prefix-bench`` / ``python -m bench`` with run, render and list."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.core.config import LIMITS, PRECISIONS, ConfigError
from bench.core.safe_names import check_name

RESULTS_ROOT = Path("results")


def _results_dir(args: argparse.Namespace) -> Path:
    suite = check_name("suite", args.suite, "--suite")  # a folder name: '../x' would escape results/
    return _folder("--results", Path(args.results) if args.results else RESULTS_ROOT / "runs" / suite)


def _tables_dir(args: argparse.Namespace) -> Path:
    suite = check_name("suite", args.suite, "--suite")
    return _folder("--tables", Path(args.tables) if args.tables else RESULTS_ROOT / "tables" / suite)


def _folder(option: str, path: Path) -> Path:
    """``path`` unless it exists as something other than a folder (it is created later)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is not a folder")
    return path


def cmd_run(args: argparse.Namespace) -> int:
    from bench.run.matrix import load_suite
    from tasks import DataSettings

    cells = load_suite(args.config, args.suite, _include_path(args))
    for key in ("method", "task", "backbone"):
        wanted = getattr(args, key)
        if wanted:
            from bench.run.backbones import BACKBONES
            from methods import METHODS
            from tasks import TASKS
            registry = {"method": METHODS, "task": TASKS, "backbone": BACKBONES}[key]
            for name in wanted:
                if name not in registry and not (key == "task" and any(c.task == name for c in cells)):
                    raise ConfigError(f"--{key}: {registry.unknown_message(name)}")
            cells = [c for c in cells if getattr(c, key) in wanted]
    if not cells:
        raise ConfigError("the filters leave no cell to run")
    cells = _with_precision(cells, args)
    data = DataSettings.from_env(args.data_dir)
    tracker, tracker_uri = _tracker_choice(args)
    if tracker:  # a missing backend fails here, before any model loads (also on --dry-run)
        from bench.run.trackers import make_tracker
        make_tracker(tracker, tracker_uri, _results_dir(args))
    if args.dry_run:
        from bench.run.validate import validate_cells
        validate_cells(cells, data)
        for c in cells:
            lr = f"search{c.search['lr']}" if c.search else c.train['lr']
            print(f"{c.id}  {c.method:18} {c.task:12} {c.backbone:14} P={c.prefix_length} seed={c.seed} "
                  f"lr={lr} steps={c.train['train_steps']}{' (trial)' if c.is_trial else ''}")
        print(f"{len(cells)} cells (dry run: nothing trained)")
        return 0
    from bench.measure.provenance import pick_device
    from bench.run.driver import run_cells
    from bench.run.executors import make_executor, parse_options
    from bench.run.matrix import executor_table

    name, options, where = args.executor, parse_options(args.executor_option), "--executor"
    if name is None:  # the suite may say where it runs; --executor-option still applies
        table, where = executor_table(args.config, args.suite)
        name = table.pop("name", "local")
        options = {**table, **options}
    executor = make_executor(name, options, where)
    device: object = args.device  # other executors resolve the device where the cell runs
    if name in ("local", "subprocess"):  # this machine: say now if the device is missing
        try:
            device = pick_device(args.device)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    counts = run_cells(cells, _results_dir(args), data, device, retry_failed=args.retry_failed,
                       trials_only=args.trials_only, executor=executor, threads=args.threads, plugins=tuple(args.plugin or ()),
                       reproducible_mode=args.deterministic, tracker=tracker, tracker_uri=tracker_uri)
    print(f"ran {counts['ran']} cells: {counts['ran'] - counts['failed']} ok, {counts['failed']} failed; "
          f"skipped {counts['skipped']} finished or running elsewhere")
    if not args.no_render:
        cmd_render(args)
    # a failed cell is data (its row is kept), but a run that produced one did not succeed
    return 1 if counts["failed"] and not args.allow_failures else 0


def _tracker_choice(args: argparse.Namespace) -> tuple[str, str]:
    """(tracker, uri): --tracker and --tracker-uri, else the suite's ``tracker`` table."""
    from bench.run.matrix import tracker_table

    table = {} if args.tracker else tracker_table(args.config, args.suite)
    name = args.tracker or table.get("name", "")
    return ("" if name == "none" else name), args.tracker_uri or table.get("uri", "")


def _with_precision(cells: list, args: argparse.Namespace) -> list:
    """``cells`` with ``--precision`` (when given) in place of their suite's value."""
    import dataclasses

    wanted = getattr(args, "precision", None)
    if not wanted:
        return cells
    return [dataclasses.replace(c, train={**c.train, "precision": wanted}) for c in cells]


def cmd_render(args: argparse.Namespace) -> int:
    from bench.core.record_check import problem_summary
    from bench.core.records import read_records
    from bench.report.render import render
    from tasks import task_facts

    records, problems = read_records(_results_dir(args))
    if problems:
        print(problem_summary(problems), file=sys.stderr)
    if not records:
        print(f"no records in {_results_dir(args)}", file=sys.stderr)
        return 1
    records = _current_cells_only(records, args)
    facts = {**_suite_task_facts(args), **task_facts()}
    for path in render(records, _tables_dir(args), facts=facts, order=_suite_order(args)):
        print(f"wrote {path}")
        if path.name == "leaderboard.md" and not args.quiet:
            print(path.read_text(encoding="utf-8"))
    return 0


def _suite_task_facts(args: argparse.Namespace) -> dict:
    """Facts of the suite's tasks that are not registered (``lm_eval/`` tasks found by name),
    so their metrics' directions reach the tables; {} without such a suite."""
    from bench.run.matrix import load_suite
    from tasks import TASKS, cell_task

    try:
        cells = load_suite(args.config, args.suite, _include_path(args))
    except ConfigError:
        return {}
    return {c.task: cell_task(c).facts() for c in cells if c.task not in TASKS}


def _suite_order(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """The suite's (task, backbone) pairs in the order its file lists them (None: no such suite)."""
    from bench.run.matrix import load_suite

    try:
        cells = load_suite(args.config, args.suite, _include_path(args))
    except ConfigError:
        return None
    return list(dict.fromkeys((c.task, c.backbone) for c in cells))


def _current_cells_only(records: list, args: argparse.Namespace) -> list:
    """Keep the records of cells the suite defines with the current code: a cell whose
    options or code (bench/core/identity.py) changed has a new id, and its old rows must not be
    shown as the current result. With --all-records (or a suite that no longer exists, or
    none of whose cells has a record) every result row is rendered; even then a table cell
    averages only its newest experiment's rows (render.newest_experiments). A search trial is
    shown (search_progress.md) only while its rate is in the suite's grid: one dropped from a
    moved grid chose nothing."""
    from bench.run.matrix import load_suite

    all_records = getattr(args, "all_records", False)
    try:
        cells = load_suite(args.config, args.suite, _include_path(args))
    except ConfigError:
        return records
    # a row's id also hashes the threads, deterministic setting, weights and precision it ran
    # with: match the suite's cells under each setting the rows were pinned to
    cells = _with_precision(cells, args)
    pins = {(cfg.get("threads", 0), cfg.get("deterministic", False), cfg.get("weights", ""), _train_precision(cfg))
            for cfg in (r.config for r in records) if isinstance(cfg, dict)}
    ids = {c.pinned(t, d, w, auto_precision=p).id for t, d, w, p in pins
           if isinstance(t, int) and isinstance(d, bool) and isinstance(w, str) for c in cells}
    kept = [r for r in records if r.cell_id in ids]
    if all_records:
        return [r for r in records if r.role != "trial" or r.cell_id in ids] if kept else records
    stale = len({r.cell_id for r in records} - ids)
    if not kept:
        print(f"render: no record is of a cell suite {args.suite!r} defines with the current options and code "
              f"(another suite's folder, or everything changed since it ran: `run` re-runs stale cells); "
              f"rendering all {len(records)} record(s)", file=sys.stderr)
        return records
    if stale:
        print(f"render: left out {stale} cell(s) no longer in suite {args.suite!r} as its options and code now "
              "define it (stale: `run` re-runs them; --all-records keeps them)", file=sys.stderr)
    return kept


def _train_precision(config: dict) -> str | None:
    """The resolved precision a row's stored config names (None: none, or not a resolved one)."""
    train = config.get("train")
    value = train.get("precision") if isinstance(train, dict) else None
    return value if value in PRECISIONS and value != "auto" else None


def cmd_list(args: argparse.Namespace) -> int:
    from bench.run.backbones import BACKBONES
    from bench.run.matrix import DEFAULT_SUITES, load_toml, suite_names
    from methods import METHODS
    from methods.base import field_help
    from tasks import TASKS

    what = args.what
    if what in ("methods", "all"):
        print("methods:")
        for name, cls in METHODS.items():
            axis = "prefix length" if cls.uses_prefix_length else "no prefix axis"
            print(f"  {name:20} default lr {cls.default_lr:g}, {axis}; {cls.paper}")
            if args.verbose:
                for field, text in field_help(cls.Config).items():
                    print(f"      {field}: {text}")
    if what in ("tasks", "all"):
        print("tasks:")
        for name, task in TASKS.items():
            print(f"  {name:20} {task.describe()}")
        from tasks.lm_eval_any import OPTIONS
        print(f"  {'lm_eval/<task>':20} any lm-evaluation-harness task by name, or one of a suite's "
              "lm_eval_include_path folder; its options (a suite's task_args.\"lm_eval/<task>\"):")
        for option, text in OPTIONS.items():
            print(f"      {option}: {text}")
    if what in ("backbones", "all"):
        print("backbones:")
        for name, bb in BACKBONES.items():
            print(f"  {name:20} {bb.description}")
    if what in ("executors", "all"):
        from bench.run.executors import EXECUTORS
        print("executors:")
        for name, cls in EXECUTORS.items():
            print(f"  {name:20} {(cls.__doc__ or '').split('.')[0].strip()}")
            if args.verbose:
                for field, text in field_help(cls.Config).items():
                    print(f"      {field}: {text}")
    if what in ("suites", "all"):
        path = Path(args.config) if args.config else DEFAULT_SUITES
        doc = load_toml(path)
        print(f"suites ({path}):")
        for name in suite_names(doc):
            print(f"  {name:20} {doc['suites'][name].get('description', '')}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """Check a data folder: each task's splits are found and readable offline, with their
    sizes; exit 1 naming what is missing. ``fetch-e2e``: the E2E challenge's pinned CSVs into it."""
    from tasks import TASKS, DataSettings
    from tasks.base import DataUnavailableError, default_data_dir, find_data_dir

    folder, origin = (args.data_dir, "--data-dir") if args.data_dir else find_data_dir()
    if args.action == "fetch-e2e":
        from tasks import e2e_files

        target = Path(folder) if folder else default_data_dir()
        print(f"E2E: {e2e_files.CHALLENGE_REPO} at {e2e_files.CHALLENGE_COMMIT} -> {target / 'e2e'}")
        try:
            e2e_files.fetch(target)
        except (e2e_files.FetchError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    print(f"data folder: {folder or '(none)'} (from {origin})")
    data = DataSettings.from_env(folder or "", allow_hub=False) if folder else DataSettings(None, False)
    from tasks import cell_task

    tasks = ({c.task: cell_task(c) for c in _suite_cells(args)} if args.suite
             else {name: TASKS.get(name) for name in TASKS.names()})
    names = sorted(tasks)
    missing = []
    for name in names:
        task = tasks[name]
        try:
            task.check_available(data)
            sizes = [f"{split} {len(task.load(split, data).examples):,}" for split in (task.train_split, task.eval_split)]
            print(f"  ok       {name:28} {', '.join(sizes)}")
        except (DataUnavailableError, OSError, ValueError, KeyError) as err:
            missing.append(name)
            print(f"  MISSING  {name:28} {str(err).splitlines()[0][:200]}")
    if missing:
        print(f"{len(missing)} of {len(names)} task(s) cannot run offline from this folder: {', '.join(missing)}")
        return 1
    print(f"all {len(names)} task(s) can run offline from this folder")
    return 0


def _include_path(args: argparse.Namespace) -> str | None:
    """--lm-eval-include-path, where the command has it (None: the suite's own, if any)."""
    return getattr(args, "lm_eval_include_path", None)


def _suite_cells(args: argparse.Namespace) -> list:
    from bench.run.matrix import load_suite

    return load_suite(args.config, args.suite, _include_path(args))


MAX_THREADS = LIMITS["threads"][0]


def _threads(text: str) -> int:
    """--threads as argparse checks it (a bad value: exit 2 with argparse's message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..{MAX_THREADS} (0: torch's default)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefix-bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--suite", default="default", help="suite name in the TOML file (default: default)")
        sp.add_argument("--config", default=None, help="suite TOML file (default: bench/suites.toml)")
        sp.add_argument("--results", default=None, help="records folder (default: results/runs/SUITE)")
        sp.add_argument("--tables", default=None, help="tables folder (default: results/tables/SUITE)")
        sp.add_argument("--quiet", action="store_true", help="do not print rendered tables")
        sp.add_argument("--lm-eval-include-path", default=None, metavar="DIR",
                        help="folder of lm-eval task YAMLs, so a suite can name their tasks as lm_eval/<task> "
                             "(replaces the suite's lm_eval_include_path)")

    run = sub.add_parser("run", help="train and evaluate every unfinished cell of a suite, then render",
                         description="Train and evaluate every unfinished cell of a suite, then render. A suite "
                                     "with search = { lr = [...] } runs one trial cell per learning rate first, "
                                     "scored on a held-out slice of the training split (train option holdout), "
                                     "then each final cell with the best; train option patience stops a cell "
                                     "when that slice's score plateaus (README: 'Choosing the learning rate').")
    common(run)
    run.add_argument("--data-dir", default=None,
                     help="folder with offline data (glue/, e2e/); default $PREFIX_BENCH_DATA_DIR, else the hub")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    run.add_argument("--threads", type=_threads, default=0,
                     help=f"torch CPU threads, 0 to {MAX_THREADS} (0: torch's default)")
    run.add_argument("--deterministic", action="store_true",
                     help="reproducible mode: AVX2-pinned CPU kernels (ATen, MKL, oneDNN), deterministic "
                          "algorithms, fixed threads (--threads, else 2), each cell in a fresh process; "
                          "the same cell gives the same bits on any x86 machine with AVX2")
    run.add_argument("--precision", choices=PRECISIONS, default=None,
                     help="training and evaluation precision for every cell, in place of the suite's "
                          "(auto: bf16-mixed where the device runs bf16 fast, else fp32)")
    run.add_argument("--method", action="append", help="only these methods (repeatable)")
    run.add_argument("--task", action="append", help="only these tasks (repeatable)")
    run.add_argument("--backbone", action="append", help="only these backbones (repeatable)")
    run.add_argument("--executor", default=None,
                     help="where cells run: local (this process), subprocess (a child per cell), ray, slurm "
                          "(default: the suite's executor table, else local)")
    run.add_argument("--executor-option", action="append", metavar="KEY=VALUE",
                     help="executor option, e.g. address=auto, gpus_per_cell=1, partition=gpu (repeatable)")
    run.add_argument("--tracker", default=None, metavar="tensorboard|mlflow|none",
                     help="also log each cell's per-step curve and its row to an experiment tracker, one run per "
                          "cell named by its id (pip install 'prefix-bench[trackers]'; default: the suite's "
                          "tracker table, else none)")
    run.add_argument("--tracker-uri", default=None,
                     help="where the tracker logs: a TensorBoard log folder or an MLflow tracking URI "
                          "(default: RESULTS/tensorboard, or the local file store file://RESULTS/mlruns)")
    run.add_argument("--retry-failed", action="store_true", help="re-run only cells whose last record failed")
    run.add_argument("--trials-only", action="store_true",
                     help="run only the search trials and say which rate each search chose (and whether at "
                          "an edge of its grid), no final cell: look before paying for the finals")
    run.add_argument("--dry-run", action="store_true", help="validate and list the cells, train nothing")
    run.add_argument("--no-render", action="store_true", help="skip rendering tables afterwards")
    run.add_argument("--allow-failures", action="store_true",
                     help="exit 0 even if a cell failed (default: exit 1; the failed rows are kept either way)")
    run.add_argument("--strict", action="store_true", help=argparse.SUPPRESS)  # the default now; old scripts
    run.set_defaults(func=cmd_run)

    render = sub.add_parser("render", help="records -> leaderboard tables")
    common(render)
    render.add_argument("--all-records", action="store_true",
                        help="render every record, also of cells the suite no longer defines")
    render.set_defaults(func=cmd_render)

    data = sub.add_parser("data", help="check a data folder: which tasks can run offline from it")
    data.add_argument("action", choices=["check", "fetch-e2e"],
                      help="check: which tasks can run offline from the folder; fetch-e2e: write the E2E "
                      "challenge's CSVs (pinned commit, sha256-checked) into its e2e/")
    data.add_argument("--data-dir", default=None, help="the folder (default: $PREFIX_BENCH_DATA_DIR, the user "
                      "config's data_dir, or the default folder; see the README)")
    data.add_argument("--suite", default=None, help="check only this suite's tasks (default: every task)")
    data.add_argument("--config", default=None, help="suite TOML file (default: bench/suites.toml)")
    data.add_argument("--lm-eval-include-path", default=None, metavar="DIR",
                      help="folder of lm-eval task YAMLs (replaces the suite's lm_eval_include_path)")
    data.set_defaults(func=cmd_data)

    lst = sub.add_parser("list", help="list methods, tasks, backbones, suites")
    lst.add_argument("what", nargs="?", default="all", choices=["methods", "tasks", "backbones", "executors", "suites", "all"])
    lst.add_argument("--config", default=None, help="suite TOML file for 'suites'")
    lst.add_argument("-v", "--verbose", action="store_true", help="show each method's options")
    lst.set_defaults(func=cmd_list)

    from bench import push
    from bench.compat import cli as compat
    from bench.report import compare, verdicts
    from bench.run import export, rerun, searched_lrs  # each module owns its subcommand's options
    for module in (compare, rerun, export, verdicts, compat, push, searched_lrs):
        module.add_subcommand(sub)
    for command in sub.choices.values():  # every command sees the plugins its records or suite name
        command.add_argument("--plugin", action="append", metavar="MODULE_OR_FILE",
                             help="import this module or .py file first (it registers methods, tasks, "
                                  "backbones; repeatable)")
    return p


def _import_plugins(args: argparse.Namespace) -> None:
    """The --plugin modules and files, imported before anything reads a suite or records;
    files as absolute paths, so that workers started elsewhere import the same file."""
    from bench.core.registry import RegistryError, import_plugins, is_plugin_path

    args.plugin = [str(Path(p).expanduser().resolve()) if is_plugin_path(p) else p for p in args.plugin or []]
    try:
        import_plugins(args.plugin)
    except RegistryError as err:
        raise ConfigError(f"--plugin: {err}") from None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = None
    try:
        args = build_parser().parse_args(argv)
        _import_plugins(args)
        if getattr(args, "needs_task_facts", False):  # a reporting command: it imports no task itself
            from tasks import task_facts

            args.task_facts = task_facts()
        return args.func(args)
    except ConfigError as err:
        print(f"prefix-bench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        fresh_line = "\n" if sys.stderr.isatty() else ""  # after the terminal's echoed ^C
        print(fresh_line + _interrupted(args, sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return 130


def _interrupted(args: argparse.Namespace | None, argv: list[str]) -> str:
    """One line for Ctrl-C instead of a traceback: what was kept and how to go on."""
    if args is None or args.command != "run":
        return "prefix-bench: interrupted"
    import shlex

    # every finished row is in the store; the cell in flight wrote none, so it runs again
    return (f"prefix-bench: interrupted; finished cells are saved in {_results_dir(args)}, the cell(s) "
            f"in progress were discarded; resume with: prefix-bench {shlex.join(argv)}")


if __name__ == "__main__":
    sys.exit(main())
