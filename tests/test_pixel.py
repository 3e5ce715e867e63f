"""Mosaics whose pixel is not the model's training pixel (`inference.match_pixel`): every window
is resampled to the model's pixel before the model and its boxes are scaled back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dask.array as da
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import torch
import yaml

from insar_slide.core.scales import describe_resample, pixel_resample
from insar_slide.grid import Grid
from insar_slide.model.encoding import InputEncoding
from insar_slide.mosaic import TrackInfo, build_dataset, write_mosaic
from insar_slide.run.config import load_run_config
from insar_slide.run.pipeline import run


def test_resample_factors_are_the_pixel_ratios_outside_the_tolerance():
    assert pixel_resample((30.0, 30.0), 30.0) == (1.0, 1.0) == pixel_resample((36.0, 25.0), 30.0)
    assert pixel_resample((40.0, 40.0), 30.0) == pytest.approx((4 / 3, 4 / 3))
    assert pixel_resample((20.0, 20.0), 30.0) == pytest.approx((2 / 3, 2 / 3))
    # each axis its own: Campi Flegrei's 84 x 111 m LiCSBAS pixels, a geographic grid at 60 N
    assert pixel_resample((84.3, 111.1), 30.0) == pytest.approx((111.1 / 30, 84.3 / 30))
    geo = Grid("EPSG:4326", 10.0, 60.3, 0.0003, -0.0003, 100, 100)
    fy, fx = pixel_resample(geo.pixel_size_m(), 30.0)
    assert fy == pytest.approx(33.4 / 30, rel=0.01) and fx == pytest.approx(16.6 / 30, rel=0.02)
    assert describe_resample((0.5, 0.5)) == "0.5" and describe_resample((3.7, 2.81)) == "3.7 (rows) x 2.81 (cols)"


def test_fingerprints_and_run_ids_hold_the_resampling_and_nothing_else_moves(tmp_path):
    from insar_slide.core.tiling import plan_windows
    from insar_slide.run.detect import DetectSettings, fingerprint
    from insar_slide.run.pipeline import settings_hash
    from insar_slide.run.store import RunStore

    grid = Grid("EPSG:32647", 500_000.0, 3_000_000.0, 30.0, -30.0, 256, 256)
    win = replace(plan_windows(grid, ["asc"], window=256, halo=32).windows[0], input_hash="x")
    s = DetectSettings(mosaic="m", model_path="p", model_hash="h", device="cpu", store=RunStore(str(tmp_path)), grid_key="g")
    fps = {fingerprint(win, replace(s, **kw)) for kw in ({}, {"resample": (0.5, 0.5)}, {"resample": (0.5, 0.6)},
                                                          {"proposals": 1}, {"detections": 1})}
    assert len(fps) == 5  # proposals 1 is not the model's own (None); every factor is its own window result
    cfg = load_run_config_from({"mosaic": "m.zarr", "out": "o.parquet"}, tmp_path)
    off = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"match_pixel": False})})
    # match_pixel alone changes no run id: only the factors it leads to do
    assert settings_hash(cfg, "h") == settings_hash(off, "h") != settings_hash(cfg, "h", (0.5, 0.5))
    auto = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"precision": "auto"})})
    auto_off = auto.model_copy(update={"inference": auto.inference.model_copy(update={"match_pixel": False})})
    assert settings_hash(auto, "h") == settings_hash(auto_off, "h") != settings_hash(cfg, "h")


def load_run_config_from(doc: dict, folder: Path):  # type: ignore[no-untyped-def]
    (folder / "basin.yaml").write_text(yaml.safe_dump(doc))
    return load_run_config(folder / "basin.yaml")


@pytest.mark.parametrize("factor", [0.5, 2 / 3, 4 / 3])
def test_resize_keeps_rates_away_from_holes_and_the_encoding(factor):
    enc = InputEncoding()
    rate = np.full((60, 90), -30.0, dtype=np.float32)
    rate[20:40, 30:60] = np.nan  # a hole
    out = enc.resize(enc.encode(rate), (factor, factor))
    assert out.shape == (3, round(60 * factor), round(90 * factor))
    valid = out[2] > 0
    assert set(out[2].unique().tolist()) <= {0.0, 1.0}
    # no zeros leak from the hole into the rates: every valid pixel keeps the constant rate
    torch.testing.assert_close(out[0][valid], torch.full_like(out[0][valid], -0.5))
    torch.testing.assert_close(out[1], out[0].abs())
    assert (out[0][~valid] == 0).all()
    # the hole keeps its size (within a pixel of the resampled grid on each side)
    rows = np.flatnonzero((~valid).any(dim=1).numpy())
    assert abs(rows[0] - 20 * factor) <= 1 and abs(rows[-1] + 1 - 40 * factor) <= 1
    assert enc.resize(enc.encode(rate), (1.0, 1.0)).shape == (3, 60, 90)
    assert enc.resize(enc.encode(rate), (0.5, 2.0)).shape == (3, 30, 180)


def _slides() -> np.ndarray:
    """256² px of noise with two lobes of -45 and -30 mm/yr the shipped model finds."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:256, 0:256]
    r = rng.normal(0, 2, (256, 256)).astype("float32")
    for cy, cx, a, b, v in ((90, 100, 22, 12, -45.0), (180, 170, 10, 7, -30.0)):
        r += (v * np.clip(1 - ((yy - cy) / a) ** 2 - ((xx - cx) / b) ** 2, 0, 1) ** 0.5).astype("float32")
    return r


def _run(tmp: Path, name: str, rates: np.ndarray, pixel: float) -> gpd.GeoDataFrame:
    grid = Grid("EPSG:32647", 500_000.0, 3_000_000.0, pixel, -pixel, *rates.shape)
    track = TrackInfo("asc", -12.0, 40.0, "2020-01-01", "2021-01-01", ("test",))
    mosaic = tmp / f"{name}.zarr"
    write_mosaic(build_dataset(da.from_array(rates[None], chunks=(1, 128, 128)), grid, [track]), mosaic, chunk=128)
    cfg = {"mosaic": str(mosaic), "out": str(tmp / f"{name}.parquet"), "window": 256, "halo": 32, "scales": [1],
           "cluster": {"workers": 1, "threads_per_worker": 1, "dashboard": False},
           "outputs": {"quicklook": False, "slide_id_raster": False, "report": False, "kml": False, "geopackage": False}}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    lines: list[str] = []
    run(load_run_config(tmp / f"{name}.yaml"), echo=lines.append)
    if pixel != 30.0:
        assert f"windows resampled by {pixel / 30.0:.3g} to the model's training pixel (inference.match_pixel)" in lines
    return gpd.read_parquet(tmp / f"{name}.parquet")


def test_a_15_m_mosaic_is_read_at_30_m_and_its_slides_land_where_the_30_m_run_puts_them(tmp_path):
    # The same ground at 30 m and at 15 m (each pixel repeated 2 x 2): resampled by 0.5, the
    # 15 m windows show the model what the 30 m ones do, and the boxes, scaled back to the 15 m
    # pixel frame, fall on the same ground.
    rates = _slides()
    at30 = _run(tmp_path, "at30", rates, 30.0)
    at15 = _run(tmp_path, "at15", np.repeat(np.repeat(rates, 2, axis=0), 2, axis=1), 15.0)
    assert len(at30) == 2 and len(at15) == 2
    # the same place to within a model pixel: centres within 30 m, and boxes whose edges differ by
    # about a pixel (the 15 m windows cut the ground elsewhere), which on the 14 x 20 px lobe is IoU 0.84
    for g in at30.geometry:
        best = max(shapely.area(shapely.intersection(g, h)) / shapely.area(shapely.union(g, h)) for h in at15.geometry)
        assert best > 0.8 and min(g.centroid.distance(h.centroid) for h in at15.geometry) < 30.0
    meta = pq.read_metadata(tmp_path / "at15.parquet").metadata
    assert b'"resample": [0.5, 0.5]' in meta[b"insar_slide"]
    assert b'"resample"' not in pq.read_metadata(tmp_path / "at30.parquet").metadata[b"insar_slide"]


def test_a_window_the_model_would_see_too_large_is_named_with_a_smaller_one(tmp_path, caplog):
    from insar_slide.run.plan import window_resample

    grid = Grid("EPSG:32647", 500_000.0, 3_000_000.0, 100.0, -100.0, 4096, 4096)
    cfg = load_run_config_from({"mosaic": "m.zarr", "out": "o.parquet", "window": 2048, "halo": 64}, tmp_path)
    with caplog.at_level("WARNING"):
        assert window_resample(cfg, grid, {}) == pytest.approx((10 / 3, 10 / 3))  # {}: a checkpoint of 30 m
    assert "the model sees 7253 px a side" in caplog.text and "set `window: 640`" in caplog.text
    caplog.clear()
    small = cfg.model_copy(update={"window": 640})
    off = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"match_pixel": False})})
    with caplog.at_level("WARNING"):
        assert window_resample(small, grid, {}) == pytest.approx((10 / 3, 10 / 3)) and window_resample(off, grid, {}) == (1.0, 1.0)
    assert not caplog.text
