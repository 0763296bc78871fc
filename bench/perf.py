"""`nox -s perf` / `python -m bench.perf`: our prefix tuning against PEFT's, LoRA and the
frozen base model, in one run, on one backbone, batch and prefix length.

Arms (SmolLM2-135M, the device from ``pick_device``, every arm but ``ours_proj_fp32`` at
``--precision``: ``auto`` is bf16-mixed where the device runs bf16 fast, bench/run/precision.py;
under bf16-mixed the shared backbone's frozen matmul weights are cast to bf16 once, as a
cell casts them, and every arm, PEFT's included, runs under the same autocast):
  base          frozen model; training = forward + backward to the input embeddings only
                (the least a method that adapts layer 0 can cost)
  ours_proj     methods/prefix_tuning.py, MLP reparameterisation (mid 512)
  ours_noproj   methods/prefix_tuning.py, prefix trained directly
  peft_proj     peft.PrefixTuningConfig(prefix_projection=True, encoder_hidden_size=512)
  peft_noproj   peft.PrefixTuningConfig(prefix_projection=False)
  lora          peft.LoraConfig(r=8, alpha=16, q_proj/v_proj)
  ours_proj_fp32  ours_proj in fp32 on an fp32 copy of the backbone (what the default
                precision gains; absent when the precision is fp32)

Phases, each timed per arm with the same fixed batch of random token ids (no padding, so
every arm sees exactly the same tokens; tokenization is not timed):
  train     one optimizer step: the verbalizer loss (bench/run/formulations.py: logits only at
            the last position, ``logits_to_keep=1``, and only over the two label tokens' rows
            of the output layer, bench/run/label_head.py; cross-entropy over the two),
            backward, AdamW step (base: no optimizer, nothing to update)
  eval      no-grad forward with the same loss head; ours with the prefix folded
            (``adapter.fold()``), PEFT as PEFT runs it (prefix recomputed each forward)
  generate  greedy decoding of exactly ``--new-tokens`` tokens (cache on)
Evaluation and generation run in fp32 whatever ``--precision``, as every cell's evaluation
does (bench/run/precision.py ``fp32_evaluation``: bf16 predictions depend on the batch): the
frozen weights are upcast for those two phases, so their figures are the ones cells pay.
Repeats are interleaved: each repeat runs every arm for ``--steps`` timed steps, in an order
rotated by one each repeat, so machine noise falls on all arms alike. Per repeat the
median step is kept; reported are the median over repeats, the IQR, and paired ratios
(ours/PEFT, ours/base) computed per repeat, then their median and IQR.

Scaling (``--scaling``, default 16x64,32x128): the training step of ours_proj vs peft_proj
again at larger batch x prefix length, where PEFT's MLP over batch x P rows grows.

Peak memory: each arm's training step runs again in fresh child processes (spawn,
``--memory-repeats`` each, interleaved; the median is reported), which report their peak
(CPU: the child's VmHWM, see bench/measure/memory.py, i.e. weights + activations + allocator slack,
with every weight read in first; CUDA: max allocated and max reserved). Children that only
load the backbone give the floor, subtracted to show what the step adds.

Harness overhead: one real cell (SST-2 verbalizer, our prefix tuning) through
``bench.run.cell.run_cell``; its ``harness_overhead`` field (see bench/measure/efficiency.py).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.measure import provenance
from bench.measure.flops import StepFlops, peak_flops
from bench.measure.perf_report import markdown, quartiles, summarise
from bench.run.backbones import load_backbone
from bench.run.label_head import label_rows, label_share
from bench.run.precision import Precision, fp32_evaluation

BACKBONE = "smollm2-135m"
ARMS = ("base", "ours_proj", "ours_noproj", "peft_proj", "peft_noproj", "lora", "ours_proj_fp32")
FP32_ARM = "ours_proj_fp32"  # the one arm kept in fp32 whatever --precision says
MID_DIM = 512
LABEL_IDS = (100, 200)  # any two vocabulary ids: the cost does not depend on which


@dataclass(frozen=True)
class Settings:
    batch: int = 8
    seq: int = 64
    prefix: int = 16
    gen_batch: int = 4
    gen_prompt: int = 32
    new_tokens: int = 16
    repeats: int = 5
    steps: int = 3
    cell_steps: int = 30
    memory_repeats: int = 3
    # training step only, ours_proj vs peft_proj, at larger BATCHxPREFIX: where PEFT's MLP
    # over batch x P rows starts to cost ("" skips it)
    scaling: str = "16x64,32x128"
    device: str = "auto"
    precision: str = "auto"  # every arm's but ours_proj_fp32: auto | fp32 | bf16-mixed
    threads: int = 0
    seed: int = 0
    # a folder with the backbone's config.json (+ tokenizer): the same architecture with random
    # weights, for machines without the weights package (speed does not depend on the values)
    random_init_from: str = ""


# --- arms -------------------------------------------------------------------------------

def load(s: Settings, device: torch.device) -> tuple[torch.nn.Module, Any]:
    if not s.random_init_from:
        loaded = load_backbone(BACKBONE, "causal_lm", 2, "auto", device)
        return loaded.model, loaded.tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(s.seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(s.random_init_from), dtype=torch.float32)
    model.to(device).eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(s.random_init_from)


def build_arm(name: str, model: torch.nn.Module, tokenizer: Any, s: Settings, device: torch.device,
              copy_model: bool = True):
    """(module to call, trainable params), its frozen matmul weights cast for its precision
    as a cell casts them (``Precision.prepare``; a cast shared backbone stays cast: the fp32
    arm gets its own model). ``model`` is the shared frozen backbone; arms that change it
    (PEFT wraps or injects) get a copy unless ``copy_model`` is False (a memory child owns its
    model: a copy there would count the weights twice)."""
    precision = arm_precision(name, s, device)
    with precision.autocast():  # an attach that runs the model (activation init) may meet cast weights
        module, params = _build(name, model, tokenizer, s, device, copy_model)
    precision.prepare(module)
    return module, params


def _build(name: str, model: torch.nn.Module, tokenizer: Any, s: Settings, device: torch.device, copy_model: bool):
    if name == "base":
        return model, []
    if name.startswith("ours"):
        from methods import METHODS, Anatomy, AttachContext
        cls = METHODS.get("prefix_tuning")
        cfg = cls.Config.from_dict({"projection": name != "ours_noproj", "mid_dim": MID_DIM}, name)
        adapter = cls(cfg, s.prefix).attach(model, AttachContext(tokenizer, Anatomy.of(model), s.seed, device))
        return adapter, [p for p in adapter.parameters() if p.requires_grad]
    import peft
    if name == "lora":
        config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                 task_type="CAUSAL_LM")
    else:
        config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=s.prefix,
                                         prefix_projection=name == "peft_proj", encoder_hidden_size=MID_DIM)
    wrapped = peft.get_peft_model(copy.deepcopy(model) if copy_model else model, config).to(device)
    return wrapped, [p for p in wrapped.parameters() if p.requires_grad]


def _loss(module: torch.nn.Module, name: str, ids: torch.Tensor, mask: torch.Tensor,
          labels: torch.Tensor) -> torch.Tensor:
    label_ids = torch.tensor(LABEL_IDS, device=ids.device)
    with label_rows(module, label_ids) as only_labels:  # the trainer's verbalizer head, for every arm
        if name == "base" and torch.is_grad_enabled():
            # nothing in the base model trains: the gradient goes to the input embeddings
            embeds = module.get_input_embeddings()(ids).detach().requires_grad_(True)
            out = module(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=1, use_cache=False)
        else:
            out = module(input_ids=ids, attention_mask=mask, logits_to_keep=1, use_cache=False)
    scores = out.logits[:, -1, :]
    if not only_labels:
        scores = scores.index_select(-1, label_ids)
    return F.cross_entropy(scores.float(), labels)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ArmRunner:
    """One arm's three phases as zero-argument step functions."""

    def __init__(self, name: str, module: torch.nn.Module, params: list, data: dict, device: torch.device,
                 s: Settings, precision: Precision | None = None):
        self.name, self.module, self.params, self.data, self.device, self.s = name, module, params, data, device, s
        self.precision = precision or Precision("fp32", device)
        # the trainer's optimizer step (bench/run/trainer.py make_optimizer), for every arm alike
        self.opt = _optimizer(params) if params else None

    def train_step(self) -> None:
        self.module.train()
        if hasattr(self.module, "unfold"):
            self.module.unfold()
        d = self.data
        with self.precision.autocast():
            loss = _loss(self.module, self.name, d["ids"], d["mask"], d["labels"])
        loss.backward()
        if self.opt is not None:
            self.opt.step()
            self.opt.zero_grad(set_to_none=False)
        _sync(self.device)

    @torch.no_grad()
    def eval_step(self) -> None:  # in fp32, inside ``evaluation_precision``
        self.module.eval()
        if hasattr(self.module, "fold") and self.name.startswith("ours"):
            self.module.fold()
        d = self.data
        _loss(self.module, self.name, d["ids"], d["mask"], d["labels"])
        _sync(self.device)

    @torch.no_grad()
    def generate_step(self) -> None:  # in fp32, inside ``evaluation_precision``
        self.module.eval()
        if self.name.startswith("ours"):
            self.module.fold()
        d, n = self.data, self.s.new_tokens
        out = self.module.generate(input_ids=d["gen_ids"], attention_mask=d["gen_mask"], max_new_tokens=n,
                                   min_new_tokens=n, do_sample=False, pad_token_id=0)
        if out.shape[1] != d["gen_ids"].shape[1] + n:
            raise RuntimeError(f"{self.name}: generate returned {out.shape[1]} positions, expected "
                               f"{d['gen_ids'].shape[1] + n}")
        _sync(self.device)


@contextlib.contextmanager
def evaluation_precision(runners: Iterable[ArmRunner]) -> Iterator[None]:
    """Every arm's frozen weights in fp32 while the evaluation phases run, as a cell's
    evaluation runs (``fp32_evaluation``; a backbone shared by several arms is upcast once)."""
    with contextlib.ExitStack() as stack:
        for runner in runners:
            stack.enter_context(fp32_evaluation(runner.module))
        yield


def _optimizer(params: list) -> torch.optim.Optimizer:
    from bench.core.config import TrainConfig
    from bench.run.trainer import make_optimizer
    return make_optimizer(params, TrainConfig(lr=1e-4))[0]


def arm_precision(arm: str, s: Settings, device: torch.device) -> Precision:
    """The precision ``arm`` runs at: ``s.precision`` resolved, fp32 for the fp32 arm."""
    return Precision("fp32", device) if arm == FP32_ARM else Precision.of(s.precision, device)


def arms_for(s: Settings, device: torch.device) -> tuple[str, ...]:
    """The arms of a run: the fp32 reference only when the others run in another precision."""
    return ARMS if arm_precision("ours_proj", s, device).name != "fp32" else tuple(a for a in ARMS if a != FP32_ARM)


def fp32_copy(model: torch.nn.Module, s: Settings, device: torch.device) -> torch.nn.Module:
    """The backbone the fp32 arm runs on: an uncast copy when the other arms cast theirs."""
    return model if arm_precision("ours_proj", s, device).name == "fp32" else copy.deepcopy(model)


def make_data(s: Settings, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(s.seed)
    ids = torch.randint(100, min(vocab, 5000), (s.batch, s.seq), generator=g)
    gen = torch.randint(100, min(vocab, 5000), (s.gen_batch, s.gen_prompt), generator=g)
    return {"ids": ids.to(device), "mask": torch.ones_like(ids).to(device),
            "labels": torch.randint(0, 2, (s.batch,), generator=g).to(device),
            "gen_ids": gen.to(device), "gen_mask": torch.ones_like(gen).to(device)}


# --- timing -----------------------------------------------------------------------------

def interleaved(runners: dict[str, ArmRunner], phase: str, s: Settings,
                log: Callable[[str], None]) -> dict[str, list[float]]:
    """Per arm, the median step seconds of each repeat; arms rotated each repeat."""
    names = list(runners)
    for n in names:  # warm-up: kernels, allocator, lazy init
        getattr(runners[n], f"{phase}_step")()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(s.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            step = getattr(runners[n], f"{phase}_step")
            times = []
            for _ in range(s.steps):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            out[n].append(statistics.median(times))
        log(f"  {phase} repeat {r + 1}/{s.repeats}: " + ", ".join(f"{n} {out[n][-1] * 1e3:.0f} ms" for n in names))
    return out


# --- memory (child processes) -------------------------------------------------------------

def _memory_child(arm: str, s: Settings, queue: Any) -> None:
    from bench.measure import memory

    try:
        memory.reset_cpu_peak()  # this child's own high-water mark (see bench/measure/memory.py)
        if s.threads:
            torch.set_num_threads(s.threads)
        device = provenance.pick_device(s.device)
        model, tokenizer = load(s, device)
        # safetensors weights are mapped, not read: RSS counts a page once something touches
        # it, and a label-rows loss never touches most of the vocabulary matrix while an
        # activation init reads all of it. Read every weight so the floor holds them all and
        # arms differ only by what training adds.
        with torch.no_grad():
            for t in (*model.parameters(), *model.buffers()):
                t.sum()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if arm != "load_only":
            prec = arm_precision(arm, s, device)
            module, params = build_arm(arm, model, tokenizer, s, device, copy_model=False)
            runner = ArmRunner(arm, module, params, make_data(s, model.config.vocab_size, device), device, s, prec)
            for _ in range(2):
                runner.train_step()
        if device.type == "cuda":
            queue.put((arm, {"kind": "cuda_max_allocated", "bytes": torch.cuda.max_memory_allocated(device),
                             "reserved_bytes": torch.cuda.max_memory_reserved(device)}))
        else:
            peak, kind = memory.cpu_peak_bytes()
            queue.put((arm, {"kind": kind, "bytes": peak, "reserved_bytes": 0}))
    except Exception as err:  # reported, not fatal: the timing table still stands
        queue.put((arm, {"error": f"{type(err).__name__}: {err}"}))


def memory_per_arm(s: Settings, log: Callable[[str], None]) -> dict[str, dict]:
    """Each arm's training peak from ``s.memory_repeats`` fresh children (arms interleaved):
    ``bytes`` is the median, ``samples`` all of them. One child's RSS peak moves by about
    +-20 MB (allocator placement), as much as the arms differ, hence the repeats."""
    ctx = mp.get_context("spawn")
    samples: dict[str, list[dict]] = {}
    for r in range(max(1, s.memory_repeats)):
        for arm in ("load_only", *arms_for(s, provenance.pick_device(s.device))):
            queue = ctx.Queue()
            p = ctx.Process(target=_memory_child, args=(arm, s, queue))
            p.start()
            name, res = queue.get(timeout=600)
            p.join()
            samples.setdefault(name, []).append(res)
            log(f"  memory {name} ({r + 1}/{s.memory_repeats}): {res}")
    out = {}
    for name, runs in samples.items():
        ok = [x for x in runs if "bytes" in x]
        if not ok:
            out[name] = runs[0]
            continue
        out[name] = {**ok[0], "bytes": statistics.median(x["bytes"] for x in ok),
                     "reserved_bytes": statistics.median(x.get("reserved_bytes", 0) for x in ok),
                     "samples": [x["bytes"] for x in ok]}
    return out


# --- scaling: the MLP's rows --------------------------------------------------------------

SCALING_ARMS = ("ours_proj", "peft_proj")


def parse_scaling(spec: str) -> list[tuple[int, int]]:
    """'16x64,32x128' -> [(16, 64), (32, 128)]: (batch, prefix length) pairs."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        b, _, n = part.partition("x")
        if not (b.isdigit() and n.isdigit() and int(b) > 0 and int(n) > 0):
            raise ValueError(f"--scaling entry {part!r} is not BATCHxPREFIX with positive integers, e.g. 16x64")
        out.append((int(b), int(n)))
    return out


def scaling_rows(s: Settings, model: torch.nn.Module, tokenizer: Any, device: torch.device,
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Training step of ours_proj vs peft_proj at each (batch, prefix) of ``s.scaling``,
    interleaved like the main table (3 repeats x 2 steps: the larger steps take seconds)."""
    rows = []
    for batch, prefix in parse_scaling(s.scaling):
        sv = dataclasses.replace(s, batch=batch, prefix=prefix, repeats=3, steps=2)
        data = make_data(sv, model.config.vocab_size, device)
        runners = {arm: ArmRunner(arm, *build_arm(arm, model, tokenizer, sv, device), data, device, sv,
                                  arm_precision(arm, sv, device)) for arm in SCALING_ARMS}
        t = interleaved(runners, "train", sv, log)
        del runners
        q1, med, q3 = quartiles([b / a for a, b in zip(t["ours_proj"], t["peft_proj"], strict=True)])
        rows.append({"batch": batch, "seq": s.seq, "prefix": prefix,
                     "ours_proj_ms": statistics.median(t["ours_proj"]) * 1e3,
                     "peft_proj_ms": statistics.median(t["peft_proj"]) * 1e3,
                     "ratio": med, "q1": q1, "q3": q3})
    return rows


# --- one real cell: harness overhead ------------------------------------------------------

def cell_overhead(s: Settings, device: torch.device) -> dict[str, Any]:
    from bench.run.cell import run_cell
    from bench.run.matrix import expand
    from tasks import DataSettings

    doc = {"suites": {"perf": {"methods": ["prefix_tuning"], "tasks": ["glue/sst2"], "backbones": [BACKBONE],
                               "prefix_lengths": [s.prefix], "seeds": [s.seed],
                               "train": {"train_steps": s.cell_steps, "batch_size": s.batch, "eval_limit": 4 * s.batch,
                                         "eval_batch_size": s.batch, "max_length": s.seq,
                                         "precision": s.precision}}}}
    (cell,) = expand(doc, "perf")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = run_cell(cell, DataSettings.from_env(), device, Path(tmp))
        wall = time.perf_counter() - t0
    return {"train_steps": s.cell_steps, "harness_overhead": r.harness_overhead, "mfu": r.mfu,
            "train_tokens_per_s": r.train_tokens_per_s, "run_cell_seconds": wall,
            "compute_seconds": r.train_seconds + r.eval_seconds}


# --- report -------------------------------------------------------------------------------

def step_flops(name: str, module: torch.nn.Module) -> StepFlops:
    """Model FLOPs of the arm's step; PEFT's prefix arms are charged our count for the same
    model (their MLP over B*P rows instead of P is implementation cost, not model FLOPs)."""
    from methods.base import Adapter
    if name.startswith("ours"):
        return StepFlops.of(module)
    inner = module.get_base_model() if hasattr(module, "get_base_model") else module
    fm = StepFlops.of(Adapter(inner))
    if name == "base":  # the gradient reaches the input embeddings
        fm = dataclasses.replace(fm, input_grad=True, q0_grad=True, k0_grad=True, v0_grad=True)
    return fm


def run(s: Settings, out_dir: Path, memory: bool = True, cell: bool = True,
        log: Callable[[str], None] = lambda m: print(m, flush=True)) -> dict[str, Any]:
    if s.threads:
        torch.set_num_threads(s.threads)
    parse_scaling(s.scaling)  # a malformed spec fails before the model loads
    device = provenance.pick_device(s.device)
    started = provenance.now()
    model, tokenizer = load(s, device)
    arms = arms_for(s, device)
    precision = arm_precision("ours_proj", s, device)
    peak = peak_flops(device, precision.dtype)
    fp32_model = fp32_copy(model, s, device)
    data = make_data(s, model.config.vocab_size, device)
    runners, fl = {}, {}
    for arm in arms:
        module, params = build_arm(arm, fp32_model if arm == FP32_ARM else model, tokenizer, s, device)
        runners[arm] = ArmRunner(arm, module, params, data, device, s, arm_precision(arm, s, device))
        fl[arm] = step_flops(arm, module)
    del fp32_model
    log(f"perf: {len(arms)} arms on {provenance.device_name(device)} at {precision.name} "
        f"({FP32_ARM} in fp32), {s}")
    times = {"train": interleaved(runners, "train", s, log)}
    with evaluation_precision(runners.values()):
        times.update({phase: interleaved(runners, phase, s, log) for phase in ("eval", "generate")})
    del runners
    scale = scaling_rows(s, model, tokenizer, device, log)
    mem = memory_per_arm(s, log) if memory else {}
    peaks = {arm: peak_flops(device, arm_precision(arm, s, device).dtype) for arm in arms}
    summary = summarise(times, mem, fl, s, peaks, label_share(model, len(LABEL_IDS)))
    sha, dirty = provenance.git_state()
    meta = {"backbone": BACKBONE, "device": provenance.device_name(device), "settings": asdict(s),
            "precision": precision.name, "eval_precision": "fp32",
            "versions": provenance.package_versions(), "git_sha": sha, "git_dirty": dirty, "started_at": started,
            "peak_flops": peak, "memory_kind": next((m.get("kind") for m in mem.values() if "kind" in m), "not measured"),
            "raw_seconds": times, "scaling": scale}
    if cell and not s.random_init_from:
        log("perf: one real cell for harness overhead ...")
        meta["cell"] = cell_overhead(s, device)
    meta["finished_at"] = provenance.now()
    meta["load_only_bytes"] = mem.get("load_only", {}).get("bytes")
    text = markdown(summary, meta)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta["markdown_note"] = "random weights" if s.random_init_from else "pretrained weights"
    (out_dir / "perf.json").write_text(json.dumps({"meta": meta, **summary}, indent=1, default=str))
    (out_dir / "perf.md").write_text(text, encoding="utf-8")
    return {"meta": meta, **summary, "markdown": text}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n\n")[0])
    for f, v in asdict(Settings()).items():
        p.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    p.add_argument("--out", default="results/perf", help="folder for perf.md and perf.json")
    p.add_argument("--no-memory", action="store_true", help="skip the per-arm memory children")
    p.add_argument("--no-cell", action="store_true", help="skip the harness-overhead cell")
    args = vars(p.parse_args(argv))
    out, no_mem, no_cell = Path(args.pop("out")), args.pop("no_memory"), args.pop("no_cell")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    res = run(Settings(**args), out, memory=not no_mem, cell=not no_cell)
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
