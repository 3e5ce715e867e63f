"""The worker side of ``run``: read windows, reuse finished ones, run the model, keep results.

A window's fingerprint hashes its input — the plan's ``input_hash`` of the bytes its read area
covers (see :mod:`.plan`) — with the model hash and the window's place on the map. Its stored
detections are reused when the fingerprint matches: this is what makes a killed run resume,
and what lets an update recompute only changed windows. ``run`` checks that before scheduling
anything, so unchanged windows are never read; a task gets a few windows of one track
(``batch_size``), reads each (core + halo) itself from Zarr, and runs them through the model
in one call (reusing any whose result appeared meanwhile).

A window of a coarse level (``scale`` f > 1) reads the block mean of the native pixels under
it; its fingerprint also holds its scale (a scale-1 fingerprint is the one from before scales
existed, so earlier run directories resume), and its boxes are stored ×f, in the native pixel
frame like every other window's. With ``resample`` ≠ (1, 1) (a mosaic whose pixel is not the
model's training pixel, ``inference.match_pixel``), every window is resampled by it after
encoding (:meth:`~insar_slide.model.encoding.InputEncoding.resize`) and its boxes scaled back.

The model is loaded once per process and kept (keyed by the checkpoint's hash); model calls in
one process are serialised by a lock and use the worker's thread count, so tasks of one worker
overlap their reading and writing with another task's forward pass without oversubscribing.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.tiling import Window
from ..errors import InputError
from ..model.checkpoint import load_checkpoint
from ..model.device import autocast_dtype, pick_device
from .io import read_level, read_problem
from .store import RunStore

_MODELS: dict[tuple[Any, ...], tuple[torch.nn.Module, Any, threading.Lock]] = {}
_LOAD_LOCK = threading.Lock()
_THREADS_SET: list[int] = []


@dataclass(frozen=True, kw_only=True)
class DetectSettings:
    """What a task needs besides its windows (small; pickled into each task)."""

    mosaic: str
    model_path: str
    model_hash: str
    device: str
    store: RunStore
    grid_key: str  # CRS and transform: a window's detections are only valid on the same grid
    group: str | None = None  # the mosaic version's group (None: the root)
    threads: int | None = None
    stop_event: str | None = None  # a distributed.Event: once set, tasks not yet started skip their windows
    precision: str = "fp32"  # resolved (model.device.pick_precision): fp32, bf16 or fp16
    proposals: int | None = None  # RPN proposals per window (None: the model's)
    detections: int | None = None  # boxes per window (None: the model's)
    min_coherence: float | None = None  # the quality mask (run.io.read_window); None: rates as stored
    resample: tuple[float, float] = (1.0, 1.0)  # (rows, cols) factors to the model's training pixel (run.config)


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file (``hashlib.file_digest``: the standard library's streamed read)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fingerprint(win: Window, s: DetectSettings) -> str:
    if not win.input_hash:
        raise ValueError(f"window {win.key} has no input hash: make windows with plan.make_plan")
    doc: dict[str, Any] = {"track": win.track, "read": [win.read.row0, win.read.col0, win.read.rows, win.read.cols],
                           "grid": s.grid_key, "model": s.model_hash, "input": win.input_hash}
    if win.scale != 1:
        doc["scale"] = win.scale
    # inference settings other than the model's own (fp32, its proposals and detections)
    doc.update({k: v for k, v in (("precision", s.precision), ("proposals", s.proposals), ("detections", s.detections))
                if v not in (None, "fp32")})
    if tuple(s.resample) != (1.0, 1.0):
        doc["resample"] = list(s.resample)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def reused(win: Window, fp: str, n: int) -> dict[str, Any]:
    return {"key": win.key, "fp": fp, "reused": True, "n": n, "read_s": 0.0, "model_s": 0.0}


def _threads() -> int:
    try:
        from distributed import get_worker
        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return max(1, torch.get_num_threads())


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def tune_malloc() -> bool:
    """Give glibc's allocator back the thresholds it would reach on its own in a plain process.

    A Dask nanny starts its worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (against memory
    fragmentation in pandas-style workloads). Setting it also freezes glibc's mmap threshold at
    128 KiB, so every feature map of a forward pass is a fresh ``mmap`` that the kernel must
    zero page by page: the model ran 21 % slower in a worker than in a plain process (6.25 s vs
    5.18 s for one 1152² window, 1 thread). These values are glibc's own dynamic maximum
    (mmap 32 MiB, trim 2× that); with them the worker's forward pass takes the bare time again.
    Returns whether they were applied (glibc only; a no-op elsewhere).
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 64 << 20))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def apply_inference_settings(model: torch.nn.Module, *, proposals: int | None = None, detections: int | None = None,
                             precision: str = "fp32", optimize: bool = True) -> torch.nn.Module:
    """Set a loaded detector's inference proposals and detections and, with ``optimize`` (an
    eval model only), fold its batch norms into the convolutions
    (:func:`~insar_slide.model.detector.fold_batchnorm`) and, on the CPU, store its weights
    channels-last, oneDNN's fast layout: on 2026-12-07's AMD EPYC (AVX-512) the two made a
    1152² fp32 window 1.07–1.15× faster, with the same boxes (``benchmarks/bench_model.py``
    measures both against the plain model in every run)."""
    from ..model.detector import fold_batchnorm

    det: Any = model  # torchvision's FasterRCNN: its rpn and roi_heads
    if proposals is not None:
        det.rpn._post_nms_top_n["testing"] = proposals
        det.rpn._pre_nms_top_n["testing"] = max(proposals, det.rpn._pre_nms_top_n["testing"])
    if detections is not None:
        det.roi_heads.detections_per_img = detections
    if optimize and not model.training:
        fold_batchnorm(model)
    if (optimize or precision == "bf16") and next(model.parameters()).device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


def loaded_models() -> int:
    """How many models this process holds (0 or 1): a kept-up worker keeps its model between runs."""
    return len(_MODELS)


def worker_model(s: DetectSettings) -> tuple[torch.nn.Module, Any, threading.Lock]:
    """This process's copy of the model (loaded on first use, then reused by every task)."""
    key = (s.model_hash, s.device, s.precision, s.proposals, s.detections)
    with _LOAD_LOCK:
        if key not in _MODELS:
            tune_malloc()
            threads = s.threads or _threads()
            if not _THREADS_SET or _THREADS_SET[-1] != threads:
                torch.set_num_threads(threads)
                _THREADS_SET.append(threads)
            model, mcfg, _ = load_checkpoint(s.model_path, device=pick_device(s.device))
            apply_inference_settings(model, proposals=s.proposals, detections=s.detections, precision=s.precision)
            _MODELS.clear()  # one model per process
            _MODELS[key] = (model, mcfg, threading.Lock())
        return _MODELS[key]


def _stopped(name: str) -> bool:
    try:
        from distributed import Event
        return bool(Event(name).is_set())
    except (ImportError, ValueError):  # not on a cluster
        return False


def window_batches(windows: list[Window], batch: int) -> list[list[Window]]:
    """The detection tasks: batches of up to ``batch`` windows of one track, one scale and one
    shape (torchvision pads a batch to its largest image, and padding changes the proposals,
    so mixing shapes would make the detections depend on the batch size), largest first:
    the run gives them falling priorities in this order, so that the small edge and coarse
    windows come last and even out the workers' ends (longest-processing-time-first)."""
    groups: dict[tuple[str, int, int, int], list[Window]] = {}
    for w in windows:
        groups.setdefault((w.track, w.scale, w.read.rows, w.read.cols), []).append(w)
    batches = [mine[i:i + batch] for mine in groups.values() for i in range(0, len(mine), batch)]
    return sorted(batches, key=lambda b: -sum(w.read.rows * w.read.cols for w in b))


def detect_batch(windows: list[Window], s: DetectSettings) -> list[dict[str, Any]]:
    """Detections for ``windows`` (one track), written to the run directory; a summary per window."""
    out: list[dict[str, Any]] = []
    todo: list[tuple[Window, np.ndarray, str, float]] = []
    if s.stop_event and _stopped(s.stop_event):  # the run gave up (see pipeline._detect): do not start
        return [{"key": w.key, "skipped": True} for w in windows]
    for win in windows:
        fp = fingerprint(win, s)
        stored = s.store.stored_result(win)
        if stored is not None and stored[0] == fp:
            out.append(reused(win, fp, stored[1]))
            continue
        t0 = time.perf_counter()
        try:
            data = read_level(s.mosaic, win.track, win.read, s.group, win.scale, min_coherence=s.min_coherence)
        except Exception as exc:  # one line naming the store, the chunk and this window
            what, fix = read_problem(s.mosaic, win.track, win.read, s.group, win.scale, exc)
            raise InputError(f"{what}, needed by window {win.key}; {fix}") from exc
        todo.append((win, data, fp, time.perf_counter() - t0))
    if todo:
        model, mcfg, lock = worker_model(s)
        dev = next(model.parameters()).device
        imgs = [mcfg.encoding.resize(mcfg.encoding.encode(d).to(dev), s.resample) for _, d, _, _ in todo]
        dtype = autocast_dtype(s.precision)
        with lock, torch.inference_mode(), torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            t0 = time.perf_counter()
            dets = model(imgs)
            model_s = (time.perf_counter() - t0) / len(todo)
        for (win, data, fp, read_s), img, det in zip(todo, imgs, dets, strict=True):
            boxes = det["boxes"].detach().float().cpu().numpy().astype(np.float64)
            boxes *= [data.shape[1] / img.shape[2], data.shape[0] / img.shape[1]] * 2  # resampled → window pixels
            boxes += [win.read.col0, win.read.row0, win.read.col0, win.read.row0]
            meta: dict[str, Any] = {"fingerprint": fp, "window": win.key, "model": s.model_hash}
            if win.scale != 1:
                boxes *= win.scale  # the level's pixel frame → the native one
                meta["scale"] = win.scale
            scores = det["scores"].detach().float().cpu().numpy()
            s.store.write_detections(win, boxes, scores=scores, meta=meta)
            out.append({"key": win.key, "fp": fp, "reused": False, "n": len(boxes), "read_s": read_s, "model_s": model_s})
    return out


def unchanged(windows: list[Window], s: DetectSettings, threads: int = 8) -> tuple[list[dict[str, Any]], list[Window]]:
    """(reused results, windows to compute): a window is reused when its stored result's
    fingerprint matches — checked here from the plan's input hashes and the result files'
    footers, so unchanged windows are neither read nor scheduled."""
    from concurrent.futures import ThreadPoolExecutor

    fps = [fingerprint(w, s) for w in windows]
    with ThreadPoolExecutor(threads) as pool:
        stored = list(pool.map(s.store.stored_result, windows))
    done, todo = [], []
    for w, fp, st in zip(windows, fps, stored, strict=True):
        if st is not None and st[0] == fp:
            done.append(reused(w, fp, st[1]))
        else:
            todo.append(w)
    return done, todo
