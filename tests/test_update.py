"""Mosaic versions, `insar-slide update` and `history` on a tiny simulated basin with two
versions in which slides stop, accelerate and appear (real Zarr, LocalCluster, GeoParquet).

Lifecycle tests use the "perfect detector" of test_run (each window's stored detections are
the visible truth boxes it sees, written with the right fingerprint), so the statuses can be
checked exactly; the recompute test runs a random-weight model for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import yaml
from click.testing import CliRunner

from insar_slide.cli import main
from insar_slide.compare import visible_truth
from insar_slide.errors import InputError, StoreError
from insar_slide.model import save_checkpoint
from insar_slide.mosaic import list_versions, open_basin, resolve_version_group
from insar_slide.run.config import load_run_config
from insar_slide.run.detect import (
    file_hash,
    fingerprint,
    loaded_models,
)
from insar_slide.run.io import read_level
from insar_slide.run.pipeline import detect_settings, run
from insar_slide.run.plan import make_plan
from insar_slide.run.update import history_dir, read_history, update
from insar_slide.sim.basin import simulate
from insar_slide.sim.config import EvolutionConfig, demo_config
from tests.conftest import FAST, dask_processes, eager_model

BASE = demo_config().model_copy(update={
    "grid": demo_config().grid.model_copy(update={"shape": (768, 768), "chunk": 256}),
    "landslides": demo_config().landslides.model_copy(update={"density_per_100km2": 14, "size_px": (8.0, 60.0)}),
})
LATER = BASE.model_copy(update={"time_span": ("2018-01-01", "2021-12-31"),
                                "evolution": EvolutionConfig(seed=3, stop_fraction=0.3, accelerate_fraction=0.3,
                                                             appear_density_per_100km2=6)})


@pytest.fixture(scope="module")
def basin(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("upd") / "basin.zarr"
    simulate(BASE, store)
    simulate(LATER, store, version="2018-2021")
    return store


def _config(tmp: Path, basin: Path, model: Path, **kw: object) -> Path:
    cfg = {"mosaic": str(basin), "out": str(tmp / "inv.parquet"), "model": str(model), "window": 256, "halo": 64,
           "dissolve_overlap": 0.95, "cluster": {"workers": 1, "threads_per_worker": 1, "dashboard": False},
           "outputs": {"quicklook": False, "slide_id_raster": False, "report": False, "kml": False, "geopackage": False}, **kw}
    p = tmp / "basin.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _truth(basin: Path, version: str | None) -> gpd.GeoDataFrame:
    name = "basin.truth.parquet" if version is None else f"basin.truth.{version}.parquet"
    return gpd.read_parquet(basin.parent / name)


def _inject(cfg_path: Path, version: str | None) -> None:
    """The stored detections of a perfect detector on ``version`` of the basin."""
    cfg = load_run_config(cfg_path).model_copy(update={"version": version})
    truth = _truth(Path(cfg.mosaic), version)
    plan = make_plan(cfg)
    s = detect_settings(cfg, plan.grid, model_hash=file_hash(cfg.model_path))
    t = plan.grid.transform
    inv = ~t
    for w in plan.to_run():
        vis = visible_truth(truth[[c for c in truth.columns if not c.startswith(("peak_los_", "visible_fraction_"))
                                   or c.endswith(w.track)]])
        found = []
        for g in vis.geometry:
            x0, y0, x1, y1 = g.bounds
            c0, r1 = inv * (x0, y0)
            c1, r0 = inv * (x1, y1)
            cc0, rr0, cc1, rr1 = max(c0, w.read.col0), max(r0, w.read.row0), min(c1, w.read.col1), min(r1, w.read.row1)
            if cc1 - cc0 >= 4 and rr1 - rr0 >= 4:
                found.append((cc0, rr0, cc1, rr1))
        arr = np.asarray(found, dtype=np.float64).reshape(-1, 4)
        s.store.write_detections(w, arr, scores=np.full(len(arr), 0.9),
                         meta={"fingerprint": fingerprint(w, s), "window": w.key, "model": s.model_hash})


@pytest.mark.slow
def test_versions_stay_readable_and_grids_must_match(basin, tmp_path):
    vs = list_versions(basin)
    assert [v["label"] for v in vs] == ["base", "2018-2021"] and vs[1]["group"] == "versions/2018-2021"
    assert vs[1]["time_span"] == "2018-01-01/2021-12-31"
    import xarray as xr
    assert xr.open_zarr(basin).los_rate.shape == xr.open_zarr(basin, group="versions/2018-2021").los_rate.shape
    assert open_basin(basin, "latest").attrs["time_span"] == "2018-01-01/2021-12-31"
    assert [resolve_version_group(basin, v) for v in (None, "", "base", "latest")] == [None, None, None, "versions/2018-2021"]
    with pytest.raises(StoreError, match="no version 'nope'"):
        resolve_version_group(basin, "nope")
    other = BASE.model_copy(update={"grid": BASE.grid.model_copy(update={"shape": (512, 768)})})
    with pytest.raises(StoreError, match="differs"):
        simulate(other, basin, version="bad")
    assert [v["label"] for v in list_versions(basin)] == ["base", "2018-2021"]  # nothing half-written


def _ids_by_truth(inv: gpd.GeoDataFrame, truth: gpd.GeoDataFrame) -> dict[str, str]:
    """truth slide_id → inventory slide_id, one-to-one by bounding-box IoU ≥ 0.5 (boxes are clipped at the grid edge)."""
    from insar_slide.compare import match
    m = match(truth, inv, rule="box", threshold=0.5)
    return {truth["slide_id"].iloc[i]: inv["slide_id"].iloc[j] for i, j in enumerate(m.a_matched) if j >= 0}


@pytest.mark.slow
def test_lifecycle_new_persisting_and_not_detected_now(basin, tmp_path, model_file):
    cfg_path = _config(tmp_path, basin, model_file)
    # first update: only the base version exists in this config's eyes
    _inject(cfg_path, None)
    cfg1 = load_run_config(cfg_path)
    update(cfg1, version="base", echo=lambda s: None)  # the basin before the second version arrived
    inv1 = gpd.read_parquet(tmp_path / "inv.parquet")
    assert (inv1["status"] == "new").all() and (inv1["first_seen"] == "base").all()
    # second update: the newest version
    _inject(cfg_path, "2018-2021")
    res = update(cfg1, echo=lambda s: None)
    assert res.windows["computed"] == 0
    inv2 = gpd.read_parquet(tmp_path / "inv.parquet")
    t1, t2 = visible_truth(_truth(basin, None)), visible_truth(_truth(basin, "2018-2021"))
    ids1, ids2 = _ids_by_truth(inv1, t1), _ids_by_truth(inv2[inv2.status != "not_detected_now"], t2)
    v1, v2 = set(t1["slide_id"]), set(t2["slide_id"])
    changes = dict(zip(_truth(basin, "2018-2021")["slide_id"], _truth(basin, "2018-2021")["change"], strict=True))
    assert any(changes[k] == "appeared" for k in v2) and any(k not in v2 for k in v1)
    status = dict(zip(inv2["slide_id"], inv2["status"], strict=True))
    for k in v2 - v1:
        assert status[ids2[k]] == "new", k
    for k in v1 & v2:
        assert ids2[k] == ids1[k] and status[ids1[k]] == "persisting", k  # persisting slides keep their ids
    for k in v1 - v2:
        assert status[ids1[k]] == "not_detected_now", k  # stopped (or now too slow to see)
    assert set(inv2[inv2.status == "not_detected_now"]["last_seen"]) == {"base"}
    hist = read_history(cfg1)
    assert set(hist["version"]) == {"base", "2018-2021"}
    # the same update again changes nothing
    before = {p: p.read_bytes() for p in [tmp_path / "inv.parquet", *history_dir(cfg1).rglob("*.parquet")]}
    assert update(cfg1, echo=lambda s: None).up_to_date
    assert all(p.read_bytes() == b for p, b in before.items())
    # an explicit version is one of the store's, and the history only moves forward
    with pytest.raises(StoreError, match="no version 'nope'"):
        update(cfg1, version="nope", echo=lambda s: None)
    with pytest.raises(InputError, match="only moves forward"):
        update(cfg1, version="base", echo=lambda s: None)
    assert update(cfg1, version="latest", echo=lambda s: None).up_to_date
    assert all(p.read_bytes() == b for p, b in before.items())
    # history, overall and for one slide
    runner = CliRunner()
    res = runner.invoke(main, ["history", str(cfg_path)])
    assert res.exit_code == 0 and "base → 2018-2021" in res.output
    sid = next(iter(ids1[k] for k in v1 & v2))
    res = runner.invoke(main, ["history", str(cfg_path), "--slide", sid])
    assert res.exit_code == 0 and res.output.count("persisting") + res.output.count("new") == 2


@pytest.mark.slow
def test_interrupted_update_keeps_the_previous_inventory_and_resumes(basin, tmp_path, model_file, monkeypatch):
    cfg = load_run_config(_config(tmp_path, basin, model_file))
    import insar_slide.run.update as upd
    _inject(_config(tmp_path, basin, model_file), None)
    update(cfg, version="base", echo=lambda s: None)
    _inject(_config(tmp_path, basin, model_file), "2018-2021")
    inv_before = (tmp_path / "inv.parquet").read_bytes()
    state_before = (history_dir(cfg) / "state.json").read_bytes()

    def boom(*a, **k):
        raise RuntimeError("power cut")
    monkeypatch.setattr(upd, "write_inventory", boom)
    with pytest.raises(RuntimeError):
        update(cfg, echo=lambda s: None)
    assert (tmp_path / "inv.parquet").read_bytes() == inv_before
    assert (history_dir(cfg) / "state.json").read_bytes() == state_before
    monkeypatch.undo()
    out = update(cfg, echo=lambda s: None)
    assert out.version == "2018-2021" and not out.up_to_date
    assert set(gpd.read_parquet(tmp_path / "inv.parquet")["version"]) == {"2018-2021"}


@pytest.fixture(scope="module")
def quiet_basin(tmp_path_factory) -> Path:
    """v2 differs from v1 by one new 20 × 20 px slide near the north-west corner only."""
    from insar_slide.mosaic import TrackInfo, build_dataset, grid_of, write_version
    small = BASE.model_copy(update={"grid": BASE.grid.model_copy(update={"shape": (512, 768)})})
    store = tmp_path_factory.mktemp("quiet") / "basin.zarr"
    simulate(small, store)
    ds = open_basin(store)
    rate = ds.los_rate.values.copy()
    rate[:, 100:120, 100:120] = -50.0
    tracks = [TrackInfo(str(t), float(h), float(i), "2018-01-01", "2021-12-31") for t, h, i in
              zip(ds.track.values, ds.heading.values, ds.incidence.values, strict=True)]
    import dask.array as da
    write_version(build_dataset(da.from_array(rate, chunks=(1, 256, 256)), grid_of(ds), tracks), store, "v2", chunk=256)
    return store


@pytest.mark.slow
def test_update_recomputes_only_changed_windows(quiet_basin, tmp_path, model_file):
    cfg_path = _config(tmp_path, quiet_basin, model_file, score_threshold=0.3, reduce_block=1)
    cfg = load_run_config(cfg_path)
    messages: list[str] = []
    first = update(cfg, version="base", echo=messages.append)
    assert any("no previous update" in m for m in messages)  # a missing previous run falls back to a full run
    assert first.windows["reused"] == 0
    plan1 = make_plan(cfg.model_copy(update={"version": None}))
    plan2 = make_plan(cfg.model_copy(update={"version": "v2"}))
    run1 = {w.key for w in plan1.to_run()}
    changed = 0
    for w in plan2.to_run():
        a = read_level(cfg.mosaic, w.track, w.read, factor=w.scale)
        b = read_level(cfg.mosaic, w.track, w.read, "versions/v2", factor=w.scale)
        changed += int(w.key not in run1 or not np.array_equal(a, b, equal_nan=True))
    second = update(cfg, echo=messages.append)
    assert second.windows["computed"] == changed and second.windows["reused"] == len(plan2.to_run()) - changed
    assert changed == 4  # the north-west window of each track, at the native and the x2 level
    # The reduction blocks away from the change keep their stored results (and parts) ...
    assert 0 < second.blocks["reused"] < second.blocks["total"]
    # ... and give the inventory a full recomputation gives.
    fresh = run(cfg.model_copy(update={"version": "v2", "out": str(tmp_path / "fresh.parquet"),
                                       "run_dir": str(tmp_path / "fresh.run")}), echo=lambda m: None)
    cur = read_history(cfg)
    cur = cur[cur["version"] == "v2"]
    assert sorted(shapely.to_wkb(fresh.inventory.geometry)) == \
        sorted(shapely.to_wkb(cur[cur.status != "not_detected_now"].geometry))
    messages.clear()
    other = tmp_path / "other.safetensors"  # a new model: every window again, said up front
    import torch
    torch.manual_seed(1)
    save_checkpoint(eager_model(), FAST, other, extra={"training_config": {"score_threshold": 0.5}})
    third = update(cfg.model_copy(update={"model": str(other)}), echo=messages.append)
    assert any("model differs" in m for m in messages) and third.windows["reused"] == 0


@pytest.mark.slow
def test_unreadable_history_is_refused_and_left_alone(basin, tmp_path, model_file):
    cfg = load_run_config(_config(tmp_path, basin, model_file))
    hdir = history_dir(cfg)
    (hdir / "versions" / "version=base").mkdir(parents=True)
    bad = hdir / "versions" / "version=base" / "part.parquet"
    bad.write_bytes(b"not parquet")
    from insar_slide.mosaic import grid_of
    g = grid_of(open_basin(basin, "latest"))
    import json
    (hdir / "state.json").write_text(json.dumps({"versions": ["base"], "model_hash": "x", "settings": "y",
                                                 "grid": g.key}))
    with pytest.raises(InputError, match="cannot be read"):
        update(cfg, echo=lambda s: None)
    assert bad.read_bytes() == b"not parquet"


@pytest.mark.slow
def test_update_cycle_script(basin, tmp_path, model_file):
    """workflows/update_cycle.sh end to end (update + history) with the CLI of this venv."""
    cfg_path = _config(tmp_path, basin, model_file, score_threshold=0.3, outputs={"quicklook": True, "slide_id_raster": True})
    script = Path(__file__).resolve().parents[1] / "workflows" / "update_cycle.sh"
    env = {**os.environ, "BIN": str(Path(sys.executable).with_name("insar-slide"))}
    res = subprocess.run(["bash", str(script), str(cfg_path)], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no previous update" in res.stdout and "| 2018-2021 |" in res.stdout
    assert (tmp_path / "inv.png").exists() and (tmp_path / "inv.slide_id.zarr").exists()
    with pytest.raises(InputError, match="not in the history"):
        from insar_slide.run.update import history_report
        history_report(load_run_config(cfg_path), "nope")


@pytest.mark.slow
def test_update_cycle_on_a_kept_up_cluster(basin, tmp_path, model_file):
    """The scheduled service: update_cycle.sh with DASK_ADDRESS runs on `dask scheduler` /
    `dask worker` processes that stay up, and each worker keeps its model for the next update."""
    cfg_path = _config(tmp_path, basin, model_file, score_threshold=0.3)
    script = Path(__file__).resolve().parents[1] / "workflows" / "update_cycle.sh"
    with dask_processes(tmp_path, 2) as address:
        env = {**os.environ, "BIN": str(Path(sys.executable).with_name("insar-slide")), "DASK_ADDRESS": address}
        res = subprocess.run(["bash", str(script), str(cfg_path)], capture_output=True, text=True, env=env, timeout=900)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "no previous update" in res.stdout and "| 2018-2021 |" in res.stdout
        from distributed import Client
        with Client(address, timeout="30s") as c:
            held = c.run(loaded_models)
        assert len(held) == 2 and set(held.values()) <= {0, 1} and sum(held.values()) >= 1  # the model stays loaded
        again = subprocess.run(["bash", str(script), str(cfg_path)], capture_output=True, text=True, env=env, timeout=900)
        assert again.returncode == 0 and "nothing to do" in again.stdout
