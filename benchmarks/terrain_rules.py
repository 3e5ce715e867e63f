"""Would a terrain or kinematic rule after the detector drop look-alikes? Tried offline on the
inventories of workflows/candidate_eval.sh (each slide carries its mean DEM slope and, with two
tracks, its decomposed up and downslope velocities): a slide is dropped when its mean slope is
under a threshold (flat ground), when it moves upslope (``v_slope_mm_yr`` below ``-T``), or
when it rises (``v_up_mm_yr`` above ``U``); every basin is re-scored strictly (box IoU ≥ 0.5,
slides below the scoring cutoffs ignored). A rule is worth adopting only if it raises F1 on the
tuning basins (wide tuning, its 20 m and 40 m versions, the original tuning basin); the held-out
and unseen test basins are reported beside them.

    python benchmarks/terrain_rules.py out/candidate_shipped --out benchmarks/results/terrain_rules.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np

from insar_slide.compare import hidden_truth, match, visible_truth, within_extent
from insar_slide.mosaic import grid_of, open_basin

ROOT = Path(__file__).resolve().parents[1]
#: basin -> (inventory folder under the candidate folder, truth stem under the repository)
BASINS = {"tuning": ("wide/tuning", "out/wide/tuning"), "tuning_20m": ("wide/tuning_20m", "out/wide/tuning_20m"),
          "tuning_40m": ("wide/tuning_40m", "out/wide/tuning_40m"), "old_tuning": ("tuning", "out/reference/tuning"),
          "heldout": ("heldout", "out/reference/heldout"), "test_20m": ("wide/test_20m", "out/wide/test_20m"),
          "test_40m": ("wide/test_40m", "out/wide/test_40m"), "test_30m": ("wide/test_30m", "out/wide/test_30m")}
TUNING = ("tuning", "tuning_20m", "tuning_40m", "old_tuning")


def _col(g: gpd.GeoDataFrame, name: str) -> np.ndarray:
    return g[name].to_numpy(float) if name in g.columns else np.full(len(g), np.nan)


def rules() -> dict[str, Callable[[gpd.GeoDataFrame], np.ndarray]]:
    """Name -> which slides the rule drops (NaN attributes are never dropped)."""
    out: dict[str, Callable[[gpd.GeoDataFrame], np.ndarray]] = {"none": lambda g: np.zeros(len(g), bool)}
    for t in (3, 5, 7, 10):
        out[f"slope < {t} deg"] = lambda g, t=t: _col(g, "dem_slope_deg") < t
    for t in (0, 2, 5, 10):
        out[f"v_slope < -{t} mm/yr"] = lambda g, t=t: _col(g, "v_slope_mm_yr") < -t
    for u in (2, 5, 10, 20):
        out[f"v_up > {u} mm/yr"] = lambda g, u=u: _col(g, "v_up_mm_yr") > u
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a workflows/candidate_eval.sh folder (heldout, tuning, wide steps)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    data = {}
    for name, (inv_dir, truth) in BASINS.items():
        inv_path = a.folder / inv_dir / "inventory.parquet"
        if inv_path.is_file():
            t = gpd.read_parquet(ROOT / f"{truth}.truth.parquet")
            t = within_extent(t, grid_of(open_basin(ROOT / f"{truth}.zarr")).bounds)  # the truth as the mosaic shows it
            data[name] = (gpd.read_parquet(inv_path), visible_truth(t), hidden_truth(t))
    table: dict[str, dict[str, dict[str, float]]] = {}
    for rule, drops in rules().items():
        table[rule] = {}
        for name, (inv, vis, hid) in data.items():
            c = match(inv[~drops(inv)], vis, ignore=hid).counts()
            table[rule][name] = {"found": c["correctly_detected"], "missed": c["not_detected"], "false": c["newly_detected"],
                                 "f1": round(c["f1"], 4)}
    base = table["none"]
    names = list(data)
    print("| rule | " + " | ".join(names) + " | tuning basins better |")
    print("| --- |" + " --- |" * (len(names) + 1))
    for rule, row in table.items():
        better = sum(row[n]["f1"] > base[n]["f1"] for n in TUNING if n in row)
        cells = [f"{row[n]['found']}/{row[n]['missed']}/{row[n]['false']} {row[n]['f1']:.3f}" for n in names]
        print(f"| {rule} | " + " | ".join(cells) + f" | {better} of {sum(n in row for n in TUNING)} |")
    if a.out:
        a.out.write_text(json.dumps({"candidate": str(a.folder), "table": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
