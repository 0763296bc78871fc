export PREFIX_BENCH_DATA_DIR=/work/shared/data TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
cd /tmp/speed
for i in 1 2; do
  for v in old new; do
    src=/work/main; [ $v = old ] && src=/tmp/old
    PYTHONPATH=$src /work/main/.venv/bin/python -m bench run --config s.toml --suite m --results r-$v-$i --no-render --quiet > log-$v-$i 2>&1
  done
done
grep -h "train tok/s" log-* /dev/null
