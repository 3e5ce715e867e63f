"""Ingest rate products into one basin mosaic, window by window.

Frames of one track (same ``track`` name) are mosaicked onto one grid; different tracks are
stacked on the ``track`` dimension over the union of their extents. Without reprojection all
products must share CRS, pixel size and pixel lattice; with ``reproject=True`` every product is
warped (bilinear, NaN-aware) onto a target grid.

Overlap rule, where frames of one track overlap: ``mean`` (default) averages the valid values
of all frames at a pixel; ``first`` keeps the first frame (in command-line order) that has a
valid value there. NaN never wins over a value in either rule.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import dask.array as da
import numpy as np
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject as rio_reproject
from rasterio.warp import transform_bounds

from .errors import GridError, InsarSlideError
from .grid import Grid, PixelWindow, chunk_sizes
from .mosaic import TrackInfo, build_dataset, write_mosaic, write_version
from .progress import Progress
from .quality import LAYER_UNITS, LONG_NAMES, PER_TRACK
from .readers import RateSource

log = logging.getLogger(__name__)

Overlap = Literal["mean", "first"]
#: Layers that are counts or classes: where frames overlap a count adds up and a mask is taken
#: from the first frame (never averaged), and warping takes the nearest pixel, not a bilinear mix.
CATEGORICAL: dict[str, str] = {"point_count": "sum", "mask": "first"}
#: What a product's ``coherence`` layer measures (recorded per track in the mosaic's attributes).
COHERENCE_KIND = {"mintpy": "temporal coherence (MintPy)", "licsbas": "mean interferometric coherence (LiCSBAS coh_avg)",
                  "geotiff": "coherence (GeoTIFF given at ingest)",
                  "egms_l2a": "temporal coherence (EGMS, median of the cell's points)",
                  "egms_l2b": "temporal coherence (EGMS, median of the cell's points)"}


@dataclass(frozen=True)
class IngestPlan:
    """Where every source lands: the target grid and the ordered frames of each track."""

    grid: Grid
    tracks: tuple[TrackInfo, ...]
    frames: tuple[tuple[RateSource, ...], ...]
    reproject: bool
    overlap: Overlap


def plan_ingest(
    sources: Sequence[RateSource],
    *,
    reproject: bool = False,
    crs: str | None = None,
    resolution: float | None = None,
    overlap: Overlap = "mean",
) -> IngestPlan:
    if not sources:
        raise GridError("no input products given")
    reproject = reproject or crs is not None or resolution is not None
    names: list[str] = []
    for s in sources:
        if s.track.name not in names:
            names.append(s.track.name)
    frames = tuple(tuple(s for s in sources if s.track.name == n) for n in names)
    for group in frames:
        check_frames_of_one_track(group)
    grid = _target_grid(sources, crs=crs, resolution=resolution) if reproject else _union_grid(sources)
    tracks = tuple(_merge_track(group) for group in frames)
    return IngestPlan(grid, tracks, frames, reproject, overlap)


#: Frames of one track look the same way: headings further apart than this are two tracks.
SAME_TRACK_HEADING_DEG = 15.0


def check_frames_of_one_track(group: Sequence[RateSource]) -> None:
    """Refuse to average products into one track unless they are frames of one: never products
    whose headings differ (an ascending and a descending LOS cancel), and never products whose
    track is unknown (no name in their metadata) unless the user named the track (``--track``)."""
    if len(group) < 2:
        return
    name = group[0].track.name
    paths = ", ".join(s.path for s in group)
    known = [s for s in group if not math.isnan(s.track.heading)]
    for s in known[1:]:
        d = abs((s.track.heading - known[0].track.heading + 180) % 360 - 180)
        if d > SAME_TRACK_HEADING_DEG:
            raise GridError(f"{known[0].path} (heading {known[0].track.heading:.1f}°) and {s.path} (heading "
                            f"{s.track.heading:.1f}°) would be averaged into one track {name!r}, but they look different "
                            "ways; give each its own --track (e.g. --track asc_099 --track desc_062)")
    if any(s.track_from == "default" for s in group) and not all(s.track_from == "user" for s in group):
        raise GridError(f"{paths}: their metadata name no track, so they would be averaged into one track {name!r}; "
                        "give each its own --track (once per source, in order), or the same --track for all if they "
                        "are frames of one track")


def geometry_warnings(plan: IngestPlan) -> list[str]:
    """One line per track whose heading or incidence is unknown (neither in the metadata nor given)."""
    out = []
    for t, group in zip(plan.tracks, plan.frames, strict=True):
        if getattr(group[0], "component", "los") != "los":  # an EGMS L3 component has no line of sight
            continue
        missing = [k for k in ("heading", "incidence") if math.isnan(getattr(t, k))]
        if missing:
            out.append(f"track {t.name}: {' and '.join(missing)} unknown (not in the product's metadata); "
                       f"pass {' and '.join('--' + k for k in missing)} so that its geometry is recorded")
    return out


def pixel_warning(grid: Grid) -> str | None:
    """A line when the mosaic's pixel is far from the reference model's training pixel: what
    ``run`` does about it, and the ingest option that resamples the mosaic itself."""
    from .core.scales import PIXEL_TOLERANCE
    from .model.checkpoint import read_metadata, training_pixel_m
    from .run.config import default_model

    try:
        model_m = training_pixel_m(read_metadata(default_model()))
    except (OSError, InsarSlideError):  # no readable reference model here: nothing to compare with
        return None
    px = float(np.mean(grid.pixel_size_m()))
    if abs(px / model_m - 1) <= PIXEL_TOLERANCE:
        return None
    unit = f"{model_m:g}" if not grid.is_geographic() else f"{model_m * grid.dx / grid.pixel_size_m()[0]:.6f}"
    return (f"the mosaic's pixel ({px:.1f} m) is more than {PIXEL_TOLERANCE:.0%} off the reference model's training "
            f"pixel ({model_m:g} m); insar-slide run resamples every window to it (inference.match_pixel), or ingest "
            f"with --reproject --resolution {unit} to store the mosaic at it")


def _union_grid(sources: Sequence[RateSource]) -> Grid:
    ref = sources[0]
    grid = ref.grid
    for s in sources[1:]:
        if not grid.aligned_with(s.grid):
            why = _misalignment(ref.grid, s.grid)
            raise GridError(
                f"cannot mosaic or stack {s.path} with {ref.path}: {why}; "
                "pass --reproject (optionally with --crs and --resolution) to warp every product onto one grid"
            )
        grid = grid.union(s.grid)
    return grid


def _misalignment(a: Grid, b: Grid) -> str:
    if not a.same_crs(b):
        return f"CRS {b.crs} differs from {a.crs}"
    if not (math.isclose(a.dx, b.dx, rel_tol=1e-6) and math.isclose(a.dy, b.dy, rel_tol=1e-6)):
        return f"pixel size ({b.dx:.6g}, {-b.dy:.6g}) differs from ({a.dx:.6g}, {-a.dy:.6g})"
    return "pixel edges are offset by a fraction of a pixel"


def _target_grid(sources: Sequence[RateSource], *, crs: str | None, resolution: float | None) -> Grid:
    ref = sources[0].grid
    dst_crs = crs or ref.crs
    bounds = [transform_bounds(s.grid.crs, dst_crs, *s.grid.bounds, densify_pts=21) for s in sources]
    xmin, ymin = min(b[0] for b in bounds), min(b[1] for b in bounds)
    xmax, ymax = max(b[2] for b in bounds), max(b[3] for b in bounds)
    if resolution is None:
        if CRS.from_user_input(dst_crs) == CRS.from_user_input(ref.crs):
            res_x, res_y = ref.dx, -ref.dy
        else:  # keep the first product's pixel count across its own extent
            b0 = bounds[0]
            res_x = res_y = min((b0[2] - b0[0]) / ref.width, (b0[3] - b0[1]) / ref.height)
    else:
        res_x = res_y = float(resolution)
    # Anchor the lattice on the first product's corner (same CRS) so that it is not resampled
    # by a fraction of a pixel; in another CRS, on whole multiples of the resolution.
    same = CRS.from_user_input(dst_crs) == CRS.from_user_input(ref.crs)
    ax, ay = (ref.x0, ref.y0) if same else (0.0, 0.0)
    x0 = ax + math.floor((xmin - ax) / res_x + 1e-9) * res_x
    y0 = ay + math.ceil((ymax - ay) / res_y - 1e-9) * res_y
    width = math.ceil((xmax - x0) / res_x - 1e-9)
    height = math.ceil((y0 - ymin) / res_y - 1e-9)
    return Grid(dst_crs, x0, y0, res_x, -res_y, height, width)


def _merge_track(group: Sequence[RateSource]) -> TrackInfo:
    first = group[0].track
    headings = [s.track.heading for s in group if not math.isnan(s.track.heading)]
    incidences = [s.track.incidence for s in group if not math.isnan(s.track.incidence)]
    starts = [s.track.start_date for s in group if s.track.start_date]
    ends = [s.track.end_date for s in group if s.track.end_date]
    return replace(
        first,
        heading=float(np.mean(headings)) if headings else float("nan"),
        incidence=float(np.mean(incidences)) if incidences else float("nan"),
        start_date=min(starts) if starts else "",
        end_date=max(ends) if ends else "",
        sources=tuple(s.path for s in group),
    )


# ---------------------------------------------------------------------------- reading

def read_block(plan: IngestPlan, track: int, win: PixelWindow, layer: str | None = None) -> np.ndarray:
    """Mosaic of one track over ``win`` of the target grid (float32 mm/yr, NaN = no data), or of
    its quality ``layer`` (:mod:`.quality`) by the same overlap rule."""
    total = np.zeros((win.rows, win.cols), dtype="float64")
    count = np.zeros((win.rows, win.cols), dtype="int32")
    out = np.full((win.rows, win.cols), np.nan, dtype="float32")
    rule = CATEGORICAL.get(layer or "", plan.overlap)  # counts add up; a mask is not averaged
    for src in plan.frames[track]:
        piece = _warp(src, plan.grid, win, layer) if plan.reproject else _aligned(src, plan.grid, win, layer)
        if piece is None:
            continue
        valid = np.isfinite(piece)
        if rule == "first":
            fill = valid & np.isnan(out)
            out[fill] = piece[fill]
        else:
            total[valid] += piece[valid]
            count[valid] += 1
    if rule != "first":
        has = count > 0
        out[has] = (total[has] / (count[has] if rule == "mean" else 1)).astype("float32")
    return out


def _read(src: RateSource, win: PixelWindow, layer: str | None) -> np.ndarray:
    return src.read(win) if layer is None else src.read_layer(layer, win)


def _aligned(src: RateSource, grid: Grid, win: PixelWindow, layer: str | None = None) -> np.ndarray | None:
    r, c = grid.offset_of(src.grid)
    src_in_target = PixelWindow(r, c, src.grid.height, src.grid.width)
    inter = win.intersection(src_in_target)
    if inter is None:
        return None
    data = _read(src, inter.shift(-r, -c), layer)
    piece = np.full((win.rows, win.cols), np.nan, dtype="float32")
    piece[inter.row0 - win.row0:inter.row1 - win.row0, inter.col0 - win.col0:inter.col1 - win.col0] = data
    return piece


def _warp(src: RateSource, grid: Grid, win: PixelWindow, layer: str | None = None) -> np.ndarray | None:
    dst = grid.window_grid(win)
    b = transform_bounds(grid.crs, src.grid.crs, *dst.bounds, densify_pts=21)
    core = src.grid.window_of_bounds(*b)
    if core.rows == 0 or core.cols == 0:
        return None
    margin = 2  # bilinear needs the neighbours just outside the footprint
    r0, c0 = max(0, core.row0 - margin), max(0, core.col0 - margin)
    r1, c1 = min(src.grid.height, core.row1 + margin), min(src.grid.width, core.col1 + margin)
    sw = PixelWindow(r0, c0, r1 - r0, c1 - c0)
    data = _read(src, sw, layer)
    out = np.full(dst.shape, np.nan, dtype="float32")
    # Both transforms are given; rasterio may still emit a NotGeoreferencedWarning for the
    # bare arrays (filtered by the CLI; not here: this runs in Dask threads, and
    # warnings.catch_warnings is not thread-safe).
    rio_reproject(
        source=data, destination=out,
        src_transform=src.grid.window_grid(sw).transform, src_crs=src.grid.crs,
        dst_transform=dst.transform, dst_crs=grid.crs,
        src_nodata=np.nan, dst_nodata=np.nan,
        resampling=Resampling.nearest if layer in CATEGORICAL else Resampling.bilinear,
    )
    return out


def _block(plan: IngestPlan, layer: str | None = None, block_info: dict | None = None) -> np.ndarray:
    assert block_info is not None
    (t0, _), (r0, r1), (c0, c1) = block_info[None]["array-location"]
    return read_block(plan, t0, PixelWindow(r0, c0, r1 - r0, c1 - c0), layer)[None]


def lazy_mosaic(plan: IngestPlan, *, chunk: int, layer: str | None = None) -> da.Array:
    """The mosaic as a Dask array ``(track, y, x)`` (of the rates, or of a quality ``layer``):
    each chunk reads only its own windows."""
    h, w = plan.grid.shape
    chunks = ((1,) * len(plan.tracks), chunk_sizes(h, chunk), chunk_sizes(w, chunk))
    return da.map_blocks(_block, plan, layer, dtype="float32", chunks=chunks, meta=np.empty((0, 0, 0), "float32"))


def lazy_layers(plan: IngestPlan, *, chunk: int) -> dict[str, da.Array]:
    """The quality layers any source has (:mod:`.quality`): per track ``(track, y, x)`` (NaN on
    a track without the layer), and ``dem`` as one ``(y, x)`` layer from every track's
    sources, the first with a value at a pixel."""
    names = [n for n in LAYER_UNITS if any(n in s.layer_names for group in plan.frames for s in group)]
    out = {n: lazy_mosaic(plan, chunk=chunk, layer=n) for n in names if n in PER_TRACK}
    if "dem" in names:
        sources = tuple(s for group in plan.frames for s in group if "dem" in s.layer_names)
        one = replace(plan, tracks=plan.tracks[:1], frames=(sources,), overlap="first")
        out["dem"] = lazy_mosaic(one, chunk=chunk, layer="dem")[0]
    return out


def ingest(
    sources: Sequence[RateSource],
    out: str | Path,
    *,
    reproject: bool = False,
    crs: str | None = None,
    resolution: float | None = None,
    overlap: Overlap = "mean",
    chunk: int = 1024,
    overwrite: bool = False,
    version: str | None = None,
    progress: Progress | None = None,
) -> str | Path:
    """Write ``sources`` as one basin mosaic at ``out`` (all or nothing).

    ``version``: add them as a new version (label) of the existing basin ``out`` instead; the
    grid, CRS and tracks must be the basin's. ``progress`` hears the chunks as ``ingest``.
    """
    plan = plan_ingest(sources, reproject=reproject, crs=crs, resolution=resolution, overlap=overlap)
    log.info("ingest: %d product(s), %d track(s), grid %s x %s in %s", len(sources), len(plan.tracks), *plan.grid.shape, plan.grid.crs)
    for line in [*geometry_warnings(plan), *filter(None, [pixel_warning(plan.grid)])]:
        log.warning(line)
    rate = lazy_mosaic(plan, chunk=chunk)
    products = sorted({s.product for s in sources})
    dates = sorted({d for t in plan.tracks for d in (t.start_date, t.end_date) if d})
    attrs = {
        "product": ",".join(products),
        "overlap_rule": overlap,
        "reprojected": int(plan.reproject),
        "time_span": f"{dates[0]}/{dates[-1]}" if dates else "",
    }
    if any(s.offset or s.scale < 0 for s in sources):  # what was done to the products' values
        attrs["corrections"] = json.dumps({s.path: {"sign_flipped": s.scale < 0, "offset_mm_yr": round(s.offset, 3)}
                                           for s in sources})
    layers = lazy_layers(plan, chunk=chunk)
    components = {t.name: c for t, group in zip(plan.tracks, plan.frames, strict=True)
                  if (c := getattr(group[0], "component", "los")) != "los"}
    if components:  # EGMS L3: these "tracks" are motion components, positive up / east, not LOS
        attrs["components"] = json.dumps(components)
    if "coherence" in layers:  # what the coherence is, per track: the threshold means different things
        attrs["coherence_kind"] = json.dumps({t.name: sorted({COHERENCE_KIND.get(s.product, s.product) for s in group
                                                              if "coherence" in s.layer_names})
                                              for t, group in zip(plan.tracks, plan.frames, strict=True)})
    ds = build_dataset(rate, plan.grid, plan.tracks, extra=layers, attrs=attrs)
    for name in layers:
        ds[name].attrs.update({"units": LAYER_UNITS[name], "long_name": LONG_NAMES[name]})
    if layers:
        log.info("ingest: quality layers %s", ", ".join(layers))
    if version is None:
        return write_mosaic(ds, out, chunk=chunk, overwrite=overwrite, progress=progress, stage="ingest")
    write_version(ds, out, version, chunk=chunk, overwrite=overwrite, progress=progress, stage="ingest")
    return out
