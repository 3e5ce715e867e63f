"""Mosaics whose pixel is not the model's training pixel (`inference.match_pixel`): every window
is resampled to the model's pixel before the model and its boxes are scaled back."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import torch
import yaml

from insar_slide.core.scales import pixel_resample
from insar_slide.grid import Grid
from insar_slide.model.encoding import InputEncoding
from insar_slide.mosaic import TrackInfo, build_dataset, write_mosaic
from insar_slide.run.config import load_run_config
from insar_slide.run.pipeline import run


def test_resample_factor_is_the_pixel_ratio_outside_the_tolerance():
    assert pixel_resample(30.0, 30.0) == 1.0 and pixel_resample(36.0, 30.0) == 1.0 and pixel_resample(25.0, 30.0) == 1.0
    assert pixel_resample(40.0, 30.0) == pytest.approx(4 / 3) and pixel_resample(20.0, 30.0) == pytest.approx(2 / 3)
    assert pixel_resample(100.0, 30.0) == pytest.approx(10 / 3)


@pytest.mark.parametrize("factor", [0.5, 2 / 3, 4 / 3])
def test_resize_keeps_rates_away_from_holes_and_the_encoding(factor):
    enc = InputEncoding()
    rate = np.full((60, 90), -30.0, dtype=np.float32)
    rate[20:40, 30:60] = np.nan  # a hole
    out = enc.resize(enc.encode(rate), factor)
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
    assert enc.resize(enc.encode(rate), 1.0).shape == (3, 60, 90)


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
    for g in at30.geometry:
        best = max(shapely.area(shapely.intersection(g, h)) / shapely.area(shapely.union(g, h)) for h in at15.geometry)
        assert best > 0.85
    meta = pq.read_metadata(tmp_path / "at15.parquet").metadata
    assert b'"resample": 0.5' in meta[b"insar_slide"]
    assert b'"resample"' not in pq.read_metadata(tmp_path / "at30.parquet").metadata[b"insar_slide"]
