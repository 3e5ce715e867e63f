"""``insar-slide run``: plan → distributed detection → tree reduction → inventory.

The client (this process) plans and submits; workers read their own windows from Zarr, run the
model (loaded once per worker), write each window's detections into the run directory, and
reduce blocks of windows into part files. The client only sees counts and the few slides that
straddle block borders, then streams the part files into the GeoParquet inventory.
The run directory must be reachable at the same path from every worker (a shared file system
on a multi-machine cluster), like the mosaic and the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from ..errors import InputError
from ..grid import Grid
from ..inventory import COLUMNS, finish_schema, write_inventory
from ..model.checkpoint import read_metadata, resolve_score_threshold, training_pixel_m
from ..model.device import pick_device
from ..mosaic import grid_of, open_basin, resolve_version_group
from ..storage import (
    check_target,
    is_url,
    join,
    staged,
    use_options,
    with_suffix,
)
from ..version import __version__
from .cluster import (
    OutputError,
    StorageOptions,
    WindowsFailed,
    client_map,
    cluster_client,
    lost_scheduler,
    on_interrupt,
)
from .config import RunConfig, config_record
from .detect import (
    DetectSettings,
    detect_batch,
    file_hash,
    unchanged,
)
from .merge import Block, MergeSettings, block_key, part_path, reduce_leaf, reduce_node, slide_ids
from .plan import Window, WindowPlan, aoi_geometry, check_levels, make_plan
from .scales import first_block, pixel_advice

log = logging.getLogger(__name__)

INVENTORY_COLUMNS = [*COLUMNS[:-1], "slide_num", "n_boxes", "geometry"]
#: Extra tries of a detection task that raised (see ``_detect``).
DETECT_RETRIES = 1
#: After this many detection tasks in a row failed, tasks not yet started skip their windows and the run stops.
FAIL_FAST = 4


@dataclass
class RunResult:
    inventory: gpd.GeoDataFrame
    summary: dict[str, Any]
    plan: WindowPlan
    outputs: dict[str, str] = field(default_factory=dict)


def settings_hash(cfg: RunConfig, model_hash: str) -> str:
    """What makes two runs' inventories comparable: the config's detection settings and the model."""
    keep = cfg.model_dump(exclude={"cluster", "outputs", "overwrite", "run_dir", "out", "batch_size", "baseline",
                                "storage_options"})
    if keep["scales"] == [1]:  # single-scale runs keep the ids and history keys they had before scales
        del keep["scales"]
    return hashlib.sha256(json.dumps({"cfg": keep, "model": model_hash}, sort_keys=True, default=str).encode()).hexdigest()


def _blocks(plan: WindowPlan, first: int) -> list[list[Block]]:
    """Levels of the reduction tree over the native tiling, the last one a single block over
    all of it; ``first`` (windows per side at level 1) must be a multiple of every scale factor
    (:func:`.scales.first_block`)."""
    levels = []
    size = first
    level = 1
    while True:
        blocks = [Block(level, r, c, min(r + size, plan.n_rows), min(c + size, plan.n_cols))
                  for r in range(0, plan.n_rows, size) for c in range(0, plan.n_cols, size)]
        levels.append(blocks)
        if len(blocks) == 1:
            return levels
        size *= 2
        level += 1


def run(cfg: RunConfig, *, progress: bool = True, echo: Callable[[str], None] = print, client: Any = None) -> RunResult:
    """Plan, detect, reduce and write; ``client``: an existing ``distributed.Client`` to use
    (a notebook's), else one per ``cfg.cluster``."""
    t_start = time.perf_counter()
    model_path = cfg.model_path
    if not model_path.is_file():
        raise InputError(f"model {model_path} does not exist; set `model:` in the config to a checkpoint "
                         "(train one with workflows/reference_model.sh)")
    meta = read_metadata(model_path)  # refuses non-safetensors files before anything starts
    model_hash = file_hash(model_path)
    thr = resolve_score_threshold(cfg.score_threshold, meta)
    use_options(cfg.storage_options, cfg.mosaic, cfg.out)
    out = cfg.out
    check_target(out, overwrite=cfg.overwrite)
    ds = open_basin(cfg.mosaic, cfg.version)
    group = resolve_version_group(cfg.mosaic, cfg.version)
    grid = grid_of(ds)
    check_levels(cfg, grid)  # before a cluster starts
    if (advice := pixel_advice(float(np.mean(grid.pixel_size_m())), training_pixel_m(meta), tuple(cfg.scales))):
        log.warning(advice)
    run_dir = cfg.run_path
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob("windows/*/.*.tmp"):  # left by a killed task; its window is redone
        stale.unlink(missing_ok=True)
    key = settings_hash(cfg, model_hash)
    run_id = "run-" + key[:12]

    t0 = time.perf_counter()
    state: dict[str, Any] = {}  # what an interruption can count (the plan, once made)
    with on_interrupt(state, run_dir), contextlib.nullcontext(client) if client is not None else cluster_client(cfg) as client:
        t_cluster = time.perf_counter() - t0
        state.update(client=client, address=getattr(getattr(client, "scheduler", None), "address", cfg.cluster.address))
        if cfg.storage_options:  # every worker, also one that joins later, opens URLs with them
            client.register_plugin(StorageOptions(cfg.storage_options, [cfg.mosaic, cfg.out]))
        link = getattr(client, "dashboard_link", None)
        if link and cfg.cluster.dashboard:
            echo(f"Dask dashboard: {link}")
        t0 = time.perf_counter()
        plan = make_plan(cfg, stats_map=client_map(client))
        t_plan = time.perf_counter() - t0
        echo(plan.format())
        (run_dir / "plan.json").write_text(json.dumps(plan.summary(), indent=1))

        settings = replace(detect_settings(cfg, grid, model_hash=model_hash), stop_event=f"insar-slide-stop-{uuid.uuid4().hex}")
        state.update(plan=plan, settings=settings)
        todo = plan.to_run()
        t0 = time.perf_counter()
        done, compute = unchanged(todo, settings)
        t_check = time.perf_counter() - t0
        if done:
            echo(f"{len(done)} of {len(todo)} windows unchanged since an earlier run: their detections are reused")
        batches: list[list[Window]] = []
        # A batch holds windows of one track and one shape: torchvision pads a batch to its
        # largest image, and padding changes the proposals, so mixing shapes would make the
        # detections depend on the batch size.
        batch = cfg.batch_size or (4 if pick_device(cfg.device).type == "cuda" else 1)
        groups: dict[tuple[str, int, int, int], list[Window]] = {}
        for w in compute:
            groups.setdefault((w.track, w.scale, w.read.rows, w.read.cols), []).append(w)
        for mine in groups.values():
            batches += [mine[i:i + batch] for i in range(0, len(mine), batch)]
        t0 = time.perf_counter()
        computed, failed = _detect(client, batches, settings, progress)
        if failed and client.status != "running":  # its futures were cancelled: the scheduler is gone
            raise lost_scheduler(state, RuntimeError("client stopped"))
        done += computed
        t_detect = time.perf_counter() - t0 + t_check
        failed.update({w.key: w.error for w in plan.unreadable()})
        if failed:
            (run_dir / "failed.json").write_text(json.dumps(failed, indent=1))
            if len(failed) == len(plan.unreadable()):  # only corrupt chunks: name them, with the fix
                raise WindowsFailed(f"{plan.unreadable()[0].error} — {len(done)} windows done and kept; "
                                    f"{len(failed)} need unreadable chunks, listed in {run_dir / 'failed.json'}")
            key0, why = next(iter(failed.items()))
            why = " ".join(why.split())[:400]  # one line, whatever the storage client said
            raise WindowsFailed(f"{len(failed)} window(s) failed (first: {key0}: {why}); {len(done)} of {len(todo)} "
                                f"windows saved in {run_dir} (every failure in failed.json); fix the cause and rerun "
                                "the same command to resume")

        t0 = time.perf_counter()
        merge_settings = MergeSettings(cfg.mosaic, str(run_dir), grid, cfg.halo, tuple(plan.tracks), thr,
                                       cfg.nms_iou, cfg.dissolve_overlap, cfg.outputs.outline, cfg.outline_min_abs_rate,
                                       group, tuple(cfg.scales))
        closed = _reduce(client, plan, todo, merge_settings, cfg, {d["key"]: d["fp"] for d in done})
        n_closed = sum(n for n, _ in closed.values())
        t_reduce = time.perf_counter() - t0
        t0 = time.perf_counter()
    t_cluster += time.perf_counter() - t0  # starting and closing an embedded cluster

    t0 = time.perf_counter()
    parts = [part_path(str(run_dir), b) for b, (n, _) in sorted(closed.items(), key=lambda kv: kv[0].name) if n]
    gdf = assemble(parts, grid, cfg, run_id=run_id, model_id=model_hash[:16])
    reused = sum(1 for d in done if d["reused"])
    computed = [d for d in done if not d["reused"]]
    counts = {**plan.counts(), "done": len(done), "reused": reused, "computed": len(computed), "failed": 0}
    metadata = {"config": config_record(cfg), "model": str(model_path), "model_hash": model_hash,
                "code_version": __version__, "run_id": run_id, "windows": counts, "score_threshold": thr}
    if len(cfg.scales) > 1:
        metadata["windows_by_scale"] = plan.scale_counts()
    outputs: dict[str, str] = {}
    try:
        write_inventory(gdf, out, metadata=metadata, overwrite=cfg.overwrite)
        outputs["inventory"] = str(out)
        write_extras(gdf, cfg, ds=ds, grid=grid, written=outputs)
    except OSError as exc:  # a full or read-only disk: say what was written and that nothing is lost
        done_ = ", ".join(f"{k} ({v})" for k, v in outputs.items()) or "nothing (the previous inventory is untouched)"
        raise OutputError(f"cannot write {exc.filename or out}: {exc.strerror or exc}; written before the failure: "
                          f"{done_}; free space or choose another out, then rerun the same command "
                          f"(the {len(done)} windows' detections are kept in {run_dir})") from exc
    t_write = time.perf_counter() - t0
    total = time.perf_counter() - t_start
    model_s = float(sum(d["model_s"] for d in computed))
    summary = {
        "windows": counts, **({"windows_by_scale": plan.scale_counts()} if len(cfg.scales) > 1 else {}),
        "blocks": {"total": len(closed), "reused": sum(hit for _, hit in closed.values())},
        "slides": len(gdf), "n_closed": n_closed, "seconds": round(total, 2),
        "seconds_plan": round(t_plan, 2), "seconds_detect": round(t_detect, 2), "seconds_reduce": round(t_reduce, 2),
        "seconds_write": round(t_write, 2), "seconds_cluster": round(t_cluster, 2), "model_seconds_per_window": round(model_s / len(computed), 3) if computed else None,
        "windows_per_second": round(len(done) / t_detect, 3) if t_detect > 0 and done else None,
        "run_id": run_id, "outputs": outputs,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    echo(format_summary(summary))
    return RunResult(gdf, summary, plan, outputs)


def detect_settings(cfg: RunConfig, grid: Grid, *, model_hash: str) -> DetectSettings:
    group = resolve_version_group(cfg.mosaic, cfg.version)
    return DetectSettings(cfg.mosaic, str(cfg.model_path), model_hash, cfg.device, str(cfg.run_path), grid.key, group)


def _detect(client: Any, batches: list[list[Window]], s: DetectSettings, progress: bool) -> tuple[list[dict[str, Any]], dict[str, str]]:
    from distributed import Event, as_completed
    from tqdm import tqdm

    done: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    if not batches:
        return done, failed
    # retries: a task that raises (a storage hiccup: an S3 timeout, an NFS stall) is tried once
    # more before its windows count as failed — the storage client has retried each request
    # already (s3fs: 5 times with backoff), so more task retries mostly multiply the wait; a
    # worker's death is not a task error: the scheduler reassigns its tasks by itself
    # (distributed.scheduler.allowed-failures, 3).
    futures = {client.submit(detect_batch, b, s, pure=False, retries=DETECT_RETRIES,
                             key=f"detect-{b[0].key.replace('/', '-')}-{i}"): b
               for i, b in enumerate(batches)}
    total = sum(len(b) for b in batches)
    in_a_row = 0
    stop = Event(s.stop_event, client=client) if s.stop_event else None
    with tqdm(total=total, unit="window", disable=not progress, desc="detect") as bar:
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except Exception as exc:  # keep going: finished windows are on disk, the run resumes
                for w in futures[fut]:
                    failed[w.key] = f"{type(exc).__name__}: {exc}"
                bar.update(len(futures[fut]))
                in_a_row += 1
                if client.status != "running":  # the scheduler is gone: every other future fails too
                    break
                if in_a_row == FAIL_FAST and stop is not None:
                    # The cause is not one window's (a dead endpoint, a full disk): tasks not yet
                    # started skip their windows, the running ones end, and the run stops. (Not
                    # cancelled: a worker closed mid-read would leave its storage client's
                    # pending requests to print at exit.)
                    stop.set()
                continue
            if any(r.get("skipped") for r in res):
                for r in res:
                    failed[r["key"]] = f"not attempted: the run stopped after {FAIL_FAST} failed tasks in a row"
                bar.update(len(res))
                continue
            in_a_row = 0
            done += res
            bar.update(len(res))
            bar.set_postfix(reused=sum(1 for d in done if d["reused"]))
    return done, failed


def _reduce(client: Any, plan: WindowPlan, todo: list[Window], s: MergeSettings, cfg: RunConfig,
            fingerprints: dict[str, str]) -> dict[Block, tuple[int, bool]]:
    """The reduction tree on the cluster; per block, the slides it closed (and wrote) and whether
    its stored result was reused."""
    levels = _blocks(plan, first_block(cfg.reduce_block, tuple(cfg.scales)))
    tiling = (plan.n_rows, plan.n_cols)
    at: dict[tuple[int, int], list[Window]] = {}  # by native index: a coarse core lies in one block
    for w in todo:
        at.setdefault(w.native_index, []).append(w)
    prev: dict[Block, Any] = {}
    every: dict[Block, Any] = {}
    for depth, blocks in enumerate(levels):
        root = depth == len(levels) - 1
        cur: dict[Block, Any] = {}
        for b in blocks:
            wins = [w for r in range(b.r0, b.r1) for c in range(b.c0, b.c1) for w in at.get((r, c), [])]
            key = block_key(s, b, cfg.window, tiling, root, [fingerprints[w.key] for w in wins])
            if depth == 0:
                cur[b] = client.submit(reduce_leaf, wins, b, s, cfg.window, tiling, root, key, pure=False)
            else:
                kids = [f for k, f in prev.items() if b.r0 <= k.r0 < b.r1 and b.c0 <= k.c0 < b.c1]
                cur[b] = client.submit(reduce_node, kids, b, s, cfg.window, tiling, root, key, pure=False)
        every.update(cur)
        prev = cur
    (open_, _, _), = client.gather(list(prev.values()))
    if len(open_):  # the root block has no outer border, so nothing can stay open
        raise RuntimeError(f"{len(open_)} slides left open at the root of the reduction tree; please report this")
    blocks = list(every)
    counts = client.gather([client.submit(lambda r: (r[1], r[2]), every[b], pure=False) for b in blocks])
    return {b: (int(n), bool(hit)) for b, (n, hit) in zip(blocks, counts, strict=True)}


def assemble(parts: list[Path], grid: Grid, cfg: RunConfig, *, run_id: str, model_id: str) -> gpd.GeoDataFrame:
    """This run's part files → one inventory in a deterministic order with stable ids."""
    frames = [gpd.read_parquet(p) for p in parts]
    frames = [f for f in frames if len(f)]
    if frames:
        gdf = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=grid.crs)
    else:
        gdf = gpd.GeoDataFrame({"score": pd.Series([], dtype=float), "tracks": pd.Series([], dtype=object),
                                "n_boxes": pd.Series([], dtype=int)}, geometry=gpd.GeoSeries([], crs=grid.crs), crs=grid.crs)
    if cfg.aoi is not None and len(gdf):
        aoi = aoi_geometry(cfg.aoi, grid.crs)
        gdf = gdf[shapely.intersects(aoi, np.asarray(gdf.geometry.centroid, dtype=object))]
    gdf["slide_id"] = slide_ids(gdf, grid)
    b = gdf.geometry.bounds
    order = np.lexsort((b["minx"].to_numpy(), -b["maxy"].to_numpy())) if len(gdf) else np.zeros(0, int)
    gdf = gdf.iloc[order].reset_index(drop=True)
    gdf["slide_num"] = np.arange(1, len(gdf) + 1, dtype=np.int32)
    gdf["method"] = "faster_rcnn"
    gdf["run_id"] = run_id
    gdf["model_id"] = model_id
    if len(cfg.scales) == 1:
        return finish_schema(gdf, grid, INVENTORY_COLUMNS)
    gdf["scale"] = (gdf["scale"] if "scale" in gdf else pd.Series([], dtype=float)).astype(np.int64)
    return finish_schema(gdf, grid, [*INVENTORY_COLUMNS[:-1], "scale", "geometry"])


def write_extras(gdf: gpd.GeoDataFrame, cfg: RunConfig, *, ds: Any, grid: Grid,
                 written: dict[str, str] | None = None) -> dict[str, str]:
    """The optional outputs beside the inventory; ``written`` (name → path) fills as each lands.
    An OSError names the output it was writing."""
    out = cfg.out
    written = {} if written is None else written
    stem = str(with_suffix(out, ""))
    todo: list[tuple[str, str | Path, Callable[[], object]]] = []
    if cfg.outputs.geopackage:
        gpkg = with_suffix(out, ".gpkg")

        def _gpkg() -> None:
            with staged(gpkg, overwrite=True) as tmp:
                plain = gdf.drop(columns=[c for c in gdf.columns
                                          if c != "geometry" and isinstance(gdf[c].dtype, gpd.array.GeometryDtype)])
                plain.to_file(tmp, driver="GPKG", layer="landslides")
        todo.append(("geopackage", gpkg, _gpkg))
    if cfg.outputs.slide_id_raster:
        from .raster import write_slide_raster
        path = f"{stem}.slide_id.zarr"
        todo.append(("slide_id_raster", path, lambda: write_slide_raster(gdf, ds, grid, path if is_url(path) else Path(path))))
    if cfg.outputs.quicklook:
        from ..quicklook import quicklook
        png = f"{stem}.png"
        group = resolve_version_group(cfg.mosaic, cfg.version)
        # a version is a whole store
        todo.append(("quicklook", png, lambda: quicklook(join(cfg.mosaic, group) if group else cfg.mosaic, png, inventory=out)))
    for name, target, write in todo:
        try:
            write()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        written[name] = str(target)
    return written


def format_summary(s: dict[str, Any]) -> str:
    w = s["windows"]
    skipped = ", ".join(f"{k.removeprefix('skipped_')} {v}" for k, v in w.items() if k.startswith("skipped_"))
    lines = [
        f"windows: {w['planned']} planned, skipped: {skipped}; run {w['run']} "
        f"({w['computed']} computed, {w['reused']} reused from an earlier run)",
        f"slides: {s['slides']}",
        f"time: {s['seconds']:.1f} s (plan {s['seconds_plan']:.1f}, detect {s['seconds_detect']:.1f}, "
        f"reduce {s['seconds_reduce']:.1f}, write {s['seconds_write']:.1f}, cluster start and stop {s['seconds_cluster']:.1f})"
        + (f"; {s['windows_per_second']:.2f} windows/s" if s["windows_per_second"] else ""),
    ]
    lines += [f"{k}: {v}" for k, v in s["outputs"].items()]
    return "\n".join(lines)
