"""The strict basin-level report: size classes, AP50, false alarms per look-alike kind."""

from __future__ import annotations

import json

import dask.array as da
import geopandas as gpd
import numpy as np
import pytest
import shapely
from click.testing import CliRunner

from insar_slide.cli import main
from insar_slide.compare import hidden_truth, match, visible_truth, within_extent
from insar_slide.errors import InputError
from insar_slide.grid import Grid
from insar_slide.mosaic import TrackInfo, build_dataset, open_basin, write_mosaic
from insar_slide.scoring import (
    SIZE_LIMITS_PX2,
    MosaicArea,
    PixelSize,
    average_precision,
    box_area,
    mosaic_area,
    nuisance_path_for,
    pixel_boxes,
    read_nuisance,
    size_class,
    strict_report,
)

GRID = Grid("EPSG:32647", 500_000.0, 3_000_000.0, 30.0, -30.0, 300, 300)
PX = PixelSize(30.0, 30.0)


def _poly(c0: float, r0: float, c1: float, r1: float) -> shapely.Polygon:
    """A map box (metres) from pixel columns/rows of GRID."""
    t = GRID.transform
    return shapely.box(*(t * (c0, r1)), *(t * (c1, r0)))


def _truth(visible: list[tuple], hidden: list[tuple] | None = None) -> gpd.GeoDataFrame:
    hidden = hidden or []
    boxes = [*visible, *hidden]
    return gpd.GeoDataFrame({"slide_id": [f"t{k}" for k in range(len(boxes))], "method": "truth",
                             "peak_los_asc": [30.0] * len(visible) + [5.0] * len(hidden),
                             "visible_fraction_asc": 1.0},
                            geometry=[_poly(*b) for b in boxes], crs=GRID.crs)


def _det(boxes: list[tuple], scores: list[float], tracks: str | list[str] = "asc") -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"slide_id": [f"d{k}" for k in range(len(boxes))], "method": "faster_rcnn",
                             "score": scores, "tracks": tracks},
                            geometry=[_poly(*b) for b in boxes], crs=GRID.crs)


# Visible truth, pixel boxes (col0, row0, col1, row1): three small, two medium, one large.
VISIBLE = [(10, 10, 30, 25), (50, 10, 62, 40), (80, 80, 100, 100),
           (120, 20, 170, 70), (20, 150, 60, 190), (150, 150, 260, 260)]
HIDDEN = [(200, 20, 230, 50)]  # a slow slide: below the cutoffs


def test_size_class_is_the_box_area_in_mosaic_pixels():
    geoms = [_poly(0, 0, 31, 31), _poly(0, 0, 32, 32), _poly(0, 0, 95, 95), _poly(0, 0, 96, 96), _poly(0, 0, 200, 10)]
    area = box_area(pixel_boxes(geoms, PX))
    assert area.tolist() == pytest.approx([31**2, 32**2, 95**2, 96**2, 2000])
    assert size_class(area).tolist() == ["small", "medium", "medium", "large", "medium"]
    # the same map boxes on a 10 m grid are 3 × 3 times as many pixels
    assert size_class(box_area(pixel_boxes(geoms, PixelSize(10.0, 10.0)))).tolist() == ["medium", "large", "large", "large", "large"]


def test_recall_per_size_class_adds_up_to_table_4():
    truth = _truth(VISIBLE)
    det = _det([(10, 10, 30, 25), (80, 81, 100, 100), (120, 20, 170, 70), (150, 150, 258, 262), (240, 100, 250, 110)],
               [0.9, 0.8, 0.7, 0.6, 0.5])
    rep = strict_report(det, truth, pixel_size=PX)
    sc = rep.size_classes.set_index("class")
    assert sc["n_truth"].to_dict() == {"small": 3, "medium": 2, "large": 1, "all": 6}
    assert sc["matched"].to_dict() == {"small": 2, "medium": 1, "large": 1, "all": 4}
    assert sc.loc["small", "recall"] == pytest.approx(2 / 3) and sc.loc["medium", "recall"] == pytest.approx(0.5)
    assert sc.loc["all", "matched"] == rep.counts["correctly_detected"] and rep.counts["newly_detected"] == 1


def _coco_ap50(gt: list[tuple], crowd: list[tuple], det: list[tuple], scores: list[float]) -> dict[str, float]:
    """faster-coco-eval's AP at IoU 0.5 per area range, from pixel boxes (col0, row0, col1, row1)."""
    from faster_coco_eval import COCO, COCOeval_faster

    def ann(k: int, b: tuple, crowd: int) -> dict:
        w, h = b[2] - b[0], b[3] - b[1]
        return {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": crowd}

    gt_d = {"images": [{"id": 1, "width": 300, "height": 300}], "categories": [{"id": 1, "name": "landslide"}],
            "annotations": [ann(k, b, 0) for k, b in enumerate(gt)] + [ann(len(gt) + k, b, 1) for k, b in enumerate(crowd)]}
    coco = COCO(gt_d)
    res = coco.loadRes([{"image_id": 1, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s}
                        for b, s in zip(det, scores, strict=True)])
    ev = COCOeval_faster(coco, res, "bbox", print_function=lambda *a, **k: None)
    ev.evaluate()
    ev.accumulate()
    t = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    prec = ev.eval["precision"][t, :, 0, :, -1]  # recall thresholds × area ranges, maxDets 100
    return {name: float(prec[:, a].mean()) if (prec[:, a] > -1).all() else float("nan")
            for a, name in enumerate(ev.params.areaRngLbl)}


# Hits, near misses, a duplicate, false alarms of every size and one below-threshold detection.
DETS = [(10, 11, 30, 25), (50, 12, 62, 41), (120, 25, 168, 72), (152, 148, 258, 262), (121, 20, 172, 70),
        (200, 22, 228, 50), (82, 80, 99, 101), (20, 165, 60, 205), (5, 200, 25, 215), (230, 100, 290, 150),
        (100, 200, 140, 290), (60, 100, 75, 110), (20, 150, 58, 188)]
SCORES = [0.97, 0.42, 0.91, 0.88, 0.86, 0.95, 0.30, 0.65, 0.80, 0.75, 0.55, 0.25, 0.20]


def test_ap50_per_class_equals_faster_coco_eval():
    rep = strict_report(_det(DETS, SCORES), _truth(VISIBLE), pixel_size=PX, ignore=_truth([], HIDDEN))
    coco = _coco_ap50(VISIBLE, HIDDEN, DETS, SCORES)
    mine = rep.size_classes.set_index("class")["ap50"].to_dict()
    for name in ("all", "small", "medium", "large"):
        assert mine[name] == pytest.approx(coco[name], abs=1e-3), name
    assert rep.ap50 == mine["all"] and 0.3 < rep.ap50 < 0.95  # neither trivial nor perfect


def test_average_precision_of_pixel_boxes_equals_faster_coco_eval_per_area_range():
    gt, crowd, det = np.array(VISIBLE, float), np.array(HIDDEN, float), np.array(DETS, float)
    coco = _coco_ap50(VISIBLE, HIDDEN, DETS, SCORES)
    for name, rng in (("all", None), *SIZE_LIMITS_PX2.items()):
        got = average_precision(det, gt, scores=np.array(SCORES), crowd_boxes=crowd, area_range=rng)
        assert got == pytest.approx(coco[name], abs=1e-3), name


def test_below_threshold_detections_are_ignored_in_ap_and_not_false_alarms():
    truth, slow = _truth(VISIBLE), _truth([], HIDDEN)
    det = _det([(10, 10, 30, 25), (200, 22, 228, 50), (50, 10, 62, 40)], [0.9, 0.95, 0.5])
    with_ignore = strict_report(det, truth, pixel_size=PX, ignore=slow)
    without_slow_det = strict_report(det.drop(index=1), truth, pixel_size=PX)
    strict_all = strict_report(det, truth, pixel_size=PX)
    assert with_ignore.counts["below_threshold"] == 1 and with_ignore.counts["newly_detected"] == 0
    assert with_ignore.ap50 == pytest.approx(without_slow_det.ap50)
    assert strict_all.ap50 < with_ignore.ap50 and strict_all.counts["newly_detected"] == 1
    fa = with_ignore.false_alarms.set_index("kind")
    assert fa.loc["all", "false_alarms"] == 0


# Tiny mosaic: 300 × 300 px of 30 m = 81 km²; no measurement on either track in rows 0-99,
# cols 0-99 (asc lacks rows 0-99 cols 0-149, desc rows 0-149 cols 0-99) → 10,000 px missing.
VALID_KM2 = (300 * 300 - 100 * 100) * 900 / 1e6


def _mosaic(tmp_path):
    r = np.full((2, 300, 300), 1.0, "float32")
    r[0, :100, :150] = np.nan
    r[1, :150, :100] = np.nan
    tracks = [TrackInfo("asc", -12.0, 40.0, "2020-01-01", "2021-01-01", ("test",)),
              TrackInfo("desc", -168.0, 40.0, "2020-01-01", "2021-01-01", ("test",))]
    path = tmp_path / "basin.zarr"
    write_mosaic(build_dataset(da.from_array(r, chunks=(1, 64, 64)), GRID, tracks), path, chunk=64)
    return path


def _nuisance() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"object_id": ["g1", "g2", "u1", "f1"], "kind": ["glacier", "glacier", "unwrapping", "frost"],
                             "track": ["", "", "desc", ""]},
                            geometry=[_poly(200, 200, 260, 260), _poly(200, 160, 260, 190), _poly(20, 200, 80, 260),
                                      _poly(100, 250, 200, 300)], crs=GRID.crs)


# False alarms (none near a truth slide): on glacier g1 (fully), half on g1 and a quarter on g2
# (g1 wins), on the desc-only unwrapping patch from asc (→ background) and from desc, 16 % on
# frost f1 (→ background); and a correct detection and a below-threshold one (on g1).
FA_DETS = [(230, 230, 258, 258), (210, 180, 240, 220), (30, 210, 70, 250), (30, 210, 70, 250), (90, 230, 140, 255)]
FA_TRACKS = ["asc", "asc,desc", "asc", "desc", "asc"]


def _fa_case():
    truth = _truth([(10, 150, 40, 180)], [(200, 200, 225, 225)])
    boxes = [*FA_DETS, (10, 150, 40, 180), (201, 201, 224, 224)]
    det = _det(boxes, [0.9] * len(boxes), [*FA_TRACKS, "asc", "asc"])
    return truth, det


def test_mosaic_area_counts_pixels_measured_on_any_track_chunk_by_chunk(tmp_path):
    area = mosaic_area(open_basin(_mosaic(tmp_path)))
    assert area.grid_km2 == pytest.approx(81.0) and area.valid_km2 == pytest.approx(VALID_KM2)


def test_false_alarms_attributed_to_look_alike_kinds_per_1000_km2(tmp_path):
    truth, det = _fa_case()
    area = mosaic_area(open_basin(_mosaic(tmp_path)))
    rep = strict_report(det, visible_truth(truth), pixel_size=PX, ignore=hidden_truth(truth), nuisance=_nuisance(), area=area)
    assert (rep.counts["correctly_detected"], rep.counts["below_threshold"], rep.counts["newly_detected"]) == (1, 1, 5)
    fa = rep.false_alarms.set_index("kind")
    assert list(fa.index) == ["frost", "glacier", "unwrapping", "background", "all"]
    assert fa["false_alarms"].to_dict() == {"frost": 0, "glacier": 2, "unwrapping": 1, "background": 2, "all": 5}
    assert fa.loc["glacier", "objects"] == 2 and fa.loc["glacier", "objects_with_false_alarm"] == 1
    assert fa.loc["unwrapping", "objects_with_false_alarm"] == 1 and fa.loc["frost", "objects"] == 1
    assert fa.loc["glacier", "per_1000_km2"] == pytest.approx(2 / VALID_KM2 * 1000)
    assert fa.loc["all", "per_1000_km2"] == pytest.approx(5 / VALID_KM2 * 1000)
    assert fa.loc[["frost", "glacier", "unwrapping", "background"], "false_alarms"].sum() == rep.counts["newly_detected"]


def test_pixel_size_of_a_mosaic_and_reprojected_catalogue(tmp_path):
    assert PixelSize.of(open_basin(_mosaic(tmp_path))) == PX
    truth, det = _fa_case()
    area = MosaicArea(81.0, 50.0)
    a = strict_report(det, visible_truth(truth), pixel_size=PX, ignore=hidden_truth(truth), nuisance=_nuisance(), area=area)
    b = strict_report(det.to_crs("EPSG:4326"), visible_truth(truth), pixel_size=PX, ignore=hidden_truth(truth).to_crs("EPSG:4326"),
                      nuisance=_nuisance().to_crs("EPSG:4326"), area=area)
    assert a.false_alarms["false_alarms"].tolist() == b.false_alarms["false_alarms"].tolist()
    assert a.false_alarms.set_index("kind").loc["all", "per_1000_km2"] == pytest.approx(100.0)


def test_an_object_with_a_row_per_track_is_one_object():
    poly = _poly(20, 200, 80, 260)
    nuis = gpd.GeoDataFrame({"object_id": ["u1", "u1"], "kind": "unwrapping", "track": ["asc", "desc"]},
                            geometry=[poly, poly], crs=GRID.crs)
    det = _det([(30, 210, 70, 250), (25, 205, 75, 255)], [0.9, 0.8], ["asc", "desc"])
    fa = strict_report(det, _truth(VISIBLE), pixel_size=PX, nuisance=nuis).false_alarms.set_index("kind")
    assert (fa.loc["unwrapping", "objects"], fa.loc["unwrapping", "objects_with_false_alarm"]) == (1, 1)
    assert fa.loc["unwrapping", "false_alarms"] == 2 and fa.loc["all", "objects"] == 1


def test_without_a_catalogue_false_alarms_are_counted_not_attributed(tmp_path):
    truth, det = _fa_case()
    rep = strict_report(det, visible_truth(truth), pixel_size=PX, ignore=hidden_truth(truth), area=MosaicArea(81.0, 50.0))
    assert not rep.catalogue and rep.false_alarms["kind"].tolist() == ["all"]
    assert rep.false_alarms["false_alarms"].item() == 5 and rep.to_dict()["false_alarms"]["kinds"]["all"]["objects"] is None
    assert any("no look-alike catalogue" in n for n in rep.notes)
    assert not nuisance_path_for(tmp_path / "basin.truth.parquet").exists()
    assert nuisance_path_for("x/basin.truth.parquet").name == "basin.nuisance.parquet"


def test_a_catalogue_without_its_columns_is_a_clear_error(tmp_path):
    _nuisance().drop(columns=["kind"]).to_parquet(tmp_path / "n.parquet")
    with pytest.raises(InputError, match=r"lacks column.*kind"):
        read_nuisance(tmp_path / "n.parquet")
    with pytest.raises(InputError, match="no such look-alike catalogue"):
        read_nuisance(tmp_path / "missing.parquet")


def _cli_case(tmp_path, *, with_catalogue: bool):
    mosaic = _mosaic(tmp_path)
    truth, det = _fa_case()
    truth.to_parquet(tmp_path / "basin.truth.parquet")
    det.to_parquet(tmp_path / "inventory.parquet")
    if with_catalogue:
        _nuisance().to_parquet(tmp_path / "basin.nuisance.parquet")
    return ["compare", str(tmp_path / "inventory.parquet"), "--reference", str(tmp_path / "basin.truth.parquet"),
            "--visible-only", "--mosaic", str(mosaic)]


def test_compare_cli_strict_report_end_to_end(tmp_path):
    args = _cli_case(tmp_path, with_catalogue=True)
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert "correctly detected" in res.output and "size class" in res.output and "glacier" in res.output
    doc = json.loads((tmp_path / "cmp" / "scores.json").read_text())
    assert doc["nuisance"].endswith("basin.nuisance.parquet")  # found beside the truth
    assert doc["pixel_size"] == {"dx": 30.0, "dy": 30.0, "units": "metre"}
    assert doc["areas"]["valid_km2"] == pytest.approx(VALID_KM2) and doc["areas"]["grid_km2"] == pytest.approx(81.0)
    inv = doc["inventories"]["inventory"]
    assert inv["precision"] == pytest.approx(1 / 6) and inv["recall"] == 1.0 and inv["below_threshold"] == 1
    # equal scores rank in inventory order: five false alarms (one small) before the hit
    assert inv["ap50"] == pytest.approx(1 / 6, abs=1e-3)
    assert inv["size_classes"]["small"] == {"n_truth": 1, "matched": 1, "recall": 1.0, "ap50": pytest.approx(1 / 2, abs=1e-3)}
    assert inv["size_classes"]["large"]["ap50"] is None  # no large slide to find
    kinds = inv["false_alarms"]["kinds"]
    assert kinds["glacier"]["false_alarms"] == 2 and kinds["glacier"]["per_1000_km2"] == pytest.approx(2 / VALID_KM2 * 1000)
    assert type(kinds["glacier"]["objects"]) is int and kinds["background"]["objects"] is None
    for name in ("table.md", "table.csv", "size_classes.md", "false_alarms.md", "status_inventory.parquet"):
        assert (tmp_path / "cmp" / name).exists(), name
    assert "| inventory | unwrapping | 1 | 1 | 1 |" in (tmp_path / "cmp" / "false_alarms.md").read_text()


def test_compare_cli_without_catalogue_or_with_a_missing_one(tmp_path):
    args = _cli_case(tmp_path, with_catalogue=False)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "no look-alike catalogue" in res.output
    res = CliRunner().invoke(main, [*args, "--nuisance", str(tmp_path / "nope.parquet")])
    assert res.exit_code == 1 and "no such look-alike catalogue" in res.output
    res = CliRunner().invoke(main, [*args, "--pixel-size", "30"])
    assert res.exit_code == 2 and "not both" in res.output


def test_the_truth_is_clipped_to_the_mosaic_it_is_scored_on():
    # GRID is 300 x 300 px. Slides past its right edge: 60 % inside (still asked for, matched by
    # its part inside), 25 % inside (no longer asked for: most of it was never measured), wholly
    # outside (dropped); one inside, unchanged.
    truth = _truth([(10, 10, 40, 40), (270, 100, 320, 120), (290, 150, 330, 170), (310, 200, 340, 230)])
    bounds = GRID.bounds
    clipped = within_extent(truth, bounds)
    assert list(clipped.slide_id) == ["t0", "t1", "t2"]
    np.testing.assert_allclose(clipped.visible_fraction_asc, [1.0, 0.6, 0.25])
    np.testing.assert_allclose(clipped.inside_fraction, [1.0, 0.6, 0.25])
    assert clipped.geometry.iloc[1].normalize().equals_exact(_poly(270, 100, 300, 120).normalize(), 1e-6)
    assert clipped.geometry.iloc[0].equals(truth.geometry.iloc[0])
    assert list(visible_truth(clipped).slide_id) == ["t0", "t1"]
    assert list(hidden_truth(clipped).slide_id) == ["t2"]
    inside = truth.iloc[:1]
    assert within_extent(inside, bounds) is inside  # nothing past the edge: the frame as it is
    # the detector boxes what the mosaic shows: 22 of the 30 px inside is a match against the
    # clipped truth (IoU 0.73), not against the whole slide (0.44)
    det = _det([(10, 10, 40, 40), (278, 100, 300, 120)], [0.9, 0.9])
    assert match(det, visible_truth(truth)).counts()["correctly_detected"] == 1
    assert match(det, visible_truth(clipped)).counts()["correctly_detected"] == 2


def test_compare_cli_with_a_mosaic_scores_slides_past_its_edge_by_their_part_inside(tmp_path):
    mosaic = _mosaic(tmp_path)
    _truth([(10, 10, 40, 40), (270, 100, 320, 120), (290, 150, 330, 170)]).to_parquet(tmp_path / "t.parquet")
    _det([(10, 10, 40, 40), (278, 100, 300, 120)], [0.9, 0.9]).to_parquet(tmp_path / "inv.parquet")
    base = ["compare", str(tmp_path / "inv.parquet"), "--reference", str(tmp_path / "t.parquet"), "--visible-only"]
    res = CliRunner().invoke(main, base)  # without the mosaic: three slides asked for, one found, one false alarm
    assert res.exit_code == 0 and "| inv | faster_rcnn | 1 | 2 | 1 |" in res.output, res.output
    res = CliRunner().invoke(main, [*base, "--mosaic", str(mosaic)])  # with it: two asked for, both found
    assert res.exit_code == 0 and "| inv | faster_rcnn | 2 | 0 | 0 |" in res.output, res.output


def test_clipping_survives_invalid_polygons_and_keeps_only_polygon_parts():
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # self-crossing, as hand-drawn ones can be
    # a concave slide whose notch touches the edge: the raw intersection carries a stray line along it
    notched = shapely.Polygon([(0, 0), (20, 0), (20, 5), (10, 5), (10, 1), (9, 1), (9, 6), (20, 6), (20, 7), (0, 7)])
    t = gpd.GeoDataFrame({"slide_id": ["bow", "notch"], "visible_fraction_asc": 1.0}, geometry=[bowtie, notched])
    assert shapely.intersection(notched, shapely.box(0, 0, 10, 10)).geom_type == "GeometryCollection"
    out = within_extent(t, (0, 0, 10, 10))
    assert list(out.slide_id) == ["bow", "notch"]
    assert out.geometry.iloc[1].geom_type == "Polygon" and out.geometry.iloc[1].bounds == (0.0, 0.0, 10.0, 7.0)
