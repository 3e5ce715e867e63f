"""The run directory: its layout and its file formats, in one place.

::

    <run_dir>/
      windows/<track>/[x<f>_]r<row>_c<col>.parquet   one window's detections (native pixels) and,
                                                     in the footer, its fingerprint
      parts/<block>.parquet     the slides a block of the reduction tree closed (rate statistics,
                                outlines): streamed into the inventory
      reduce/<block>.parquet    a block's open features and, in the footer, its cache key
      plan.json  summary.json  failed.json

Every file is replaced atomically (:func:`..atomic.replace_file`), so a killed task leaves at
most a hidden ``.*.tmp`` beside it, which :meth:`RunStore.prepare` removes. A ``RunStore`` is a
path and nothing else: it pickles into every task, and every worker must see the directory at
the same path (a shared file system on a multi-machine cluster).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from ..atomic import replace_file
from ..core.merge import empty_features
from ..core.tiling import Block, Window

FP_KEY = b"insar_slide_window"
CACHE_KEY = b"insar_slide_block"


@dataclass(frozen=True)
class RunStore:
    root: str

    @property
    def path(self) -> Path:
        return Path(self.root)

    def prepare(self) -> RunStore:
        """Create the directory; drop temporaries a killed task left (their windows are redone)."""
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob("windows/*/.*.tmp"):
            stale.unlink(missing_ok=True)
        return self

    # ------------------------------------------------------------------ per-window detections

    def window_path(self, win: Window) -> Path:
        return self.path / "windows" / f"{win.key}.parquet"

    def stored_result(self, win: Window) -> tuple[str, int] | None:
        """(fingerprint, number of detections) of a window's stored result, or None."""
        try:
            meta = pq.read_metadata(self.window_path(win))
            raw = (meta.schema.to_arrow_schema().metadata or {}).get(FP_KEY)
            return (json.loads(raw)["fingerprint"], meta.num_rows) if raw else None
        except Exception:  # missing, truncated or foreign: recompute
            return None

    def read_detections(self, win: Window) -> pd.DataFrame:
        """Detections of one window: x0, y0, x1, y1 (native mosaic pixel coordinates, whatever
        the window's scale), score."""
        return pq.read_table(self.window_path(win)).to_pandas()

    def write_detections(self, win: Window, boxes: np.ndarray, *, scores: np.ndarray, meta: dict[str, Any]) -> None:
        """Store one window's detections: ``boxes`` (n, 4) x0, y0, x1, y1 in native mosaic
        pixels, ``scores`` (n,), and ``meta`` (its ``fingerprint``, window key, model hash) in the footer."""
        table = pa.table({"x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
                          "score": scores.astype(np.float64)})
        table = table.replace_schema_metadata({FP_KEY: json.dumps(meta).encode()})
        replace_file(self.window_path(win), lambda tmp: pq.write_table(table, tmp))

    # ------------------------------------------------------------------ blocks of the reduction

    def part_path(self, block: Block) -> Path:
        return self.path / "parts" / f"{block.name}.parquet"

    def cache_path(self, block: Block) -> Path:
        return self.path / "reduce" / f"{block.name}.parquet"

    def read_block(self, block: Block, key: str) -> tuple[pd.DataFrame, int] | None:
        """A block's stored (open features, number closed) when its cache key is ``key`` and
        its part file is there; else None (none, truncated, foreign or stale: recompute)."""
        try:
            table = pq.read_table(self.cache_path(block))
            info = json.loads((table.schema.metadata or {})[CACHE_KEY])
        except Exception:
            return None
        if info.get("key") != key or (info["n_closed"] and not self.part_path(block).exists()):
            return None
        df = table.to_pandas()
        feats = pd.DataFrame({"geometry": list(shapely.from_wkb(df["geometry"].to_numpy())), "score": df["score"].astype(float),
                              "tracks": df["tracks"].astype(object), "n_boxes": df["n_boxes"].astype(int),
                              "scale": df["scale"].astype(int) if "scale" in df else 1})
        return (feats if len(feats) else empty_features()), int(info["n_closed"])

    def forget_block(self, block: Block) -> None:
        """Drop a block's cache entry: from here until :meth:`write_block`, its part is not trusted."""
        self.cache_path(block).unlink(missing_ok=True)

    def write_block(self, block: Block, closed: Any, open_: pd.DataFrame, key: str | None) -> None:
        """A block's closed slides (a GeoDataFrame, or None for none) as its part file, then
        (with a ``key``) its open features and key as its cache entry."""
        part = self.part_path(block)
        if closed is not None and len(closed):
            replace_file(part, lambda tmp: closed.to_parquet(tmp, index=False))
        else:
            part.unlink(missing_ok=True)
        if key is None:
            return
        table = pa.table({"geometry": pa.array(list(shapely.to_wkb(np.asarray(open_["geometry"], dtype=object))), pa.binary()),
                          "score": pa.array(open_["score"].to_numpy(float), pa.float64()),
                          "tracks": pa.array([str(t) for t in open_["tracks"]], pa.string()),
                          "n_boxes": pa.array(open_["n_boxes"].to_numpy(np.int64), pa.int64()),
                          "scale": pa.array(open_["scale"].to_numpy(np.int64), pa.int64())})
        n_closed = 0 if closed is None else len(closed)
        table = table.replace_schema_metadata({CACHE_KEY: json.dumps({"key": key, "n_closed": n_closed}).encode()})
        replace_file(self.cache_path(block), lambda tmp: pq.write_table(table, tmp))

    # ------------------------------------------------------------------ run records

    def write_json(self, name: str, doc: Any) -> Path:
        """``plan.json``, ``summary.json``, ``failed.json``: replaced atomically."""
        path = self.path / name
        replace_file(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
        return path
