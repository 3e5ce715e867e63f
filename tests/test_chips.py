import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from insar_slide import open_basin
from insar_slide.cli import main
from insar_slide.errors import InputError
from insar_slide.sim import basin as sim_basin
from insar_slide.sim.config import SimConfig
from insar_slide.training.boxes import SliverRule, block_split, clip_boxes, ignore_boxes, rotate_cw
from insar_slide.training.chips import make_chips
from insar_slide.training.config import ChipsConfig
from insar_slide.training.voc import read_voc, voc_xml


@settings(max_examples=50, deadline=None)
@given(h=st.integers(8, 40), w=st.integers(8, 40), k=st.integers(0, 3), data=st.data())
def test_rotation_moves_boxes_with_the_pixels(h, w, k, data):
    x1 = data.draw(st.integers(0, w - 2))
    y1 = data.draw(st.integers(0, h - 2))
    x2 = data.draw(st.integers(x1 + 1, w))
    y2 = data.draw(st.integers(y1 + 1, h))
    img = np.zeros((h, w))
    img[y1:y2, x1:x2] = 1
    rot, b = rotate_cw(img, np.array([[x1, y1, x2, y2]], float), k)
    rx1, ry1, rx2, ry2 = b[0].astype(int)
    assert rot[ry1:ry2, rx1:rx2].sum() == img.sum() == rot.sum()
    back, bb = rotate_cw(rot, b, 4 - k)
    assert np.array_equal(back, img) and np.array_equal(bb, [[x1, y1, x2, y2]])


def test_rotation_is_clockwise():
    img = np.array([[1, 2], [3, 4]])
    rot, _ = rotate_cw(img, np.zeros((0, 4)), 1)
    assert rot.tolist() == [[3, 1], [4, 2]]


def test_sliver_rule():
    rule = SliverRule(min_fraction=0.3, min_side_px=4)
    inside = shapely.box(10, 10, 30, 30)
    sliver = shapely.box(-18, 10, 2, 30)  # 10 % inside
    half = shapely.box(-10, 40, 10, 60)  # 50 % inside
    thin = shapely.box(60, 10, 62, 40)  # 2 px wide
    boxes = clip_boxes([inside, sliver, half, thin], (64, 64), rule)
    assert boxes.tolist() == [[10, 10, 30, 30], [0, 40, 10, 60]]


def test_block_split_keeps_blocks_whole():
    ids = np.repeat(np.arange(10), 5)
    val = block_split(ids, val_fraction=0.3, seed=1)
    assert 0.3 <= val.mean() < 0.5
    for b in range(10):
        assert len(set(val[ids == b])) == 1


def test_voc_round_trip():
    boxes = np.array([[3, 4, 20, 30], [0, 0, 64, 64]], float)
    xml = voc_xml("a.png", (64, 64), boxes)
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "a.xml"
        p.write_text(xml)
        name, size, got = read_voc(p)
        assert (name, size) == ("a.png", (64, 64)) and np.array_equal(got, boxes)
        p.write_text(voc_xml("a.png", size, got))
        assert p.read_text() == xml
        p.write_text(xml.replace("<xmax>64</xmax>", "<xmax>99</xmax>"))
        with pytest.raises(InputError, match="outside"):
            read_voc(p)


def test_ignore_regions_are_dropped_slivers_and_unlabelled_objects():
    rule = SliverRule(0.3, 4.0)
    labelled = [shapely.box(10, 10, 30, 30), shapely.box(-40, 50, 5, 60)]  # the second: 11 % inside
    unlabelled = [shapely.box(70, 70, 90, 90), shapely.box(200, 200, 220, 220)]  # the second: outside
    assert clip_boxes(labelled, (100, 100), rule).tolist() == [[10, 10, 30, 30]]
    assert ignore_boxes(labelled, unlabelled, (100, 100), rule).tolist() == [[0, 50, 5, 60], [70, 70, 90, 90]]


def test_voc_difficult_objects_are_kept_apart():
    boxes, hard = np.array([[3, 4, 20, 30]], float), np.array([[40, 40, 50, 50]], float)
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "a.xml"
        p.write_text(voc_xml("a.png", (64, 64), boxes, difficult=hard))
        assert p.read_text().count("<difficult>1</difficult>") == 1
        assert np.array_equal(read_voc(p)[2], boxes) and np.array_equal(read_voc(p, difficult=True)[2], hard)


@pytest.fixture(scope="module")
def basin(tmp_path_factory):
    d = tmp_path_factory.mktemp("chips")
    cfg = SimConfig.model_validate({"seed": 5, "grid": {"shape": [1024, 1024], "chunk": 512},
                                    "landslides": {"density_per_100km2": 20}})
    return sim_basin.simulate(cfg, d / "b.zarr")


def test_make_chips_writes_a_leak_free_rotated_set(basin, tmp_path):
    store, truth = basin
    cfg = ChipsConfig(sources=[{"mosaic": str(store), "inventory": str(truth)}], out=str(tmp_path / "chips"),
                      size=256, split={"block_px": 512, "val_fraction": 0.3, "seed": 0})
    s = make_chips(cfg)
    assert s["chips"] == 4 * s["windows"] and s["boxes_train"] > 0
    table = pd.read_csv(tmp_path / "chips" / "chips.csv")
    # Every rotation of a window is in the same split as the window.
    assert table.groupby(["track", "row0", "col0"]).split.nunique().max() == 1
    coco = json.loads((tmp_path / "chips" / "coco_train.json").read_text())
    assert len(coco["images"]) == s["train"] and sum(not a["iscrowd"] for a in coco["annotations"]) == s["boxes_train"]
    # The unrotated chip is georeferenced and holds the mosaic's values.
    first = table[table.rotation == 0].iloc[0]
    with rasterio.open(tmp_path / "chips" / "images" / f"{first.chip}.tif") as src:
        img = src.read(1)
        assert src.crs.to_epsg() == 32647
    ds = open_basin(store)
    ref = ds.los_rate.sel(track=first.track).values[first.row0:first.row0 + 256, first.col0:first.col0 + 256]
    np.testing.assert_array_equal(img, ref)
    # Slides too slow or too masked on a track are ignore regions there (COCO iscrowd, VOC difficult).
    crowd = [a for a in coco["annotations"] if a["iscrowd"]]
    assert crowd and table.n_ignore[table.split == "train"].sum() == len(crowd)
    chip = table[table.n_ignore > 0].iloc[0]
    assert len(read_voc(tmp_path / "chips" / "voc" / f"{chip.chip}.xml", difficult=True)[2]) == chip.n_ignore


def test_voc_folder_as_inventory_gives_the_same_boxes(basin, tmp_path):
    store, truth = basin
    base = dict(size=256, split={"block_px": 512}, rotations=(0, 90))
    first = make_chips(ChipsConfig(sources=[{"mosaic": str(store), "inventory": str(truth)}], out=str(tmp_path / "a"), **base))
    again = make_chips(ChipsConfig(sources=[{"mosaic": str(store), "inventory": str(tmp_path / "a" / "voc"),
                                             "voc_manifest": str(tmp_path / "a" / "chips.csv")}],
                                   out=str(tmp_path / "b"), sliver_min_fraction=0.99, **base))
    assert again["chips"] == first["chips"]
    for xml in sorted((tmp_path / "a" / "voc").glob("*.xml")):
        _, _, a = read_voc(xml)
        _, _, b = read_voc(tmp_path / "b" / "voc" / xml.name)
        # Boxes of neighbouring chips cut at the edge show up too; every original box is kept.
        for box in a:
            assert any(np.allclose(box, other) for other in b)


def test_cli_chips_with_a_config_file(basin, tmp_path):
    store, truth = basin
    cfg = {"sources": [{"mosaic": str(store), "inventory": str(truth), "tracks": ["asc_099"]}],
           "out": "chips", "size": 512, "rotations": [0]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["chips", str(tmp_path / "c.yaml")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "chips" / "manifest.json").is_file()  # relative to the config file
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**cfg, "sizee": 3}))
    res = CliRunner().invoke(main, ["chips", str(tmp_path / "bad.yaml")])
    assert res.exit_code == 2 and "unknown key 'sizee'" in res.output


def test_chips_from_a_vector_file_in_another_crs(basin, tmp_path):
    store, truth = basin
    gdf = gpd.read_parquet(truth).to_crs("EPSG:4326")
    gdf[["geometry"]].to_file(tmp_path / "inv.gpkg")
    s = make_chips(ChipsConfig(sources=[{"mosaic": str(store), "inventory": str(tmp_path / "inv.gpkg")}],
                               out=str(tmp_path / "c"), size=512, rotations=(0,)))
    assert s["boxes_train"] + s["boxes_val"] > 0


def test_every_shipped_chips_config_parses_and_points_into_the_repo_outputs():
    from insar_slide.training.config import load_chips_config

    from .conftest import REPO
    paths = sorted((REPO / "configs").glob("chips_*.yaml")) + sorted((REPO / "configs" / "reference").glob("chips_*.yaml"))
    assert {p.stem for p in paths} >= {"chips_demo", "chips_train", "chips_heldout", "chips_tuning"}
    for p in paths:
        cfg = load_chips_config(p)
        assert cfg.out.startswith(str(REPO / "out")), p
        for s in cfg.sources:
            assert s.mosaic.startswith(str(REPO / "out")) and s.mosaic.endswith(".zarr"), p
    # the evaluation regions are cut whole into the validation split, unrotated
    for name in ("chips_heldout", "chips_tuning"):
        cfg = load_chips_config(REPO / "configs" / "reference" / f"{name}.yaml")
        assert cfg.rotations == (0,) and cfg.split.val_fraction == 1.0


def test_coarse_chips_are_block_means_in_the_split_of_their_place(basin, tmp_path):
    store, truth = basin
    src = {"mosaic": str(store), "inventory": str(truth)}
    cfg = ChipsConfig(sources=[src, {**src, "scale": 2, "min_box_px": 12}], out=str(tmp_path / "chips"), size=128,
                      rotations=[0], split={"block_px": 512, "val_fraction": 0.3, "seed": 0})
    make_chips(cfg)
    table = pd.read_csv(tmp_path / "chips" / "chips.csv")
    fine, coarse = table[table.source == 0], table[table.source == 1]
    assert len(coarse) and len(fine)
    # A coarse chip's place (native px = 2 x its own) is in the split its native chips are in.
    blocks = {(r.row0 // 512, r.col0 // 512): r.split for r in fine.itertuples()}
    for r in coarse.itertuples():
        key = (r.row0 * 2 // 512, r.col0 * 2 // 512)
        assert blocks.get(key, r.split) == r.split
    # Its pixels are the NaN-aware 2 x 2 mean (NaN where fewer than 2 of 4 are valid), on a 60 m grid.
    c = coarse.iloc[0]
    with rasterio.open(tmp_path / "chips" / "images" / f"{c.chip}.tif") as f:
        img = f.read(1)
        assert f.transform.a == 60.0 and f.crs.to_epsg() == 32647
    nat = open_basin(store).los_rate.sel(track=c.track).values[2 * c.row0:2 * c.row0 + 256, 2 * c.col0:2 * c.col0 + 256]
    blocks4 = nat.reshape(128, 2, 128, 2).transpose(0, 2, 1, 3).reshape(128, 128, 4)
    n = np.isfinite(blocks4).sum(-1)
    with np.errstate(invalid="ignore"):
        want = np.where(n >= 2, np.nansum(blocks4, -1) / n, np.nan)
    np.testing.assert_allclose(img, want, rtol=1e-6, atol=1e-5, equal_nan=True)  # float32 sums


def test_min_box_px_turns_small_slides_into_ignore_regions(basin, tmp_path):
    store, truth = basin
    counts = []
    for min_px in (0, 12):
        src = {"mosaic": str(store), "inventory": str(truth), "scale": 2, "min_box_px": min_px}
        s = make_chips(ChipsConfig(sources=[src], out=str(tmp_path / f"c{min_px}"), size=128, rotations=[0],
                                   split={"block_px": 512, "val_fraction": 0.3, "seed": 0}))
        counts.append((s["boxes_train"] + s["boxes_val"], s["ignore_train"] + s["ignore_val"]))
        coco = json.loads((tmp_path / f"c{min_px}" / "coco_train.json").read_text())
        sides = [max(a["bbox"][2:]) for a in coco["annotations"] if not a["iscrowd"]]
        if min_px:
            assert sides and min(sides) >= 4  # clipped at a chip edge they may be smaller than 12, never a speck
    (b0, i0), (b12, i12) = counts
    assert b12 < b0 and i12 > i0
