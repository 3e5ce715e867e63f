"""Multi-scale inference, the pure part: block means, coarse-level geometry and the
cross-scale merge rule. numpy and shapely only — no Dask, xarray or file I/O.

**Levels.** Scale ``f`` is the mosaic read as a block mean by ``f``: pixel ``(i, j)`` of the
level is the mean of the valid (finite) native pixels of rows ``i·f … i·f+f-1`` and columns
``j·f … j·f+f-1`` that lie inside the grid, and NaN when fewer than half of those in-grid
pixels are valid (so a block at the ragged edge is judged by the pixels it has). The sum runs
in float64 in a fixed order and is stored as float32, so a pixel's value depends only on its
own block, never on the window it was read for (which is what makes window hashes stable).
A level of an ``H × W`` grid is ``ceil(H/f) × ceil(W/f)``; it is tiled with the same
``window`` and ``halo`` (in its own pixels) as the native level, so a window of scale ``f``
sees a slide whole up to ``2·halo·f`` native pixels, at the model cost of a native window.

**Cross-scale rule** (applied by :mod:`.merge` after ownership and per-scale NMS):

1. *Size gate.* A box of scale ``f > 1`` is kept only when its longer side, in native pixels,
   exceeds :func:`min_extent_px` — ``2·halo·f'``, where ``f'`` is the next smaller factor in
   ``scales`` (1 for the first coarse level): what the finer level sees whole anyway, it finds
   at a finer pixel, so there the finer detection wins and the coarse one is dropped.
2. *Fragments.* A feature lying at least ``FRAGMENT_INSIDE`` (50 %) of its own area inside a
   feature of a coarser scale is a fragment of it: it is dropped, and its tracks and box count
   pass to the coarser feature (so ``tracks`` still lists every track that saw the slide). Its
   geometry does not: the coarse box is the slide's outline.
3. Dissolve as at one scale. A dissolved feature's ``scale`` is the largest factor among the
   boxes whose union is its polygon.

**Reduction tree.** A coarse window's core covers ``f × f`` native cores; the first level of
the tree is made a multiple of every factor (:func:`first_block`), so every coarse core lies in
one block at every level. A box lies inside its window's read area, so a box owned outside a
block reaches at most ``halo·f`` native pixels into it: a slide farther than
:func:`closing_margin` (``halo·max(scales) + 1``) from the block's inner borders can meet nothing
from another block, and is closed. With ``scales: [1]`` all three are what they were before.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import shapely

from .features import absorb_into

#: Default ``scales`` of a run: the native level and the 2x block mean (since 2026-12-07: on the
#: wide tuning basin F1 0.681 -> 0.726 and large slides 3 -> 11 of 18; the original tuning basin
#: and the demo unchanged; about a quarter more model work). ``[1]`` is one scale.
DEFAULT_SCALES: tuple[int, ...] = (1, 2)
#: A finer feature lying at least this share of its own area inside a coarser one is its fragment.
FRAGMENT_INSIDE = 0.5


def level_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    """(rows, cols) of the level of a grid of ``shape`` at block-mean ``factor``."""
    return (-(-shape[0] // factor), -(-shape[1] // factor))


def block_mean(native: np.ndarray, factor: int, out_shape: tuple[int, int]) -> np.ndarray:
    """The NaN-aware block mean of ``native`` (float, rows × cols of the native grid, starting
    at a multiple of ``factor``) as a float32 array of ``out_shape`` (module docstring's rule).

    ``native`` may be shorter than ``out_shape × factor`` at the grid's ragged edge: the
    missing pixels are outside the grid and do not count as invalid."""
    f = factor
    rows, cols = out_shape
    nr, nc = native.shape
    if nr > rows * f or nc > cols * f or nr <= (rows - 1) * f or nc <= (cols - 1) * f:
        raise ValueError(f"native block {native.shape} does not fit level shape {out_shape} at factor {f}")
    pad = np.full((rows * f, cols * f), np.nan, np.float64)
    pad[:nr, :nc] = native
    inside = np.zeros(pad.shape, np.int64)
    inside[:nr, :nc] = 1
    total = np.zeros(out_shape, np.float64)
    n_valid = np.zeros(out_shape, np.int64)
    n_in = np.zeros(out_shape, np.int64)
    for i in range(f):  # a fixed order of summation: the same block always gives the same bits
        for j in range(f):
            v = pad[i::f, j::f]
            ok = np.isfinite(v)
            total += np.where(ok, v, 0.0)
            n_valid += ok
            n_in += inside[i::f, j::f]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n_valid
    return np.where((n_valid > 0) & (2 * n_valid >= n_in), mean, np.nan).astype(np.float32)


def min_extent_px(factor: int, scales: tuple[int, ...], halo: int) -> float:
    """Native pixels a box of ``factor``'s level must exceed (longer side) to be kept."""
    finer = [s for s in scales if s < factor]
    return float(2 * halo * max(finer)) if finer else 0.0


def gate(extent_px: np.ndarray, factor: np.ndarray, scales: tuple[int, ...], halo: int) -> np.ndarray:
    """Which boxes pass the size gate: ``extent_px`` is each box's longer side (native px),
    ``factor`` its scale; boxes of the finest scale always pass."""
    limits = np.array([min_extent_px(int(f), scales, halo) for f in factor], dtype=np.float64)
    return (np.asarray(factor) == min(scales)) | (np.asarray(extent_px, np.float64) > limits)


def first_block(reduce_block: int, scales: tuple[int, ...]) -> int:
    """Windows per side of the tree's first level: ``reduce_block`` made a multiple of every factor."""
    return math.lcm(reduce_block, *scales)


def closing_margin(halo: int, scales: tuple[int, ...]) -> int:
    """Native pixels from a block's inner border within which a slide stays open."""
    return halo * max(scales) + 1


def absorb_fragments(features: pd.DataFrame, min_share: float = 0.0) -> pd.DataFrame:
    """Rule 2: drop the fragments of coarser features, giving their tracks and box counts to them.

    ``features``: columns geometry (shapely, one frame), score, tracks (comma-joined), n_boxes,
    scale. A fragment's absorber is the coarser feature it lies most inside (ties: the coarser,
    then the higher score, then the first); chains (1 inside 2 inside 4) end at the coarsest.
    ``min_share``: a fragment's area must be at least this share of its absorber's (smaller
    features inside stay their own: a run's ``nested_share``).
    """
    n = len(features)
    if n < 2 or features["scale"].nunique() < 2:
        return features
    features = features.reset_index(drop=True)
    geoms = np.asarray(features["geometry"], dtype=object)
    scale = features["scale"].to_numpy(np.int64)
    score = features["score"].to_numpy(np.float64)
    a, b = shapely.STRtree(geoms).query(geoms)
    m = scale[b] > scale[a]  # a may be a fragment of b
    a, b = a[m], b[m]
    parent = np.full(n, -1)
    if len(a):
        share = shapely.area(shapely.intersection(geoms[a], geoms[b])) / np.maximum(shapely.area(geoms[a]), 1e-300)
        ok = share >= FRAGMENT_INSIDE
        if min_share > 0:
            ok &= shapely.area(geoms[a]) >= min_share * shapely.area(geoms[b])
        a, b, share = a[ok], b[ok], share[ok]
        order = np.lexsort((b, -score[b], -scale[b], -share, a))  # per a: the best absorber first
        a, b = a[order], b[order]
        first = np.r_[True, a[1:] != a[:-1]] if len(a) else np.zeros(0, bool)
        parent[a[first]] = b[first]
    if (parent < 0).all():
        return features
    root = np.arange(n)
    for i in range(n):  # scale rises along every chain, so it ends
        while parent[root[i]] >= 0:
            root[i] = parent[root[i]]
    return absorb_into(features, np.where(parent >= 0, root, -1))


#: A mosaic pixel farther than this share from the model's training pixel is resampled to it
#: (``inference.match_pixel``) or, with that off, gets a warning.
PIXEL_TOLERANCE = 0.25


def pixel_resample(pixel_m: tuple[float, float], model_m: float) -> tuple[float, float]:
    """The factors (rows, cols) by which a window is resampled so that its pixel is the model's
    training pixel: ``|dy| / model_m`` and ``dx / model_m`` (40 m → 30 m is 4/3, an upsampling;
    each axis its own, so a geographic grid's narrower pixels at high latitude are evened out),
    or ``(1.0, 1.0)`` when both are within :data:`PIXEL_TOLERANCE` of it (the model sees the
    pixels as stored). ``pixel_m`` is ``(dx, |dy|)`` in metres (:meth:`~insar_slide.grid.Grid.pixel_size_m`)."""
    fy, fx = pixel_m[1] / model_m, pixel_m[0] / model_m
    if abs(fy - 1) <= PIXEL_TOLERANCE and abs(fx - 1) <= PIXEL_TOLERANCE:
        return (1.0, 1.0)
    return (fy, fx)


def describe_resample(factor: tuple[float, float]) -> str:
    """``0.5`` for an even factor, ``3.7 (rows) x 2.81 (cols)`` for an uneven one."""
    fy, fx = factor
    return f"{fy:.3g}" if abs(fy - fx) < 1e-3 * max(fy, fx) else f"{fy:.3g} (rows) x {fx:.3g} (cols)"


def pixel_advice(mosaic_m: float, model_m: float, scales: tuple[int, ...]) -> str | None:
    """One line when the mosaic's pixel (m) is more than 25 % off the model's training pixel,
    naming both and, when a block-mean factor brings it within 25 %, that factor; else None."""
    if abs(mosaic_m / model_m - 1) <= PIXEL_TOLERANCE:
        return None
    msg = (f"the mosaic's pixel ({mosaic_m:.1f} m) differs from the model's training pixel ({model_m:.1f} m) "
           f"by more than {PIXEL_TOLERANCE:.0%}, so slides look {'larger' if mosaic_m < model_m else 'smaller'} "
           "to it than in training")
    k = round(model_m / mosaic_m)
    if k >= 2 and abs(mosaic_m * k / model_m - 1) <= PIXEL_TOLERANCE:
        if k in scales:
            return f"{msg}; level x{k} ({mosaic_m * k:.1f} m) in scales matches it"
        return (f"{msg}; a block mean by {k} gives {mosaic_m * k:.1f} m: add {k} to scales "
                f"(e.g. scales: {sorted({*scales, k})}) to detect at that pixel too")
    return f"{msg}; no block mean brings it closer: use a model trained at this pixel"
