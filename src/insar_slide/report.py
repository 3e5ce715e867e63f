"""The run report: one static HTML file (``<out stem>.html``) that shows what a run found.

- a map per track — the rate (shared robust colour scale of :mod:`.maps`) with the outlines
  of the slides detected on that track, coloured by score, by lifecycle status (``update``) or,
  with a truth, by outcome (hit, false alarm, detection of a slower simulated slide, and the
  missed slides dashed); a slide's outline links to its row;
- a table — id, score, area, rates per track, tracks, status, first/last seen, outcome —
  sortable by any column and filtered by text, minimum score and status;
- per slide a thumbnail of its rate patch on every track with its outline (solid) and box
  (dashed), linked from its row.

Everything (images as PNG data URIs, styles, the few lines of script) is inside the one file
(the page's layout is ``report_template.html``, filled with :meth:`str.format`),
so it can be mailed, archived or opened from object storage with no server. A cap on
thumbnails (highest scores first) keeps the file small on a plateau-sized inventory; the page
says when it applies.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import geopandas as gpd
import matplotlib
import numpy as np
import pandas as pd
import shapely
from PIL import Image

from .grid import Grid
from .maps import (
    NODATA_RGBA,
    OUTCOME_COLOURS,
    colormap,
    colour_ticks,
    format_length,
    inventory_in,
    load_shown_rate,
    map_info,
    metres_per_unit,
    on_track,
    outlines,
    rate_norm,
    scale_bar_length_m,
    to_rgba,
    truth_outcomes,
)
from .mosaic import RATE, grid_of, open_basin
from .storage import is_url, staged

STATUS_COLOURS = {"new": "#e66101", "persisting": "#2c7bb6", "not_detected_now": "#878787"}
THUMB_MIN_SIDE = 128  # px on the page
THUMB_MAX_PATCH = 256  # mosaic px read per side at most (larger slides are strided)


@dataclass
class _Slide:
    key: str  # anchor: "s<slide_num>" or "m<k>" for a missed truth slide
    row: dict[str, Any]
    geom: Any  # outline (or polygon) in the mosaic CRS
    box: Any
    tracks: set[str]
    colours: dict[str, str]  # colouring → stroke colour
    dashed: bool = False
    thumbs: list[tuple[str, str]] | None = None  # (track, inline SVG)


def write_report(mosaic: str | Path, inventory: str | Path | gpd.GeoDataFrame, out: str | Path, *,
                 truth: str | Path | gpd.GeoDataFrame | None = None, max_thumbnails: int = 400,
                 max_side: int = 1400, overwrite: bool = True) -> str | Path:
    """Write the report of ``inventory`` over ``mosaic`` (a store or a version's group) to ``out``."""
    ds = open_basin(mosaic)
    grid = grid_of(ds)
    tracks = [str(t) for t in ds["track"].values]
    inv = inventory_in(inventory, grid.crs)
    assert inv is not None
    ref = inventory_in(truth, grid.crs)
    outcome, missed = truth_outcomes(inv, ref, grid.bounds) if ref is not None else (None, None)
    rate, factor = load_shown_rate(mosaic, ds, max_side)
    norm = rate_norm(rate.values, inv["rate_p95_abs"].to_numpy(float) if "rate_p95_abs" in inv else None)
    info = map_info(ds, mosaic)

    slides = _slides(inv, outcome, missed, tracks)
    order = sorted((s for s in slides if not s.dashed), key=lambda s: -float(s.row.get("score") or 0))
    with_thumbs = order[:max_thumbnails] + [s for s in slides if s.dashed][:max_thumbnails]
    for s in with_thumbs:
        thumbs, stats = _thumbnails(ds, grid, tracks, s.geom, s.box, norm)
        s.thumbs = thumbs or None
        s.row.update(stats)
    colourings = (["outcome"] if outcome is not None else []) + (["status"] if "status" in inv else []) + ["score"]
    maps = [_map_panel(rate.isel(track=t).values, norm, grid, slides, t, tracks[t], colourings[0]) for t in range(len(tracks))]
    page = _page(info, inv, outcome, missed, slides, tracks, maps, norm, colourings, factor,
                 n_capped=max(0, len(order) - max_thumbnails))
    target = out if is_url(out) else Path(out)
    with staged(target, overwrite=overwrite) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return target


# ---------------------------------------------------------------- rows


def _slides(inv: gpd.GeoDataFrame, outcome: pd.Series | None, missed: gpd.GeoDataFrame | None,
            tracks: list[str]) -> list[_Slide]:
    geoms = outlines(inv) if len(inv) else inv.geometry
    scores = inv["score"].to_numpy(float) if "score" in inv else np.full(len(inv), np.nan)
    ramp = matplotlib.colormaps["viridis"]
    member = {t: on_track(inv, t) for t in tracks}  # per track: which rows were detected on it
    out = []
    for i in range(len(inv)):
        r = inv.iloc[i]
        num = int(r["slide_num"]) if "slide_num" in inv else i + 1
        row = {"id": num, "slide_id": str(r.get("slide_id", "")), "score": _f(scores[i], 3),
               "area_ha": _f(float(r["area_m2"]) / 1e4, 2) if "area_m2" in inv else None,
               "rate_mean": _f(r.get("rate_mean"), 1), "rate_p95_abs": _f(r.get("rate_p95_abs"), 1),
               "rate_track": str(r.get("rate_track") or ""), "tracks": str(r.get("tracks") or ""),
               "status": str(r["status"]) if "status" in inv else "",
               "first_seen": str(r["first_seen"]) if "first_seen" in inv else "",
               "last_seen": str(r["last_seen"]) if "last_seen" in inv else "",
               "outcome": str(outcome.iloc[i]) if outcome is not None else ""}
        s = float(scores[i]) if np.isfinite(scores[i]) else 0.0
        colours = {"score": matplotlib.colors.to_hex(ramp(min(1.0, max(0.0, (s - 0.5) / 0.5))))}
        if outcome is not None:
            colours["outcome"] = OUTCOME_COLOURS[str(outcome.iloc[i])]
        if "status" in inv:
            colours["status"] = STATUS_COLOURS.get(str(row["status"]), "#000000")
        on = {t for t in tracks if member[t][i]}
        out.append(_Slide(f"s{num}", row, geoms.iloc[i], inv.geometry.iloc[i].envelope, on, colours))
    if missed is not None:
        for k in range(len(missed)):
            g = missed.geometry.iloc[k]
            row = {"id": f"T{k + 1}", "slide_id": str(missed["slide_id"].iloc[k]) if "slide_id" in missed else "",
                   "score": None, "area_ha": _f(g.area / 1e4, 2) if not missed.crs or missed.crs.is_projected else None,
                   "rate_mean": None, "rate_p95_abs": None, "rate_track": "", "tracks": "",
                   "status": "", "first_seen": "", "last_seen": "", "outcome": "missed"}
            c = OUTCOME_COLOURS["missed"]
            out.append(_Slide(f"m{k + 1}", row, g, g.envelope, set(tracks), {"outcome": c, "status": c, "score": c},
                              dashed=True))
    return out


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def _f(v: Any, nd: int) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, nd) if math.isfinite(f) else None


# ---------------------------------------------------------------- pictures


def _png(rgba: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _rate_png(values: np.ndarray, norm: Any) -> str:
    """Rates as an 8-bit palette PNG in the shared colour scale (255 levels and the no-data
    grey): a quarter of the bytes of RGBA, so a basin map stays a few hundred kB."""
    lut = colormap()(np.linspace(0, 1, 255), bytes=True)[:, :3]
    palette = np.vstack([lut, np.array(NODATA_RGBA[:3], np.uint8)[None]])
    finite = np.isfinite(values)
    idx = np.full(values.shape, 255, np.uint8)
    idx[finite] = np.clip(np.round(np.asarray(norm(values[finite])) * 254), 0, 254).astype(np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette(palette.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumbnails(ds: Any, grid: Grid, tracks: list[str], geom: Any, box: Any, norm: Any) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Each track's rate patch around a slide (half its size again on every side, at least 12 px)
    as an SVG with its outline (solid) and box (dashed), and the rates inside the outline per track."""
    xmin, ymin, xmax, ymax = box.bounds
    win = grid.window_of_bounds(xmin, ymin, xmax, ymax)
    if win.rows == 0 or win.cols == 0:  # off the mosaic (a truth slide beyond its edge): nothing to show
        return [], {}
    pad = max(12, max(win.rows, win.cols) // 2)
    r0, c0 = max(0, win.row0 - pad), max(0, win.col0 - pad)
    r1, c1 = min(grid.height, win.row1 + pad), min(grid.width, win.col1 + pad)
    step = max(1, math.ceil(max(r1 - r0, c1 - c0) / THUMB_MAX_PATCH))
    block = np.asarray(ds[RATE].isel(y=slice(r0, r1, step), x=slice(c0, c1, step)).values, dtype=np.float32)
    nr, nc = block.shape[1:]
    ys = grid.y0 + (r0 + (np.arange(nr) * step) + 0.5) * grid.dy
    xs = grid.x0 + (c0 + (np.arange(nc) * step) + 0.5) * grid.dx
    inside = shapely.contains_xy(geom, xs[None, :], ys[:, None])
    stats: dict[str, Any] = {}
    for k, t in enumerate(tracks):
        v = block[k][inside]
        v = v[np.isfinite(v)]
        stats[f"mean_{t}"] = _f(v.mean(), 1) if v.size else None
        stats[f"p95_{t}"] = _f(np.percentile(np.abs(v), 95), 1) if v.size else None
    patch = Grid(grid.crs, grid.x0 + c0 * grid.dx, grid.y0 + r0 * grid.dy, grid.dx * step, grid.dy * step, nr, nc)
    outline = _svg_path(geom, patch, 1.0, 1.0)
    frame = _svg_path(box, patch, 1.0, 1.0)
    sw = max(nr, nc) / 100
    thumbs = [(t, f'<svg viewBox="0 0 {nc} {nr}"><image href="{_rate_png(block[k], norm)}" width="{nc}" height="{nr}" '
                  f'style="image-rendering:pixelated"/><path d="{frame}" fill="none" stroke="#333" stroke-width="{sw:.2f}" '
                  f'stroke-dasharray="{3 * sw:.2f} {2 * sw:.2f}"/><path d="{outline}" fill="none" stroke="#000" '
                  f'stroke-width="{1.6 * sw:.2f}"/></svg>') for k, t in enumerate(tracks)]
    return thumbs, stats


def _svg_path(geom: Any, grid: Grid, sx: float, sy: float) -> str:
    """``geom`` as an SVG path in the map image's pixels (``sx``, ``sy``: mosaic px per image px)."""
    parts = []
    for poly in getattr(geom, "geoms", [geom]):
        if poly.is_empty or not hasattr(poly, "exterior"):
            continue
        for ring in [poly.exterior, *poly.interiors]:
            c = np.asarray(ring.coords)
            px = (c[:, 0] - grid.x0) / grid.dx / sx
            py = (c[:, 1] - grid.y0) / grid.dy / sy
            parts.append("M" + "L".join(f"{x:.1f} {y:.1f}" for x, y in zip(px, py, strict=True)) + "Z")
    return "".join(parts)


def _map_panel(values: np.ndarray, norm: Any, grid: Grid, slides: list[_Slide], t: int, track: str,
               colouring: str) -> str:
    h, w = values.shape
    sx, sy = grid.width / w, grid.height / h
    tol = 0.5 * min(abs(grid.dx) * sx, abs(grid.dy) * sy)
    paths = []
    n_on = 0
    for s in slides:
        if track not in s.tracks:
            continue
        n_on += not s.dashed
        d = _svg_path(shapely.simplify(s.geom, tol), grid, sx, sy)
        if not d:
            continue
        cols = " ".join(f'data-c-{k}="{v}"' for k, v in s.colours.items())
        dash = ' stroke-dasharray="4 3"' if s.dashed else ""
        paths.append(f'<a href="#row-{s.key}"><path class="slide" data-key="{s.key}" d="{d}" stroke="{s.colours[colouring]}"'
                     f'{dash} {cols}><title>{html.escape(_tip(s.row))}</title></path></a>')
    mx, my = metres_per_unit(grid.crs, grid.bounds)
    width_m = (grid.bounds[2] - grid.bounds[0]) * mx
    L = scale_bar_length_m(width_m)
    bar = L / width_m * w
    x0, y0 = 0.04 * w, 0.95 * h
    scale = (f'<g class="scalebar"><rect x="{x0 - 6:.1f}" y="{y0 - 0.05 * h:.1f}" width="{bar + 12:.1f}" height="{0.065 * h:.1f}" '
             f'fill="white" fill-opacity="0.7"/><line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x0 + bar:.1f}" y2="{y0:.1f}" '
             f'stroke="black" stroke-width="{max(2.0, h / 200):.1f}"/><text x="{x0 + bar / 2:.1f}" y="{y0 - 0.012 * h:.1f}" '
             f'font-size="{max(10.0, h / 45):.1f}" text-anchor="middle">{format_length(L)}</text></g>')
    return (f'<figure class="map" data-track="{html.escape(track)}"><figcaption>{html.escape(track)}: '
            f'{n_on} detected on this track</figcaption>'
            f'<svg viewBox="0 0 {w} {h}" preserveAspectRatio="none" style="aspect-ratio:{(w * mx * sx * abs(grid.dx)) / (h * my * sy * abs(grid.dy)):.4f}">'
            f'<image href="{_rate_png(values, norm)}" width="{w}" height="{h}" style="image-rendering:pixelated"/>'
            f'<g class="slides" stroke-width="{max(1.5, w / 500):.1f}">{"".join(paths)}</g>{scale}</svg></figure>')


def _tip(row: dict[str, Any]) -> str:
    bits = [f"#{row['id']}"]
    if row.get("score") is not None:
        bits.append(f"score {row['score']:.2f}")
    if row.get("area_ha") is not None:
        bits.append(f"{row['area_ha']:g} ha")
    for k in ("status", "outcome"):
        if row.get(k):
            bits.append(row[k])
    return " · ".join(bits)


def _p95_note(v: float | None) -> str:
    return "" if v is None else f" · p95 |rate| {v:g} mm/yr"


def _colour_bar(norm: Any) -> str:
    vals = np.linspace(float(norm.vmin), float(norm.vmax), 512)
    # positions along the bar are the norm's, so the gradient follows the log-like scale too
    pos = np.linspace(0, 1, 512)
    inv = np.interp(pos, np.asarray(norm(vals)), vals)
    img = np.repeat(to_rgba(inv[None, :], norm), 14, axis=0)
    ticks = "".join(f'<span style="left:{100 * float(norm(v)):.2f}%">{v:g}</span>' for v in colour_ticks(norm))
    return (f'<div class="cbar"><img src="{_png(img)}" alt="colour scale"><div class="ticks">{ticks}</div>'
            f'<div class="cbar-label">LOS rate (mm/yr, + toward the satellite); grey: no data</div></div>')


# ---------------------------------------------------------------- page


def _page(info: Any, inv: gpd.GeoDataFrame, outcome: pd.Series | None, missed: gpd.GeoDataFrame | None,
          slides: list[_Slide], tracks: list[str], maps: list[str], norm: Any, colourings: list[str], factor: int,
          n_capped: int) -> str:
    n = len(inv)
    summary = [f"{_n(n, 'landslide')} detected"]
    if "area_m2" in inv and n:
        summary.append(f"{inv['area_m2'].sum() / 1e6:.2f} km² in all")
    for k in ("run_id", "model_id"):
        if k in inv and n:
            summary.append(f"{k.replace('_', ' ')} {html.escape(str(inv[k].iloc[0]))}")
    truth_line = ""
    if outcome is not None and missed is not None:
        hits = int((outcome == "hit").sum())
        fa = int((outcome == "false alarm").sum())
        below = int((outcome == "below threshold").sum())
        p = hits / (hits + fa) if hits + fa else 0.0
        r = hits / (hits + len(missed)) if hits + len(missed) else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        truth_line = (f'<p class="truth">Against the truth (box IoU ≥ 0.5): <b style="color:{OUTCOME_COLOURS["hit"]}">{_n(hits, "hit")}</b>, '
                      f'<b style="color:{OUTCOME_COLOURS["false alarm"]}">{_n(fa, "false alarm")}</b>, '
                      f'<b style="color:{OUTCOME_COLOURS["missed"]}">{len(missed)} missed</b>, '
                      f'<b style="color:{OUTCOME_COLOURS["below threshold"]}">{below} on slower or masked simulated slides</b> '
                      f'(not counted) — precision {p:.2f}, recall {r:.2f}, F1 {f1:.2f}.</p>')
    legend_sets = {"outcome": OUTCOME_COLOURS, "status": STATUS_COLOURS}
    legends = "".join(
        f'<div class="legend" data-for="{k}">' + "".join(
            f'<span><i style="border-color:{c}{";border-style:dashed" if what == "missed" else ""}"></i>{what.replace("_", " ")}</span>'
            for what, c in legend_sets[k].items()) + "</div>" for k in colourings if k in legend_sets)
    legends += ('<div class="legend" data-for="score"><span class="ramp"></span> score 0.5 → 1.0'
                + (f' <span><i style="border-color:{OUTCOME_COLOURS["missed"]};border-style:dashed"></i>missed</span>' if missed is not None else "")
                + "</div>")
    select = "".join(f'<option value="{k}">{k}</option>' for k in colourings)
    track_buttons = "".join(f'<label><input type="checkbox" name="track" value="{i}" checked> {html.escape(t)}</label>'
                            for i, t in enumerate(tracks))
    cols = [("id", "#"), ("score", "score"), ("area_ha", "area (ha)")]
    for t in tracks:
        cols += [(f"mean_{t}", f"mean {t}"), (f"p95_{t}", f"p95 |rate| {t}")]
    cols += [("tracks", "tracks"), ("status", "status"), ("first_seen", "first seen"), ("last_seen", "last seen"), ("outcome", "outcome")]
    cols = [c for c in cols if any(s.row.get(c[0]) not in (None, "") for s in slides) or c[0] in ("id", "score")]
    head = "".join(f'<th data-col="{i}" data-num="{int(k not in ("tracks", "status", "first_seen", "last_seen", "outcome"))}">{html.escape(lbl)}</th>'
                   for i, (k, lbl) in enumerate(cols))
    body = []
    for s in slides:
        cells = []
        for k, _ in cols:
            v = s.row.get(k)
            txt = "–" if v in (None, "") else (f"{v:g}" if isinstance(v, float) else str(v))
            if k == "id":
                txt = f'<a href="#{s.key}">{html.escape(txt)}</a>' if s.thumbs else html.escape(txt)
                cells.append(f'<td>{txt}</td>')
            else:
                cells.append(f'<td data-v="{html.escape("" if v is None else str(v))}">{html.escape(txt)}</td>')
        body.append(f'<tr id="row-{s.key}" data-key="{s.key}" data-score="{s.row.get("score") or 0}" '
                    f'data-status="{html.escape(s.row.get("outcome") or s.row.get("status") or "")}">{"".join(cells)}</tr>')
    statuses = sorted({s.row.get("outcome") or s.row.get("status") or "" for s in slides} - {""})
    status_opts = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in statuses)
    cards = []
    for s in slides:
        if not s.thumbs:
            continue
        imgs = "".join(f'<figure>{svg}<figcaption>{html.escape(t)}'
                       f'{_p95_note(s.row.get("p95_" + t))}</figcaption></figure>' for t, svg in s.thumbs)
        cards.append(f'<div class="card" id="{s.key}" style="border-color:{s.colours[colourings[0]]}"><h3><a href="#row-{s.key}">'
                     f'{html.escape(_tip(s.row))}</a></h3>{imgs}</div>')
    capped = (f"<p>Thumbnails and per-track rates for the {len([s for s in slides if s.thumbs and not s.dashed])} highest-scoring "
              f"slides; {n_capped} more are in the table only.</p>") if n_capped else ""
    overview = f" Maps at 1:{factor} (an overview of the mosaic)." if factor > 1 else ""
    template = resources.files("insar_slide").joinpath("report_template.html").read_text(encoding="utf-8")
    return template.format(
        title=html.escape(info.title(n)), h1=html.escape(info.title(n)), summary=" · ".join(summary), truth=truth_line,
        select=select, tracks=track_buttons, maps="".join(maps), legends=legends, cbar=_colour_bar(norm),
        overview=overview, head=head, body="".join(body), status_opts=status_opts, cards="".join(cards),
        capped=capped, n_rows=len(slides))
