#!/bin/bash
# `nox -s bench`'s command (prefix-bench run, the default suite, rendering included) at the commit
# before issue 15's work (old: bfff1f3) and at this commit (new), alone on the machine, in the
# order given; the nox venv creation, the same for both, is left out
export PREFIX_BENCH_DATA_DIR=/work/shared/data TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
cd /tmp/qb
for run in "$@"; do
  v=${run%-*}; src=/tmp/new15; [ "$v" = old ] && src=/tmp/old15
  rm -rf "r-$run" "t-$run"
  t0=$(date +%s.%N)
  (cd "$src" && PYTHONPATH=$src /work/main/.venv/bin/python -m bench run --suite default --results "/tmp/qb/r-$run" --tables "/tmp/qb/t-$run" --quiet) > "log-$run" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  echo "$run rc=$rc wall_s=$(python3 -c "print(round($t1-$t0,1))")" | tee -a /tmp/qb/result.txt
done
