"""`insar-slide run` and `plan` on real components: a Zarr mosaic, LocalCluster, `dask scheduler`
and `dask worker` processes on 127.0.0.1, GeoParquet read back by geopandas.

Two kinds of detector are used. Where the test is about the merge (seams, corners, window
choices), every window's stored detections are written beforehand exactly as the run keeps
them (with the right input fingerprint), so the run reuses them: each window "sees" the slides
whose box meets its read window, clipped to it — what a perfect detector reports. Where the
test is about execution (workers, external scheduler, SIGKILL + resume), a randomly initialised
model really runs (its untrained scores hover around 0.5, so it reports many boxes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from insar_slide.cli import main
from insar_slide.errors import ConfigError, InputError
from insar_slide.grid import Grid
from insar_slide.mosaic import TrackInfo, build_dataset, write_mosaic
from insar_slide.run.config import load_run_config
from insar_slide.run.detect import file_hash, fingerprint
from insar_slide.run.pipeline import detect_settings, run
from insar_slide.run.plan import make_plan
from tests.conftest import dask_processes

GRID = Grid("EPSG:32647", 500_000.0, 3_000_000.0, 30.0, -30.0, 600, 700)
# (row0, col0, row1, col1) pixel boxes: across the column seam at 256, across the four-window
# corner (256, 256), inside one window, and across the seam at 512 (second track only).
SLIDES = [(40, 226, 90, 290), (230, 228, 280, 286), (420, 80, 460, 130), (300, 490, 340, 540)]


def _rates() -> np.ndarray:
    rng = np.random.default_rng(3)
    r = rng.normal(0, 1.0, (2, *GRID.shape)).astype("float32")
    yy, xx = np.mgrid[0:GRID.height, 0:GRID.width]
    for k, (r0, c0, r1, c1) in enumerate(SLIDES):
        cy, cx, ry, rx = (r0 + r1) / 2, (c0 + c1) / 2, (r1 - r0) / 2, (c1 - c0) / 2
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        for t in (0, 1) if k < 3 else (1,):
            r[t][inside] = -40.0
    r[:, 512:, 512:] = np.nan  # a window with almost no data
    r[:, 590:, 690:] = 0.5
    return r


@pytest.fixture(scope="module")
def basin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("basin") / "basin.zarr"
    tracks = [TrackInfo("asc", -12.0, 40.0, "2020-01-01", "2021-01-01", ("test",)),
              TrackInfo("desc", -168.0, 40.0, "2020-01-01", "2021-01-01", ("test",))]
    write_mosaic(build_dataset(da.from_array(_rates(), chunks=(1, 256, 256)), GRID, tracks), path, chunk=256)
    return path


def _config(tmp: Path, basin: Path, model: Path, **kw: object) -> Path:
    cfg = {"mosaic": str(basin), "out": str(tmp / "inv.parquet"), "model": str(model), "window": 256, "halo": 64,
           "cluster": {"workers": 1, "threads_per_worker": 1, "dashboard": False},
           "outputs": {"quicklook": False, "slide_id_raster": False, "report": False, "kml": False, "geopackage": False}, **kw}
    p = tmp / "basin.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _inject(cfg_path: Path, boxes_per_track: dict[str, list[tuple[int, int, int, int]]]) -> None:
    """Store, for each window the plan runs, the boxes a perfect detector would report there."""
    cfg = load_run_config(cfg_path)
    plan = make_plan(cfg)
    s = detect_settings(cfg, plan.grid, model_hash=file_hash(cfg.model_path))
    for w in plan.to_run():
        found = []
        for r0, c0, r1, c1 in boxes_per_track.get(w.track, []):
            rr0, cc0 = max(r0, w.read.row0), max(c0, w.read.col0)
            rr1, cc1 = min(r1, w.read.row1), min(c1, w.read.col1)
            if rr1 - rr0 >= 4 and cc1 - cc0 >= 4:
                found.append((cc0, rr0, cc1, rr1))
        arr = np.asarray(found, dtype=np.float64).reshape(-1, 4)
        s.store.write_detections(w, arr, scores=np.full(len(arr), 0.9),
                         meta={"fingerprint": fingerprint(w, s), "window": w.key, "model": s.model_hash})


def _truth_boxes() -> dict[str, list[tuple[int, int, int, int]]]:
    return {"asc": SLIDES[:3], "desc": SLIDES}


def _map_box(r0: int, c0: int, r1: int, c1: int) -> shapely.Geometry:
    t = GRID.transform
    return shapely.box(*(t * (c0, r1)), *(t * (c1, r0)))


# ---------------------------------------------------------------------------- plan


def test_plan_tiles_exactly_and_gives_reasons(tmp_path, basin, model_file):
    cfg = load_run_config(_config(tmp_path, basin, model_file, scales=[1]))  # the native tiling (test_scales: the levels)
    plan = make_plan(cfg)
    asc = [w for w in plan.windows if w.track == "asc"]
    assert (plan.n_rows, plan.n_cols) == (3, 3) and len(asc) == 9
    cover = np.zeros(GRID.shape, int)
    for w in asc:
        cover[w.core.slices()] += 1
        assert w.read.row0 == max(0, w.core.row0 - 64) and w.read.col1 == min(GRID.width, w.core.col1 + 64)
    assert (cover == 1).all()  # ragged last row (88 px) and column (188 px) included, no overlap
    status = {w.index: w.status for w in asc}
    assert status[(0, 0)] == status[(0, 1)] == status[(1, 0)] == status[(1, 1)] == "run"  # seam + corner slides
    assert status[(2, 2)] == "no_data" and status[(0, 2)] == "stable"
    desc = {w.index: w.status for w in plan.windows if w.track == "desc"}
    assert desc[(1, 2)] == "run" and status[(1, 2)] == "stable"  # the slide only the desc track sees

    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame(geometry=[_map_box(0, 0, 250, 250)], crs=GRID.crs).to_file(aoi)
    cfg2 = load_run_config(_config(tmp_path, basin, model_file, scales=[1], aoi={"polygons": str(aoi)}))
    p2 = make_plan(cfg2)
    assert {w.index for w in p2.windows if w.status != "outside_aoi" and w.track == "asc"} == {(0, 0)}
    res = CliRunner().invoke(main, ["plan", str(tmp_path / "basin.yaml")])
    assert res.exit_code == 0, res.output
    assert "outside_aoi" in res.output and "km²" in res.output


EVERY_WINDOW = {"min_abs_rate": 0.0, "min_hot_pixels": 1, "min_valid_fraction": 0.0}


def test_input_hashes_change_exactly_with_the_bytes_a_window_reads(tmp_path, basin, model_file):
    """The plan's per-window input hash (from one read per core) changes iff the window's
    read area (core + halo) changes: a pixel in a neighbour's halo strip counts, one beyond it
    does not; for a window of a coarse level, its read area's native footprint."""
    rates = _rates()
    rates[0, 300, 300] += 1.0  # core (1, 1), inside the halos of (0, 0), (0, 1), (1, 0)
    rates[0, 100, 400] += 1.0  # core (0, 1), 80 px from (0, 0)'s read area and 48 px from (0, 2)'s
    rates[1, 599, 699] += 1.0  # the ragged corner core (2, 2) of the other track
    changed = tmp_path / "changed.zarr"
    tracks = [TrackInfo("asc", -12.0, 40.0, "2020-01-01", "2021-01-01", ("test",)),
              TrackInfo("desc", -168.0, 40.0, "2020-01-01", "2021-01-01", ("test",))]
    write_mosaic(build_dataset(da.from_array(rates, chunks=(1, 256, 256)), GRID, tracks), changed, chunk=256)
    before = make_plan(load_run_config(_config(tmp_path, basin, model_file, skip=EVERY_WINDOW)))
    after = make_plan(load_run_config(_config(tmp_path, changed, model_file, skip=EVERY_WINDOW)))
    old, new = _rates(), rates
    n_run = 0
    for a, b in zip(before.windows, after.windows, strict=True):
        assert a.key == b.key
        if a.status != "run" or b.status != "run":
            continue
        n_run += 1
        t = ("asc", "desc").index(a.track)
        f = a.scale
        rs, cs = slice(a.read.row0 * f, a.read.row1 * f), slice(a.read.col0 * f, a.read.col1 * f)
        differs = not np.array_equal(old[t][rs, cs], new[t][rs, cs], equal_nan=True)
        assert (a.input_hash != b.input_hash) == differs, a.key
    assert n_run == 18 + 8  # 3 x 3 native and 2 x 2 coarse (x2) windows per track
    changed_keys = {a.key for a, b in zip(before.windows, after.windows, strict=True) if a.input_hash != b.input_hash}
    assert changed_keys == {"asc/r00000_c00000", "asc/r00000_c00001", "asc/r00001_c00000", "asc/r00001_c00001",
                            "desc/r00002_c00002",
                            # the x2 level reads 64 level px = 128 native px of halo: (300, 300) lies under
                            # asc x2 (0, 0) only, (100, 400) under asc x2 (0, 0) and (0, 1), (599, 699)
                            # under desc x2 (0, 1) and (1, 1)
                            "asc/x2_r00000_c00000", "asc/x2_r00000_c00001", "desc/x2_r00000_c00001",
                            "desc/x2_r00001_c00001"}


# ---------------------------------------------------------------------------- merge


def _run_injected(tmp: Path, basin: Path, model: Path, **kw: object) -> gpd.GeoDataFrame:
    cfg_path = _config(tmp, basin, model, **kw)
    _inject(cfg_path, _truth_boxes())
    res = run(load_run_config(cfg_path), echo=lambda s: None)
    assert res.summary.windows["computed"] == 0  # every window came from the injected results
    return gpd.read_parquet(tmp / "inv.parquet")


def test_seam_and_corner_slides_are_reported_once(tmp_path, basin, model_file):
    inv = _run_injected(tmp_path, basin, model_file)
    assert len(inv) == len(SLIDES)
    for box in SLIDES:
        hits = inv[inv.geometry.intersects(_map_box(*box).buffer(-1))]
        assert len(hits) == 1, box
        assert hits.geometry.iloc[0].equals(_map_box(*box))  # the whole box, no partial leftovers
    tracks = {next(iter(_map_box(*b).centroid.coords)): t for b, t in zip(SLIDES, ["asc,desc"] * 3 + ["desc"], strict=True)}
    for g, t in zip(inv.geometry, inv["tracks"], strict=True):
        assert tracks[next(iter(g.centroid.coords))] == t  # ascending and descending merged into one row
    assert inv["slide_id"].is_unique and (inv["method"] == "faster_rcnn").all()
    assert (inv["rate_p95_abs"] > 35).all() and inv.crs == GRID.crs


@pytest.fixture(scope="module")
def thread_client():
    """An in-process Dask client (threads): cheap enough to run many merge configurations."""
    from distributed import Client

    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        yield c


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(window=st.sampled_from([96, 128, 200, 256, 320]), halo=st.sampled_from([32, 48, 64]),
       reduce_block=st.integers(1, 4))
@example(window=320, halo=48, reduce_block=1)
def test_the_inventory_does_not_depend_on_window_halo_or_reduction_block(tmp_path, basin, model_file, thread_client,
                                                                          window, halo, reduce_block):
    """Any window and halo that see the slides whole (their extent ≤ 64 px ≤ 2 × halo), any
    reduction block: the same inventory, slide for slide."""
    import tempfile

    def once(**kw: object) -> gpd.GeoDataFrame:
        tmp = Path(tempfile.mkdtemp(dir=tmp_path))
        cfg_path = _config(tmp, basin, model_file, **kw)
        _inject(cfg_path, _truth_boxes())
        run(load_run_config(cfg_path), echo=lambda s: None, client=thread_client)
        return gpd.read_parquet(tmp / "inv.parquet")

    ref = once(window=256, halo=64)
    got = once(window=window, halo=halo, reduce_block=reduce_block)
    cols = ["slide_id", "tracks", "score", "area_m2", "rate_mean", "rate_p95_abs", "valid_fraction"]
    pd.testing.assert_frame_equal(ref[cols], got[cols])
    assert all(x.equals_exact(y, 1e-6) for x, y in zip(ref.geometry, got.geometry, strict=True))


# ---------------------------------------------------------------------------- execution


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, basin, model_file) -> gpd.GeoDataFrame:
    tmp = tmp_path_factory.mktemp("embedded")
    res = run(load_run_config(_config(tmp, basin, model_file, score_threshold=0.3)), echo=lambda s: None)
    assert res.summary.windows["computed"] == res.summary.windows["run"] > 0
    inv = gpd.read_parquet(tmp / "inv.parquet")
    assert len(inv) > 0  # an untrained model reports plenty of boxes around 0.5
    return inv


def _same(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> None:
    assert list(a["slide_id"]) == list(b["slide_id"])
    np.testing.assert_allclose(a["score"], b["score"], rtol=0, atol=1e-5)
    assert all(x.equals_exact(y, 1e-3) for x, y in zip(a.geometry, b.geometry, strict=True))


@pytest.mark.slow
def test_two_workers_give_the_same_inventory_as_one(tmp_path, basin, model_file, embedded):
    run(load_run_config(_config(tmp_path, basin, model_file, score_threshold=0.3,
                                cluster={"workers": 2, "threads_per_worker": 1, "dashboard": False})),
        echo=lambda s: None)
    _same(embedded, gpd.read_parquet(tmp_path / "inv.parquet"))


@pytest.mark.slow
def test_external_scheduler_and_worker_processes(tmp_path, basin, model_file, embedded):
    with dask_processes(tmp_path, 2) as address:
        res = CliRunner().invoke(main, ["run", str(_config(tmp_path, basin, model_file, score_threshold=0.3)),
                                        "--address", address, "--no-progress"])
        assert res.exit_code == 0, res.output
        assert "slides:" in res.output
        _same(embedded, gpd.read_parquet(tmp_path / "inv.parquet"))


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_inventory(tmp_path, basin, model_file, embedded):
    cfg_path = _config(tmp_path, basin, model_file, score_threshold=0.3, batch_size=1)
    cli = Path(sys.executable).with_name("insar-slide")
    proc = subprocess.Popen([str(cli), "run", str(cfg_path), "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    windows = tmp_path / "inv.parquet.run" / "windows"
    try:
        for _ in range(1200):
            if len(list(windows.glob("*/*.parquet"))) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "inv.parquet").exists()
    kept = len(list(windows.glob("*/*.parquet")))
    assert kept >= 2
    res = run(load_run_config(cfg_path), echo=lambda s: None)
    assert res.summary.windows["reused"] == kept and not list(windows.glob("*/.*.tmp"))
    _same(embedded, gpd.read_parquet(tmp_path / "inv.parquet"))


# ---------------------------------------------------------------------------- outputs and bad input


def test_outputs_raster_geopackage_kml_report_and_metadata(tmp_path, basin, model_file):
    import xarray as xr

    from insar_slide.inventory import inventory_metadata
    inv = _run_injected(tmp_path, basin, model_file, outputs={"quicklook": True, "slide_id_raster": True,
                                                              "geopackage": True, "kml": True, "report": True,
                                                              "outline": True})
    meta = inventory_metadata(tmp_path / "inv.parquet")
    assert meta["windows"]["planned"] == 18 + 8 and meta["windows"]["skipped_no_data"] >= 1  # native 3 x 3, x2 2 x 2
    assert meta["model_hash"] == file_hash(model_file) and meta["config"]["window"] == 256
    layer = xr.open_zarr(tmp_path / "inv.slide_id.zarr")["slide_id"]
    rate = xr.open_zarr(basin)["los_rate"].sel(track="desc")
    for k, box in zip(inv["slide_num"], inv.geometry, strict=True):
        inside = rate.where(layer == k)
        assert float(np.abs(inside).mean()) > 20  # the slide's own pixels
        assert int((layer == k).sum()) == pytest.approx(box.area / 900, rel=0.05)
    assert (tmp_path / "inv.png").stat().st_size > 10_000
    gpkg = gpd.read_file(tmp_path / "inv.gpkg")
    assert len(gpkg) == len(inv) == len(gpd.read_file(tmp_path / "inv.gpkg", layer="outlines"))
    assert len(gpd.read_file(tmp_path / "inv.kml")) == len(inv)
    page = (tmp_path / "inv.html").read_text()
    assert page.count('class="card"') == len(inv) and "basin" in page
    assert inv["outline"].notna().all()
    for o, g in zip(inv["outline"], inv.geometry, strict=True):
        assert o.within(g.buffer(30)) and o.area < g.area  # the ellipse inside its box


@pytest.mark.slow
def test_bad_run_input_is_a_clear_error(tmp_path, basin, model_file):
    runner = CliRunner()
    p = _config(tmp_path, basin, model_file, windw=512)
    res = runner.invoke(main, ["run", str(p)])
    assert res.exit_code == 2 and "unknown key 'windw'" in res.output
    p = _config(tmp_path, basin, tmp_path / "nope.safetensors")
    res = runner.invoke(main, ["run", str(p)])
    assert res.exit_code != 0 and "nope.safetensors does not exist" in res.output
    p = _config(tmp_path, basin, model_file, tracks=["north"])
    with pytest.raises(ConfigError, match="north"):
        make_plan(load_run_config(p))
    p = _config(tmp_path, basin, model_file, cluster={"address": "tcp://127.0.0.1:9"})
    with pytest.raises(InputError, match="no Dask scheduler"):
        run(load_run_config(p), echo=lambda s: None)
    pickle_file = tmp_path / "evil.safetensors"
    pickle_file.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    res = runner.invoke(main, ["run", str(_config(tmp_path, basin, pickle_file))])
    assert res.exit_code != 0 and "error:" in res.output
    assert not (tmp_path / "inv.parquet").exists()


def test_notebook_queries(tmp_path, basin, model_file):
    import insar_slide as isl

    _run_injected(tmp_path, basin, model_file)
    ds = isl.open_basin(basin)
    inv = isl.open_inventory(tmp_path / "inv.parquet")
    r0, c0, r1, c1 = SLIDES[2]
    t = GRID.transform
    x0, y1 = t * (c0 - 5, r1 + 5)
    x1, y0 = t * (c1 + 5, r0 - 5)
    near = isl.slides_in_bbox(inv, x0, y1, x1, y0)
    assert len(near) == 1
    sid = near["slide_id"].iloc[0]
    rates = isl.slide_rates(ds, inv, sid)
    assert rates.sizes["y"] == r1 - r0 and rates.sizes["x"] == c1 - c0
    assert float(rates.sel(track="asc").min()) == -40.0
    table = isl.slide_table(ds, inv)
    row = table[(table.slide_id == sid) & (table.track == "asc")].iloc[0]
    assert row["n_valid"] == (r1 - r0) * (c1 - c0) and row["min"] == -40.0
    with pytest.raises(InputError, match="not in the inventory"):
        isl.slide_rates(ds, inv, "fr-nope")


def _env_and_tune() -> tuple[str | None, bool]:
    import os

    from insar_slide.run.detect import tune_malloc
    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), tune_malloc()


def test_worker_allocator_thresholds_are_given_back():
    """The nanny freezes glibc's mmap threshold (MALLOC_TRIM_THRESHOLD_), which slowed the
    model by a fifth in workers; the worker side restores glibc's own maximum before loading."""
    import logging
    import platform

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        env, tuned = client.submit(_env_and_tune, pure=False).result()
    assert env == "65536"  # what distributed's nanny sets (distributed.nanny.pre-spawn-environ)
    assert tuned == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_an_inventory_of_another_config_is_replaced_only_with_overwrite(tmp_path):
    from insar_slide.inventory import empty_inventory, write_inventory
    from insar_slide.run.config import RunConfig
    from insar_slide.run.pipeline import may_replace

    out = tmp_path / "inv.parquet"
    cfg = RunConfig(mosaic=str(tmp_path / "m.zarr"), out=str(out))
    assert may_replace(cfg, "run-aaa")  # nothing there
    write_inventory(empty_inventory("EPSG:32647"), out, metadata={"run_id": "run-aaa"})
    assert may_replace(cfg, "run-aaa")  # a rerun of the same config resumes and replaces its own
    with pytest.raises(InputError, match=r"another config or model \(run-aaa\).*--overwrite"):
        may_replace(cfg, "run-bbb")
    assert may_replace(cfg.model_copy(update={"overwrite": True}), "run-bbb")
    out.write_text("not parquet")
    with pytest.raises(InputError, match="not an inventory"):
        may_replace(cfg, "run-bbb")
