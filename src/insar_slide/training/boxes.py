"""Pure box geometry for chips (numpy + shapely, no I/O).

Boxes are ``(x1, y1, x2, y2)`` in the chip's pixel frame: x = column, y = row, edges in
pixel units (pixel (r, c) covers x ∈ [c, c+1), y ∈ [r, r+1)), as torchvision expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine


@dataclass(frozen=True)
class SliverRule:
    """When a polygon cut by the chip edge still counts as an object in that chip.

    Kept if the part inside the chip holds at least ``min_fraction`` of the polygon's area
    and its box is at least ``min_side_px`` on both sides; the box is the bounds of that part.
    """

    min_fraction: float = 0.3
    min_side_px: float = 4.0


def polygon_to_pixel(geom: shapely.Geometry, transform: Affine) -> shapely.Geometry:
    """Map coordinates → (x=col, y=row) pixel coordinates of the grid with ``transform``."""
    inv = ~transform
    return shapely.transform(geom, lambda xy: np.column_stack(inv * (xy[:, 0], xy[:, 1])))


def _parts(geoms_px: list[shapely.Geometry], size: tuple[int, int]) -> list[tuple[float, shapely.Geometry]]:
    """(polygon area, its part inside the chip) for each polygon with some area in the chip."""
    h, w = size
    frame = shapely.box(0, 0, w, h)
    out = []
    for g in geoms_px:
        if g.is_empty or g.area <= 0:
            continue
        inside = g.intersection(frame)
        if not inside.is_empty and inside.area > 0:
            out.append((g.area, inside))
    return out


def _passes(area: float, inside: shapely.Geometry, rule: SliverRule) -> bool:
    x1, y1, x2, y2 = inside.bounds
    return inside.area >= rule.min_fraction * area and x2 - x1 >= rule.min_side_px and y2 - y1 >= rule.min_side_px


def _bounds(parts: list[shapely.Geometry]) -> np.ndarray:
    return np.asarray([p.bounds for p in parts], dtype=np.float64).reshape(-1, 4)


def clip_boxes(geoms_px: list[shapely.Geometry], size: tuple[int, int], rule: SliverRule) -> np.ndarray:
    """Boxes (n, 4) of the polygons (already in chip pixel coordinates) that pass ``rule``."""
    return _bounds([inside for area, inside in _parts(geoms_px, size) if _passes(area, inside, rule)])


def ignore_boxes(labelled_px: list[shapely.Geometry], unlabelled_px: list[shapely.Geometry], size: tuple[int, int],
                 rule: SliverRule) -> np.ndarray:
    """Boxes (k, 4) of the regions a detector is neither asked for nor penalised on.

    The in-chip part of every labelled polygon that ``rule`` drops (a slide cut by the chip
    edge, most of it in the neighbouring chip) and of every unlabelled object (a simulated
    slide below the labelling thresholds on this track). A detection there is neither a
    true nor a false positive: COCO ``iscrowd`` regions, VOC ``difficult`` objects.
    """
    dropped = [inside for area, inside in _parts(labelled_px, size) if not _passes(area, inside, rule)]
    return _bounds(dropped + [inside for _, inside in _parts(unlabelled_px, size)])


def rotate_cw(image: np.ndarray, boxes: np.ndarray, quarter_turns: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate an image (rows, cols) and its boxes clockwise by ``quarter_turns`` × 90°, exactly."""
    img, b = image, boxes.copy()
    for _ in range(quarter_turns % 4):
        h = img.shape[0]
        img = np.rot90(img, k=-1)
        b = np.column_stack([h - b[:, 3], b[:, 0], h - b[:, 1], b[:, 2]]) if len(b) else b
    return np.ascontiguousarray(img), b


def block_split(block_ids: np.ndarray, *, val_fraction: float, seed: int) -> np.ndarray:
    """True for items in validation: whole spatial blocks, in a seeded random order, until
    at least ``val_fraction`` of the items are validation (never every block, unless
    ``val_fraction`` is 1: a held-out region, all validation)."""
    if val_fraction >= 1:
        return np.ones(len(block_ids), bool)
    blocks = np.unique(block_ids)
    rng = np.random.default_rng(seed)
    order = rng.permutation(blocks)
    val = np.zeros(len(block_ids), bool)
    target = val_fraction * len(block_ids)
    for blk in order[:-1] if len(order) > 1 else []:
        if val.sum() >= target:
            break
        val |= block_ids == blk
    return val
