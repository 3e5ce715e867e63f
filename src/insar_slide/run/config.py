"""``basin.yaml``: everything ``insar-slide run`` / ``plan`` need, validated once at the edge.

Paths are relative to the config file; ``mosaic`` and ``out`` may also be URLs (``s3://…``,
see :mod:`insar_slide.storage`), with ``storage_options`` for the store (or the standard AWS
variables and no key at all). ``run_dir`` is a path on a file system every worker sees; with
a URL ``out`` it defaults to a folder under ``~/.cache/insar-slide/runs`` (``INSAR_SLIDE_CACHE``).
``window`` is the side of each window's *core* (the tiling step, pixels); the model sees the
core plus ``halo`` pixels on every side. A slide is seen whole by the window whose core holds
its centre when ``halo`` ≥ half the slide's extent (64 px = 1.9 km at 30 m).
``scales`` adds coarser levels (block means by each factor, tiled with the same ``window`` and
``halo`` in their own pixels) for slides larger than that; see :mod:`..core.scales`.
``baseline`` holds the settings of ``insar-slide baseline`` (defined here, with the other
sections of the file, so that reading a config never imports the baselines' Dask code).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import StrictModel, load_yaml, parse_config, resolve_path
from ..core.scales import DEFAULT_SCALES

#: Default ``min_coherence``, measured on the real products (``benchmarks/quality_layers.py``;
#: README, "Quality layers"): below 0.1 the rates are noise (Cadia temporal coherence: robust
#: spread 5.5 mm/yr, 25 % of pixels 10 mm/yr off; Campi Flegrei coh_avg, the sea: 20 mm/yr, 58 %),
#: above it 2.8 and 9.1; 0.15 and 0.2 also drop half of the Cadia tailings dam, the one real
#: moving slope there, and round 6's detection of it with them (round 8, shipped since
#: 2026-12-07, scores the dam 0.565 already at 0.1 and 0.71 unmasked: reported, not tuned for).
DEFAULT_MIN_COHERENCE = 0.1

#: The shipped reference model (see models/*.json for its card).
REFERENCE_MODEL = Path(__file__).resolve().parents[3] / "models" / "insar_slide_r34_fpn_cbam.safetensors"


class HotspotConfig(StrictModel):
    distance_px: float = Field(7.0, gt=0, description="binary weights within this distance (pixels)")
    z: float = Field(2.58, gt=0, description="hot when z exceeds this (2.58: p < 0.01)")
    min_abs_rate: float = Field(10.0, ge=0, description="…and |rate| reaches this (mm/yr)")


class KMeansConfig(StrictModel):
    k: int = Field(2, description="clusters (the paper: 2)")
    min_abs_rate: float = Field(10.0, ge=0, description="only pixels with |rate| ≥ this are clustered")
    sample: int = Field(200_000, ge=100, description="pixels the centres are fitted on")
    seed: int = 0


class BaselineConfig(StrictModel):
    """The ``baseline:`` section, read by ``insar-slide baseline`` (:mod:`insar_slide.baselines`)."""

    hotspot: HotspotConfig = HotspotConfig()
    kmeans: KMeansConfig = KMeansConfig()
    min_area_px: int = Field(16, ge=1, description="regions smaller than this are dropped")
    dissolve_overlap: float = Field(0.2, gt=0, le=1)


class SkipRules(StrictModel):
    min_abs_rate: float = Field(10.0, ge=0, description="a window runs only where |rate| reaches this (mm/yr)…")
    min_hot_pixels: int = Field(4, ge=1, description="…on at least this many pixels of its core")
    min_valid_fraction: float = Field(0.05, ge=0, le=1, description="share of the core with a measurement")


class AreaOfInterest(StrictModel):
    river: str | None = Field(None, description="centre line: WKT (EPSG:4326) or any vector file geopandas reads")
    buffer_km: float = Field(50.0, gt=0, description="with river: windows within this distance of the line")
    polygons: str | None = Field(None, description="or: a polygon file (any vector format)")

    @model_validator(mode="after")
    def _one(self) -> AreaOfInterest:
        if (self.river is None) == (self.polygons is None):
            raise ValueError("give exactly one of river (with buffer_km) or polygons")
        return self


class InferenceConfig(StrictModel):
    """How the model runs at inference (issue 19), chosen by ``benchmarks/bench_inference.py`` on
    the tuning and demo basins (``benchmarks/results/inference_settings*.json``): 300 RPN
    proposals instead of the model's 1000 found the same slides with the same F1 on both, 1.14×
    faster per 1152² window; bf16 was 2.1× faster on a CPU with native bf16 but lost 0.074 F1
    (recall 0.685 → 0.573) on the tuning basin, so fp32 stays the default and ``auto`` is a
    choice of speed over recall. Round 8, shipped since 2026-12-07, keeps 300 proposals itself, so
    the default is its own setting (re-measured: 1000 found other slides, bf16 lost 0.06 F1).
    Settings other than the model's own (fp32, its proposals, 100 detections) enter each window's
    fingerprint: a change recomputes the windows."""

    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast: auto = bf16 on CUDA with bf16 (else fp16), bf16 on a CPU with native bf16 "
                            "(AVX512-BF16/AMX), fp32 otherwise; fp16 is CUDA only")
    proposals: int | None = Field(300, ge=1, description="RPN proposals kept per window after NMS (null: the model's own, "
                                 "300 for the shipped model)")
    detections: int | None = Field(None, ge=1, description="boxes kept per window (default: the model's)")
    match_pixel: bool = Field(True, description="resample every window to the model's training pixel when the mosaic's "
                                                "pixel is more than 25 % off it (a 20 m or 40 m product for a 30 m model)")

    def is_default(self) -> bool:
        return self == InferenceConfig()


class ClusterConfig(StrictModel):
    address: str | None = Field(None, description="a running Dask scheduler (tcp://host:8786); else an embedded LocalCluster")
    workers: int | None = Field(None, ge=1, description="LocalCluster workers (default: cores / threads_per_worker)")
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = "auto"
    dashboard: bool = Field(True, description="print the Dask dashboard's link (when it serves)")


class Outputs(StrictModel):
    geopackage: bool = Field(True, description="write <out stem>.gpkg: layers 'landslides' and 'outlines' with QGIS styles")
    kml: bool = Field(True, description="write <out stem>.kml (outlines in WGS 84, for Google Earth)")
    slide_id_raster: bool = Field(True, description="write <out stem>.slide_id.zarr on the mosaic grid")
    quicklook: bool = Field(True, description="write <out stem>.png")
    report: bool = Field(True, description="write <out stem>.html: map, sortable table and per-slide thumbnails")
    outline: bool = Field(True, description="refined outline (the deforming pixels inside the box) in column 'outline'")
    timeseries: list[str] = Field(default_factory=list, description="time-series products (MintPy timeseries.h5, LiCSBAS "
                                  "cum.h5, EGMS/StaMPS CSV; local paths): write <out stem>.timeseries.parquet, "
                                  "<out stem>.timeseries_summary.parquet, per-slide series (insar_slide.timeseries), and "
                                  "one PNG per slide in <out stem>.timeseries/")

    def files_beside(self) -> bool:
        """Whether any file is written beside the inventory."""
        return any(getattr(self, k) for k in FILES_BESIDE)

    def only_inventory(self) -> Outputs:
        return self.model_copy(update=dict.fromkeys(FILES_BESIDE, False))


# the outputs that are files of their own beside the inventory ('outline' is a column of it)
FILES_BESIDE = ("geopackage", "kml", "slide_id_raster", "quicklook", "report")


class RunConfig(StrictModel):
    mosaic: str = Field(description="basin mosaic (.zarr path or fsspec URL)")
    out: str = Field(description="inventory GeoParquet (path or fsspec URL)")
    storage_options: dict[str, Any] | None = Field(
        None, description="fsspec options for URL mosaic/out, e.g. {endpoint_url: http://…, anon: true, profile: …}; "
                          "default: the AWS_* environment variables")
    version: str | None = Field(None, description="mosaic version: a label, 'latest', or null for the store's root")
    tracks: list[str] | None = Field(None, description="tracks to run (default: all)")
    model: str | None = Field(None, description="checkpoint (default: the shipped reference model)")
    run_dir: str | None = Field(None, description="per-window results for resume (default: <out>.run)")
    window: int = Field(1024, ge=64, description="core side (pixels)")
    halo: int = Field(64, ge=0, description="pixels added on each side of the core")
    scales: list[int] = Field(default_factory=lambda: list(DEFAULT_SCALES),
                              description="block-mean factors to detect at (1 = the native pixel), e.g. [1, 2]")
    skip: SkipRules = SkipRules()
    aoi: AreaOfInterest | None = None
    score_threshold: float | None = Field(None, gt=0, lt=1, description="default: the model's own")
    nms_iou: float = Field(0.5, gt=0, le=1, description="cross-tile NMS IoU (per track)")
    track_nms_iou: float | None = Field(0.3, gt=0, le=1, description="boxes of different tracks with this IoU are one "
                                        "slide, kept as the higher-scored box (null: dissolved into their union; with "
                                        "dissolve_overlap 0.2 the rules and run ids of before 2026-12-07)")
    dissolve_overlap: float = Field(0.5, gt=0, le=1, description="boxes sharing this share of the smaller one are one slide")
    nested_share: float = Field(0.02, ge=0, lt=1, description="a slide of a finer scale inside one of a coarser scale "
                                "joins it only if its area is at least this share of the coarser one's (0: always, "
                                "the rule while round 6 shipped)")
    outline_min_abs_rate: float = Field(10.0, ge=0, description="refined outline: pixels at least this fast (mm/yr)")
    batch_size: int | None = Field(None, ge=1, description="windows per model call (default: 1 on CPU, where a batch "
                                   "of 2 costs 7 % more per window, 4 on CUDA)")
    reduce_block: int = Field(4, ge=1, description="windows per side of the first reduction level")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    inference: InferenceConfig = InferenceConfig()
    cluster: ClusterConfig = ClusterConfig()
    outputs: Outputs = Outputs()
    baseline: BaselineConfig = BaselineConfig()
    min_coherence: float | None = Field(
        DEFAULT_MIN_COHERENCE, ge=0, le=1,
        description="quality mask: rate pixels whose track's coherence layer is below this, or whose producer's mask is "
                    "0, are read as no data by run and the baselines (mosaics without those layers are unaffected); "
                    "null: rates as stored")
    overwrite: bool = Field(False, description="replace an existing inventory at out made by another config or model "
                            "(a rerun of the same config replaces its own, resuming, without it)")

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: list[int]) -> list[int]:
        if any(f < 1 for f in v):
            raise ValueError(f"factors must be integers >= 1, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"factors must be distinct, got {v}")
        if 1 not in v:
            raise ValueError(f"must include 1 (the native level, which finds the small slides), got {v}")
        return sorted(v)

    @field_validator("run_dir")
    @classmethod
    def _run_dir_local(cls, v: str | None) -> str | None:
        if v is not None and "://" in v:
            raise ValueError(f"{v} is a URL; run_dir holds thousands of small per-window files that every worker "
                             "writes, so it must be a file-system path shared by the workers (mosaic and out may be URLs)")
        return v

    @model_validator(mode="after")
    def _halo_fits(self) -> RunConfig:
        # The planner takes a window's halo from its eight neighbours' cores only, and the
        # merger's closing margin assumes a box reaches at most one core into the next.
        if self.halo > self.window:
            raise ValueError(f"halo {self.halo} is larger than window {self.window}: a window reads its halo from its "
                             f"eight neighbours, so halo must be at most window; make the window larger (e.g. window "
                             f"{max(4 * self.halo, 256)}) or the halo smaller (a slide is seen whole up to 2 x halo px)")
        return self

    @property
    def read_size(self) -> int:
        return self.window + 2 * self.halo

    @property
    def model_path(self) -> Path:
        return Path(self.model) if self.model else default_model()

    @property
    def run_path(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        if "://" in self.out:  # a local working folder per output URL (resumes on this machine)
            from ..storage import local_copy_dir
            return local_copy_dir() / "runs" / hashlib.sha256(self.out.encode()).hexdigest()[:16]
        return Path(str(self.out) + ".run")


def config_record(cfg: RunConfig) -> dict[str, object]:
    """The config as JSON data for hashes and file metadata. ``scales: [1]`` is left out: a
    single-scale run is the run from before ``scales`` existed, with the same ids and keys."""
    from ..storage import redact

    data: dict[str, object] = cfg.model_dump(mode="json")
    if data["scales"] == [1]:
        del data["scales"]
    if data["storage_options"] is None:  # as before the key existed
        del data["storage_options"]
    else:
        data["storage_options"] = redact(cfg.storage_options)
    return data


def default_model() -> Path:
    env = os.environ.get("INSAR_SLIDE_MODEL")
    return Path(env) if env else REFERENCE_MODEL


#: Top-level keys that hold paths (resolved against the config's folder, or the cwd for flags).
PATH_KEYS = ("mosaic", "out", "model", "run_dir")


def load_run_config(path: str | Path, **overrides: object) -> RunConfig:
    """Read and validate ``basin.yaml``; ``overrides`` replace top-level keys (CLI flags). Paths
    in the file are relative to the file; paths given as overrides to the current directory
    (where the user typed them)."""
    p = Path(path)
    data = load_yaml(p)
    cwd = Path.cwd()
    data.update({k: (resolve_path(v, cwd) if k in PATH_KEYS and isinstance(v, str) else v)
                 for k, v in overrides.items() if v is not None})
    cfg = parse_config(RunConfig, data, source=str(p))
    base = p.parent
    upd: dict[str, object] = {"out": resolve_path(cfg.out, base)}
    if "://" not in cfg.mosaic:
        upd["mosaic"] = resolve_path(cfg.mosaic, base)
    for key in ("model", "run_dir"):
        if getattr(cfg, key):
            upd[key] = resolve_path(getattr(cfg, key), base)
    if cfg.outputs.timeseries:
        upd["outputs"] = cfg.outputs.model_copy(update={"timeseries": [resolve_path(p, base) for p in cfg.outputs.timeseries]})
    if cfg.aoi is not None:
        upd["aoi"] = cfg.aoi.model_copy(update={k: resolve_path(getattr(cfg.aoi, k), base)
                                                for k in ("river", "polygons") if getattr(cfg.aoi, k)})
    return cfg.model_copy(update=upd)


def demo_run_config(out_dir: str | Path) -> RunConfig:
    """configs/basin_demo.yaml for a demo basin written to ``out_dir/basin.zarr``."""
    out = Path(out_dir)
    # the demo's folder is its own: a rerun (with another --model too) replaces its inventory
    return RunConfig(mosaic=str(out / "basin.zarr"), out=str(out / "inventory.parquet"), window=512, halo=64, overwrite=True)
