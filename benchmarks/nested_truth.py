"""Inventory slides that hold two or more simulated slides, in a ``workflows/candidate_eval.sh`` folder.

A slide of the inventory holds a simulated slide when the truth's representative point lies in
its polygon. Two or more in one slide means the merge joined separate slides (or the model drew
one box around several): the fault that costs round 8 a quarter of the demo's slides (README,
"Round 8 retrained"). Only the demo and the validation basins are read, never a test basin.

    python benchmarks/nested_truth.py out/candidate_r8 out/candidate_shipped
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd

#: (name, inventory inside the folder, truth: inside the folder if relative to it, else the repo)
BASINS = [("demo", "demo/inventory.parquet", "{f}/demo/basin.truth.parquet"),
          ("tuning", "tuning/inventory.parquet", "out/reference/tuning.truth.parquet"),
          *[(f"wide {b}", f"wide/{b}/inventory.parquet", f"out/wide/{b}.truth.parquet")
            for b in ("tuning", "tuning_20m", "tuning_40m")]]


def nested(inventory: Path, truth: Path) -> tuple[int, list[dict[str, float]]]:
    """(slides in the inventory, the slides holding ≥ 2 truth slides with score, scale, boxes, count, km²)."""
    inv = gpd.read_parquet(inventory)
    ref = gpd.read_parquet(truth)
    pts = gpd.GeoDataFrame(geometry=ref.geometry.representative_point(), crs=ref.crs)
    held = gpd.sjoin(pts, inv[["geometry"]], predicate="within")["index_right"].value_counts()
    rows = [{"score": round(float(r.score), 2), "scale": int(r.get("scale", 1)), "boxes": int(r.n_boxes),
             "truth_slides": int(held[i]), "km2": round(float(r.area_m2) / 1e6, 1)}
            for i, r in inv.loc[held.index[held >= 2].sort_values()].iterrows()]
    return len(inv), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", type=Path, nargs="+")
    for folder in ap.parse_args().folders:
        for name, inv, truth in BASINS:
            t = Path(truth.format(f=folder))
            if not (folder / inv).is_file() or not t.is_file():
                continue
            n, rows = nested(folder / inv, t)
            print(f"{folder.name} {name}: {n} slides, {len(rows)} holding >= 2 simulated slides "
                  f"{[(r['score'], r['scale'], r['truth_slides'], r['km2']) for r in rows]} (score, scale, held, km²)")


if __name__ == "__main__":
    main()
