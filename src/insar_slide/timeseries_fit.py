"""Velocity and acceleration of a displacement time series over its recent part, and the
per-slide summary of a time-series table (:mod:`insar_slide.timeseries`). Pure numpy/pandas.

The recent span is the last third of the series' time span (``recent_fraction``), or the last
``recent_days``, extended back to at least :data:`MIN_FIT_DATES` dates. Over it, a straight
line gives the recent velocity, and a quadratic d(t) = d0 + v·t + a·t²/2 (t in years from the
last date) the velocity at the last date and the acceleration. A third of the series keeps
enough dates (≥ 12 for a year of 12-day Sentinel-1 revisits in a 3-year series) for the
quadratic's curvature to stand above the noise, while following what the slide did lately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

RECENT_FRACTION = 1 / 3
MIN_FIT_DATES = 6
DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class RecentFit:
    """A quadratic d(t) = d0 + v·t + a·t²/2 fitted over the recent span, t in years from the
    last date: ``velocity_end`` (mm/yr, at the last date), ``acceleration`` (mm/yr²) and their
    standard errors; ``velocity_recent`` (mm/yr) the straight-line fit over the same span."""

    start: np.datetime64
    end: np.datetime64
    n: int
    velocity_recent: float
    velocity_end: float
    velocity_end_std: float
    acceleration: float
    acceleration_std: float
    coef: tuple[float, float, float]  # (d0, v, a) of the quadratic, mm, mm/yr, mm/yr²


def recent_span(dates: np.ndarray, *, recent_fraction: float = RECENT_FRACTION, recent_days: float | None = None,
                min_dates: int = MIN_FIT_DATES) -> np.ndarray:
    """Boolean (m,) mask of the recent dates: those within ``recent_days`` of the last date,
    or else the last ``recent_fraction`` of the time span, extended back to at least
    ``min_dates`` dates."""
    d = np.asarray(dates, dtype="datetime64[D]")
    if d.size == 0:
        return np.zeros(0, bool)
    days = (d - d[-1]).astype(float)
    span = float(recent_days) if recent_days is not None else (days[-1] - days[0]) * recent_fraction
    mask = days >= -span
    if mask.sum() < min_dates:
        mask[max(0, d.size - min_dates):] = True
    return mask


def fit_recent(dates: np.ndarray, values: np.ndarray, *, recent_fraction: float = RECENT_FRACTION,
               recent_days: float | None = None, min_dates: int = MIN_FIT_DATES) -> RecentFit | None:
    """The recent velocity and acceleration of one series (``values`` (m,) mm at ``dates``
    (m,) datetime64[D]; NaN dates dropped first), or None with fewer than ``min_dates`` valid
    dates (a quadratic needs 3; 6 leave it some redundancy)."""
    d = np.asarray(dates, dtype="datetime64[D]")
    y = np.asarray(values, dtype=float)
    ok = np.isfinite(y)
    d, y = d[ok], y[ok]
    if d.size < min_dates:
        return None
    sel = recent_span(d, recent_fraction=recent_fraction, recent_days=recent_days, min_dates=min_dates)
    t = (d[sel] - d[-1]).astype(float) / DAYS_PER_YEAR
    ys = y[sel]
    design = np.column_stack([np.ones_like(t), t, t * t / 2])
    coef, *_ = np.linalg.lstsq(design, ys, rcond=None)
    dof = max(1, t.size - 3)
    sigma2 = float(np.sum((ys - design @ coef) ** 2)) / dof
    try:
        cov = sigma2 * np.linalg.inv(design.T @ design)
        se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    except np.linalg.LinAlgError:
        se = np.full(3, np.nan)
    v_lin = float(np.polyfit(t, ys, 1)[0])
    return RecentFit(d[sel][0], d[-1], int(t.size), v_lin, float(coef[1]), float(se[1]), float(coef[2]), float(se[2]),
                     (float(coef[0]), float(coef[1]), float(coef[2])))


def series_to_fit(group: pd.DataFrame, *, min_dates: int = MIN_FIT_DATES) -> str:
    """``relative_mm`` when its reference holds on at least half the dates (and ``min_dates``),
    else ``displacement_mm`` (the inside mean, unreferenced: where the ring is empty)."""
    n_rel = int(np.isfinite(group["relative_mm"]).sum())
    return "relative_mm" if n_rel >= max(min_dates, len(group) / 2) else "displacement_mm"


def summarize(table: pd.DataFrame, *, recent_fraction: float = RECENT_FRACTION, recent_days: float | None = None,
              min_dates: int = MIN_FIT_DATES) -> pd.DataFrame:
    """One row per (slide_id, track) (:data:`SUMMARY_COLUMNS`): which series was fitted
    (``series``: ``relative_mm``, or ``displacement_mm`` where the ring is too thin), its dates;
    for it and for the fastest tenth (``fastest_*``, minus the ring likewise; the tenth is chosen
    on the first half of the dates, so its recent fit is free of the selection bias, while its
    total and whole-series velocity keep some of it: :mod:`insar_slide.timeseries`): the total
    displacement (last − first valid, mm), the mean velocity (straight line over all dates,
    mm/yr) and the recent fit (:func:`fit_recent`: the straight-line velocity over the recent
    span, the quadratic's velocity at the last date and its acceleration, with standard errors
    that assume independent dates — an atmosphere correlated in time makes them optimistic)."""
    rows = []
    for (sid, track), g in table.groupby(["slide_id", "track"], sort=True):
        col = series_to_fit(g, min_dates=min_dates)
        d = g["date"].to_numpy().astype("datetime64[D]")
        y = g[col].to_numpy(dtype=float)
        fastest = g["fastest_mm"].to_numpy(dtype=float)
        if col == "relative_mm":
            fastest = fastest - g["reference_mm"].to_numpy(dtype=float)
        kw = {"recent_fraction": recent_fraction, "recent_days": recent_days, "min_dates": min_dates}
        rows.append({"slide_id": sid, "track": track, "product": g["product"].iloc[0], "series": col,
                     "first_date": pd.Timestamp(d[0]), "last_date": pd.Timestamp(d[-1]),
                     "n_dates": int(np.isfinite(y).sum()), "n_inside": int(g["n_inside"].max()),
                     **_fit_fields(d, y, "", **kw), **_fit_fields(d, fastest, "fastest_", **kw)})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _fit_fields(d: np.ndarray, y: np.ndarray, prefix: str, **kw: Any) -> dict[str, Any]:
    ok = np.isfinite(y)
    out: dict[str, Any] = {f"{prefix}total_mm": np.nan, f"{prefix}velocity_mm_yr": np.nan}
    if ok.sum() >= 2:
        t = (d[ok] - d[ok][0]).astype(float) / DAYS_PER_YEAR
        out[f"{prefix}total_mm"] = float(y[ok][-1] - y[ok][0])
        out[f"{prefix}velocity_mm_yr"] = float(np.polyfit(t, y[ok], 1)[0])
    fit = fit_recent(d, y, **kw)
    if not prefix:
        out.update(recent_start=pd.Timestamp(fit.start) if fit else pd.NaT, n_recent=fit.n if fit else 0)
    out.update({f"{prefix}velocity_recent_mm_yr": fit.velocity_recent if fit else np.nan,
                f"{prefix}velocity_end_mm_yr": fit.velocity_end if fit else np.nan,
                f"{prefix}velocity_end_std": fit.velocity_end_std if fit else np.nan,
                f"{prefix}acceleration_mm_yr2": fit.acceleration if fit else np.nan,
                f"{prefix}acceleration_std": fit.acceleration_std if fit else np.nan})
    return out


_FITTED = ["total_mm", "velocity_mm_yr", "velocity_recent_mm_yr", "velocity_end_mm_yr", "velocity_end_std",
           "acceleration_mm_yr2", "acceleration_std"]
SUMMARY_COLUMNS = ["slide_id", "track", "product", "series", "first_date", "last_date", "n_dates", "n_inside",
                   "recent_start", "n_recent", *_FITTED, *(f"fastest_{c}" for c in _FITTED)]
