"""One PNG per slide of its displacement time series (the table of :mod:`insar_slide.timeseries`).

A panel per track, stacked on one date axis. In each: the slide's mean (blue), the stable
ring around it (grey), the slide minus the ring (black, the fitted series when the ring holds),
the fastest tenth of its pixels or points (orange; chosen on the first half of the dates,
:mod:`insar_slide.timeseries`), and the recent quadratic fit (red dashes, over the shaded recent
span) with its velocity and acceleration written out. Every curve is drawn from 0 at its first
valid date, so that the axis reads displacement since then (mm, positive toward the satellite;
up or east for EGMS L3 components). Drawn with :class:`matplotlib.figure.Figure` (no pyplot
state, so threads and Dask workers may draw at once).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .errors import InsarSlideError
from .storage import exists, is_url, staged
from .timeseries import FASTEST_SHARE, RING_GAP_M, RING_WIDTH_M, direction_of
from .timeseries_fit import DAYS_PER_YEAR, fit_recent, series_to_fit

COLOURS = {"displacement_mm": "#1f77b4", "reference_mm": "#8c8c8c", "relative_mm": "#111111", "fastest_mm": "#ff7f0e",
           "fit": "#d62728"}


def _since_first(y: np.ndarray) -> np.ndarray:
    ok = np.flatnonzero(np.isfinite(y))
    return y - y[ok[0]] if ok.size else y


def plot_slide(table: pd.DataFrame, out: str | Path, *, title: str | None = None,
               events: Sequence[tuple[str, str]] = (), recent_fraction: float | None = None,
               recent_days: float | None = None, ring_m: tuple[float, float] | None = None, overwrite: bool = False,
               dpi: int = 130) -> str | Path:
    """Write the PNG of one slide (``table``: its rows, any tracks) to ``out`` (atomically;
    an existing ``out`` only with ``overwrite``).

    ``events``: (``YYYY-MM-DD``, label) marked as vertical lines (e.g. a failure date);
    ``recent_fraction`` / ``recent_days``: the recent span, as :func:`insar_slide.timeseries.fit_recent`;
    ``ring_m``: the reference ring's (inner, outer) distance from the outline, for the legend
    (default: :data:`~insar_slide.timeseries.RING_GAP_M` and the default width)."""
    tracks = sorted(table["track"].unique())
    sid = str(table["slide_id"].iloc[0])
    fig = Figure(figsize=(12.5, 1.0 + 3.6 * len(tracks)), layout="constrained")
    axes = fig.subplots(len(tracks), 1, sharex=True, squeeze=False)[:, 0]
    kw: dict[str, Any] = {"recent_days": recent_days} if recent_days is not None else {}
    if recent_fraction is not None:
        kw["recent_fraction"] = recent_fraction
    for ax, track in zip(axes, tracks, strict=True):
        g = table[table["track"] == track].sort_values("date")
        _panel(ax, g, kw, ring_m or (RING_GAP_M, RING_GAP_M + RING_WIDTH_M))
        for when, label in events:
            x = np.datetime64(when, "D")
            ax.axvline(x, color="#7b3294", lw=1.4, ls="-.")
            ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(-4, -4),
                        textcoords="offset points", ha="right", va="top", fontsize=8, color="#7b3294")
    axes[-1].set_xlabel("acquisition date")
    fig.suptitle(title or f"Slide {sid}: displacement time series", fontsize=12)
    target = out if is_url(out) else Path(out)
    with staged(target, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return target


def _panel(ax: Any, g: pd.DataFrame, fit_kw: dict[str, Any], ring_m: tuple[float, float]) -> None:
    d = g["date"].to_numpy().astype("datetime64[D]")
    col = series_to_fit(g)
    n_in = int(g["n_inside"].max())
    n_ref = int(g["n_reference"].median())
    kind = "points" if str(g["product"].iloc[0]) in ("stamps", "egms_l2a", "egms_l2b", "egms_l3") else "px"
    ax.axhline(0, color="#cccccc", lw=0.8, zorder=0)
    ref = _since_first(g["reference_mm"].to_numpy(float))
    if np.isfinite(ref).any():
        ax.plot(d, ref, color=COLOURS["reference_mm"], lw=1.0, marker=".", ms=3,
                label=f"stable ring {ring_m[0]:.0f}–{ring_m[1]:.0f} m around it (mean of ~{n_ref} {kind})")
    ax.plot(d, _since_first(g["displacement_mm"].to_numpy(float)), color=COLOURS["displacement_mm"], lw=1.0, marker="o",
            ms=3, label=f"inside the outline (mean of {n_in} {kind})")
    fastest = g["fastest_mm"].to_numpy(float)
    if col == "relative_mm":
        fastest = fastest - g["reference_mm"].to_numpy(float)
        ax.plot(d, _since_first(g["relative_mm"].to_numpy(float)), color=COLOURS["relative_mm"], lw=2.0, marker="o", ms=3.5,
                label="inside − ring (the slide's own motion)")
    n_fast = max(1, int(np.ceil(FASTEST_SHARE * n_in)))
    fast = f"fastest {FASTEST_SHARE:.0%}"
    ax.plot(d, _since_first(fastest), color=COLOURS["fastest_mm"], lw=1.3, marker="s", ms=2.5,
            label=f"{fast} inside ({n_fast} {kind}, chosen on the first half){' − ring' if col == 'relative_mm' else ''}")
    notes = [_draw_fit(ax, d, g[col].to_numpy(float), fit_kw, COLOURS["fit"], "slide − ring" if col == "relative_mm" else "slide mean"),
             _draw_fit(ax, d, fastest, fit_kw, "#a6430a", fast)]
    ax.text(1.01, 0.0, "\n\n".join(notes), transform=ax.transAxes, fontsize=7.5, va="bottom", ha="left",
            bbox={"boxstyle": "round,pad=0.35", "fc": "white", "ec": "#bbbbbb"})
    ok = np.flatnonzero(np.isfinite(g["displacement_mm"].to_numpy(float)))
    first = d[ok[0]] if ok.size else d[0]
    track = str(g["track"].iloc[0])
    what = {"vertical": "vertical", "east_west": "east-west"}.get(track, "LOS")
    ax.set_ylabel(f"{what} displacement since {first} (mm)\n{direction_of(track).replace('positive ', '+ ')}", fontsize=9)
    ax.set_title(f"track {g['track'].iloc[0]} — {g['product'].iloc[0]}, {len(d)} dates ({Path(str(g['source'].iloc[0])).name})",
                 fontsize=10, loc="left")
    ax.grid(True, color="#eeeeee", lw=0.6)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _draw_fit(ax: Any, d: np.ndarray, y: np.ndarray, fit_kw: dict[str, Any], colour: str, name: str) -> str:
    """Draw the recent quadratic of ``y`` (shifted as drawn: from 0 at its first date) and
    return its text: whole-series and recent velocities, acceleration."""
    ok = np.flatnonzero(np.isfinite(y))
    note = f"{name}: " + _velocity_note(d, y)
    fit = fit_recent(d, y, **fit_kw)
    if fit is None or not ok.size:
        return note
    ts = np.arange(fit.start, fit.end + np.timedelta64(1, "D"), np.timedelta64(3, "D"))
    tt = (ts - fit.end).astype(float) / DAYS_PER_YEAR
    d0, v, a = fit.coef
    ax.axvspan(fit.start, fit.end, color=COLOURS["fit"], alpha=0.03, lw=0)
    ax.plot(ts, d0 + v * tt + a * tt * tt / 2 - y[ok[0]], color=colour, lw=1.8, ls="--",
            label=f"{name}: quadratic fit, {fit.start} – {fit.end}")
    return (note + f"\n  since {fit.start} ({fit.n} dates): {fit.velocity_recent:+.1f} mm/yr (straight line)"
            f"\n  quadratic: {fit.velocity_end:+.1f} ± {fit.velocity_end_std:.1f} mm/yr at {fit.end},"
            f"\n  acceleration {fit.acceleration:+.0f} ± {fit.acceleration_std:.0f} mm/yr²")


def _velocity_note(d: np.ndarray, y: np.ndarray) -> str:
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return "too few dates for a velocity"
    t = (d[ok] - d[ok][0]).astype(float) / DAYS_PER_YEAR
    v = float(np.polyfit(t, y[ok], 1)[0])
    return f"{y[ok][-1] - y[ok][0]:+.1f} mm in all,\n  {v:+.1f} mm/yr over the whole series"


def plot_name(slide_id: object) -> str:
    """The PNG name of a slide: ``<slide_id>.png``, characters other than A-Z a-z 0-9 _ . - as ``_``."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(slide_id)) or 'slide'}.png"


def plot_path(folder: str | Path, slide_id: object) -> str | Path:
    name = plot_name(slide_id)
    return f"{str(folder).rstrip('/')}/{name}" if is_url(folder) else Path(folder) / name


def check_plots(folder: str | Path, slide_ids: Iterable[object], *, overwrite: bool) -> None:
    """Refuse (one line naming ``--overwrite``) when a slide's PNG is already in ``folder``."""
    if overwrite:
        return
    there = [t for sid in dict.fromkeys(str(s) for s in slide_ids) if exists(t := plot_path(folder, sid))]
    if there:
        more = f" (and {len(there) - 1} more)" if len(there) > 1 else ""
        raise InsarSlideError(f"{there[0]}{more} already exists; pass --overwrite to replace the plots, or choose another --plots folder")


def plot_slides(table: pd.DataFrame, folder: str | Path, *, recent_fraction: float | None = None,
                recent_days: float | None = None, ring_m: tuple[float, float] | None = None,
                overwrite: bool = False) -> list[str]:
    """One PNG per slide in ``folder`` (:func:`plot_name`); returns the files written. An
    existing PNG is replaced only with ``overwrite``."""
    written = []
    for sid, g in table.groupby("slide_id", sort=True):
        target = plot_path(folder, sid)
        if isinstance(target, Path):
            target.parent.mkdir(parents=True, exist_ok=True)
        written.append(str(plot_slide(g, target, recent_fraction=recent_fraction, recent_days=recent_days,
                                      ring_m=ring_m, overwrite=overwrite)))
    return written


def replace_plots(table: pd.DataFrame, folder: str | Path, **options: Any) -> str:
    """:func:`plot_slides` into a new folder that then replaces ``folder`` whole (no PNG of a
    slide gone from the inventory stays); ``options`` as for :func:`plot_slides`."""
    with staged(folder if is_url(folder) else Path(folder), overwrite=True) as tmp:
        tmp.mkdir(parents=True)
        plot_slides(table, tmp, **options)
    return str(folder)
