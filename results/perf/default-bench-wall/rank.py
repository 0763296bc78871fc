"""Method rankings per (task, backbone) in each run's records: the old default suite (before issue
15's work) and the new one, for the tables both have."""
import json, sys
from collections import defaultdict
MAIN = {"glue/sst2": "accuracy", "glue/rte": "accuracy", "e2e_nlg": "bleu"}

def rows(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if r.get("status") != "ok":
            continue
        m = r["metrics"]
        key = MAIN.get(r["task"])
        score = r.get("main_score") if key is None or key not in m else m[key]
        name = r["method"] + ("" if r.get("prefix_length") is None else f" P={r['prefix_length']}")
        out[(r["task"], r["backbone"], name)] = score
    return out

runs = {p: rows(f"/tmp/qb/r-{p}/records.jsonl") for p in sys.argv[1:]}
tables = sorted({k[:2] for rs in runs.values() for k in rs})
for t in tables:
    print(f"## {t[0]} on {t[1]}")
    for p, rs in runs.items():
        ranked = sorted(((v, k[2]) for k, v in rs.items() if k[:2] == t), reverse=True)
        print(f"  {p:6s} " + " > ".join(f"{n} {v:.3f}" for v, n in ranked))
