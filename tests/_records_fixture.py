"""Fixed ResultRecords for rendering tests: a small realistic leaderboard (no training).

Scores follow a known pattern so the tests can check the statistics: residual_prefix is
flat across prefix lengths, prefix_tuning swings with length, prefix_tuning_plus beats
prefix_tuning by ~0.03 on every matched cell, lora has no prefix axis.
"""

from __future__ import annotations

from bench.core.records import ResultRecord

LENGTHS = (5, 20, 50)
SEEDS = (0, 1, 2)
SEED_NOISE = (0.004, -0.003, 0.001)  # fixed, so golden files never change
PT_BY_LENGTH = {5: 0.78, 20: 0.84, 50: 0.80}


def score(method: str, length: int | None, seed: int) -> float:
    noise = SEED_NOISE[seed]
    if method == "prefix_tuning":
        return PT_BY_LENGTH[length] + noise
    if method == "prefix_tuning_plus":
        return PT_BY_LENGTH[length] + 0.03 + noise * 0.5
    if method == "residual_prefix":
        return 0.83 + 0.002 * LENGTHS.index(length) + noise
    if method == "lora":
        return 0.845 + noise
    raise ValueError(method)


def record(method: str, length: int | None, seed: int, task: str = "glue/sst2", backbone: str = "minilm-l6",
           **overrides) -> ResultRecord:
    params = {"prefix_tuning": 12_000, "prefix_tuning_plus": 15_000, "residual_prefix": 12_100, "lora": 74_000}
    p = length or 0
    trainable = params[method] * max(p, 1) // (20 if p else 1)
    # prefix methods deploy the folded prefix, smaller than what trained it
    deployed = trainable // 4 if method in ("prefix_tuning", "residual_prefix") else trainable
    fields = dict(
        cell_id=f"{method}-{task.replace('/', '_')}-{backbone}-{length}-{seed}", suite="fixture", method=method,
        task=task, backbone=backbone, prefix_length=length, seed=seed, status="ok", main_metric="accuracy",
        main_score=score(method, length, seed), metrics={"accuracy": score(method, length, seed)},
        trainable_params=trainable, adapter_bytes=params[method] * 4, inference_params=deployed,
        inference_bytes=deployed * 4,
        train_tokens_per_s=5000.0 - 10 * p - 200 * (method == "lora"), eval_tokens_per_s=20000.0 - 30 * p,
        peak_memory_bytes=(300 + p) * 1024**2, config={"method": method})
    fields.update(overrides)
    return ResultRecord(**fields)


def make_records(methods=("prefix_tuning", "prefix_tuning_plus", "residual_prefix", "lora"),
                 seeds=SEEDS, lengths=LENGTHS, task: str = "glue/sst2") -> list[ResultRecord]:
    out = []
    for m in methods:
        for s in seeds:
            for length in ((None,) if m == "lora" else lengths):
                out.append(record(m, length, s, task=task))
    return out
