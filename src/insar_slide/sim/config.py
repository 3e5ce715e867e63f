"""Typed simulation config (``insar-slide simulate sim.yaml``). Lengths in metres, rates in mm/yr."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..config import StrictModel, load_yaml, parse_config, resolve_path
from ..errors import ConfigError


class GridConfig(StrictModel):
    shape: tuple[int, int] = Field((2048, 2048), description="rows, cols")
    pixel_size: float = Field(30.0, gt=0, description="metres")
    crs: str | None = Field(None, description="projected CRS; default: the UTM zone of `centre`")
    centre: tuple[float, float] = Field((99.3, 27.6), description="lon, lat of the grid centre (WGS84)")
    chunk: int = Field(1024, ge=64, description="chunk side in pixels (a multiple of the 512-px window)")


class RiverConfig(StrictModel):
    wkt: str | None = Field(None, description="a WKT LINESTRING in lon/lat (e.g. the Jinsha centre line); default: a synthetic meandering river")
    centre_on_river: bool = Field(True, description="with `wkt`: move the grid centre to the river point nearest `grid.centre`")


class TrackConfig(StrictModel):
    name: str
    heading: float | None = Field(None, ge=-180, le=360)
    incidence: float | None = Field(None, gt=0, lt=90)
    sar_csv: str | None = Field(None, description="take heading/incidence from a SAR.csv row (Jinsha format)")
    track_number: int | None = Field(None, description="with sar_csv: the track to look up")

    @model_validator(mode="after")
    def _has_geometry(self) -> TrackConfig:
        if self.sar_csv is None and (self.heading is None or self.incidence is None):
            raise ValueError(f"track {self.name!r} needs heading and incidence, or sar_csv + track_number")
        if self.sar_csv is not None and self.track_number is None:
            raise ValueError(f"track {self.name!r}: sar_csv needs track_number")
        return self


class TerrainConfig(StrictModel):
    plateau_m: float = 4200.0
    relief_m: float = Field(900.0, ge=0, description="std of the fractal relief")
    valley_depth_m: float = Field(2200.0, ge=0, description="incision of the main river valley")
    valley_halfwidth_m: float = Field(9000.0, gt=0)
    tributary_depth_m: float = Field(500.0, ge=0)


class LandslideConfig(StrictModel):
    density_per_100km2: float = Field(6.0, ge=0, description="candidate sites; only those on plausible slopes are kept")
    speed_mm_yr: tuple[float, float] = (5.0, 200.0)
    faint_fraction: float = Field(0.25, ge=0, le=1, description="share of slides with slope speed 5–20 mm/yr")
    size_px: tuple[float, float] = Field((5.0, 100.0), description="length along the slope, pixels")
    size_law: Literal["skewed", "loguniform"] = Field(
        "skewed", description="skewed: log-length ~ u**1.6 (most slides small); loguniform: as many 10-20 px as 100-200 px")
    slope_deg: tuple[float, float] = (12.0, 45.0)
    earthflow_fraction: float = Field(0.0, ge=0, le=1, description="share of slides that are elongated earthflows "
                                      "following the fall line (and bending with the valley)")
    earthflow_elongation: tuple[float, float] = Field((4.0, 10.0), description="earthflow length : width")
    compound_fraction: float = Field(0.0, ge=0, le=1, description="share of slides made of 2-4 kinematic elements "
                                     "moving at different speeds")
    fast_fraction: float = Field(0.0, ge=0, le=1, description="share of slides (earthflows twice as often) moving "
                                 "at fast_speed_mm_yr, beyond what C-band unwraps (see radar)")
    fast_speed_mm_yr: tuple[float, float] = (300.0, 5000.0)
    edge_margin_px: int = Field(0, ge=0, description="sites also this far outside the grid, so slides straddle its edges")

    @model_validator(mode="after")
    def _ranges(self) -> LandslideConfig:
        for name in ("speed_mm_yr", "size_px", "slope_deg", "earthflow_elongation", "fast_speed_mm_yr"):
            lo, hi = getattr(self, name)
            if not 0 < lo < hi:
                raise ValueError(f"{name} must be (low, high) with 0 < low < high, got {(lo, hi)}")
        return self


class AtmosphereConfig(StrictModel):
    turbulence_mm_yr: float = Field(2.0, ge=0, description="std of turbulent residual")
    turbulence_storm_fraction: float = Field(0.08, ge=0, le=1, description="share of area with 3× stronger turbulence")
    stratified_mm_yr_per_km: float = Field(1.2, ge=0, description="max |rate vs elevation| slope, drawn per track")
    ramp_mm_yr_per_100km: float = Field(3.0, ge=0)
    pixel_noise_mm_yr: float = Field(1.0, ge=0)


class RadarConfig(StrictModel):
    """What the sensor can record. Phase is unwrapped only while a pixel moves less than a quarter
    wavelength per revisit relative to its neighbours: Sentinel-1 C band (55.46 mm), 12-day revisit
    → 55.46 / 4 mm per 12 days = 422 mm/yr of LOS rate. Faster ground decorrelates to a hole or
    aliases (a wrapped, wrong rate); slower margins of the same slide stay measured."""

    wavelength_mm: float = Field(55.46, gt=0)
    revisit_days: float = Field(12.0, gt=0)
    unwrapping_limit: bool = Field(False, description="apply the limit (off: every rate is recorded as simulated)")
    alias_fraction: float = Field(0.3, ge=0, le=1, description="share of the over-limit area that aliases instead "
                                  "of decorrelating")

    @property
    def limit_mm_yr(self) -> float:
        return self.wavelength_mm / 4 / self.revisit_days * 365.25


class HolesConfig(StrictModel):
    decorrelation_fraction: float = Field(0.08, ge=0, lt=1)
    layover_shadow: bool = True


class NuisanceConfig(StrictModel):
    subsidence_per_1000km2: float = Field(3.0, ge=0)
    subsidence_mm_yr: tuple[float, float] = (15.0, 80.0)
    frost_heave: bool = True
    frost_min_elevation_m: float = 4300.0
    glaciers_per_1000km2: float = Field(1.5, ge=0)
    glacier_min_elevation_m: float = 4600.0
    unwrapping_per_1000km2: float = Field(2.0, ge=0)
    subsidence_radius_px: tuple[float, float] = Field((8.0, 58.0), description="bowl radius range")
    subsidence_loguniform: bool = Field(False, description="radii log-uniform in the range (else uniform)")
    glacier_size_px: tuple[float, float] = Field((60.0, 260.0), description="tongue length range")
    glacier_speed_mm_yr: tuple[float, float] = (60.0, 400.0)
    glacier_hole_fraction: tuple[float, float] = Field((0.6, 0.6), description="share of a glacier's pixels "
                                                       "decorrelated by ice, drawn per glacier in this range")
    glacier_valley_fraction: float = Field(0.0, ge=0, le=1, description="share of glaciers that are valley "
                                           "tongues following the fall line (curved), the rest elliptical")
    glacier_free_orientation_fraction: float = Field(0.0, ge=0, le=1, description="share of elliptical glaciers "
                                                     "oriented at random instead of down the slope")
    unwrapping_irregular_fraction: float = Field(0.0, ge=0, le=1, description="share of unwrapping patches with "
                                                 "irregular (not straight) edges")
    volcanic_per_1000km2: float = Field(0.0, ge=0, description="inflating or deflating magma sources (Mogi)")
    volcanic_mm_yr: tuple[float, float] = Field((10.0, 120.0), description="peak uplift rate range")
    volcanic_depth_px: tuple[float, float] = Field((10.0, 120.0), description="source depth (sets the bowl width)")
    elevation_step_mm_yr: float = Field(0.0, ge=0, description="per-track seasonal/thermal signal that steps "
                                        "across an elevation band (up to this amplitude)")
    faults: int = Field(0, ge=0, description="creeping faults crossing the basin (arctan interseismic profile)")
    fault_mm_yr: tuple[float, float] = (3.0, 15.0)
    fault_locking_km: tuple[float, float] = (2.0, 12.0)


class EvolutionConfig(StrictModel):
    """A later version of the basin (``simulate --add-version``): same ground, changed slides."""

    seed: int = Field(1, ge=0, description="draws which slides change (another seed, another evolution)")
    stop_fraction: float = Field(0.15, ge=0, le=1, description="share of slides that stop")
    accelerate_fraction: float = Field(0.15, ge=0, le=1, description="share that accelerate…")
    accelerate_factor: float = Field(2.0, ge=1, description="…by this factor")
    appear_density_per_100km2: float = Field(1.5, ge=0, description="new slides (on plausible slopes)")


class SimConfig(StrictModel):
    seed: int = 0
    time_span: tuple[str, str] = ("2017-01-01", "2020-12-31")
    grid: GridConfig = GridConfig()
    river: RiverConfig = RiverConfig()
    tracks: tuple[TrackConfig, ...] = (
        TrackConfig(name="asc_099", heading=-12.5, incidence=40.1),
        TrackConfig(name="desc_062", heading=-167.3, incidence=39.9),
    )
    terrain: TerrainConfig = TerrainConfig()
    landslides: LandslideConfig = LandslideConfig()
    atmosphere: AtmosphereConfig = AtmosphereConfig()
    holes: HolesConfig = HolesConfig()
    radar: RadarConfig = RadarConfig()
    nuisance: NuisanceConfig = NuisanceConfig()
    evolution: EvolutionConfig | None = None

    @model_validator(mode="after")
    def _unique_tracks(self) -> SimConfig:
        names = [t.name for t in self.tracks]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"tracks need distinct names, got {names}")
        return self


def load_sim_config(path: str | Path) -> SimConfig:
    """Read, validate and resolve a simulation YAML (relative paths are relative to the file)."""
    p = Path(path)
    data = load_yaml(p)
    cfg = parse_config(SimConfig, data, source=str(p))
    return resolve_sim_paths(cfg, p.parent)


def resolve_sim_paths(cfg: SimConfig, base: Path) -> SimConfig:
    river = cfg.river.model_copy(update={"wkt": resolve_path(cfg.river.wkt, base)})
    tracks = tuple(t.model_copy(update={"sar_csv": resolve_path(t.sar_csv, base)}) for t in cfg.tracks)
    for t in tracks:
        if t.sar_csv and not Path(t.sar_csv).is_file():
            raise ConfigError(f"tracks[{t.name}].sar_csv: {t.sar_csv} does not exist; fix the path (relative to the config file)")
    if river.wkt and not Path(river.wkt).is_file():
        raise ConfigError(f"river.wkt: {river.wkt} does not exist; fix the path (relative to the config file)")
    return cfg.model_copy(update={"river": river, "tracks": tracks})


def track_geometry(t: TrackConfig) -> tuple[float, float]:
    """(heading, incidence) of a track, from the config or its SAR.csv row."""
    if t.sar_csv is None:
        assert t.heading is not None and t.incidence is not None
        return t.heading, t.incidence
    with open(t.sar_csv, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    direction = "Asc" if t.name.lower().startswith("asc") else "Dsc"
    for row in rows:
        if row.get("Sensor", "").startswith("Sentinel") and row.get("Track", "").strip() == str(t.track_number) \
                and row.get("Orbit direction", "").strip() == direction:
            heading = float(row["heading angle"])
            inc_s = row.get("center incidence angle", "").strip()
            incidence = float(inc_s) if inc_s else 39.9
            return (t.heading if t.heading is not None else heading, t.incidence if t.incidence is not None else incidence)
    raise ConfigError(f"tracks[{t.name}]: no Sentinel-1 {direction} track {t.track_number} in {t.sar_csv}")


Mode = Literal["synthetic", "wkt"]


def demo_config() -> SimConfig:
    """The built-in demo scene: the same as ``configs/sim_small.yaml`` (a test keeps them equal)."""
    return SimConfig(
        seed=7,
        grid=GridConfig(shape=(1024, 1024), pixel_size=30.0, centre=(99.3, 27.6), chunk=512),
        landslides=LandslideConfig(density_per_100km2=10),
    )
