"""Collect the results of several jobs/tune.py sweeps into one table (CSV + printed markdown).

    python benchmarks/sweep_tables.py benchmarks/out/sweeps/recipe-* --out benchmarks/results/recipe_sweeps.csv

Each row is one trial: the sweep, what it varied, the objective, how it stopped, the images it
trained on out of those planned, and its wall time. The sweeps themselves are run with
jobs/tune.py (for example with the YAML files in benchmarks/sweeps/).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def rows_of(sweep: Path) -> list[dict]:
    doc = json.loads((sweep / "results.json").read_text())
    keys = [axis["key"] for axis in doc["space"]]
    return [{"sweep": sweep.name, "trial": t["trial"], "varied": " ".join(f"{k}={t[k]}" for k in keys),
             doc["objective"]: t["objective"], "stop": t["stop"], "images": t["images"],
             "planned_images": t.get("planned_images"), "wall_s": t["wall_s"]} for t in doc["trials"]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep folders (holding results.json)")
    p.add_argument("--out", type=Path, help="CSV to write")
    a = p.parse_args()
    rows = [row for sweep in a.sweeps if (sweep / "results.json").exists() for row in rows_of(sweep)]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
