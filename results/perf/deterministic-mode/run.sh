export PREFIX_BENCH_DATA_DIR=/work/shared/data TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
for i in 1 2 3; do
  for mode in plain det; do
    extra=""; [ $mode = det ] && extra="--deterministic"
    /work/main/.venv/bin/prefix-bench run --config s.toml --suite m --results r-$mode-$i --no-render --quiet --executor subprocess --threads 2 $extra > log-$mode-$i 2>&1
  done
done
python3 - <<'PY'
import json,glob,statistics
for mode in ("plain","det"):
    rows=[json.loads(open(f).readline()) for f in sorted(glob.glob(f"r-{mode}-*/records.jsonl"))]
    print(mode, [round(r["train_tokens_per_s"]) for r in rows], [round(r["eval_tokens_per_s"]) for r in rows], [r["main_score"] for r in rows])
PY
