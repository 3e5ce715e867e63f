"""The Table 2 comparators' data conversion (issue 22): our chips → YOLO / DETR formats → back,
and their detections scored by ``insar-slide evaluate``'s code. Tiny chips made here; neither
ultralytics nor transformers is needed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import yaml
from PIL import Image

from insar_slide.model.encoding import InputEncoding
from insar_slide.training.comparators import (
    MissingExtraError,
    decode_uint8,
    detections_json,
    detr_target,
    encode_uint8,
    from_normalised_cxcywh,
    predictions_from_json,
    read_detr_split,
    read_yolo_label_text,
    require_extra,
    score_split,
    to_normalised_cxcywh,
    write_detr_dataset,
    write_yolo_dataset,
    yolo_label_text,
)
from insar_slide.training.data import read_split
from insar_slide.training.voc import coco_dict

W, H = 64, 48  # not square, so x and y cannot be swapped unnoticed


@pytest.fixture
def chipset(tmp_path):
    """Three train chips and two val chips of rates with NaN holes, boxes and one ignore region."""
    rng = np.random.default_rng(0)
    root = tmp_path / "chips"
    (root / "images").mkdir(parents=True)
    boxes = {"a": [[4, 6, 20, 30]], "b": [[10, 2, 60, 12], [30, 30, 40, 46]], "c": [], "d": [[0, 0, 16, 16]], "e": [[40, 20, 64, 48]]}
    ignore = {"b": [[50, 30, 62, 44]], "d": [[20, 20, 30, 30]]}
    docs: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "val": ([], [], [])}
    for k, name in enumerate("abcde"):
        rate = rng.normal(0, 20, (H, W)).astype("float32")
        rate[:5, :5] = np.nan
        rate[10, 10] = 300.0  # beyond the clip
        with rasterio.open(root / "images" / f"{name}.tif", "w", driver="GTiff", width=W, height=H, count=1, dtype="float32") as dst:
            dst.write(rate, 1)
        images, b, ig = docs["train" if name in "abc" else "val"]
        images.append({"id": k + 1, "file_name": f"images/{name}.tif", "width": W, "height": H})
        b.append(np.asarray(boxes[name], float).reshape(-1, 4))
        ig.append(np.asarray(ignore.get(name, []), float).reshape(-1, 4))
    for split, (images, b, ig) in docs.items():
        (root / f"coco_{split}.json").write_text(json.dumps(coco_dict(images, b, ig)))
    return root


def test_boxes_survive_normalised_cxcywh_and_yolo_text():
    b = np.array([[4, 6, 20, 30], [0, 0, W, H], [10.5, 2.25, 60, 12]])
    n = to_normalised_cxcywh(b, W, H)
    assert n[1].tolist() == [0.5, 0.5, 1.0, 1.0]
    np.testing.assert_allclose(from_normalised_cxcywh(n, W, H), b)
    np.testing.assert_allclose(read_yolo_label_text(yolo_label_text(b, W, H), W, H), b, atol=1e-4)
    assert yolo_label_text(np.zeros((0, 4)), W, H) == "" and read_yolo_label_text("", W, H).shape == (0, 4)


def test_a_label_line_of_another_format_is_refused_with_the_expected_one():
    with pytest.raises(Exception, match="expected '0 cx cy w h'"):
        read_yolo_label_text("1 0.5 0.5 0.1 0.1\n", W, H)


def test_the_8_bit_image_is_the_encoding_to_one_step():
    rate = np.array([[-120.0, -60, -30, 0], [0.5, 30, 60, np.nan]], dtype="float32")
    enc = InputEncoding()
    img = encode_uint8(rate, enc)
    assert img.dtype == np.uint8 and img.shape == (2, 4, 3)
    assert img[1, 3].tolist() == [128, 0, 0]  # a hole: rate 0, |rate| 0, not valid
    assert img[0, 0].tolist() == [0, 255, 255] and img[1, 2].tolist() == [255, 255, 255]
    np.testing.assert_allclose(decode_uint8(img), enc.encode(rate).numpy(), atol=1 / 255 + 1e-6)


def test_the_yolo_dataset_round_trips_to_the_chips(chipset, tmp_path):
    out = tmp_path / "yolo"
    done = write_yolo_dataset(chipset, out)
    assert [(d.split, d.chips, d.boxes, d.ignore) for d in done] == [("train", 3, 3, 1), ("val", 2, 2, 1)]
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["nc"] == 1 and data["names"] == {0: "landslide"} and data["train"] == "images/train"
    assert data["insar_slide"]["encoding"] == InputEncoding().to_dict()
    for split in ("train", "val"):
        chips, _ = read_split(chipset, split)
        for c in chips:
            back = read_yolo_label_text((out / "labels" / split / f"{c.path.stem}.txt").read_text(), W, H)
            np.testing.assert_allclose(back, c.boxes, atol=1e-4)
            ig = out / "ignore" / split / f"{c.path.stem}.txt"
            np.testing.assert_allclose(read_yolo_label_text(ig.read_text(), W, H) if ig.exists() else np.zeros((0, 4)),
                                       c.ignore, atol=1e-4)
            rgb = np.asarray(Image.open(out / "images" / split / f"{c.path.stem}.png"))
            np.testing.assert_allclose(decode_uint8(rgb), InputEncoding().encode(
                rasterio.open(c.path).read(1)).numpy(), atol=1 / 255 + 1e-6)


def test_the_yolo_dataset_keeps_the_first_chips_of_a_limited_split(chipset, tmp_path):
    done = write_yolo_dataset(chipset, tmp_path / "yolo", max_chips={"train": 2})
    assert [d.chips for d in done] == [2, 2]
    assert sorted(p.stem for p in (tmp_path / "yolo" / "images" / "train").iterdir()) == ["a", "b"]


def test_the_detr_dataset_round_trips_and_its_targets_leave_ignore_regions_out(chipset, tmp_path):
    write_detr_dataset(chipset, tmp_path / "detr", encoding=InputEncoding(clip_mm_yr=40))
    for split in ("train", "val"):
        chips, enc = read_detr_split(tmp_path / "detr" / f"coco_{split}.json")
        ours, _ = read_split(chipset, split)
        assert enc.clip_mm_yr == 40 and [c.path for c in chips] == [c.path for c in ours]
        for a, b in zip(chips, ours, strict=True):
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.ignore, b.ignore)
            t = detr_target(a, W, H)
            assert t["class_labels"].tolist() == [0] * len(b.boxes)
            np.testing.assert_allclose(from_normalised_cxcywh(t["boxes"], W, H), b.boxes, atol=1e-4)
    doc = json.loads((tmp_path / "detr" / "coco_train.json").read_text())
    assert doc["categories"] == [{"id": 0, "name": "landslide"}]
    assert sum(a["iscrowd"] for a in doc["annotations"]) == 1


def test_predictions_round_trip_through_coco_results(chipset):
    _, coco = read_split(chipset, "train")
    preds = [(np.array([[1, 2, 11, 12], [3, 3, 9, 9]], float), np.array([0.3, 0.9])), (np.zeros((0, 4)), np.zeros(0)),
             (np.array([[5, 5, 6, 7]], float), np.array([0.5]))]
    back = predictions_from_json(coco, detections_json(coco, preds))
    assert len(back) == 3
    np.testing.assert_allclose(back[0][0], preds[0][0][::-1])
    np.testing.assert_allclose(back[0][1], [0.9, 0.3])
    assert back[1][0].shape == (0, 4)


def _truth_as_yolo_would_say_it(chips):
    """Each chip's truth through the YOLO label text and back, as detections at score 0.9."""
    return [(read_yolo_label_text(yolo_label_text(c.boxes, W, H), W, H), np.full(len(c.boxes), 0.9)) for c in chips]


def test_perfect_detections_score_one_with_evaluates_code(chipset, tmp_path):
    chips, _ = read_split(chipset, "train")
    row = score_split(chipset, "train", _truth_as_yolo_would_say_it(chips), name="YOLO V5", backbone="CSP-Darknet53",
                      out=tmp_path / "eval")
    assert row["AP50"] == pytest.approx(1.0) and row["precision"] == 1.0 and row["recall"] == 1.0 and row["f1"] == 1.0
    assert (tmp_path / "eval" / "table2.md").read_text().splitlines()[2].startswith("| YOLO V5 | CSP-Darknet53 | 100.00%")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())[0]["method"] == "YOLO V5"
    for f in ("table2.csv", "table3.md", "pr_curve.png", "detections.json"):
        assert (tmp_path / "eval" / f).is_file()


def test_a_detection_in_an_ignore_region_is_neither_hit_nor_false_alarm(chipset, tmp_path):
    chips, _ = read_split(chipset, "train")
    preds = _truth_as_yolo_would_say_it(chips)
    ig = chips[1].ignore[0]
    preds[1] = (np.vstack([preds[1][0], ig]), np.r_[preds[1][1], 0.95])  # a detection on the ignore region
    preds[2] = (np.array([[2, 30, 14, 44]], float), np.array([0.8]))  # a false alarm on empty ground
    row = score_split(chipset, "train", preds, name="DETR", backbone="ResNet-50", out=tmp_path / "eval")
    assert (row["tp"], row["fp"], row["fn"]) == (3, 1, 0)


def test_scoring_refuses_predictions_of_another_split_size(chipset, tmp_path):
    with pytest.raises(Exception, match="predict on every chip"):
        score_split(chipset, "val", [(np.zeros((0, 4)), np.zeros(0))], name="DETR", backbone="ResNet-50", out=tmp_path / "e")


def test_a_missing_extra_names_the_install_command():
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[compare\]'"):
        require_extra("surely_not_an_installed_module_22")


def test_the_conversion_modules_import_neither_ultralytics_nor_transformers():
    import ast
    from pathlib import Path

    import insar_slide.training.comparators as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not names & {"ultralytics", "transformers"}


def test_the_table2_script_names_each_row_and_invents_no_figure(tmp_path):
    import importlib.util

    from .conftest import REPO

    spec = importlib.util.spec_from_file_location("table2_table", REPO / "benchmarks" / "table2_table.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    row = {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "AP50": 0.4, "AP": 0.2, "epochs": 3, "train_seconds": 7200.0}
    (tmp_path / "t2" / "eval" / "yolov12").mkdir(parents=True)
    (tmp_path / "t2" / "eval" / "yolov12" / "metrics.json").write_text(json.dumps([row]))
    (tmp_path / "ab" / "eval").mkdir(parents=True)
    (tmp_path / "ab" / "eval" / "metrics.json").write_text(json.dumps([{**row, "backbone": "ResNet-34", "checkpoint": "nowhere/best.safetensors"}]))
    text = mod.markdown(mod.collect(tmp_path / "t2", tmp_path / "ab"))
    body = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith(("| model", "| ---"))]
    assert [line.split(" | ")[0] for line in body] == ["| Faster R-CNN ResNet-34", "| YOLO V12"]
    assert body[1].startswith("| YOLO V12 | 50.0 | 25.0 | 33.3 | 40.0 | 20.0 | – | – | 3 | 2.00 h |")
    assert "Not measured yet (no metrics file): Faster R-CNN ResNet-34+FPN+CBAM, Faster R-CNN ResNet-34+FPN, YOLO V5, DETR." in text
