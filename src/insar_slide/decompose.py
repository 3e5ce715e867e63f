"""LOS decomposition: vertical and east-west rates, and the speed along the fall line.

A track's LOS unit vector ``l = (east, north, up)`` points from the ground to the satellite
(right-looking SAR, look azimuth = heading + 90°), the same vector the simulator projects slide
motion on (:func:`insar_slide.core.geometry.los_unit_vector`): a LOS rate is ``v · l``, positive
toward the satellite (contract 1).

- **Vertical and east-west** (``v_up``, ``v_east``, mm/yr): where two or more tracks with a
  known heading and incidence have a value, least squares of ``LOS_k = v_east·l_east,k +
  v_up·l_up,k``. The north-south component is **neglected**: near-polar orbits (Sentinel-1,
  ALOS-2) look east or west, so ``l_north`` is small (≈ 0.14 for Sentinel-1) and north-south
  motion is almost unseen; whatever there is leaks into ``v_east`` and ``v_up``. A landslide
  moving north or south is therefore not measured by these two numbers (use ``v_slope``).
  NaN where the two tracks look nearly the same way (two ascending tracks): the noise gain
  ``sqrt(max diag (AᵀA)⁻¹)`` (mm/yr out per mm/yr of LOS noise) above :data:`MAX_GAIN`.
- **Along the fall line** (``v_slope``, mm/yr, positive = downslope), with a DEM: assuming the
  ground moves parallel to the local surface, down the steepest slope, with unit vector ``d``
  (east, north, up) from the DEM's gradient, ``LOS_k = v_slope · (d · l_k)``; ``v_slope`` by
  least squares over the tracks that have a value (one is enough). Its sensitivity
  ``sqrt(Σ_k (d·l_k)²)`` (for one track ``|d·l|``: the share of the slope motion the LOS sees)
  is returned beside it; where it is below :data:`MIN_SENSITIVITY` (0.2: a LOS noise of 1 mm/yr
  becomes more than 5 mm/yr along the slope — slopes facing north or south under a near-polar
  orbit, gentle slopes whose fall line lies across the LOS) ``v_slope`` is NaN. Flat ground
  has no fall line (``d = 0``): NaN.

**EGMS L3 mosaics** (``attrs["components"]``, JSON ``{track: "vertical" | "east_west"}``,
heading and incidence NaN) are decomposed already: ``v_up`` and ``v_east`` are those tracks'
rates (per slide, their polygon means), and ``v_slope`` is the least squares of the same model
with the components as tracks of vectors up ``(0, 0, 1)`` and east ``(1, 0, 0)``
(:data:`insar_slide.core.geometry.COMPONENT_VECTORS`): ``(d_e·v_e + d_u·v_u) / (d_e² + d_u²)``,
sensitivity ``sqrt(d_e² + d_u²)`` (north unseen: NaN on slopes facing north or south, as
above). A mosaic holding both LOS tracks and components uses the components only.

**Quality mask**: with ``min_coherence`` (:func:`decompose`, and
:func:`insar_slide.inventory.polygon_rate_stats` per slide) the rates are read through the
run's quality mask (:func:`insar_slide.quality.quality_mask`: a track's ``coherence`` below it,
or its producer's ``mask`` 0, is no value), as detection reads them.

**Limitation — one viewing geometry per track.** Each track's LOS vector comes from one heading
and one incidence (the scene centre's, as the products record it). Across a Sentinel-1 IW swath
the incidence runs from about 30° to 46°, so near a swath's edges the true vector is up to ~7°
of incidence off the one used. Measured by ``benchmarks/decompose_geometry.py`` (slides moving
down slopes of 10°–40° of every aspect; error against the decomposition with the true vectors,
as a share of the slide's speed): with both tracks 7° off the same way, ``v_up`` median 4–5 %,
max 9 %, ``v_east`` median 9–10 %, max 15 %; with the two 7° off in opposite ways, ``v_up``
median 7 %, max 12 %, ``v_east`` median 5 %, max 10 %; ``v_slope`` median 3–7 %, max ~22 %
(18 % where its sensitivity is ≥ 0.5). At ±3.5° about half of that. Per-pixel geometry
(MintPy ``incidenceAngle``/``azimuthAngle`` in ``geometryGeo.h5``, LiCSBAS ``U``/``E``/``N``)
is not read yet.

:func:`decompose` does this per pixel on a mosaic (lazy for a Dask-backed one);
:func:`slide_components` per slide, from the per-track mean rates and mean DEM gradient inside
each polygon that :func:`insar_slide.inventory.polygon_rate_stats` measures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from .core.geometry import COMPONENT_VECTORS, downslope_motion, los_vectors
from .errors import InputError
from .grid import Grid
from .mosaic import RATE, grid_of
from .quality import apply_mask

__all__ = ["COLUMNS", "MAX_GAIN", "MIN_SENSITIVITY", "decompose", "los_vectors", "mosaic_geometry", "slide_components",
           "slope_aspect", "solve_slope", "solve_up_east", "terrain_gradient", "up_east"]

#: Up/east are NaN where a LOS noise of 1 mm/yr would give more than this on either component.
MAX_GAIN = 5.0
#: ``v_slope`` is NaN where ``sqrt(Σ (d·l_k)²)`` is below this (noise gain above 1 / 0.2 = 5).
MIN_SENSITIVITY = 0.2
#: Per slide, a track's mean rate is used when at least this share of the polygon's pixels has a value.
MIN_TRACK_FRACTION = 0.3
DEM = "dem"

COLUMNS = ["v_up_mm_yr", "v_east_mm_yr", "v_slope_mm_yr", "v_slope_sensitivity", "dem_slope_deg", "dem_aspect_deg"]


# ---------------------------------------------------------------------------- pure numpy

def solve_up_east(rates: np.ndarray, los: np.ndarray, *, max_gain: float = MAX_GAIN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(v_up, v_east, gain) from LOS ``rates`` (k, ...) mm/yr and ``los`` (k, 3).

    Least squares over the tracks with a finite rate and a known vector, north neglected.
    ``gain`` = ``sqrt(max diag (AᵀA)⁻¹)``; up and east are NaN where fewer than two tracks
    have a value or ``gain`` > ``max_gain`` (gain is +inf where the system is singular).
    """
    r = np.asarray(rates, dtype=np.float64)
    shape = (-1,) + (1,) * (r.ndim - 1)
    le, lu = los[:, 0].reshape(shape), los[:, 2].reshape(shape)
    w = np.isfinite(r) & np.isfinite(le)
    r0 = np.where(w, r, 0.0)
    le0, lu0 = np.where(w, le, 0.0), np.where(w, lu, 0.0)
    n_ee, n_eu, n_uu = (le0 * le0).sum(0), (le0 * lu0).sum(0), (lu0 * lu0).sum(0)
    b_e, b_u = (r0 * le0).sum(0), (r0 * lu0).sum(0)
    det = n_ee * n_uu - n_eu * n_eu
    ok = (w.sum(0) >= 2) & (det > 1e-12 * np.maximum(n_ee * n_uu, 1e-30))
    safe = np.where(ok, det, 1.0)
    gain = np.where(ok, np.sqrt(np.maximum(n_ee, n_uu) / safe), np.inf)
    ok &= gain <= max_gain
    east = np.where(ok, (n_uu * b_e - n_eu * b_u) / safe, np.nan)
    up = np.where(ok, (n_ee * b_u - n_eu * b_e) / safe, np.nan)
    return up, east, gain


def terrain_gradient(z: Any, grid: Grid, *, row0: int = 0) -> tuple[Any, Any]:
    """(dz/deast, dz/dnorth) in m/m of elevations ``z`` (rows, cols) m on ``grid``'s lattice
    (row ``row0`` of the grid is ``z``'s first row; numpy or Dask).

    Central differences (one-sided on ``z``'s edges), over the pixel size in metres from
    :meth:`insar_slide.grid.Grid.pixel_size_m_rows` (per row on a geographic grid). The
    simulator's :func:`insar_slide.sim.geometry.gradient_en` is the same central difference on
    a window with a halo (interior only, one pixel size).
    """
    grad = da.gradient if isinstance(z, da.Array) else np.gradient
    dz_drow, dz_dcol = grad(z)  # per pixel
    dx_m, dy_m = grid.pixel_size_m_rows(row0 + np.arange(z.shape[0]))
    return dz_dcol / dx_m[:, None], dz_drow / (np.sign(grid.dy) * dy_m)  # rows run south when dy < 0


def solve_slope(rates: np.ndarray, los: np.ndarray, ge: np.ndarray, gn: np.ndarray, *,
                min_sensitivity: float = MIN_SENSITIVITY) -> tuple[np.ndarray, np.ndarray]:
    """(v_slope mm/yr, sensitivity) from LOS ``rates`` (k, ...) and the DEM gradient ``ge``,
    ``gn`` (...) m/m: ``LOS_k = v_slope · (d · l_k)`` by least squares over the tracks with a
    value, ``d`` the unit downslope vector. ``v_slope`` is NaN where the sensitivity
    ``sqrt(Σ (d·l_k)²)`` over those tracks is below ``min_sensitivity``, or no track has a value.
    """
    r = np.asarray(rates, dtype=np.float64)
    de, dn, du = downslope_motion(np.asarray(ge, dtype=np.float64), np.asarray(gn, dtype=np.float64))
    shape = (-1,) + (1,) * (r.ndim - 1)
    a = de[None] * los[:, 0].reshape(shape) + dn[None] * los[:, 1].reshape(shape) + du[None] * los[:, 2].reshape(shape)
    w = np.isfinite(r) & np.isfinite(a)
    a0 = np.where(w, a, 0.0)
    saa = (a0 * a0).sum(0)
    sens = np.sqrt(saa)
    ok = sens >= min_sensitivity
    s = np.where(ok, (np.where(w, r, 0.0) * a0).sum(0) / np.where(ok, saa, 1.0), np.nan)
    return s, np.where(w.any(0), sens, np.nan)


def slope_aspect(ge: np.ndarray, gn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slope, aspect) in degrees; aspect = azimuth of the downslope direction, clockwise from north."""
    return np.degrees(np.arctan(np.hypot(ge, gn))), np.degrees(np.arctan2(-ge, -gn)) % 360.0


# ---------------------------------------------------------------------------- mosaic and inventory

def mosaic_geometry(ds: xr.Dataset) -> tuple[np.ndarray, list[str]]:
    """((k, 3) vectors, k kinds) of the mosaic's tracks: a LOS track (kind ``los``) has its
    ground-to-satellite vector from the ``heading``/``incidence`` coordinates (NaN when either
    is unknown); an EGMS L3 component (``attrs["components"]``: ``vertical`` / ``east_west``)
    its pseudo vector (:data:`~insar_slide.core.geometry.COMPONENT_VECTORS`). Where the mosaic
    has components, its LOS tracks get NaN vectors: the components are used alone."""
    k = ds.sizes["track"]
    tracks = [str(t) for t in ds["track"].values]
    comp = json.loads(ds.attrs.get("components") or "{}")
    kinds = [comp.get(t, "los") if comp.get(t) in COMPONENT_VECTORS else "los" for t in tracks]
    if any(kd != "los" for kd in kinds):
        return np.array([COMPONENT_VECTORS.get(kd, (np.nan,) * 3) for kd in kinds], dtype=float), kinds
    h = ds["heading"].values if "heading" in ds.coords else np.full(k, np.nan)
    i = ds["incidence"].values if "incidence" in ds.coords else np.full(k, np.nan)
    return los_vectors(h, i), kinds


def up_east(rates: np.ndarray, los: np.ndarray, kinds: Sequence[str], *,
            max_gain: float = MAX_GAIN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(v_up, v_east, gain) of ``rates`` (k, ...): :func:`solve_up_east` over LOS tracks, or the
    rates of the ``vertical`` / ``east_west`` components themselves (gain 1) when ``kinds`` has any."""
    r = np.asarray(rates, dtype=np.float64)
    if all(kd == "los" for kd in kinds):
        return solve_up_east(r, los, max_gain=max_gain)
    nan = np.full(r.shape[1:], np.nan)
    up = r[list(kinds).index("vertical")] if "vertical" in kinds else nan
    east = r[list(kinds).index("east_west")] if "east_west" in kinds else nan
    return up, east, np.where(np.isfinite(up) | np.isfinite(east), 1.0, np.inf)


def _up_east_block(block: np.ndarray, los: np.ndarray, kinds: list[str], max_gain: float) -> np.ndarray:
    up, east, gain = up_east(block, los, kinds, max_gain=max_gain)
    n = np.isfinite(block).sum(0)
    return np.stack([up, east, gain, n]).astype(np.float32)


def _slope_block(block: np.ndarray, ge: np.ndarray, gn: np.ndarray, los: np.ndarray, min_sens: float) -> np.ndarray:
    s, sens = solve_slope(block, los, ge, gn, min_sensitivity=min_sens)
    return np.stack([s, sens]).astype(np.float32)


def _no_tiny(chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk sizes with a last chunk of one pixel merged into the one before (for the gradient)."""
    return (*chunks[:-2], chunks[-2] + chunks[-1]) if len(chunks) > 1 and chunks[-1] < 2 else chunks


def decompose(ds: xr.Dataset, *, min_coherence: float | None = None, max_gain: float = MAX_GAIN,
              min_sensitivity: float = MIN_SENSITIVITY) -> xr.Dataset:
    """Per pixel: ``v_up``, ``v_east`` (mm/yr, north-south neglected), ``gain_up_east``,
    ``n_tracks`` and, when the mosaic has ``dem``, ``v_slope`` (mm/yr along the fall line,
    positive downslope) and ``slope_sensitivity``; dims ``(y, x)`` on the mosaic's grid and CRS.

    ``ds``: a basin mosaic (contract 1; ``los_rate`` (track, y, x) mm/yr, per-track
    ``heading``/``incidence`` degrees, or EGMS L3 components). Tracks without both angles are
    left out. ``min_coherence``: read the rates through the run's quality mask (the mosaic's
    ``coherence``/``mask``; None: as stored). The result is lazy when ``ds`` is Dask-backed
    (``open_basin``), in memory otherwise. See the module docstring for the thresholds
    (:data:`MAX_GAIN`, :data:`MIN_SENSITIVITY`) and the one-geometry-per-track limitation.
    """
    if RATE not in ds or ds[RATE].dims != ("track", "y", "x"):
        raise InputError(f"decompose takes a basin mosaic with '{RATE}(track, y, x)'; open one with insar_slide.open_basin")
    los, kinds = mosaic_geometry(ds)
    known = np.isfinite(los).all(axis=1)
    if not known.any():
        raise InputError("no track of the mosaic has both heading and incidence (nor is an EGMS L3 component); "
                         "re-ingest the LOS products with --heading and --incidence per source")
    grid = grid_of(ds)
    keep = np.flatnonzero(known)
    rate = ds[RATE].isel(track=keep)
    los, kinds = los[known], [kinds[k] for k in keep]
    lazy = isinstance(rate.data, da.Array)

    def dask_of(v: xr.DataArray) -> da.Array:
        return v.data if isinstance(v.data, da.Array) else da.from_array(np.asarray(v.values), chunks=(-1, 1024, 1024))

    arr = dask_of(rate)
    arr = arr.rechunk({0: -1, 1: _no_tiny(arr.chunks[1]), 2: _no_tiny(arr.chunks[2])})
    layers = {n: dask_of(ds[n].isel(track=keep)).rechunk(arr.chunks) for n in ("coherence", "mask")
              if n in ds and ds[n].dims == ("track", "y", "x")}
    if min_coherence is not None and layers:
        arr = da.map_blocks(apply_mask, arr, layers.get("coherence"), layers.get("mask"), min_coherence,
                            dtype=arr.dtype, meta=np.empty((0, 0, 0), arr.dtype))
    ue = da.map_blocks(_up_east_block, arr, los, kinds, max_gain, dtype=np.float32,
                       chunks=((4,), arr.chunks[1], arr.chunks[2]), meta=np.empty((0, 0, 0), np.float32))
    units = {"units": "mm/yr"}
    out = {
        "v_up": (("y", "x"), ue[0], {**units, "long_name": "vertical rate, up positive (north-south neglected)"}),
        "v_east": (("y", "x"), ue[1], {**units, "long_name": "east-west rate, east positive (north-south neglected)"}),
        "gain_up_east": (("y", "x"), ue[2], {"long_name": "noise gain of v_up/v_east, mm/yr per mm/yr of LOS noise"}),
        "n_tracks": (("y", "x"), ue[3].astype(np.int8), {"long_name": "tracks with a value"}),
    }
    if DEM in ds:
        z = ds[DEM].data if isinstance(ds[DEM].data, da.Array) else da.from_array(np.asarray(ds[DEM].values))
        z = z.astype(np.float64).rechunk(arr.chunks[1:])
        ge, gn = terrain_gradient(z, grid)
        sl = da.map_blocks(_slope_block, arr, ge, gn, los, min_sensitivity, dtype=np.float32,
                           chunks=((2,), arr.chunks[1], arr.chunks[2]), meta=np.empty((0, 0, 0), np.float32))
        out["v_slope"] = (("y", "x"), sl[0], {**units, "long_name": "speed along the fall line, downslope positive "
                                                                 "(slope-parallel motion assumed)"})
        out["slope_sensitivity"] = (("y", "x"), sl[1], {"long_name": "sqrt(sum_k (d.l_k)^2): share of slope motion seen"})
    res = xr.Dataset(out, coords={"y": ds["y"], "x": ds["x"]},
                     attrs={"max_gain": max_gain, "min_sensitivity": min_sensitivity,
                            "min_coherence": "none" if min_coherence is None else min_coherence,
                            "tracks": ",".join(str(t) for t in rate["track"].values)})
    if "spatial_ref" in ds.coords or "spatial_ref" in ds:
        res = res.assign_coords(spatial_ref=ds["spatial_ref"])
        for v in res.data_vars:
            res[v].attrs["grid_mapping"] = "spatial_ref"
    return res if lazy else res.compute()


def slide_components(stats: pd.DataFrame, tracks: Sequence[str], los: np.ndarray, *,
                     kinds: Sequence[str] | None = None, min_fraction: float = MIN_TRACK_FRACTION,
                     max_gain: float = MAX_GAIN, min_sensitivity: float = MIN_SENSITIVITY) -> pd.DataFrame:
    """The decomposition columns of each polygon (:data:`COLUMNS`, NaN where not computable).

    ``stats``: one row per polygon with ``rate_mean_<track>`` (mm/yr) and
    ``valid_fraction_<track>`` per track and, with a DEM, ``dem_ge``/``dem_gn`` (the mean DEM
    gradient inside the polygon, m/m, whose fall line is the slide's). A track takes part where
    at least ``min_fraction`` of the polygon has a value and its geometry is known (``los``
    (k, 3), one row per ``tracks``; ``kinds``, from :func:`mosaic_geometry`: ``los`` or an
    EGMS L3 component, all ``los`` when None).
    """
    n = len(stats)
    rates = np.full((len(tracks), n), np.nan)
    for k, t in enumerate(tracks):
        if f"rate_mean_{t}" in stats:
            use = stats[f"valid_fraction_{t}"].to_numpy(float) >= min_fraction
            rates[k] = np.where(use, stats[f"rate_mean_{t}"].to_numpy(float), np.nan)
    up, east, _ = up_east(rates, los, kinds or ["los"] * len(tracks), max_gain=max_gain)
    out = pd.DataFrame({"v_up_mm_yr": up, "v_east_mm_yr": east}, index=stats.index)
    ge = stats["dem_ge"].to_numpy(float) if "dem_ge" in stats else np.full(n, np.nan)
    gn = stats["dem_gn"].to_numpy(float) if "dem_gn" in stats else np.full(n, np.nan)
    s, sens = solve_slope(rates, los, ge, gn, min_sensitivity=min_sensitivity)
    slope, aspect = slope_aspect(ge, gn)
    out["v_slope_mm_yr"], out["v_slope_sensitivity"] = s, sens
    out["dem_slope_deg"], out["dem_aspect_deg"] = slope, np.where(slope > 0, aspect, np.nan)
    return out
