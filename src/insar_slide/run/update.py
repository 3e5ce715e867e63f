"""``insar-slide update`` and ``history``: scheduled inventory updates with slide lifecycles.

An update runs the detector on the newest version of the mosaic (see
:mod:`insar_slide.mosaic` for versions) with the run directory of the previous runs, so a
window whose input fingerprint — the bytes it reads, its place, the model hash — is unchanged
reuses its stored detections and only changed windows are read and go through the model (the
plan reads each core once and hashes what each window would read: :mod:`.plan`). A new model
changes every fingerprint: the update says so up front and recomputes everything.

**Identity.** The new detections are matched one-to-one to every slide known so far (the
previous version's rows, including slides not detected then), greedily by overlap: a
detection continues a known slide when their polygons share at least ``IDENTITY_OVERLAP``
(50 %) of the smaller one. It then keeps the slide's ``slide_id`` and ``first_seen``.
Unmatched detections are ``new``; matched ones ``persisting``; known slides without a match
``not_detected_now`` (kept with their last polygon, ``last_seen`` unchanged, their rate
re-measured on the new version).

**Files**, beside the inventory ``out``: ``<out>.history/versions/version=<label>/part.parquet``
(GeoParquet, one partition per version, append-only: a version's partition is written once,
or rewritten identically by a resumed update), ``<out>.history/state.json`` (the versions
committed, model hash, settings, grid), and the current inventory at ``out``.

**Safety.** Order of writes: the run's per-window results (resumable), the version's history
partition, the current inventory, and last ``state.json`` — each atomic. The previous
version is read from its own partition, never from the current inventory, so an update
interrupted anywhere leaves the previous history and inventory valid and simply resumes; an
update of a version already committed changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from ..decompose import COLUMNS as DECOMPOSITION
from ..errors import GridError, InputError, StoreError
from ..inventory import COLUMNS, polygon_rate_stats, write_inventory
from ..mosaic import grid_of, list_versions, open_basin
from ..progress import Progress
from ..storage import exists, join, read_text, staged, use_options
from .config import RunConfig
from .detect import file_hash
from .pipeline import RunSummary, run, settings_hash
from .plan import fit_scales, window_resample

log = logging.getLogger(__name__)

IDENTITY_OVERLAP = 0.5
LIFECYCLE = ["first_seen", "last_seen", "status", "version"]


def history_dir(cfg: RunConfig) -> str | Path:
    """``<out>.history`` (beside the inventory: a folder, or a prefix of the same store)."""
    return f"{cfg.out}.history" if "://" in cfg.out else Path(f"{cfg.out}.history")


def partition_path(hdir: str | Path, label: str) -> str | Path:
    return join(hdir, "versions", f"version={label}", "part.parquet")


def read_state(hdir: str | Path) -> dict[str, Any] | None:
    p = join(hdir, "state.json")
    if not exists(p):
        return None
    try:
        return json.loads(read_text(p))
    except (OSError, ValueError) as exc:
        raise InputError(f"{p} cannot be read ({exc}); it is left as it is — repair it or move the history "
                         "folder away to start a new one") from exc


def read_partition(hdir: str | Path, label: str) -> gpd.GeoDataFrame:
    p = partition_path(hdir, label)
    try:
        return gpd.read_parquet(str(p))
    except Exception as exc:
        raise InputError(f"the history partition {p} cannot be read ({exc}); refusing to write over the history — "
                         "restore it from a backup or move the history folder away") from exc


def read_history(cfg: RunConfig) -> gpd.GeoDataFrame:
    """Every committed version's rows (slide_id, version, status, score, rates, geometry…)."""
    hdir = history_dir(cfg)
    state = read_state(hdir)
    if state is None:
        raise InputError(f"no inventory history at {hdir}; run `insar-slide update` first")
    parts = [read_partition(hdir, v) for v in state["versions"]]
    return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry="geometry", crs=parts[0].crs if parts else None)


def match_identity(new: gpd.GeoDataFrame, known: gpd.GeoDataFrame, *, iou: float | None = None) -> np.ndarray:
    """For each new row, the index into ``known`` it continues, or -1: polygons sharing
    ``IDENTITY_OVERLAP`` of the smaller one, or with IoU ≥ ``iou`` (the run's ``track_nms_iou``:
    boxes the merge calls one slide seen twice; a small slide's box may come from the other
    track in the next version, a pixel or two off)."""
    out = np.full(len(new), -1)
    if not len(new) or not len(known):
        return out
    a, b = np.asarray(new.geometry, dtype=object), np.asarray(known.geometry, dtype=object)
    ia, ib = shapely.STRtree(b).query(a, predicate="intersects")
    if not len(ia):
        return out
    inter = shapely.area(shapely.intersection(a[ia], b[ib]))
    area_a, area_b = shapely.area(a[ia]), shapely.area(b[ib])
    frac = inter / np.maximum(np.minimum(area_a, area_b), 1e-12)
    ok = frac >= IDENTITY_OVERLAP
    if iou is not None:
        ok |= inter >= iou * (area_a + area_b - inter)
    ia, ib, frac = ia[ok], ib[ok], frac[ok]
    taken = np.zeros(len(b), bool)
    for k in np.argsort(-frac, kind="stable"):
        if out[ia[k]] < 0 and not taken[ib[k]]:
            out[ia[k]] = ib[k]
            taken[ib[k]] = True
    return out


def lifecycle(new: gpd.GeoDataFrame, known: gpd.GeoDataFrame, label: str, ds: Any, *,
              min_coherence: float | None = None, identity_iou: float | None = None) -> gpd.GeoDataFrame:
    """This version's rows: new and persisting detections, and known slides not detected now
    (re-measured on ``ds`` through the run's quality mask, ``min_coherence``)."""
    m = match_identity(new, known, iou=identity_iou)
    rows = new.copy()
    rows["status"] = np.where(m >= 0, "persisting", "new")
    if len(known):
        rows["slide_id"] = np.where(m >= 0, known["slide_id"].to_numpy()[np.maximum(m, 0)], rows["slide_id"].to_numpy())
        rows["first_seen"] = np.where(m >= 0, known["first_seen"].to_numpy()[np.maximum(m, 0)], label)
    else:
        rows["first_seen"] = label
    rows["last_seen"] = label
    lost = known.drop(index=known.index[np.unique(m[m >= 0])]).copy() if len(known) else known.copy()
    if len(lost):
        lost["status"] = "not_detected_now"
        lost["score"] = np.nan
        stats = polygon_rate_stats(ds, lost.geometry, min_coherence=min_coherence)
        for c in ("rate_mean", "rate_p95_abs", "valid_fraction", "rate_track", *DECOMPOSITION):
            lost[c] = stats[c].to_numpy()
    both = pd.concat([rows, lost], ignore_index=True) if len(lost) else rows
    both["version"] = label
    keep = [*[c for c in COLUMNS if c != "geometry"], *LIFECYCLE,
            *[c for c in ("n_boxes", *DECOMPOSITION, "outline") if c in both], "geometry"]
    for c in keep:
        if c not in both.columns:
            both[c] = pd.Series(dtype=object)
    out = gpd.GeoDataFrame(both[keep], geometry="geometry", crs=new.crs if new.crs is not None else known.crs)
    return out.sort_values("slide_id", kind="stable").reset_index(drop=True)


def pick_version(mosaic: str, version: str | None) -> dict[str, Any]:
    """The version ``version`` names among the store's (:func:`~insar_slide.mosaic.list_versions`):
    a label, or None / ``"latest"`` for the newest."""
    versions = list_versions(mosaic)
    if version is None or version == "latest":
        return versions[-1]
    for v in versions:
        if v["label"] == version:
            return v
    raise StoreError(f"{mosaic} has no version {version!r}; it has {[v['label'] for v in versions]}")


@dataclass(frozen=True)
class UpdateResult:
    """What an update did: the version it brought the inventory to, whether it was already
    up to date, the slides by status, and (unless up to date) the run's windows, blocks, time."""

    version: str
    up_to_date: bool
    status_counts: dict[str, int] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)
    blocks: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    run_summary: RunSummary | None = None


def update(cfg: RunConfig, *, version: str | None = None, client: Any = None, progress: Progress | None = None,
           echo: Callable[[str], None] = log.info) -> UpdateResult:
    """Bring the inventory at ``cfg.out`` up to ``version`` of the mosaic (a label; default, or
    ``"latest"``: the newest) and record it in the history. An explicit version must not come
    before the last one committed: the history only moves forward."""
    use_options(cfg.storage_options, cfg.mosaic, cfg.out)
    newest = pick_version(cfg.mosaic, version)
    label = newest["label"]
    hdir = history_dir(cfg)
    state = read_state(hdir)
    if version is not None and state is not None and label in state["versions"][:-1]:
        raise InputError(f"version {label} is already in the history at {hdir}, before {state['versions'][-1]}; "
                         "an update only moves forward: pass a later version, or none for the newest")
    model_hash = file_hash(cfg.model_path) if cfg.model_path.is_file() else ""
    ds = open_basin(cfg.mosaic, label if newest["group"] else None)
    grid = grid_of(ds)
    cfg = fit_scales(cfg, grid)
    key = settings_hash(cfg.model_copy(update={"version": None}), model_hash, window_resample(cfg, grid))
    grid_key = grid.key
    known = gpd.GeoDataFrame()
    if state is None:
        echo(f"no previous update in {hdir}: a full run over version {label}")
    else:
        if state["grid"] != grid_key:
            raise GridError(f"version {label} of {cfg.mosaic} is on another grid or CRS ({grid_key}) than the inventory "
                            f"was built on ({state['grid']}); re-ingest it onto the basin's grid, or start a new history")
        if state["versions"][-1] == label and state["model_hash"] == model_hash and state["settings"] == key:
            echo(f"the inventory is up to date with version {label}; nothing to do")
            return UpdateResult(label, True)
        if state["model_hash"] != model_hash:
            echo("the model differs from the previous update's: every window is recomputed (a full re-run)")
        prev_label = state["versions"][-1] if state["versions"][-1] != label else (state["versions"][-2] if len(state["versions"]) > 1 else None)
        if prev_label is not None:
            known = read_partition(hdir, prev_label)
        echo(f"updating from version {prev_label} to {label}")
    run_cfg = cfg.model_copy(update={
        "version": label if newest["group"] else None, "out": str(join(hdir, "detections", f"{label}.parquet")),
        "run_dir": str(cfg.run_path), "outputs": cfg.outputs.only_inventory(),
        "overwrite": True})
    result = run(run_cfg, client=client, progress=progress, echo=echo)
    new = result.inventory.copy()
    rows = lifecycle(new, known if len(known) else gpd.GeoDataFrame(columns=[*COLUMNS, *LIFECYCLE], geometry="geometry", crs=new.crs),
                     label, ds, min_coherence=cfg.min_coherence, identity_iou=cfg.track_nms_iou)
    rows["slide_num"] = np.arange(1, len(rows) + 1, dtype=np.int32)  # the value in the slide_id raster
    part = partition_path(hdir, label)
    with staged(part, overwrite=True) as tmp:
        rows.to_parquet(tmp, index=False)
    counts = rows["status"].value_counts().to_dict()
    meta = {"version": label, "versions": [*(state["versions"] if state else []), label] if not state or state["versions"][-1] != label
            else state["versions"], "status_counts": counts, "windows": result.summary.windows, "model_hash": model_hash}
    write_inventory(rows, cfg.out, metadata=meta, overwrite=True)
    if cfg.outputs.files_beside():
        from .outputs import write_extras
        write_extras(rows, cfg.model_copy(update={"version": run_cfg.version}), ds=ds, grid=grid)
    new_state = {"versions": meta["versions"], "model_hash": model_hash, "settings": key, "grid": grid_key}
    with staged(join(hdir, "state.json"), overwrite=True) as tmp:
        tmp.write_text(json.dumps(new_state, indent=1))
    w = result.summary.windows
    echo(f"version {label}: {counts.get('new', 0)} new, {counts.get('persisting', 0)} persisting, "
         f"{counts.get('not_detected_now', 0)} not detected now; windows: {w['computed']} recomputed, {w['reused']} reused")
    return UpdateResult(label, False, counts, w, result.summary.blocks, result.summary.seconds, result.summary)


def history_report(cfg: RunConfig, slide: str | None = None) -> str:
    hist = read_history(cfg)
    if slide is not None:
        one = hist[hist["slide_id"] == slide]
        if one.empty:
            raise InputError(f"slide {slide!r} is not in the history ({hist['slide_id'].nunique()} slides)")
        lines = [f"slide {slide}: first seen {one['first_seen'].iloc[0]}",
                 "| version | status | score | rate_mean | rate_p95_abs | area_m2 |", "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in one.to_dict("records"):
            lines.append(f"| {r['version']} | {r['status']} | {r['score']:.3f} | {r['rate_mean']:.1f} | {r['rate_p95_abs']:.1f} | {r['area_m2']:.0f} |")
        return "\n".join(lines)
    state = read_state(history_dir(cfg))
    if state is None:
        raise InputError(f"{history_dir(cfg)} has history partitions but no state.json; restore it, or move the history folder "
                         "away to start a new one")
    lines = ["| version | slides | new | persisting | not detected now |", "| --- | ---: | ---: | ---: | ---: |"]
    for v in state["versions"]:
        c = hist[hist["version"] == v]["status"].value_counts()
        lines.append(f"| {v} | {int(c.sum())} | {c.get('new', 0)} | {c.get('persisting', 0)} | {c.get('not_detected_now', 0)} |")
    for a, b in zip(state["versions"], state["versions"][1:], strict=False):
        now = hist[hist["version"] == b]
        appeared = sorted(now[now.status == "new"]["slide_id"])
        gone = sorted(set(now[now.status == "not_detected_now"]["slide_id"]) - set(
            hist[(hist["version"] == a) & (hist.status == "not_detected_now")]["slide_id"]))
        lines.append(f"{a} → {b}: new {', '.join(appeared) or '-'}; no longer detected {', '.join(gone) or '-'}")
    return "\n".join(lines)
