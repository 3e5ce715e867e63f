"""What a user sees (issue 21): the HTML report in a real headless Chromium, the self-explaining
quick look, and the GIS outputs read back by GDAL (GeoPackage layers and QGIS styles, KML) and
rio-cogeo's validator (the COG export)."""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
from click.testing import CliRunner
from PIL import Image

from insar_slide.cli import main
from insar_slide.gis import KML_NS, export_cogs, write_geopackage, write_kml
from insar_slide.grid import Grid
from insar_slide.maps import OUTCOME_COLOURS, rate_norm
from insar_slide.mosaic import TrackInfo, build_dataset, write_mosaic
from insar_slide.quicklook import quicklook
from insar_slide.report import write_report

GRID = Grid("EPSG:32647", 500_000.0, 3_000_000.0, 30.0, -30.0, 400, 480)
# (row0, col0, row1, col1, rate on asc, rate on desc)
SLIDES = [(40, 40, 90, 110, -40.0, 30.0), (200, 300, 260, 340, -800.0, 500.0), (300, 60, 340, 120, -25.0, -20.0),
          (120, 380, 150, 420, -30.0, 35.0)]


def _ellipse(r0: int, c0: int, r1: int, c1: int) -> shapely.Geometry:
    t = GRID.transform
    (x0, y0), (x1, y1) = t * (c0, r1), t * (c1, r0)
    return shapely.affinity.scale(shapely.Point((x0 + x1) / 2, (y0 + y1) / 2).buffer(1.0, 32), (x1 - x0) / 2, (y1 - y0) / 2)


def _box(r0: int, c0: int, r1: int, c1: int) -> shapely.Geometry:
    t = GRID.transform
    return shapely.box(*(t * (c0, r1)), *(t * (c1, r0)))


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(5)
    r = rng.normal(0, 2.0, (2, *GRID.shape)).astype("float32")
    yy, xx = np.mgrid[0:GRID.height, 0:GRID.width]
    for r0, c0, r1, c1, a, d in SLIDES:
        inside = ((yy - (r0 + r1) / 2) / ((r1 - r0) / 2)) ** 2 + ((xx - (c0 + c1) / 2) / ((c1 - c0) / 2)) ** 2 <= 1
        r[0][inside], r[1][inside] = a, d
    r[:, 350:, 400:] = np.nan
    tracks = [TrackInfo("asc_099", -12.0, 39.0, "2019-01-01", "2022-12-31"), TrackInfo("desc_062", -168.0, 41.0, "2019-01-01", "2022-12-31")]
    mosaic = tmp / "valley.zarr"
    write_mosaic(build_dataset(da.from_array(r, chunks=(1, 128, 128)), GRID, tracks), mosaic, chunk=128)
    # detections: slides 0-2 found (0 on both tracks, 1 on desc only, 2 on asc only), slide 3 missed,
    # and one false alarm on stable ground
    found = [SLIDES[0][:4], SLIDES[1][:4], SLIDES[2][:4], (250, 150, 280, 190)]
    inv = gpd.GeoDataFrame({
        "slide_id": [f"fr-{k:012x}" for k in range(4)], "method": "faster_rcnn", "score": [0.97, 0.91, 0.74, 0.88],
        "tracks": ["asc_099,desc_062", "desc_062", "asc_099", "asc_099"],
        "area_m2": [_box(*b).area for b in found], "rate_mean": [-40.0, 500.0, -25.0, 0.1],
        "rate_p95_abs": [40.0, 800.0, 25.0, 4.0], "valid_fraction": 1.0, "rate_track": ["asc_099", "asc_099", "asc_099", "asc_099"],
        "run_id": "run-test", "model_id": "m-test", "slide_num": np.arange(1, 5, dtype=np.int32),
        "outline": gpd.GeoSeries([_ellipse(*b) for b in found], crs=GRID.crs),
    }, geometry=[_box(*b) for b in found], crs=GRID.crs)
    inv_path = tmp / "inventory.parquet"
    inv.to_parquet(inv_path)
    truth = gpd.GeoDataFrame({"slide_id": [f"sim-{k}" for k in range(4)], "method": "truth", "score": 1.0,
                              "peak_los_asc_099": [s[4] for s in SLIDES], "peak_los_desc_062": [s[5] for s in SLIDES]},
                             geometry=[_box(*s[:4]) for s in SLIDES], crs=GRID.crs)
    truth_path = tmp / "valley.truth.parquet"
    truth.to_parquet(truth_path)
    return {"mosaic": mosaic, "inventory": inv_path, "truth": truth_path, "tmp": tmp}


# ---------------------------------------------------------------- the report in Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _need_browser() -> None:
    if CHROMIUM is None:
        if os.environ.get("INSAR_SLIDE_CI"):
            pytest.fail("CI needs Debian's chromium for the report test (.ci/run installs it with apt-get)")
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' (playwright drives Chromium)")


def _near(img: np.ndarray, hex_colour: str, tol: int = 40) -> int:
    rgb = np.array([int(hex_colour[k:k + 2], 16) for k in (1, 3, 5)])
    return int((np.abs(img[..., :3].astype(int) - rgb).sum(axis=-1) <= tol).sum())


def test_report_renders_map_table_and_thumbnails_in_chromium(scene):
    _need_browser()
    from playwright.sync_api import sync_playwright

    page_path = write_report(scene["mosaic"], scene["inventory"], scene["tmp"] / "inventory.html", truth=scene["truth"])
    text = Path(page_path).read_text()
    assert "valley" in text and "2019-01-01 – 2022-12-31" in text and "4 landslides" in text
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched from anywhere
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(Path(page_path).as_uri())
            shot = np.asarray(Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB"))
            assert not errors, errors

            def crop(selector: str) -> np.ndarray:
                b = page.locator(selector).first.bounding_box()
                assert b is not None and b["width"] > 100 and b["height"] > 50, (selector, b)
                return shot[int(b["y"]):int(b["y"] + b["height"]), int(b["x"]):int(b["x"] + b["width"])]

            # the map: the rate raster drawn (many colours), outlines in the outcome colours
            m = crop(".map svg")
            assert len(np.unique(m.reshape(-1, 3), axis=0)) > 200
            assert _near(m, "#bdbdbd", 6) > 500  # the no-data corner, grey
            for what in ("hit", "false alarm", "missed"):
                assert _near(m, OUTCOME_COLOURS[what], 30) > 30, what
            # the table: its header band and one row per slide and missed slide
            t = crop("#slides")
            assert _near(t, "#34495e", 10) > 0.5 * t.shape[1] * 15
            assert page.locator("#slides tbody tr").count() == 5
            assert _near(t, "#eef2f7", 4) > t.shape[1] * 20  # the striped rows, drawn
            # a thumbnail per slide and per track, with the rate patch in it
            assert page.locator(".card").count() == 5 and page.locator(".card svg").count() == 10
            card = crop(".card")
            assert len(np.unique(card.reshape(-1, 3), axis=0)) > 20

            # the table sorts and filters; a map outline links to its row
            page.click("#slides th:has-text('score')")
            first = page.locator("#slides tbody tr").first.locator("td").nth(1).inner_text()
            assert first == "–"  # ascending: the missed slide (no score) first, then 0.74
            assert page.locator("#slides tbody tr").nth(1).locator("td").nth(1).inner_text() == "0.74"
            page.select_option("#status", "false alarm")
            assert page.locator("#count").inner_text() == "1 of 5 rows"
            assert page.locator("#slides tbody tr:visible").count() == 1
            page.select_option("#status", "")
            page.fill("#minscore", "0.9")
            assert page.locator("#count").inner_text() == "3 of 5 rows"  # 0.97, 0.91 and the missed slide
            href = page.locator(".map path.slide").first.evaluate("p => p.parentNode.getAttribute('href')")
            assert href.startswith("#row-") and page.locator(href).count() == 1
        finally:
            browser.close()


def test_report_colours_by_status_for_an_update_and_caps_thumbnails(scene, tmp_path):
    inv = gpd.read_parquet(scene["inventory"])
    inv["status"] = ["new", "persisting", "persisting", "not_detected_now"]
    inv["first_seen"], inv["last_seen"] = "2018-2021", "2019-2022"
    page = Path(write_report(scene["mosaic"], inv, tmp_path / "r.html", max_thumbnails=2)).read_text()
    assert '<option value="status">status</option>' in page and "first seen" in page
    assert page.count('class="card"') == 2 and "2 more are in the table only" in page
    assert 'stroke="#e66101"' in page  # a new slide, in the status colours


def test_colour_scale_does_not_saturate_fast_slides():
    r = np.random.default_rng(0).normal(0, 3, 100_000)
    norm = rate_norm(r, np.array([40.0, 800.0]))
    assert norm.vmax == pytest.approx(800.0)
    assert norm(-800.0) == pytest.approx(0.0) and norm(800.0) == pytest.approx(1.0)
    assert 0.05 < norm(-100.0) < norm(-40.0) < norm(-10.0) < 0.5  # log-like beyond 10 mm/yr: distinct colours
    assert rate_norm(r).vmax == pytest.approx(10.0, abs=2)  # stable ground alone: a linear ±10 scale


# ---------------------------------------------------------------- quick look


def test_quicklook_has_title_legend_own_track_outlines_and_a_geographic_scale_bar(scene, tmp_path):
    png = quicklook(scene["mosaic"], tmp_path / "q.png", inventory=scene["inventory"], truth=scene["truth"])
    img = np.asarray(Image.open(png).convert("RGB"))
    for what in ("hit", "false alarm", "missed"):
        assert _near(img, OUTCOME_COLOURS[what], 30) > 30, what
    # a geographic mosaic: same picture, degrees on the axes, a scale bar in km
    geo = Grid("EPSG:4326", 100.0, 30.0, 0.0003, -0.0003, 300, 300)
    r = np.random.default_rng(1).normal(0, 2, (1, 300, 300)).astype("float32")
    r[0, 100:150, 100:160] = -50
    write_mosaic(build_dataset(da.from_array(r, chunks=(1, 150, 150)), geo, [TrackInfo("asc")]), tmp_path / "geo.zarr", chunk=150)
    from matplotlib.figure import Figure
    seen: list[str] = []
    orig = Figure.savefig

    def spy(self, *a, **k):  # type: ignore[no-untyped-def]
        seen.extend(t.get_text() for ax in self.axes for t in ax.texts)
        seen.extend(ax.get_ylabel() for ax in self.axes)
        seen.append(self._suptitle.get_text() if self._suptitle else "")
        return orig(self, *a, **k)

    Figure.savefig = spy  # type: ignore[method-assign]
    try:
        quicklook(tmp_path / "geo.zarr", tmp_path / "g.png")
    finally:
        Figure.savefig = orig  # type: ignore[method-assign]
    assert "latitude (°)" in seen and any(s.endswith("km") or s.endswith(" m") for s in seen)
    assert any(s.startswith("geo") for s in seen)  # the title names the basin


# ---------------------------------------------------------------- GIS outputs


def test_geopackage_has_outline_layer_and_qgis_styles(scene, tmp_path):
    inv = gpd.read_parquet(scene["inventory"])
    path = write_geopackage(inv, tmp_path / "inv.gpkg")
    layers = {n: g for n, g in pyogrio.list_layers(path)}
    assert layers["landslides"] == "Polygon" and layers["outlines"] == "Polygon"
    polys, outl = gpd.read_file(path, layer="landslides"), gpd.read_file(path, layer="outlines")
    assert len(polys) == len(outl) == 4 and "outline" not in polys.columns
    assert outl.geometry.area.sum() < polys.geometry.area.sum()
    with sqlite3.connect(path) as con:
        rows = con.execute("SELECT f_table_name, f_geometry_column, useAsDefault, styleQML FROM layer_styles").fetchall()
    assert {r[0] for r in rows} == {"landslides", "outlines"} and all(r[2] == 1 for r in rows)
    for r in rows:
        ET.fromstring(r[3].split("\n", 1)[1])  # the QML (after its doctype) is well-formed XML


def test_kml_parses_in_wgs84_with_attributes(scene, tmp_path):
    inv = gpd.read_parquet(scene["inventory"])
    path = write_kml(inv, tmp_path / "inv.kml")
    root = ET.parse(path).getroot()
    marks = root.findall(f".//{{{KML_NS}}}Placemark")
    assert [m.find(f"{{{KML_NS}}}name").text for m in marks] == ["#1", "#2", "#3", "#4"]
    back = gpd.read_file(path)  # GDAL's KML driver
    assert back.crs.to_epsg() == 4326 and len(back) == 4
    lon, lat = back.geometry.iloc[0].centroid.coords[0]
    assert 98.9 < lon < 99.1 and 27.0 < lat < 27.2  # UTM 47N, 500 km E, 3000 km N
    assert back.geometry.iloc[0].area < inv.to_crs(4326).geometry.iloc[0].area  # the outline, not the box


def test_export_writes_one_valid_cog_per_track_with_overviews(scene, tmp_path):
    cog = pytest.importorskip("rio_cogeo.cogeo")
    import rasterio

    res = CliRunner().invoke(main, ["export", str(scene["mosaic"]), "--out", str(tmp_path / "cogs")])
    assert res.exit_code == 0, res.output
    for t in ("asc_099", "desc_062"):
        f = tmp_path / "cogs" / f"{t}.tif"
        valid, errors, _ = cog.cog_validate(str(f))
        assert valid, errors
        with rasterio.open(f) as src:
            assert src.crs.to_epsg() == 32647 and src.tags(1)["track"] == t and src.block_shapes[0] == (512, 512)
            band = src.read(1)
        assert np.isnan(band[390, 470]) and band[225, 320] == (-800.0 if t == "asc_099" else 500.0)
    # a mosaic larger than a block gets overviews (down to one block)
    big = Grid("EPSG:32647", 500_000.0, 3_000_000.0, 30.0, -30.0, 1300, 1100)
    r = np.random.default_rng(2).normal(0, 2, (1, 1300, 1100)).astype("float32")
    write_mosaic(build_dataset(da.from_array(r, chunks=(1, 512, 512)), big, [TrackInfo("asc")]), tmp_path / "big.zarr", chunk=512)
    (f,) = export_cogs(tmp_path / "big.zarr", tmp_path / "bigcogs")
    assert cog.cog_validate(str(f))[0]
    with rasterio.open(f) as src:
        assert src.overviews(1) == [2, 4]
        np.testing.assert_array_equal(src.read(1), r[0])
    res = CliRunner().invoke(main, ["export", str(scene["mosaic"]), "--out", str(tmp_path / "cogs")])
    assert res.exit_code != 0 and "--overwrite" in res.output
    with pytest.raises(Exception, match="no track north"):
        export_cogs(scene["mosaic"], tmp_path / "c2", tracks=["north"])


def test_report_command(scene, tmp_path):
    res = CliRunner().invoke(main, ["report", str(scene["inventory"]), "--mosaic", str(scene["mosaic"]),
                                    "--truth", str(scene["truth"]), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert "1 false alarm<" in (tmp_path / "r.html").read_text()


def test_report_survives_truth_slides_beyond_the_mosaic_edge(scene, tmp_path):
    truth = gpd.read_parquet(scene["truth"])
    x0, y0 = GRID.bounds[2] + 500, GRID.bounds[1] + 3000  # east of the mosaic
    extra = truth.iloc[[3]].copy()
    extra["geometry"] = [shapely.box(x0, y0, x0 + 600, y0 + 600)]
    extra["slide_id"] = "sim-outside"
    both = gpd.GeoDataFrame(pd.concat([truth, extra], ignore_index=True), crs=truth.crs)
    page = Path(write_report(scene["mosaic"], scene["inventory"], tmp_path / "r.html", truth=both)).read_text()
    assert page.count('class="card"') == 5  # the 4 detections and the missed slide inside; none for the one outside
    assert "1 missed" in page  # the truth is clipped to the mosaic: the slide wholly outside is not asked for
