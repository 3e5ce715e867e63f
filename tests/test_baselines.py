"""Gi* and K-means baselines, regions across chunk seams, and inventory comparison (Table 4)."""

from __future__ import annotations

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import yaml
from click.testing import CliRunner

from insar_slide.baselines import drop_collinear, gistar, kmeans_mask, regions
from insar_slide.cli import main
from insar_slide.compare import compare_inventories, match, table_markdown
from insar_slide.errors import ConfigError
from insar_slide.grid import Grid
from insar_slide.mosaic import TrackInfo, build_dataset, write_mosaic
from insar_slide.run.config import KMeansConfig

GRID = Grid("EPSG:32647", 500_000.0, 3_000_000.0, 30.0, -30.0, 160, 200)


def _esda_z(values: np.ndarray, distance: float) -> np.ndarray:
    esda = pytest.importorskip("esda")
    from libpysal.weights import DistanceBand
    rows, cols = np.nonzero(np.isfinite(values))
    coords = np.column_stack([cols, rows]).astype(float)
    w = DistanceBand(coords, threshold=distance, binary=True, silence_warnings=True)
    g = esda.G_Local(values[rows, cols].astype(float), w, transform="B", star=True, permutations=0)
    out = np.full(values.shape, np.nan)
    out[rows, cols] = g.Zs
    return out


@pytest.mark.parametrize("distance", [7.0, 2.5])
def test_gistar_matches_esda_with_nans_and_chunk_seams(distance):
    rng = np.random.default_rng(1)
    v = np.abs(rng.normal(0, 3, (22, 27)))
    v[5:9, 6:12] += 25
    v[rng.random(v.shape) < 0.15] = np.nan
    z = gistar(da.from_array(v, chunks=(8, 9)), distance).compute()
    ref = _esda_z(v, distance)
    assert np.array_equal(np.isnan(z), np.isnan(ref))
    np.testing.assert_allclose(z[np.isfinite(z)], ref[np.isfinite(ref)], rtol=0, atol=1e-6)


def test_gistar_distance_larger_than_the_chunk_rechunks():
    rng = np.random.default_rng(2)
    v = np.abs(rng.normal(0, 3, (30, 30)))
    z = gistar(da.from_array(v, chunks=5), 7.0).compute()
    np.testing.assert_allclose(z, gistar(da.from_array(v, chunks=30), 7.0).compute(), atol=1e-6)


def test_a_region_cut_by_chunk_seams_is_one_region():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 12:16] = True  # a vertical bar across the row seam at 16 and ...
    mask[14:18, 12:34] = True  # ... a horizontal one across the column seam at 16 and 32
    mask[35:37, 35:37] = True  # a speck below the minimum area
    g = Grid("EPSG:32647", 0.0, 0.0, 30.0, -30.0, 40, 40)
    reg = regions(da.from_array(mask, chunks=16), g, min_area_px=5)
    assert len(reg) == 1
    assert reg["n_px"].iloc[0] == mask[:34].sum()
    assert reg.geometry.iloc[0].geom_type == "Polygon"


def test_regions_equal_whole_array_labelling_for_any_chunking():
    from scipy import ndimage

    rng = np.random.default_rng(11)
    mask = ndimage.binary_opening(rng.random((60, 70)) < 0.45)  # many blobs, many touching seams and corners
    mask[16:24, 16:24] = False
    mask[18:22, 18:22] = np.eye(4, dtype=bool)  # a diagonal line: linked only across the corner of 20-px chunks
    mask[36:44, 36:44] = False
    mask[38:42, 38:42] = np.eye(4, dtype=bool)[::-1]  # an anti-diagonal one across the next corner
    ref, n = ndimage.label(mask, structure=np.ones((3, 3), int))
    want = sorted(np.bincount(ref.ravel())[1:].tolist())
    g = Grid("EPSG:32647", 0.0, 0.0, 30.0, -30.0, 60, 70)
    for chunks in (20, 7, (13, 9), 70):
        reg = regions(da.from_array(mask, chunks=chunks), g, min_area_px=1)
        assert len(reg) == n, chunks
        assert sorted(reg["n_px"].tolist()) == want, chunks


def test_drop_collinear_removes_exactly_the_added_pixel_corner_vertices():
    outer = [(0, 0), (90, 0), (90, 30), (60, 30), (60, 60), (0, 60), (0, 0)]  # an L, no straight-run vertices
    hole = [(30, 30), (30, 12), (48, 12), (48, 30), (30, 30)]
    poly = shapely.Polygon(outer, [hole])
    two = shapely.MultiPolygon([poly, shapely.box(120, 0, 150, 30)])
    for g in (poly, two):
        dense = shapely.segmentize(g, 3.0)
        assert shapely.get_num_coordinates(dense) > 3 * shapely.get_num_coordinates(g)
        back = drop_collinear(dense)
        assert back.equals(g) and back.is_valid
        assert shapely.get_num_coordinates(back) == shapely.get_num_coordinates(g)
    spike = shapely.Polygon([(0, 0), (10, 0), (10, 10), (5, 10), (5, 20), (5, 10), (0, 10), (0, 0)])
    assert shapely.get_num_coordinates(drop_collinear(spike)) == shapely.get_num_coordinates(spike)  # a spike is not a straight run


def test_kmeans_separates_coherent_fast_patches_and_refuses_k1():
    rng = np.random.default_rng(3)
    v = rng.normal(0, 4, (64, 64)).astype("float32")
    v[10:20, 10:22] = -45 + rng.normal(0, 2, (10, 12))
    v[40:52, 30:40] = 38 + rng.normal(0, 2, (12, 10))
    mask, info = kmeans_mask(da.from_array(v, chunks=32), KMeansConfig(sample=5000))
    m = mask.compute()
    assert m[10:20, 10:22].mean() > 0.9 and m[40:52, 30:40].mean() > 0.9
    assert m.sum() < 1.2 * (120 + 120)  # the noise pixels above 10 mm/yr are the other cluster
    assert max(info["centres_abs_rate"]) > 30
    with pytest.raises(ConfigError, match="at least 2"):
        kmeans_mask(da.from_array(v, chunks=32), KMeansConfig(k=1))


# ---------------------------------------------------------------------------- through the CLI


def _basin(tmp_path, rates: np.ndarray):
    tracks = [TrackInfo("asc", -12.0, 40.0, "2020-01-01", "2021-01-01", ("test",)),
              TrackInfo("desc", -168.0, 40.0, "2020-01-01", "2021-01-01", ("test",))]
    path = tmp_path / "b.zarr"
    write_mosaic(build_dataset(da.from_array(rates, chunks=(1, 64, 64)), GRID, tracks), path, chunk=64)
    cfg = tmp_path / "basin.yaml"
    cfg.write_text(yaml.safe_dump({"mosaic": str(path), "out": str(tmp_path / "inv.parquet")}))
    return path, cfg


BOXES = [(20, 50, 44, 80), (90, 120, 120, 140), (60, 150, 70, 190)]  # (row0, col0, row1, col1); 2nd across a seam


def _rates() -> np.ndarray:
    rng = np.random.default_rng(4)
    r = rng.normal(0, 4.5, (2, 160, 200)).astype("float32")  # ~2 % of stable pixels at |rate| >= 10, as in real maps
    for r0, c0, r1, c1 in BOXES:
        r[:, r0:r1, c0:c1] = -40 + rng.normal(0, 2, (2, r1 - r0, c1 - c0))
    return r


def _truth() -> gpd.GeoDataFrame:
    t = GRID.transform
    geoms = [shapely.box(*(t * (c0, r1)), *(t * (c1, r0))) for r0, c0, r1, c1 in BOXES]
    return gpd.GeoDataFrame({"slide_id": ["a", "b", "c"], "method": "truth"}, geometry=geoms, crs=GRID.crs)


@pytest.mark.parametrize("method", ["hotspot", "kmeans"])
def test_baseline_cli_finds_the_patches(tmp_path, method):
    _, cfg = _basin(tmp_path, _rates())
    res = CliRunner().invoke(main, ["baseline", method, str(cfg)])
    assert res.exit_code == 0, res.output
    inv = gpd.read_parquet(tmp_path / f"inv.{method}.parquet")
    assert (inv["method"] == method).all() and inv["score"].isna().all()
    assert set(inv["tracks"]) == {"asc,desc"}  # both tracks' regions merged
    counts = match(inv, _truth(), rule="polygon", threshold=0.5).counts()
    assert counts["correctly_detected"] == 3 and counts["newly_detected"] == 0
    assert (inv["rate_mean"] < -30).all() and inv["slide_id"].str.startswith({"hotspot": "hs-", "kmeans": "km-"}[method]).all()


def test_baseline_on_an_all_nan_mosaic_is_a_clear_error(tmp_path):
    _, cfg = _basin(tmp_path, np.full((2, 160, 200), np.nan, "float32"))
    res = CliRunner().invoke(main, ["baseline", "hotspot", str(cfg)])
    assert res.exit_code != 0 and "no valid pixels" in res.output
    assert not (tmp_path / "inv.hotspot.parquet").exists()


def test_baseline_with_k_below_2_is_a_config_error(tmp_path):
    _, cfg = _basin(tmp_path, _rates())
    data = yaml.safe_load(cfg.read_text())
    data["baseline"] = {"kmeans": {"k": 1}}
    cfg.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(main, ["baseline", "kmeans", str(cfg)])
    assert res.exit_code == 2 and "at least 2" in res.output


# ---------------------------------------------------------------------------- compare


def test_compare_counts_reprojection_and_empty(tmp_path):
    truth = _truth()
    t = GRID.transform
    det = gpd.GeoDataFrame({"slide_id": ["x", "y", "z"], "method": "faster_rcnn", "score": [0.9, 0.8, 0.7]},
                           geometry=[truth.geometry[0], truth.geometry[1].buffer(30, join_style="mitre"),
                                     shapely.box(*(t * (0, 10)), *(t * (10, 0)))], crs=GRID.crs)
    table, statuses = compare_inventories({"det": det.to_crs("EPSG:4326"), "none": det.iloc[:0]}, truth)
    r = table.set_index("inventory")
    assert r.loc["det", "correctly_detected"] == 2 and r.loc["det", "not_detected"] == 1
    assert r.loc["det", "newly_detected"] == 1 and r.loc["det", "precision"] == pytest.approx(2 / 3)
    assert r.loc["none", "correctly_detected"] == 0 and r.loc["none", "recall"] == 0.0
    st = statuses["det"]
    assert sorted(st[st.role == "detection"]["status"]) == ["correctly_detected", "correctly_detected", "newly_detected"]
    assert st[(st.role == "reference") & (st.status == "not_detected")]["slide_id"].tolist() == ["c"]


def test_compare_counts_detections_of_unasked_slides_apart():
    truth = _truth()
    t = GRID.transform
    slow = gpd.GeoDataFrame({"slide_id": ["slow"], "method": "truth"}, geometry=[shapely.box(*(t * (10, 120)), *(t * (30, 100)))],
                            crs=GRID.crs)
    det = gpd.GeoDataFrame({"slide_id": ["x", "y", "z"], "method": "faster_rcnn", "score": [0.9, 0.8, 0.7]},
                           geometry=[truth.geometry[0], shapely.box(*(t * (12, 118)), *(t * (28, 102))),
                                     shapely.box(*(t * (0, 10)), *(t * (10, 0)))], crs=GRID.crs)
    c = match(det, truth, ignore=slow.to_crs("EPSG:4326")).counts()
    assert (c["correctly_detected"], c["newly_detected"], c["below_threshold"], c["total_detected"]) == (1, 1, 1, 3)
    assert c["precision"] == pytest.approx(1 / 2) and c["precision_all"] == pytest.approx(1 / 3)
    table, statuses = compare_inventories({"det": det}, truth, ignore=slow)
    st = statuses["det"]
    assert sorted(st[st.role == "detection"]["status"]) == ["below_threshold", "correctly_detected", "newly_detected"]
    assert "below threshold" in table_markdown(table)
    assert match(det, truth).counts()["below_threshold"] == 0  # without ignore regions: as before


def test_compare_cli_side_by_side_table_and_status_files(tmp_path):
    truth = _truth()
    truth.to_file(tmp_path / "truth.gpkg")
    a = truth.assign(method="hotspot", slide_id=["1", "2", "3"])
    b = truth.iloc[:1].assign(method="kmeans", slide_id=["k"])
    a.to_parquet(tmp_path / "a.parquet")
    b.to_parquet(tmp_path / "b.parquet")
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"),
                                    "--reference", str(tmp_path / "truth.gpkg"), "--rule", "polygon", "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert "polygon IoU >= 0.5" in res.output
    tab = pd.read_csv(tmp_path / "cmp" / "table.csv").set_index("inventory")
    assert tab.loc["a", "f1"] == 1.0 and tab.loc["b", "recall"] == pytest.approx(1 / 3)
    st = gpd.read_parquet(tmp_path / "cmp" / "status_b.parquet")
    assert (st[st.role == "reference"]["status"] == "not_detected").sum() == 2
