"""Any lm-eval task by name (tasks/lm_eval_any.py): a user's include folder, task options,
unknown names, cell ids, and our score against lm-eval's own ``simple_evaluate`` on the same
model. The tasks are tests/lm_eval_include/*.yaml over local rows; the model is tiny-llama."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

from bench.core.config import ConfigError
from bench.core.records import read_records
from bench.run.matrix import expand
from tasks import TASKS, cell_task

REPO = Path(__file__).resolve().parent.parent
INCLUDE = REPO / "tests" / "lm_eval_include"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # the YAMLs' data_files are relative to the repository root, as lm-eval reads them


def _doc(tasks: list[str], include: str | Path | None = INCLUDE, task_args: dict | None = None,
         method: str = "lora", train: dict | None = None) -> dict:
    spec = {"methods": [method], "tasks": tasks, "backbones": ["tiny-llama"], "prefix_lengths": [2], "seeds": [0],
            "train": train or {"train_steps": 2, "batch_size": 4, "train_limit": 16, "max_length": 48}}
    if include is not None:
        spec["lm_eval_include_path"] = str(include)
    if task_args:
        spec["task_args"] = task_args
    return {"suites": {"t": spec}}


def test_an_include_path_task_takes_its_metrics_from_its_yaml_and_its_options_into_the_id():
    args = {"lm_eval/tiny_yesno": {"num_fewshot": 2, "limit": 8, "train_source": "glue/sst2"}}
    [yesno, cloze] = expand(_doc(["lm_eval/tiny_yesno", "lm_eval/tiny_cloze"], task_args=args), "t")
    assert yesno.task_args == {"num_fewshot": 2, "limit": 8, "train_source": "glue/sst2", "include_path": str(INCLUDE)}
    assert cloze.task_args == {"include_path": str(INCLUDE)}
    task = cell_task(yesno)
    assert (task.harness_task, task.num_fewshot, task.limit, task.train_source) == ("tiny_yesno", 2, 8, "glue/sst2")
    assert task.label_words == TASKS.get("glue/sst2").label_words  # trains through the source's verbalizer
    assert [m.name for m in task.metrics] == ["acc", "acc_norm"] and task.main_metric == "acc"
    ppl = cell_task(cloze)
    assert ppl.main_metric == "perplexity" and ppl.facts().higher_is_better == {"perplexity": False, "acc": True}
    # every option is in the id
    other = expand(_doc(["lm_eval/tiny_yesno"], task_args={"lm_eval/tiny_yesno": {**args["lm_eval/tiny_yesno"],
                                                                                  "num_fewshot": 1}}), "t")[0]
    assert other.id != yesno.id


def test_the_include_folders_task_files_and_data_are_in_the_id(tmp_path):
    folder = tmp_path / "tasks"
    shutil.copytree(INCLUDE, folder)
    before = expand(_doc(["lm_eval/tiny_cloze"], include=folder), "t")[0]
    assert expand(_doc(["lm_eval/tiny_cloze"], include=folder), "t")[0].id == before.id  # deterministic
    (folder / "tiny_yesno.yaml").write_text((folder / "tiny_yesno.yaml").read_text().replace("Answer:", "A:"))
    after_yaml = expand(_doc(["lm_eval/tiny_cloze"], include=folder), "t")[0]
    assert after_yaml.id != before.id  # a sibling YAML may be included by the task: all count
    data = REPO / "tests" / "lm_eval_include" / "cloze.jsonl"
    yaml = folder / "tiny_cloze.yaml"
    copy_rows = tmp_path / "cloze.jsonl"
    copy_rows.write_text(data.read_text().replace("blue", "grey"))
    yaml.write_text(yaml.read_text().replace("tests/lm_eval_include/cloze.jsonl", str(copy_rows)))
    moved = expand(_doc(["lm_eval/tiny_cloze"], include=folder), "t")[0]
    copy_rows.write_text(data.read_text())
    assert expand(_doc(["lm_eval/tiny_cloze"], include=folder), "t")[0].id != moved.id  # the rows' bytes count


def test_fixed_tasks_without_options_are_the_registered_objects_and_keep_their_ids():
    cells = expand(_doc(["lm_eval/rte_local", "lm_eval/hellaswag", "glue/rte"]), "t")
    for cell in cells:
        assert cell.task_args == {} and "task_args" not in cell.resolved()
        assert cell_task(cell) is TASKS.get(cell.task)
    # with an option a fixed task is its configured copy, under a new id
    [rte] = expand(_doc(["lm_eval/rte_local"], task_args={"lm_eval/rte_local": {"limit": 4}}), "t")
    assert rte.task_args == {"limit": 4} and rte.id != cells[0].id
    assert cell_task(rte).harness_task == "rte_local" and cell_task(rte).limit == 4


@pytest.mark.parametrize(("table", "message"), [
    ({"num_fewshots": 2}, "'num_fewshots' (did you mean 'num_fewshot'?)"),
    ({"limit": 0}, "limit must be a count >= 1 or a fraction in (0, 1)"),
    ({"limit": 1.5}, "limit must be a count >= 1 or a fraction in (0, 1)"),
    ({"num_fewshot": -1}, "num_fewshot must be a whole number"),
    ({"train_source": "lm_eval/rte_local"}, "is an lm-eval task"),
    ({"train_source": "glue/rtee"}, "did you mean 'glue/rte'"),
    ({"main_metric": "f1"}, "main_metric 'f1' is not one of task 'tiny_yesno''s metrics (acc, acc_norm)"),
])
def test_bad_task_options_are_config_errors_naming_them(table, message):
    with pytest.raises(ConfigError) as err:
        expand(_doc(["lm_eval/tiny_yesno"], task_args={"lm_eval/tiny_yesno": table}), "t")
    assert message in str(err.value)


def test_options_on_a_task_that_takes_none_or_off_the_axis_are_errors():
    with pytest.raises(ConfigError, match="takes no options"):
        expand(_doc(["glue/rte"], task_args={"glue/rte": {"limit": 3}}), "t")
    with pytest.raises(ConfigError, match="not on this suite's axis"):
        expand(_doc(["lm_eval/tiny_yesno"], task_args={"lm_eval/tiny_cloze": {"limit": 3}}), "t")
    with pytest.raises(ConfigError, match="is not a folder"):
        expand(_doc(["lm_eval/tiny_yesno"], include=INCLUDE / "nope"), "t")


def test_an_unknown_name_fails_the_dry_run_naming_close_valid_ones(tmp_path, capsys):
    """Before any model loads: exit 2, the bad name and lm-eval's close ones (its own tasks
    and the include folder's). Builds lm-eval's full task index once (seconds)."""
    from bench.cli import main

    suite = tmp_path / "s.toml"
    for bad, close in (("lm_eval/tiny_yesnoo", "lm_eval/tiny_yesno"), ("lm_eval/helaswag", "lm_eval/hellaswag"),
                       ("lm_eval/mmlu", "names several tasks")):
        suite.write_text(f'[suites.s]\nmethods = ["lora"]\ntasks = ["{bad}"]\nbackbones = ["tiny-llama"]\n'
                         f'prefix_lengths = [2]\nseeds = [0]\nlm_eval_include_path = "{INCLUDE}"\n')
        assert main(["run", "--config", str(suite), "--suite", "s", "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert repr(bad) in err or repr(bad.removeprefix("lm_eval/")) in err, err
        assert close in err, err


def test_the_command_line_include_path_replaces_the_suites(tmp_path, capsys, data_dir, monkeypatch):
    from bench.cli import main

    # the dry run loads the task's data header (tiny_cloze trains on RTE) and the path given is
    # relative to the checkout: the same whether pytest runs under nox or not
    monkeypatch.setenv("PREFIX_BENCH_DATA_DIR", str(data_dir))
    monkeypatch.chdir(REPO)

    suite = tmp_path / "s.toml"
    suite.write_text('[suites.s]\nmethods = ["lora"]\ntasks = ["lm_eval/tiny_cloze"]\nbackbones = ["tiny-llama"]\n'
                     'prefix_lengths = [2]\nseeds = [0]\nlm_eval_include_path = "nowhere"\n')
    assert main(["run", "--config", str(suite), "--suite", "s", "--dry-run"]) == 2
    assert "lm_eval_include_path 'nowhere' is not a folder" in capsys.readouterr().err
    assert main(["run", "--config", str(suite), "--suite", "s", "--dry-run",
                 "--lm-eval-include-path", str(INCLUDE.relative_to(REPO))]) == 0
    assert "1 cells (dry run" in capsys.readouterr().out


def _adapted_tiny_llama():
    """tiny-llama with LoRA whose B is random (so the adapter changes the model), and the
    same model with the updates merged into its weights by PEFT: lm-eval's to score."""
    from bench.run.backbones import load_backbone
    from methods import METHODS, Anatomy, AttachContext

    loaded = load_backbone("tiny-llama", "causal_lm")
    model = copy.deepcopy(loaded.model)
    cls = METHODS.get("lora")
    adapter = cls(cls.Config.from_dict({}, "lora"), None).attach(
        model, AttachContext(loaded.tokenizer, Anatomy.of(model), 0, torch.device("cpu")))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, _, B in adapter._pairs():
            B.weight.copy_(torch.randn(B.weight.shape, generator=g) * 20)
    merged = copy.deepcopy(model)
    from peft.tuners.lora import LoraLayer
    for module in merged.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    return adapter, merged.eval(), loaded.tokenizer, loaded.model


@pytest.mark.parametrize(("harness", "options"), [("tiny_cloze", {"num_fewshot": 2, "limit": 9}),
                                                  ("tiny_yesno", {"num_fewshot": 3})])
def test_our_score_is_lm_evals_own_on_the_same_model(harness, options):
    """Our in-memory evaluation (HarnessModel over the adapter) against lm-eval's
    ``simple_evaluate`` with its HFLM on the merged model, the same task folder and options."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from tasks.lm_eval_any import harness_model_args

    [cell] = expand(_doc([f"lm_eval/{harness}"], task_args={f"lm_eval/{harness}": options}), "t")
    adapter, merged, tokenizer, base = _adapted_tiny_llama()
    ours = cell_task(cell).evaluate_adapted(adapter, tokenizer, torch.device("cpu"))

    def lm_evals(model):
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16, device="cpu",
                  max_length=model.config.max_position_embeddings, **harness_model_args(tokenizer))
        out = lm_eval.simple_evaluate(model=lm, tasks=[harness], num_fewshot=options["num_fewshot"],
                                      limit=options.get("limit"), bootstrap_iters=1000, log_samples=False,
                                      task_manager=TaskManager(include_path=str(INCLUDE), include_defaults=False),
                                      random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
        assert out["n-samples"][harness]["effective"] == options.get("limit", 14)
        return out["results"][harness]

    theirs = lm_evals(merged)
    for metric in ("perplexity", "acc") if harness == "tiny_cloze" else ("acc", "acc_norm"):
        assert ours[metric] == pytest.approx(theirs[f"{metric},none"], rel=1e-5, abs=1e-9), metric
    if harness == "tiny_cloze":  # a continuous score: it moves with any prompt, shot, document or weight,
        # and the adapter moves it (else the comparison could not see the adapter left out)
        assert ours["perplexity"] != pytest.approx(lm_evals(base)["perplexity,none"], rel=1e-3)


def test_a_cell_on_an_include_path_task_records_the_harness_metrics(tmp_path, data):
    from bench.run.driver import run_cells

    cells = expand(_doc(["lm_eval/tiny_yesno"], method="prefix_tuning",
                        task_args={"lm_eval/tiny_yesno": {"limit": 5, "num_fewshot": 1}}), "t")
    counts = run_cells(cells, tmp_path, data, torch.device("cpu"), log=lambda s: None)
    [row] = read_records(tmp_path)[0]
    assert counts["failed"] == 0, row.error
    assert row.status == "ok" and row.main_metric == "acc" and set(row.metrics) >= {"acc", "acc_norm", "acc_stderr"}
    assert round(row.metrics["acc"] * 5, 6) == int(round(row.metrics["acc"] * 5))  # 5 documents: the limit
    assert row.config["task_args"]["include_path"] == str(INCLUDE)
