"""Every table says what made it (suite, commit, dates, device, precision, sources), and a
table of a random-weight backbone carries a banner in every format."""

from __future__ import annotations

from bench.core.records import ResultRecord
from bench.report.render import render
from tasks import task_facts


def _row(seed: int, backbone: str = "minilm-l6", source: str = "local:/home/someone/pkgs/model") -> ResultRecord:
    return ResultRecord(cell_id=f"c{seed}{backbone}", suite="default", method="lora", task="glue/sst2",
                        backbone=backbone, prefix_length=None, seed=seed, status="ok", main_metric="accuracy",
                        main_score=0.8, config={"seed": seed}, git_sha="0123456789abcdef", git_dirty=seed == 1,
                        device="cpu:x86_64:2threads", backbone_source=source,
                        data_source="train=local:/data/glue/SST-2/train.tsv eval=local:/data/glue/SST-2/dev.tsv",
                        finished_at=f"2026-12-0{seed + 1}T10:00:00")


def test_tables_name_what_made_them(tmp_path) -> None:
    render([_row(0), _row(1)], tmp_path, plots=False, facts=task_facts())
    md = (tmp_path / "glue_sst2__minilm-l6.md").read_text(encoding="utf-8")
    line = next(x for x in md.splitlines() if x.startswith("Made by"))
    assert "suite default" in line and "0123456789 (dirty)" in line and "2026-12-01 to 2026-12-02" in line
    assert "cpu:x86_64:2threads" in line and "precision fp32" in line and "local:model" in line
    assert "/home/someone" not in md  # a machine's folders are not part of the context
    assert "local:train.tsv" in line
    for name in ("index.html", "glue_sst2__minilm-l6.tex"):
        assert "0123456789" in (tmp_path / name).read_text(encoding="utf-8"), name
    assert "random-weight" not in md


def test_random_weight_backbones_carry_a_banner(tmp_path) -> None:
    render([_row(0, "tiny-bert", "random:tiny-bert")], tmp_path, plots=False, facts=task_facts())
    for name in ("glue_sst2__tiny-bert.md", "index.html", "glue_sst2__tiny-bert.tex"):
        assert "random-weight backbone(s) tiny-bert" in (tmp_path / name).read_text(encoding="utf-8"), name
