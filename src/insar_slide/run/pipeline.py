"""``insar-slide run``: plan → distributed detection → tree reduction → inventory.

The client (this process) plans and submits; workers read their own windows from Zarr, run the
model (loaded once per worker), write each window's detections into the run directory, and
reduce blocks of windows into part files. The client only sees counts and the few slides that
straddle block borders, then streams the part files into the GeoParquet inventory.
The run directory must be reachable at the same path from every worker (a shared file system on a multi-machine cluster), like the mosaic and the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import geopandas as gpd
import numpy as np

from ..core.merge import MergeRules
from ..core.scales import describe_resample, first_block, pixel_advice
from ..core.tiling import Block, Window, WindowPlan, plan_windows
from ..errors import InputError
from ..grid import Grid
from ..inventory import inventory_metadata, write_inventory
from ..model.checkpoint import read_metadata, resolve_score_threshold, training_pixel_m
from ..model.device import pick_device, pick_precision
from ..mosaic import grid_of, open_basin, resolve_version_group
from ..progress import Progress
from ..storage import check_target, exists, use_options
from ..version import __version__
from .cluster import (
    OutputError,
    StorageOptions,
    WindowsFailed,
    client_map,
    cluster_client,
    dashboard_serves,
    lost_scheduler,
    model_task_resources,
    on_interrupt,
)
from .config import DEFAULT_MIN_COHERENCE, RunConfig, config_record
from .detect import DetectSettings, detect_batch, file_hash, unchanged, window_batches
from .merge import BlockJob, BlockResult, MergeSettings, block_key, reduce_leaf, reduce_node
from .outputs import assemble, write_extras
from .plan import aoi_geometry, fit_scales, make_plan, window_resample
from .store import RunStore

log = logging.getLogger(__name__)

#: Extra tries of a detection task that raised (see ``_detect``).
DETECT_RETRIES = 1
#: After this many detection tasks in a row failed, tasks not yet started skip their windows and the run stops.
FAIL_FAST = 4


@dataclass(frozen=True)
class RunSummary:
    """What a run did (also written to ``<run_dir>/summary.json``)."""

    windows: dict[str, int]  # planned, run, skipped_<reason>, done, reused, computed, failed
    blocks: dict[str, int]  # total, reused
    slides: int
    n_closed: int
    seconds: float
    seconds_plan: float
    seconds_detect: float
    seconds_reduce: float
    seconds_write: float
    seconds_cluster: float
    model_seconds_per_window: float | None
    windows_per_second: float | None
    run_id: str
    outputs: dict[str, str]
    windows_by_scale: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.windows_by_scale:
            del d["windows_by_scale"]
        return d

    def format(self) -> str:
        w = self.windows
        skipped = ", ".join(f"{k.removeprefix('skipped_')} {v}" for k, v in w.items() if k.startswith("skipped_"))
        lines = [
            f"windows: {w['planned']} planned, skipped: {skipped}; run {w['run']} "
            f"({w['computed']} computed, {w['reused']} reused from an earlier run)",
            f"slides: {self.slides}",
            f"time: {self.seconds:.1f} s (plan {self.seconds_plan:.1f}, detect {self.seconds_detect:.1f}, "
            f"reduce {self.seconds_reduce:.1f}, write {self.seconds_write:.1f}, cluster start and stop {self.seconds_cluster:.1f})"
            + (f"; {self.windows_per_second:.2f} windows/s" if self.windows_per_second else ""),
        ]
        lines += [f"{k}: {v}" for k, v in self.outputs.items()]
        return "\n".join(lines)


@dataclass
class RunResult:
    inventory: gpd.GeoDataFrame
    summary: RunSummary
    plan: WindowPlan
    outputs: dict[str, str] = field(default_factory=dict)


def settings_hash(cfg: RunConfig, model_hash: str, resample: tuple[float, float] = (1.0, 1.0)) -> str:
    """What makes two runs' inventories comparable: the config's detection settings, the model
    and the factors the windows are resampled by (:func:`.plan.window_resample`; not the
    ``match_pixel`` switch itself, which changes nothing on a mosaic at the model's pixel)."""
    keep = cfg.model_dump(exclude={"cluster": True, "outputs": True, "overwrite": True, "run_dir": True, "out": True,
                                   "batch_size": True, "baseline": True, "storage_options": True, "inference": {"match_pixel"}})
    # Settings added later drop out at the values that reproduce the runs from before them, so those
    # runs keep their ids and history keys: one scale, the model's own inference settings, the two
    # tracks' boxes dissolved (no track_nms_iou), the default quality mask, nested slides always joined (or one scale).
    old = {"scales": keep["scales"] == [1], "inference": cfg.inference.model_copy(update={"match_pixel": True}).is_default(),
           "track_nms_iou": keep["track_nms_iou"] is None, "min_coherence": cfg.min_coherence == DEFAULT_MIN_COHERENCE,
           "nested_share": cfg.nested_share == 0 or len(cfg.scales) == 1}
    keep = {k: v for k, v in keep.items() if not old.get(k)}
    if tuple(resample) != (1.0, 1.0):
        keep["resample"] = [round(v, 6) for v in resample]
    return hashlib.sha256(json.dumps({"cfg": keep, "model": model_hash}, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Inputs:
    """Stage 1's result: the model and the mosaic checked, the run directory ready."""

    cfg: RunConfig  # the run's config with the scales this mosaic takes (:func:`.plan.fit_scales`)
    model_hash: str
    score_threshold: float
    ds: Any
    grid: Grid
    group: str | None
    store: RunStore
    run_id: str
    replace_out: bool  # an inventory at out may be replaced (:func:`may_replace`)
    n_windows: int  # windows of every scale and track inside the AOI, before the skip rules
    resample: tuple[float, float] = (1.0, 1.0)  # (rows, cols) factors to the model's pixel (inference.match_pixel)


def may_replace(cfg: RunConfig, run_id: str) -> bool:
    """Whether this run may replace the file at ``out``: none is there, ``overwrite`` is set
    (``run --overwrite``), or it is an inventory that this same config and model made (a rerun,
    which resumes). Anything else is a one-line error: an inventory is never replaced by surprise."""
    if cfg.overwrite or not exists(cfg.out):
        return True
    try:
        prev = inventory_metadata(cfg.out).get("run_id")
    except Exception:  # not an inventory, or unreadable
        prev = None
    if prev == run_id:
        return True
    what = f"an inventory of another config or model ({prev})" if prev else "a file that is not an inventory of this tool"
    raise InputError(f"{cfg.out} holds {what}, not of this run ({run_id}); pass --overwrite (or `overwrite: true`) "
                     "to replace it, or choose another out")


def _inputs(cfg: RunConfig) -> Inputs:
    """Stage 1: check the model, the output and the mosaic before a cluster starts."""
    model_path = cfg.model_path
    if not model_path.is_file():
        raise InputError(f"model {model_path} does not exist; set `model:` in the config to a checkpoint "
                         "(train one with workflows/reference_model.sh)")
    meta, model_hash = read_metadata(model_path), file_hash(model_path)  # refuses non-safetensors files first
    thr = resolve_score_threshold(cfg.score_threshold, meta)
    use_options(cfg.storage_options, cfg.mosaic, cfg.out)
    ds, group = open_basin(cfg.mosaic, cfg.version), resolve_version_group(cfg.mosaic, cfg.version)
    grid = grid_of(ds)
    cfg = fit_scales(cfg, grid)
    resample = window_resample(cfg, grid, meta)
    run_id = "run-" + settings_hash(cfg, model_hash, resample)[:12]
    replace_out = may_replace(cfg, run_id)
    check_target(cfg.out, overwrite=replace_out)
    if resample == (1.0, 1.0) and (advice := pixel_advice(float(np.mean(grid.pixel_size_m())), training_pixel_m(meta),
                                                          tuple(cfg.scales))):
        log.warning("%s (or resample every window to it: inference.match_pixel: true, the default)", advice)
    store = RunStore(str(cfg.run_path)).prepare()
    tracks = cfg.tracks or [str(t) for t in ds["track"].values]
    aoi = aoi_geometry(cfg.aoi, grid.crs) if cfg.aoi is not None else None
    pure = plan_windows(grid, tracks, window=cfg.window, halo=cfg.halo, scales=cfg.scales, aoi=aoi)
    n_windows = sum(w.status == "pending" for w in pure.windows)
    return Inputs(cfg, model_hash, thr, ds, grid, group, store, run_id, replace_out, n_windows, resample)


def run(cfg: RunConfig, *, client: Any = None, progress: Progress | None = None,
        echo: Callable[[str], None] = log.info, model_threads: int | None = None) -> RunResult:
    """Plan, detect, reduce and write, on ``client`` (a notebook's) or a cluster per ``cfg.cluster``;
    ``echo`` takes the lines a user reads, ``progress`` the stages' progress; ``model_threads``:
    torch threads per worker (default: ``threads_per_worker`` on the embedded cluster, which adds
    a read-ahead thread; all of a given cluster's threads)."""
    if model_threads is None and client is None and not cfg.cluster.address:
        model_threads = cfg.cluster.threads_per_worker
    t_start = time.perf_counter()
    inp, times = _inputs(cfg), {}  # 1. inputs
    cfg = inp.cfg
    t0 = time.perf_counter()
    state: dict[str, Any] = {}  # what an interruption can count (the plan, once made)
    own = cluster_client(cfg, n_windows=inp.n_windows)
    with on_interrupt(state), contextlib.nullcontext(client) if client is not None else own as client:
        times["cluster"] = time.perf_counter() - t0
        state.update(client=client, address=getattr(getattr(client, "scheduler", None), "address", cfg.cluster.address))
        if cfg.storage_options:  # every worker, also one that joins later, opens URLs with them
            client.register_plugin(StorageOptions(cfg.storage_options, [cfg.mosaic, cfg.out]))
        link = getattr(client, "dashboard_link", None)
        if link and cfg.cluster.dashboard and dashboard_serves(link):
            echo(f"Dask dashboard: {link}")
        t0 = time.perf_counter()
        plan = make_plan(cfg, stats_map=client_map(client), progress=progress)  # 2. plan
        times["plan"] = time.perf_counter() - t0
        echo(plan.format())
        inp.store.write_json("plan.json", plan.summary())
        settings = replace(detect_settings(cfg, inp.grid, model_hash=inp.model_hash, store=inp.store, group=inp.group,
                                           resample=inp.resample),
                           stop_event=f"insar-slide-stop-{uuid.uuid4().hex}", threads=model_threads)
        state.update(plan=plan, settings=settings)
        if inp.resample != (1.0, 1.0):
            echo(f"windows resampled by {describe_resample(inp.resample)} to the model's training pixel (inference.match_pixel)")
        t0 = time.perf_counter()
        done = _detect_stage(client, cfg, plan, settings, state, progress, echo)  # 3. detect
        times["detect"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rules = MergeRules(grid=inp.grid, halo=cfg.halo, tracks=tuple(plan.tracks), score_threshold=inp.score_threshold,
                           nms_iou=cfg.nms_iou, dissolve_overlap=cfg.dissolve_overlap, scales=tuple(cfg.scales),
                           window=cfg.window, track_nms_iou=cfg.track_nms_iou, nested_share=cfg.nested_share)
        merge_settings = MergeSettings(rules=rules, mosaic=cfg.mosaic, store=inp.store, outline=cfg.outputs.outline,
                                       outline_min_abs_rate=cfg.outline_min_abs_rate, group=inp.group,
                                       min_coherence=cfg.min_coherence)
        closed = _reduce(client, plan, merge_settings, cfg, {d["key"]: d["fp"] for d in done})  # 4. reduce
        times["reduce"] = time.perf_counter() - t0
        t0 = time.perf_counter()
    times["cluster"] += time.perf_counter() - t0  # starting and closing an embedded cluster
    t0 = time.perf_counter()
    gdf, outputs, metadata = _write_stage(cfg, inp, plan, closed, done)  # 5. write
    times["write"] = time.perf_counter() - t0
    computed = [d for d in done if not d["reused"]]
    model_s = float(sum(d["model_s"] for d in computed))
    summary = RunSummary(
        windows=metadata["windows"], windows_by_scale=plan.scale_counts(),
        blocks={"total": len(closed), "reused": sum(r.reused for r in closed.values())},
        slides=len(gdf), n_closed=sum(r.n_closed for r in closed.values()), seconds=round(time.perf_counter() - t_start, 2),
        **{f"seconds_{k}": round(times[k], 2) for k in ("plan", "detect", "reduce", "write", "cluster")},
        model_seconds_per_window=round(model_s / len(computed), 3) if computed else None,
        windows_per_second=round(len(done) / times["detect"], 3) if times["detect"] > 0 and done else None,
        run_id=inp.run_id, outputs=outputs)
    inp.store.write_json("summary.json", summary.to_dict())
    echo(summary.format())
    return RunResult(gdf, summary, plan, outputs)


def _detect_stage(client: Any, cfg: RunConfig, plan: WindowPlan, settings: DetectSettings, state: dict[str, Any],
                  progress: Progress | None, echo: Callable[[str], None]) -> list[dict[str, Any]]:
    """Stage 3: the windows not unchanged since an earlier run, in batches on the cluster; every
    window's result summary, or one line naming what failed (finished windows are kept)."""
    todo = plan.to_run()
    done, compute = unchanged(todo, settings)
    if done:
        echo(f"{len(done)} of {len(todo)} windows unchanged since an earlier run: their detections are reused")
    batches = window_batches(compute, cfg.batch_size or (4 if pick_device(cfg.device).type == "cuda" else 1))
    computed, failed = _detect(client, batches, settings, progress)
    if failed and client.status != "running":  # its futures were cancelled: the scheduler is gone
        raise lost_scheduler(state, RuntimeError("client stopped"))
    done += computed
    failed.update({w.key: w.error for w in plan.unreadable()})
    if failed:
        path = settings.store.write_json("failed.json", failed)
        if len(failed) == len(plan.unreadable()):  # only corrupt chunks: name them, with the fix
            raise WindowsFailed(f"{plan.unreadable()[0].error} — {len(done)} windows done and kept; "
                                f"{len(failed)} need unreadable chunks, listed in {path}")
        key0, why = next(iter(failed.items()))
        why = " ".join(why.split())[:400]  # one line, whatever the storage client said
        raise WindowsFailed(f"{len(failed)} window(s) failed (first: {key0}: {why}); {len(done)} of {len(todo)} "
                            f"windows saved in {settings.store.root} (every failure in failed.json); fix the cause and rerun "
                            "the same command to resume")
    return done


def _write_stage(cfg: RunConfig, inp: Inputs, plan: WindowPlan, closed: dict[Block, BlockResult],
                 done: list[dict[str, Any]]) -> tuple[gpd.GeoDataFrame, dict[str, str], dict[str, Any]]:
    """Stage 5: the part files → the inventory and its extras; (inventory, outputs, metadata)."""
    parts = [inp.store.part_path(b) for b, r in sorted(closed.items(), key=lambda kv: kv[0].name) if r.n_closed]
    gdf = assemble(parts, inp.grid, cfg, run_id=inp.run_id, model_id=inp.model_hash[:16])
    reused = sum(1 for d in done if d["reused"])
    counts = {**plan.counts(), "done": len(done), "reused": reused, "computed": len(done) - reused, "failed": 0}
    metadata = {"config": config_record(cfg), "model": str(cfg.model_path), "model_hash": inp.model_hash,
                "code_version": __version__, "run_id": inp.run_id, "windows": counts, "score_threshold": inp.score_threshold}
    if len(cfg.scales) > 1:
        metadata["windows_by_scale"] = plan.scale_counts()
    if inp.resample != (1.0, 1.0):
        metadata["resample"] = list(inp.resample)
    outputs: dict[str, str] = {}
    try:
        write_inventory(gdf, cfg.out, metadata=metadata, overwrite=inp.replace_out)
        outputs["inventory"] = str(cfg.out)
        write_extras(gdf, cfg, ds=inp.ds, grid=inp.grid, written=outputs)
    except OSError as exc:  # a full or read-only disk: say what was written and that nothing is lost
        done_ = ", ".join(f"{k} ({v})" for k, v in outputs.items()) or "nothing (the previous inventory is untouched)"
        raise OutputError(f"cannot write {exc.filename or cfg.out}: {exc.strerror or exc}; written before the failure: "
                          f"{done_}; free space or choose another out, then rerun the same command "
                          f"(the {len(done)} windows' detections are kept in {inp.store.root})") from exc
    return gdf, outputs, metadata


def detect_settings(cfg: RunConfig, grid: Grid, *, model_hash: str, store: RunStore | None = None,
                    group: str | None = None, resample: tuple[float, float] | None = None) -> DetectSettings:
    """What every detection task needs; ``group``: the mosaic version's and ``resample`` the
    windows' factors (:func:`.plan.window_resample`), each worked out here when None."""
    group = group if group is not None else resolve_version_group(cfg.mosaic, cfg.version)
    inf, store = cfg.inference, store or RunStore(str(cfg.run_path))
    resample = resample if resample is not None else window_resample(cfg, grid)
    return DetectSettings(mosaic=cfg.mosaic, model_path=str(cfg.model_path), model_hash=model_hash, device=cfg.device,
                          store=store, grid_key=grid.key, group=group, proposals=inf.proposals, detections=inf.detections,
                          precision=pick_precision(inf.precision, pick_device(cfg.device)), min_coherence=cfg.min_coherence,
                          resample=resample)


def _detect(client: Any, batches: list[list[Window]], s: DetectSettings,
            progress: Progress | None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    from distributed import Event, as_completed

    done: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    if not batches:
        return done, failed
    # retries: a task that raises (a storage hiccup: an S3 timeout, an NFS stall) is tried once
    # more before its windows count as failed — the storage client has retried each request
    # already (s3fs: 5 times with backoff), so more task retries mostly multiply the wait; a
    # worker's death is not a task error: the scheduler reassigns its tasks by itself
    # (distributed.scheduler.allowed-failures, 3).
    resources = model_task_resources(s.device, client.scheduler_info().get("workers", {}))
    futures = {client.submit(detect_batch, b, s, pure=False, retries=DETECT_RETRIES, resources=resources,
                             key=f"detect-{b[0].key.replace('/', '-')}-{i}", priority=len(batches) - i): b
               for i, b in enumerate(batches)}  # in the given order (window_batches: largest first)
    total = sum(len(b) for b in batches)
    in_a_row = 0
    stop = Event(s.stop_event, client=client) if s.stop_event else None
    finished = 0
    for fut in as_completed(futures):
        finished += len(futures[fut])
        try:
            res = fut.result()
        except Exception as exc:  # keep going: finished windows are on disk, the run resumes
            for w in futures[fut]:
                failed[w.key] = f"{type(exc).__name__}: {exc}"
            in_a_row += 1
            if client.status != "running":  # the scheduler is gone: every other future fails too
                break
            if in_a_row == FAIL_FAST and stop is not None:
                # The cause is not one window's (a dead endpoint, a full disk): tasks not yet
                # started skip their windows, the running ones end, and the run stops. (Not
                # cancelled: a worker closed mid-read would leave its storage client's
                # pending requests to print at exit.)
                stop.set()
        else:
            if any(r.get("skipped") for r in res):
                for r in res:
                    failed[r["key"]] = f"not attempted: the run stopped after {FAIL_FAST} failed tasks in a row"
            else:
                in_a_row = 0
                done += res
        if progress is not None:
            progress("detect", finished, total)
    return done, failed


def _reduce(client: Any, plan: WindowPlan, s: MergeSettings, cfg: RunConfig,
            fingerprints: dict[str, str]) -> dict[Block, BlockResult]:
    """Stage 4: the reduction tree on the cluster; per block, its result (its open features
    gathered only at the root)."""
    levels = plan.blocks(first_block(cfg.reduce_block, tuple(cfg.scales)))
    tiling = (plan.n_rows, plan.n_cols)
    at: dict[tuple[int, int], list[Window]] = {}  # by native index: a coarse core lies in one block
    for w in plan.to_run():
        at.setdefault(w.native_index, []).append(w)
    prev: dict[Block, Any] = {}
    every: dict[Block, Any] = {}
    for depth, blocks in enumerate(levels):
        root = depth == len(levels) - 1
        cur: dict[Block, Any] = {}
        for b in blocks:
            wins = [w for r in range(b.r0, b.r1) for c in range(b.c0, b.c1) for w in at.get((r, c), [])]
            job = BlockJob(b, tiling, root, block_key(s, b, tiling, root, [fingerprints[w.key] for w in wins]))
            if depth == 0:
                cur[b] = client.submit(reduce_leaf, wins, job, s, pure=False)
            else:
                kids = [f for k, f in prev.items() if b.r0 <= k.r0 < b.r1 and b.c0 <= k.c0 < b.c1]
                cur[b] = client.submit(reduce_node, kids, job, s, pure=False)
        every.update(cur)
        prev = cur
    (top,) = client.gather(list(prev.values()))
    if len(top.open):  # the root block has no outer border, so nothing can stay open
        raise RuntimeError(f"{len(top.open)} slides left open at the root of the reduction tree; please report this")
    blocks = list(every)
    counts = client.gather([client.submit(lambda r: (r.n_closed, r.reused), every[b], pure=False) for b in blocks])
    return {b: BlockResult(top.open, int(n), bool(hit)) for b, (n, hit) in zip(blocks, counts, strict=True)}
