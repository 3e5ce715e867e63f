# %% [markdown]
# # insar-slide in a notebook
#
# A percent-format notebook (Jupyter, VS Code and JupyterLab with jupytext open it as cells;
# `python workflows/notebook.py` runs it top to bottom). It simulates a small basin in memory,
# runs the detector on the `DataArray`, scores it against the simulated truth and asks the
# inventory ad-hoc questions — no YAML, no command line. `tests/test_api.py` runs it.

# %%
import os
from pathlib import Path

import insar_slide as isl
from insar_slide.compare import hidden_truth, match, visible_truth

OUT = Path(os.environ.get("NOTEBOOK_OUT", "out/notebook"))
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# A 512 × 512 px (15 × 15 km) piece of the demo's simulated valley, two Sentinel-1 tracks.

# %%
ds, truth = isl.simulate(seed=11, shape=(512, 512), truth=True)
rate = ds["los_rate"]
print(rate.sizes, rate.rio.crs, f"{len(truth)} simulated slides")

# %% [markdown]
# Detection on the in-memory `DataArray`: the same plan → detect → merge code as
# `insar-slide run`, here on a few threads of this process (a scene of a few windows).

# %%
inv = isl.detect(rate, window=512)
print(f"{len(inv)} landslides")
print(inv[["slide_num", "score", "tracks", "area_m2", "rate_p95_abs"]].head(10).to_string(index=False))

# %% [markdown]
# How good is it here? The simulated truth knows.

# %%
c = match(inv, visible_truth(truth), ignore=hidden_truth(truth)).counts()
print(f"found {c['correctly_detected']} of {c['total_reference']}, {c['newly_detected']} false; "
      f"precision {c['precision']:.2f}, recall {c['recall']:.2f}, F1 {c['f1']:.2f}")

# %% [markdown]
# Ad-hoc questions: per-slide statistics on every track, one slide's rates, slides in a box.

# %%
table = isl.slide_table(ds, inv)
print(table.head().to_string())
first = isl.slide_rates(ds, inv, inv.slide_id.iloc[0])
print(first.sizes)
xmin, ymin, xmax, ymax = inv.total_bounds
west = isl.slides_in_bbox(inv, xmin, ymin, (xmin + xmax) / 2, ymax)
print(f"{len(west)} slides in the western half")

# %% [markdown]
# The same report and files a run writes, from the notebook's objects.

# %%
from insar_slide.gis import write_kml  # noqa: E402
from insar_slide.mosaic import write_mosaic  # noqa: E402
from insar_slide.report import write_report  # noqa: E402

write_mosaic(ds, OUT / "basin.zarr", chunk=512, overwrite=True)
print(write_report(OUT / "basin.zarr", inv, OUT / "inventory.html", truth=truth))
print(write_kml(inv, OUT / "inventory.kml"))
