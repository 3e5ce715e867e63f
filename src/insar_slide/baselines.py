"""The paper's baselines at basin scale: Getis-Ord Gi* hot spots and K-means (sections 3.3, 3.4).

Both work per track on the Dask-backed mosaic, chunk by chunk, and end as an inventory in the
same schema as ``run`` (``method`` = ``hotspot`` / ``kmeans``):

**Gi\\*** of the deformation magnitude |rate| (a slide may move toward or away from the
satellite; on the signed rate, half of them would be cold spots). Binary weights: every valid
cell within ``distance_px`` (Euclidean, cell centres; the paper's 7) of a cell, the cell itself
included. With x̄ and s the mean and (population) standard deviation of all valid cells of the
track, computed once, and W_i, S_i the neighbour count and sum at cell i::

    z_i = (S_i − x̄ W_i) / (s · sqrt((n W_i − W_i²) / (n − 1)))

(esda's ``G_Local(star=True)``, checked to 1e-6 in the tests). Focal sums are
``dask.array.map_overlap`` with a halo of ``distance_px``; NaN cells count neither in sums nor
in counts and get no z. Hot: z > ``z`` (2.58, p < 0.01) and |rate| ≥ ``min_abs_rate``.

**K-means**, k = 2 by default, on the pixels with |rate| ≥ ``min_abs_rate``; features: |rate|
and the 5 × 5 NaN-aware mean of |rate| around the pixel (so an isolated noisy pixel and a
coherent patch differ), both standardised. Fitted on a random sample of at most ``sample``
candidate pixels (drawn per chunk with fixed seeds), then every chunk is assigned to the
nearest centre. The cluster with the largest mean |rate| is the landslide class.

**Regions**: flagged pixels → 8-connected components across chunk borders
(each chunk labelled on its own, pieces touching across a seam or corner joined by a
connected-components pass over the small graph of pieces: a region cut by a chunk seam is one
region, and memory stays that of a few chunks) → polygons (a region's pieces joined by a
coverage union) → at least ``min_area_px`` pixels → ascending and descending regions that
overlap by ``dissolve_overlap`` of the smaller merged into one row.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Literal

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr
from scipy import ndimage

from .core.features import dissolve
from .errors import ConfigError, InputError
from .grid import Grid
from .inventory import finish_schema, polygon_rate_stats
from .mosaic import RATE, grid_of
from .progress import Progress, dask_tasks
from .quality import apply_mask
from .run.config import BaselineConfig, HotspotConfig, KMeansConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- Gi*


def disk(distance: float) -> np.ndarray:
    r = int(np.floor(distance))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy**2 + xx**2 <= distance**2 + 1e-9).astype(np.float64)


def _focal(block: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(2, rows, cols): focal sum and count of the valid cells under ``kernel``."""
    valid = np.isfinite(block)
    x = np.where(valid, block, 0.0).astype(np.float64)
    s = ndimage.correlate(x, kernel, mode="constant", cval=0.0)
    n = ndimage.correlate(valid.astype(np.float64), kernel, mode="constant", cval=0.0)
    return np.stack([s, n])


def gistar(values: da.Array, distance: float) -> da.Array:
    """Gi* z-scores of a 2-D Dask array (NaN = no data) with binary distance weights."""
    kernel = disk(distance)
    depth = kernel.shape[0] // 2
    if min(min(c) for c in values.chunks) < depth:
        size = max(depth * 4, max(max(c) for c in values.chunks))
        log.warning("Gi*: distance %s px is larger than a chunk; rechunking to %d px", distance, size)
        values = values.rechunk(size)
    valid = da.isfinite(values)
    x = da.where(valid, values, 0.0).astype(np.float64)
    n, total, total2 = dask.compute(valid.sum(), x.sum(), (x * x).sum())
    n = int(n)
    if n < 2:
        raise InputError("Gi*: fewer than two valid pixels; the track holds no measurements")
    mean = total / n
    std = float(np.sqrt(max(total2 / n - mean * mean, 0.0)))
    if std == 0:
        raise InputError("Gi*: the rate is constant over the track; there is nothing to test")

    def z_block(block: np.ndarray) -> np.ndarray:
        s, w = _focal(block, kernel)
        den = std * np.sqrt(np.maximum(n * w - w * w, 0.0) / (n - 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (s - mean * w) / den
        return np.where(np.isfinite(block) & (den > 0), z, np.nan).astype(np.float32)

    return da.map_overlap(z_block, values, depth=depth, boundary=np.nan, dtype=np.float32)


def hotspot_mask(rate: da.Array, cfg: HotspotConfig) -> da.Array:
    mag = da.fabs(rate)
    z = gistar(mag, cfg.distance_px)
    return (z > cfg.z) & (mag >= cfg.min_abs_rate)


# ---------------------------------------------------------------------------- K-means


def _features(block: np.ndarray) -> np.ndarray:
    """(2, rows, cols): |rate| and its 5×5 NaN-aware focal mean."""
    mag = np.abs(block.astype(np.float64))
    s, n = _focal(mag, np.ones((5, 5)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([mag, np.where(n > 0, s / n, np.nan)])


def _sample_block(block: np.ndarray, thr: float, per_block: int, seed: int, block_id: tuple[int, ...]) -> np.ndarray:
    f = _features(block)
    ok = np.isfinite(f[0]) & (f[0] >= thr)
    cand = f[:, ok].T
    if len(cand) > per_block:
        rng = np.random.default_rng([seed, *block_id])
        cand = cand[rng.choice(len(cand), per_block, replace=False)]
    return cand


def kmeans_mask(rate: da.Array, cfg: KMeansConfig) -> tuple[da.Array, dict[str, Any]]:
    from sklearn.cluster import KMeans

    if cfg.k < 2:
        raise ConfigError(f"baseline.kmeans.k: {cfg.k} — K-means needs at least 2 clusters (the paper uses 2)")
    ids = list(np.ndindex(*rate.numblocks))
    # Features need a 2-px halo; sampling from overlapped blocks keeps them exact at seams.
    over = da.overlap.overlap(rate, depth=2, boundary=np.nan)
    oblocks = over.to_delayed().ravel()
    per_block = max(1, cfg.sample // max(1, len(ids)))
    parts = dask.compute(*[dask.delayed(_sample_block)(ob, cfg.min_abs_rate, per_block, cfg.seed, i)
                           for ob, i in zip(oblocks, ids, strict=True)])
    sample = np.concatenate([p for p in parts if len(p)], axis=0) if any(len(p) for p in parts) else np.zeros((0, 2))
    info: dict[str, Any] = {"candidates_sampled": len(sample)}
    if len(sample) < cfg.k:
        info["note"] = f"fewer than k={cfg.k} pixels with |rate| >= {cfg.min_abs_rate}: nothing to cluster"
        return da.zeros(rate.shape, dtype=bool, chunks=rate.chunks), info
    mu, sd = sample.mean(0), sample.std(0)
    sd[sd == 0] = 1.0
    km = KMeans(n_clusters=cfg.k, n_init=10, random_state=cfg.seed).fit((sample - mu) / sd)
    centres = km.cluster_centers_ * sd + mu
    target = int(np.argmax(centres[:, 0]))
    info.update(centres_abs_rate=centres[:, 0].tolist(), centres_focal_mean=centres[:, 1].tolist(), landslide_cluster=target)

    def assign(block: np.ndarray) -> np.ndarray:
        f = _features(block)
        ok = np.isfinite(f[0]) & (f[0] >= cfg.min_abs_rate) & np.isfinite(f[1])
        x = (np.moveaxis(f, 0, -1) - mu) / sd
        d = ((x[..., None, :] - km.cluster_centers_[None, None]) ** 2).sum(-1)
        return ok & (np.argmin(np.nan_to_num(d, nan=np.inf), axis=-1) == target)

    return da.map_overlap(assign, rate, depth=2, boundary=np.nan, dtype=bool), info


# ---------------------------------------------------------------------------- regions


_EIGHT = np.ones((3, 3), int)


def _label_block(mask: np.ndarray, r0: int, c0: int, grid: Grid, min_area_px: int = 1) -> dict[str, Any]:
    """Label one chunk on its own: its region pieces as polygons and the labels on its four edges.

    Only these leave the task (the polygons of flagged regions and four pixel lines), so the
    driver never holds a chunk of the mask, however large the mosaic. A piece that touches no
    chunk edge is a whole region: below ``min_area_px`` it is dropped right here.
    """
    from rasterio import features

    labels, n = ndimage.label(mask, structure=_EIGHT)
    labels = labels.astype(np.int32)
    pieces: list[tuple[int, Any]] = []
    if n:
        keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_area_px
        keep[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
        keep[0] = False
        win_grid = Grid(grid.crs, grid.x0 + c0 * grid.dx, grid.y0 + r0 * grid.dy, grid.dx, grid.dy, *labels.shape)
        pieces = [(int(v), shapely.geometry.shape(geom))
                  for geom, v in features.shapes(labels, mask=keep[labels], transform=win_grid.transform, connectivity=8)]
    return {"n": int(n), "pieces": pieces, "top": labels[0].copy(), "bottom": labels[-1].copy(),
            "left": labels[:, 0].copy(), "right": labels[:, -1].copy()}


def _seam_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label pairs touching across a straight seam (8-connectivity: offsets −1, 0, +1 along it)."""
    pairs = []
    for d in (-1, 0, 1):
        x = a[max(0, -d):len(a) - max(0, d)]
        y = b[max(0, d):len(b) - max(0, -d)]
        hit = (x > 0) & (y > 0)
        pairs.append(np.stack([x[hit], y[hit]], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def _join(pieces: np.ndarray, grid: Grid) -> Any:
    """One region from its chunk pieces: they never overlap and meet along pixel edges, so with
    a vertex at every pixel corner they form a coverage and the (linear) coverage union is exact."""
    step = min(abs(grid.dx), abs(grid.dy))
    return drop_collinear(shapely.coverage_union_all(shapely.segmentize(pieces, step)))


def drop_collinear(geom: Any) -> Any:
    """``geom`` without the vertices that lie on a straight run between their neighbours (and
    without repeated vertices): the pixel-corner vertices ``_join`` added.

    One vectorised pass over the coordinates. ``shapely.simplify(geom, 0)`` would do the same
    but repairs its result with a buffer, which had not ended after ten minutes on the
    basin-sized Gi* region of the 16k² benchmark.
    """
    if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty:
        return geom
    geom = shapely.remove_repeated_points(geom, 0.0)
    kind, xy, offsets = shapely.to_ragged_array([geom])
    ring_off = offsets[0]
    starts, sizes = ring_off[:-1], np.diff(ring_off)
    distinct = sizes - 1  # a ring repeats its first vertex at the end
    ring = np.repeat(np.arange(len(starts)), sizes)
    pos = np.arange(len(xy)) - starts[ring]
    n = distinct[ring]
    closing = pos == n
    prev = starts[ring] + (pos - 1) % n
    nxt = starts[ring] + (pos + 1) % n
    a, b = xy - xy[prev], xy[nxt] - xy
    straight = (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0] == 0) & ((a * b).sum(1) > 0)  # not a spike
    keep = ~closing & ~straight
    counts = np.bincount(ring[keep], minlength=len(starts))
    if (counts < 3).any():  # a degenerate ring (not expected from a union of pixels): leave as is
        return geom
    kept = xy[keep]
    ends = np.cumsum(counts)
    out_xy = np.insert(kept, ends, kept[ends - counts], axis=0)  # close every ring again
    new_off = np.concatenate([[0], np.cumsum(counts + 1)])
    return shapely.from_ragged_array(kind, out_xy, (new_off, *offsets[1:]))[0]


def regions(mask: da.Array, grid: Grid, min_area_px: int) -> gpd.GeoDataFrame:
    """Connected regions (8-connectivity, across chunk borders) of a boolean Dask mask.

    Each chunk is labelled on its own (``scipy.ndimage.label``) and returns only its region
    polygons and edge labels; pieces that touch across a seam or a chunk corner are joined with
    a connected-components pass over the (tiny) graph of touching pieces, and their polygons
    unioned. Memory stays that of a few chunks at any mosaic size.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets_r = np.cumsum((0, *mask.chunks[0][:-1]))
    offsets_c = np.cumsum((0, *mask.chunks[1][:-1]))
    nbr, nbc = mask.numblocks
    tasks = [dask.delayed(_label_block)(b, int(offsets_r[i]), int(offsets_c[j]), grid, min_area_px)
             for (i, j), b in zip(np.ndindex(nbr, nbc), mask.to_delayed().ravel(), strict=True)]
    blocks = dict(zip(np.ndindex(nbr, nbc), dask.compute(*tasks), strict=True))
    base = {}  # global id of a block's label k: base[block] + k - 1
    total = 0
    for key in np.ndindex(nbr, nbc):
        base[key] = total
        total += blocks[key]["n"]
    if total == 0:
        return gpd.GeoDataFrame({"n_px": pd.Series([], dtype=int)}, geometry=gpd.GeoSeries([], crs=grid.crs), crs=grid.crs)
    edges = []
    for i, j in np.ndindex(nbr, nbc):
        here = blocks[i, j]
        links = []
        if j + 1 < nbc:  # the column seam to the right
            links.append((_seam_pairs(here["right"], blocks[i, j + 1]["left"]), (i, j + 1)))
        if i + 1 < nbr:  # the row seam below
            links.append((_seam_pairs(here["bottom"], blocks[i + 1, j]["top"]), (i + 1, j)))
        if i + 1 < nbr and j + 1 < nbc:  # the corner below right
            a, b = here["bottom"][-1], blocks[i + 1, j + 1]["top"][0]
            links.append((np.array([[a, b]]) if a and b else np.empty((0, 2), int), (i + 1, j + 1)))
        if i + 1 < nbr and j > 0:  # the corner below left
            a, b = here["bottom"][0], blocks[i + 1, j - 1]["top"][-1]
            links.append((np.array([[a, b]]) if a and b else np.empty((0, 2), int), (i + 1, j - 1)))
        for pairs, other in links:
            if len(pairs):
                edges.append(np.stack([pairs[:, 0] - 1 + base[i, j], pairs[:, 1] - 1 + base[other]], axis=1))
    pairs = np.concatenate(edges) if edges else np.empty((0, 2), int)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(total, total))
    _, component = connected_components(graph, directed=False)
    label = np.array([component[base[key] + k - 1] for key in np.ndindex(nbr, nbc) for k, _ in blocks[key]["pieces"]], np.int64)
    geoms = np.empty(len(label), dtype=object)
    geoms[:] = [g for key in np.ndindex(nbr, nbc) for _, g in blocks[key]["pieces"]]
    order = np.argsort(label, kind="stable")
    label, geoms = label[order], geoms[order]
    labs, start, count = np.unique(label, return_index=True, return_counts=True)
    # Pieces never overlap, so a region's area is the sum of its pieces': the minimum-area rule
    # applies before any join, and only the regions that are kept and cut by a seam are joined.
    n_px = np.rint(np.add.reduceat(shapely.area(geoms), start) / abs(grid.dx * grid.dy)).astype(np.int64) if len(geoms) else np.zeros(0, np.int64)
    keep = n_px >= min_area_px
    joined = [geoms[s0] if c == 1 else _join(geoms[s0:s0 + c], grid) for s0, c in zip(start[keep], count[keep], strict=True)]
    return gpd.GeoDataFrame({"label": labs[keep], "n_px": n_px[keep]}, geometry=gpd.GeoSeries(joined, crs=grid.crs), crs=grid.crs)


# ---------------------------------------------------------------------------- inventory


def masked_rate(ds: xr.Dataset, track: str, min_coherence: float | None) -> da.Array:
    """``los_rate`` of ``track`` (lazy, Dask) through the quality mask of ``run``
    (:func:`..quality.quality_mask`: NaN where the coherence is below ``min_coherence`` or the
    producer's mask is 0); as stored when ``min_coherence`` is None or the layers are absent."""
    rate = ds[RATE].sel(track=track).data
    layers = {n: ds[n].sel(track=track).data for n in ("coherence", "mask") if n in ds}
    if min_coherence is None or not layers:
        return rate
    return da.map_blocks(apply_mask, rate, layers.get("coherence"), layers.get("mask"), min_coherence, dtype=rate.dtype)


def baseline_inventory(ds: xr.Dataset, method: Literal["hotspot", "kmeans"], *, cfg: BaselineConfig,
                       tracks: list[str] | None = None, aoi: Any = None, run_id: str = "",
                       min_coherence: float | None = None,
                       progress: Progress | None = None) -> tuple[gpd.GeoDataFrame, dict[str, Any]]:
    """Run one baseline over the mosaic's tracks and return the inventory (contract 2) and notes;
    ``min_coherence``: the run's quality mask (:func:`masked_rate`); ``progress`` hears each
    track's Dask tasks as ``<method> <track>``."""
    grid = grid_of(ds)
    names = [str(t) for t in ds["track"].values]
    tracks = tracks or names
    frames: list[pd.DataFrame] = []
    notes: dict[str, Any] = {}
    for t in tracks:
        rate = masked_rate(ds, t, min_coherence)
        if not bool(da.isfinite(rate).any().compute()):
            log.warning("%s: track %s holds no measurements; skipped", method, t)
            notes[t] = "no valid pixels"
            continue
        info: dict[str, Any] = {}
        with dask_tasks(progress, f"{method} {t}"):
            if method == "hotspot":
                mask = hotspot_mask(rate, cfg.hotspot)
            else:
                mask, info = kmeans_mask(rate, cfg.kmeans)
            reg = regions(mask, grid, cfg.min_area_px)
        notes[t] = {"regions": len(reg), **info}
        if len(reg):
            frames.append(pd.DataFrame({"geometry": list(reg.geometry), "score": np.nan, "tracks": t, "n_boxes": 1}))
    if len(notes) and all(v == "no valid pixels" for v in notes.values()):
        raise InputError(f"{method}: the mosaic holds no valid pixels on any of {tracks}; nothing to analyse")
    feats = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["geometry", "score", "tracks", "n_boxes"])
    merged = dissolve(feats, cfg.dissolve_overlap, across_tracks_only=True) if len(feats) else feats
    gdf = gpd.GeoDataFrame(merged.drop(columns=["n_boxes"], errors="ignore"), geometry="geometry", crs=grid.crs)
    if aoi is not None and len(gdf):
        gdf = gdf[shapely.intersects(aoi, np.asarray(gdf.geometry.centroid, dtype=object))].reset_index(drop=True)
    if len(gdf):
        stats = polygon_rate_stats(ds, gdf.geometry, min_coherence=min_coherence)
        gdf = gpd.GeoDataFrame(pd.concat([gdf.reset_index(drop=True), stats], axis=1), geometry="geometry", crs=grid.crs)
    prefix = {"hotspot": "hs-", "kmeans": "km-"}[method]
    gdf["slide_id"] = [prefix + hashlib.sha1(shapely.to_wkb(g)).hexdigest()[:12] for g in gdf.geometry]
    gdf["method"] = method
    gdf["score"] = np.nan
    gdf["run_id"] = run_id
    gdf["model_id"] = ""
    return finish_schema(gdf, grid, tracks=names), notes
