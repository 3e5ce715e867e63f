"""Pascal VOC XML as LabelImg reads and writes it, and COCO JSON for the chip sets.

VOC boxes are 1-based inclusive integer pixels: a box with edges x1..x2 (pixel units, see
:mod:`boxes`) is written ``xmin = floor(x1) + 1``, ``xmax = ceil(x2)``, and read back as
``x1 = xmin - 1``, ``x2 = xmax``; boxes on whole pixels survive the round trip unchanged.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

CLASS = "landslide"


def voc_xml(filename: str, size: tuple[int, int], boxes: np.ndarray, *, folder: str = "png",
            scores: Sequence[float] | None = None, difficult: np.ndarray | None = None) -> str:
    """LabelImg's XML for ``boxes``; ``difficult`` boxes (regions not to be scored, see
    :func:`insar_slide.training.boxes.ignore_boxes`) follow as objects with ``<difficult>1``."""
    h, w = size
    hard = np.zeros((0, 4)) if difficult is None else np.asarray(difficult, dtype=np.float64).reshape(-1, 4)
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(root, "path").text = filename
    src = ET.SubElement(root, "source")
    ET.SubElement(src, "database").text = "insar-slide"
    sz = ET.SubElement(root, "size")
    ET.SubElement(sz, "width").text = str(w)
    ET.SubElement(sz, "height").text = str(h)
    ET.SubElement(sz, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    n = len(boxes)
    for i, (x1, y1, x2, y2) in enumerate([*np.asarray(boxes).reshape(-1, 4), *hard]):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = CLASS
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0" if i < n else "1"
        if scores is not None and i < n:
            ET.SubElement(obj, "score").text = f"{scores[i]:.4f}"
        bb = ET.SubElement(obj, "bndbox")
        ET.SubElement(bb, "xmin").text = str(max(1, math.floor(x1) + 1))
        ET.SubElement(bb, "ymin").text = str(max(1, math.floor(y1) + 1))
        ET.SubElement(bb, "xmax").text = str(min(w, math.ceil(x2)))
        ET.SubElement(bb, "ymax").text = str(min(h, math.ceil(y2)))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def read_voc(path: str | Path, *, difficult: bool = False) -> tuple[str, tuple[int, int], np.ndarray]:
    """(image filename, (height, width), boxes (n, 4) in pixel-edge coordinates).

    The boxes are the objects not marked ``difficult``; with ``difficult=True``, only those marked.
    """
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputError(f"{p}: not a readable Pascal VOC XML file ({exc})") from exc
    try:
        filename = root.findtext("filename") or ""
        w = int(root.findtext("size/width") or 0)
        h = int(root.findtext("size/height") or 0)
        boxes = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            if bb is None or (obj.findtext("difficult", "0").strip() == "1") != difficult:
                continue
            xmin, ymin = float(bb.findtext("xmin") or 0), float(bb.findtext("ymin") or 0)
            xmax, ymax = float(bb.findtext("xmax") or 0), float(bb.findtext("ymax") or 0)
            boxes.append((xmin - 1, ymin - 1, xmax, ymax))
    except ValueError as exc:
        raise InputError(f"{p}: a size or box value is not a number ({exc})") from exc
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if w <= 0 or h <= 0:
        raise InputError(f"{p}: missing <size> width/height")
    if len(b) and ((b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
        raise InputError(f"{p}: a box lies outside its {w} x {h} image or is empty; fix it in LabelImg")
    return filename, (h, w), b


def coco_dict(images: list[dict[str, Any]], boxes: list[np.ndarray], ignore: list[np.ndarray] | None = None) -> dict[str, Any]:
    """A COCO detection document: one category (landslide), boxes as [x, y, w, h]; the
    ``ignore`` boxes of each image as ``iscrowd`` annotations (scored as neither hit nor miss)."""
    anns: list[dict[str, Any]] = []
    ign = ignore if ignore is not None else [np.zeros((0, 4))] * len(images)
    for img, b, ig in zip(images, boxes, ign, strict=True):
        for crowd, bb in ((0, b), (1, ig)):
            for x1, y1, x2, y2 in np.asarray(bb).reshape(-1, 4):
                anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": 1,
                             "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                             "area": float((x2 - x1) * (y2 - y1)), "iscrowd": crowd})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": CLASS}]}
