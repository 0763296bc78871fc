"""`nox -s perf` end to end on a tiny random LLaMA (``--random-init-from``): every arm runs
every phase, and the report holds the ratio and target tables. Plumbing only: timings
on a model this small say nothing, and no assertion reads them."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from bench import perf
from bench.measure.perf_report import summarise
from bench.run import backbones


def test_perf_writes_ratio_and_target_tables_for_every_arm(tmp_path):
    loaded = backbones.load_backbone("tiny-llama", "causal_lm", 2, "auto", "cpu")
    src = tmp_path / "tiny"
    loaded.model.config.save_pretrained(src)
    loaded.tokenizer.save_pretrained(src)
    # bf16-mixed on any CPU (emulated where it has no bf16 arithmetic): every arm runs, the fp32
    # reference included, whatever the machine's "auto" resolves to
    s = perf.Settings(batch=2, seq=8, prefix=4, gen_batch=2, gen_prompt=4, new_tokens=2, repeats=2, steps=1,
                      memory_repeats=1, scaling="3x5", random_init_from=str(src), precision="bf16-mixed")
    res = perf.run(s, tmp_path / "out", memory=True, cell=False, log=lambda m: None)

    report = json.loads((tmp_path / "out" / "perf.json").read_text())
    assert set(report["arms"]) == set(perf.ARMS)
    for arm in perf.ARMS:
        for phase in ("train", "eval", "generate"):
            assert report["arms"][arm][phase]["tokens_per_s"] > 0
        assert 0 < report["arms"][arm]["train"]["mfu"] < 1
        mem = report["arms"][arm]["memory"]  # a fresh child per arm, its own peak
        assert mem["kind"] in ("cpu_peak_rss_cell", "cuda_max_allocated"), mem
        assert mem["bytes"] >= report["meta"]["load_only_bytes"] > 0
    md = (tmp_path / "out" / "perf.md").read_text()
    assert "train:ours_proj/peft_proj" in md and "folded evaluation tokens/s >= 0.95x base model" in md
    assert res["markdown"] == md
    (row,) = report["meta"]["scaling"]
    assert (row["batch"], row["prefix"]) == (3, 5) and row["ratio"] > 0
    assert "Training step at larger batch x prefix" in md


def test_evaluation_and_generation_run_in_fp32_as_cells_evaluate_whatever_the_training_precision(tmp_path, monkeypatch):
    """A bf16-mixed run trains under autocast on bf16 frozen weights, but evaluates and
    generates in fp32 with the weights upcast (a cell's evaluation, ``fp32_evaluation``), and
    the backbone is bf16 again afterwards, for the next training step."""
    loaded = backbones.load_backbone("tiny-llama", "causal_lm", 2, "auto", "cpu")
    s = perf.Settings(batch=2, seq=8, prefix=4, gen_batch=2, gen_prompt=4, new_tokens=2, repeats=1, steps=1,
                      precision="bf16-mixed")
    model = copy.deepcopy(loaded.model)  # build_arm casts it: the process's cached backbone stays fp32
    data = perf.make_data(s, model.config.vocab_size, torch.device("cpu"))
    module, params = perf.build_arm("ours_proj", model, loaded.tokenizer, s, torch.device("cpu"))
    runner = perf.ArmRunner("ours_proj", module, params, data, torch.device("cpu"), s,
                            perf.arm_precision("ours_proj", s, torch.device("cpu")))
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    seen = []
    real_forward = type(model).forward

    def spy(self, *args, **kwargs):
        seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), q_proj.dtype))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", spy)
    runner.train_step()
    with perf.evaluation_precision([runner]):
        runner.eval_step()
        runner.generate_step()
    runner.train_step()
    train, *evaluation, train_again = seen
    assert train == (True, True, torch.bfloat16) == train_again
    assert evaluation and all(e == (False, False, torch.float32) for e in evaluation), evaluation


def test_a_run_in_fp32_has_no_fp32_reference_arm_and_its_target_reads_not_measured():
    """On a CPU without bf16 arithmetic "auto" is fp32: the fp32 reference arm does not run
    (it would be the same arm twice), so its pair and target are left out, not a KeyError."""
    arms = [a for a in perf.ARMS if a != perf.FP32_ARM]
    times = {phase: {a: [1.0, 1.1] for a in arms} for phase in ("train", "eval", "generate")}
    s = perf.Settings(batch=2, seq=8, gen_batch=2, new_tokens=2)
    report = summarise(times, {}, {}, s, 1e12)
    assert set(report["arms"]) == set(arms)
    assert not any(perf.FP32_ARM in key for key in report["ratios"])
    assert "train:ours_proj/peft_proj" in report["ratios"]
    (fp32_target,) = [t for t in report["targets"] if t["arms"] == f"ours_proj/{perf.FP32_ARM}"]
    assert fp32_target["ratio"] is None and fp32_target["met"] is None


@pytest.mark.parametrize("spec", ["16x", "x64", "16*64", "0x8", "16x64,abc"])
def test_a_malformed_scaling_spec_fails_before_the_model_loads(spec, tmp_path, monkeypatch):
    monkeypatch.setattr(perf, "load", lambda *a: pytest.fail("loaded a model for a bad spec"))
    with pytest.raises(ValueError, match="BATCHxPREFIX"):
        perf.run(perf.Settings(scaling=spec), tmp_path, memory=False, cell=False, log=lambda m: None)


def test_perf_suite_times_a_whole_suite_from_scratch_and_says_what_its_cells_spent(tmp_path, data_dir, monkeypatch):
    """`nox -s perf`'s suite wall time: a child `prefix-bench run` into fresh folders (a finished
    cell elsewhere is not skipped), its rows counted, its tables rendered; a suite that fails
    is reported with its exit status and makes the command fail."""
    from bench import perf_suite

    monkeypatch.setenv("PREFIX_BENCH_DATA_DIR", str(data_dir))
    suite = tmp_path / "s.toml"
    suite.write_text('[suites.s]\nmethods = ["lora"]\ntasks = ["glue/sst2"]\nbackbones = ["tiny-llama"]\n'
                     'prefix_lengths = [2]\nseeds = [0, 1]\n'
                     'train = { train_steps = 2, batch_size = 2, eval_limit = 4, train_limit = 8, max_length = 16 }\n')
    out = tmp_path / "out"
    assert perf_suite.main(["--config", str(suite), "--suite", "s", "--out", str(out), "--precision", "fp32"]) == 0
    report = json.loads((out / "suite_wall.json").read_text())
    assert (report["exit_status"], report["cells"], report["ok"], report["failed"]) == (0, 2, 2, 0)
    assert report["rendered"] and report["precisions"] == ["fp32"]
    assert 0 < report["train_seconds"] + report["eval_seconds"] < report["wall_seconds"]
    assert "| s " in (out / "suite_wall.md").read_text()

    assert perf_suite.main(["--config", str(suite), "--suite", "no-such-suite", "--out", str(out)]) == 1
    report = json.loads((out / "suite_wall.json").read_text())
    assert report["exit_status"] == 2 and report["cells"] == 0
    assert "no-such-suite" in (out / "run.log").read_text()
