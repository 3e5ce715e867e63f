"""The ``insar-slide`` command line: thin verbs over typed configs and library functions."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import click

from .cli_common import _friendly, progress_bars, quiet_dask_logs
from .cli_comparators import COMPARATOR_COMMANDS
from .cli_compare import COMPARE_COMMANDS
from .cli_timeseries import TIMESERIES_COMMANDS
from .cli_training import TRAINING_COMMANDS
from .errors import ConfigError, StoreError
from .version import __version__


@click.group()
@click.version_option(__version__, prog_name="insar-slide")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Find slow-moving landslides in InSAR deformation-rate mosaics."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    import warnings
    warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
    # A second run on this machine: distributed moves its HTTP server to a free port by itself.
    warnings.filterwarnings("ignore", message=r"Port \d+ is already in use")
    warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
    # rasterio warns when it wraps a bare array whose transform it is given separately.
    warnings.filterwarnings("ignore", message="Dataset has no geotransform", module="rasterio")


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(), help="Output mosaic (.zarr).")
@click.option("--track", "tracks", multiple=True,
              help="Track name: once for all sources (they are frames of one track), or once per source (in order).")
@click.option("--units", type=click.Choice(["mm/yr", "cm/yr", "m/yr"]), help="Units of the stored rates (overrides metadata and the magnitude check).")
@click.option("--crs", "src_crs", help="CRS for sources that lack one (e.g. EPSG:4326).")
@click.option("--heading", "headings", type=float, multiple=True,
              help="Satellite heading (deg) where the metadata lacks it: once for all sources, or once per source.")
@click.option("--incidence", "incidences", type=float, multiple=True,
              help="Incidence angle (deg) where the metadata lacks it: once for all sources, or once per source.")
@click.option("--sign", "signs", type=click.Choice(["toward", "away"]), multiple=True,
              help="What a positive stored rate means (default: toward the satellite, as MintPy and LiCSBAS): once, or once per source.")
@click.option("--reference", "references", multiple=True,
              help="Re-reference: 'median' (subtract the product's median, stable ground) or LAT,LON (that point reads 0); "
                   "once, or once per source.")
@click.option("--dem-par", type=click.Path(dir_okay=False), help="LiCSBAS EQA.dem_par, if not found beside the file.")
@click.option("--coherence", "coherences", multiple=True, type=click.Path(dir_okay=False),
              help="Coherence GeoTIFF (0-1) of the product, over one found beside it: once, or once per source.")
@click.option("--velocity-std", "velocity_stds", multiple=True, type=click.Path(dir_okay=False),
              help="Rate standard deviation GeoTIFF (mm/yr): once, or once per source.")
@click.option("--dem", "dems", multiple=True, type=click.Path(dir_okay=False),
              help="DEM GeoTIFF (m; warped onto the product's grid): once, or once per source.")
@click.option("--keep-zeros", is_flag=True, help="MintPy: keep exact 0.0 rates (default: they are masked pixels → NaN, except the reference pixel).")
@click.option("--overlap", type=click.Choice(["mean", "first"]), default="mean", show_default=True, help="Where frames of one track overlap.")
@click.option("--reproject", is_flag=True, help="Warp every source onto one grid (needed when grids differ).")
@click.option("--target-crs", help="With --reproject: the mosaic's CRS (default: the first source's).")
@click.option("--resolution", type=float, help="With --reproject: pixel size in target-CRS units.")
@click.option("--cell-size", type=float, help="Point products (.csv: EGMS L2a/L2b/L3, StaMPS): grid cell side in grid-CRS "
              "units (default 30 m, the model's training pixel; EGMS L3 100 m, its own grid).")
@click.option("--grid-crs", help="Point products: the CRS to grid the points in (default EPSG:3035 for EGMS, the local UTM zone for StaMPS).")
@click.option("--chunk", type=int, default=1024, show_default=True, help="Chunk side (pixels); a multiple of the 512-px window.")
@click.option("--add-version", "version", help="Add the products as a new version (label, e.g. 2018-2021) of the existing basin --out.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store (or version).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_friendly
def ingest(sources: tuple[str, ...], out: str, tracks: tuple[str, ...], units: str | None, src_crs: str | None,
           headings: tuple[float, ...], incidences: tuple[float, ...], signs: tuple[str, ...], references: tuple[str, ...],
           dem_par: str | None, coherences: tuple[str, ...], velocity_stds: tuple[str, ...], dems: tuple[str, ...],
           keep_zeros: bool, overlap: str, reproject: bool, target_crs: str | None,
           resolution: float | None, cell_size: float | None, grid_crs: str | None, chunk: int, version: str | None, overwrite: bool, no_progress: bool) -> None:
    """Ingest GeoTIFF / MintPy velocity.h5 / LiCSBAS vel products into one basin mosaic, with
    their quality layers (coherence, velocity std, DEM) where found beside them or given."""
    from .ingest import ingest as do_ingest
    from .pointgrid import PointSource
    from .readers import ReadOptions, open_source
    from .storage import check_target

    n = len(sources)
    per = {flag: _per_source(values, n, flag) for flag, values in
           (("--track", tracks), ("--heading", headings), ("--incidence", incidences), ("--sign", signs),
            ("--reference", references), ("--coherence", coherences), ("--velocity-std", velocity_stds),
            ("--dem", dems))}
    if version is None:
        check_target(out, overwrite=overwrite)  # a path or a URL (s3://…: AWS_* variables)
    opened = []
    for i, src in enumerate(sources):
        opts = ReadOptions(units=units, crs=src_crs, track=per["--track"][i], heading=per["--heading"][i],  # type: ignore[arg-type]
                           incidence=per["--incidence"][i], keep_zeros=keep_zeros, dem_par=dem_par,
                           sign=per["--sign"][i] or "toward", reference=per["--reference"][i],
                           coherence=per["--coherence"][i], velocity_std=per["--velocity-std"][i], dem=per["--dem"][i],
                           cell_size=cell_size, grid_crs=grid_crs)
        opened.append(open_source(src, opts))
        if isinstance(opened[-1], PointSource):  # how the points filled the cells
            click.echo(f"{src}: {opened[-1].cells.describe()}")
    t0 = time.perf_counter()
    with progress_bars(not no_progress) as progress:
        path = do_ingest(opened, out, reproject=reproject, crs=target_crs, resolution=resolution, overlap=overlap,  # type: ignore[arg-type]
                         chunk=chunk, overwrite=overwrite, version=version, progress=progress)
    what = f"version {version} of {path}" if version else str(path)
    click.echo(f"wrote {what} ({len(opened)} product(s)) in {time.perf_counter() - t0:.1f} s")


def _per_source(values: tuple[Any, ...], n: int, flag: str) -> list[Any]:
    """A flag given once (for every source) or once per source → one value per source."""
    if not values:
        return [None] * n
    if len(values) == 1:
        return list(values) * n
    if len(values) == n:
        return list(values)
    raise ConfigError(f"{flag} given {len(values)} times for {n} sources; give it once, or once per source (in order)")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(), help="Output mosaic (.zarr).")
@click.option("--truth", type=click.Path(), help="Truth inventory path (default: <out>.truth.parquet beside the store).")
@click.option("--seed", type=int, help="Override the config's seed.")
@click.option("--add-version", "version", help="Add the simulation as a new version (label) of the existing basin --out.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_friendly
def simulate(config: str, out: str, truth: str | None, seed: int | None, version: str | None, overwrite: bool,
             no_progress: bool) -> None:
    """Simulate a basin mosaic and its truth inventory from a YAML config (samples in configs/)."""
    from .sim.basin import simulate as do_simulate
    from .sim.config import load_sim_config

    cfg = load_sim_config(config)
    if seed is not None:
        cfg = cfg.model_copy(update={"seed": seed})
    t0 = time.perf_counter()
    with progress_bars(not no_progress) as progress:
        mosaic, truth_path = do_simulate(cfg, out, truth=truth, overwrite=overwrite, version=version, progress=progress)
    import geopandas as gpd
    n = len(gpd.read_parquet(truth_path))
    click.echo(f"wrote {mosaic} and {truth_path} ({n} landslides) in {time.perf_counter() - t0:.1f} s")


@main.command()
@click.argument("mosaic", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--verify", is_flag=True, help="Check every chunk written at ingest is still there (exit 1 if not).")
@click.option("--min-coherence", type=float, default=None,
              help="Quality mask to report the masked share of (default: run's min_coherence, 0.1).")
@_friendly
def info(mosaic: str, as_json: bool, verify: bool, min_coherence: float | None) -> None:
    """Describe a basin mosaic: tracks, grid, CRS, extent, valid fraction, rate percentiles, chunks."""
    from .manifest import missing_chunks
    from .mosaic import describe, open_basin

    ds = open_basin(mosaic)
    if verify:
        lost = missing_chunks(mosaic)
        if lost is None:
            click.echo(f"{mosaic} has no chunk manifest (written before insar-slide recorded one); re-ingest to add it")
        elif lost:
            for key in lost:
                click.echo(f"missing {key}")
            raise StoreError(f"{mosaic}: {len(lost)} chunk(s) written at ingest are missing (listed above); "
                             "restore them from a copy or re-ingest")
        else:
            click.echo(f"{mosaic}: every chunk written at ingest is present")
        return
    from .run.config import DEFAULT_MIN_COHERENCE
    d = describe(ds, min_coherence=DEFAULT_MIN_COHERENCE if min_coherence is None else min_coherence)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    g = d["grid"]
    click.echo(f"mosaic     {mosaic}")
    click.echo(f"grid       {g['shape'][0]} rows x {g['shape'][1]} cols, pixel {g['pixel_size'][1]:.6g} (y) x "
               f"{g['pixel_size'][0]:.6g} (x) (~{g['pixel_size_m'][1]:.1f} x {g['pixel_size_m'][0]:.1f} m), CRS {g['crs']}")
    b = g["bounds"]
    click.echo(f"bounds     x {b[0]:.6f} .. {b[2]:.6f}, y {b[1]:.6f} .. {b[3]:.6f}")
    click.echo(f"extent     {d['extent_km2']:.2f} km²")
    click.echo(f"chunks     {tuple(d['chunks'])} ({d['n_chunks']} chunks), variables {', '.join(d['variables'])}")
    for t in d["tracks"]:
        p = t["percentiles_mm_yr"]
        pct = "  ".join(f"{k} {v:+.2f}" for k, v in p.items() if v is not None)
        click.echo(f"track {t['name']:<10} heading {t['heading_deg']}  incidence {t['incidence_deg']}  "
                   f"time span {t.get('time_span') or 'unknown'}  "
                   f"valid {t['valid_fraction']:.1%}  |rate|>=10: {t['fraction_abs_ge_10'] or 0:.2%}")
        click.echo(f"           rate percentiles (mm/yr): {pct}")
        if t.get("masked_fraction") is not None:
            click.echo(f"           quality mask (coherence < {d['min_coherence']:g} or the producer's mask): "
                       f"{t['masked_fraction']:.1%} of its valid pixels masked")


@main.command()
@click.argument("mosaic", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output PNG.")
@click.option("--inventory", type=click.Path(dir_okay=False), help="Inventory whose outlines are drawn (any vector format).")
@click.option("--truth", type=click.Path(dir_okay=False),
              help="Truth or reference inventory: hits, false alarms and misses drawn in their own colours.")
@click.option("--clip", type=float, help="Linear colour scale to ±CLIP mm/yr (default: robust limit, log-like beyond ±10).")
@click.option("--max-side", type=int, default=1600, show_default=True, help="Largest side in pixels (an overview is read above it).")
@_friendly
def quicklook(mosaic: str, out: str, inventory: str | None, truth: str | None, clip: float | None, max_side: int) -> None:
    """Render each track's rate map with that track's detections, a title, legend and scale bar."""
    from .quicklook import quicklook as do_quicklook

    if truth and not inventory:
        raise click.UsageError("--truth marks an inventory's hits and misses; give the inventory with --inventory")
    path = do_quicklook(mosaic, out, inventory=inventory, truth=truth, clip=clip, max_side=max_side)
    click.echo(f"wrote {path}")


@main.command("report")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.option("--mosaic", required=True, type=click.Path(), help="The basin mosaic the inventory was detected on.")
@click.option("--version", help="Mosaic version (label or 'latest'; default: the store's root).")
@click.option("--truth", type=click.Path(dir_okay=False), help="Truth or reference inventory: hits, false alarms and misses marked.")
@click.option("--out", type=click.Path(dir_okay=False), help="Report HTML (default: the inventory's name with .html).")
@click.option("--max-thumbnails", type=int, default=400, show_default=True, help="Thumbnails for this many slides (highest scores first).")
@_friendly
def report_cmd(inventory: str, mosaic: str, version: str | None, truth: str | None, out: str | None,
               max_thumbnails: int) -> None:
    """Write the run report: map, sortable and filterable table, per-slide thumbnails (one HTML file)."""
    from .mosaic import resolve_version_group
    from .report import write_report
    from .storage import join, with_suffix

    group = resolve_version_group(mosaic, version)
    page = write_report(join(mosaic, group) if group else mosaic, inventory, out or with_suffix(inventory, ".html"),
                        truth=truth, max_thumbnails=max_thumbnails)
    click.echo(f"wrote {page}")


@main.command("export")
@click.argument("mosaic", type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for <track>.tif.")
@click.option("--version", help="Mosaic version (label or 'latest'; default: the store's root).")
@click.option("--track", "tracks", multiple=True, help="Only this track (repeatable; default: all).")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
@_friendly
def export_cmd(mosaic: str, out_dir: str, version: str | None, tracks: tuple[str, ...], overwrite: bool) -> None:
    """Export the mosaic as one Cloud-Optimized GeoTIFF per track (with overviews), for QGIS and GDAL."""
    from .gis import export_cogs

    t0 = time.perf_counter()
    paths = export_cogs(mosaic, out_dir, version=version, tracks=list(tracks) or None, overwrite=overwrite)
    click.echo(f"wrote {len(paths)} Cloud-Optimized GeoTIFF(s) in {time.perf_counter() - t0:.1f} s:")
    for p in paths:
        click.echo(f"  {p}")


@main.command("plan")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_friendly
def plan_cmd(config: str, as_json: bool, no_progress: bool) -> None:
    """Print the window plan of a basin config: windows to run and skipped (by reason), km²."""
    from .run.config import load_run_config
    from .run.plan import make_plan

    with progress_bars(not no_progress) as progress:
        p = make_plan(load_run_config(config), progress=progress)
    click.echo(json.dumps(p.summary(), indent=1) if as_json else p.format())


@main.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", help="Inventory GeoParquet (overrides the config).")
@click.option("--model", help="Checkpoint (overrides the config; default: the shipped reference model).")
@click.option("--address", help="Address of a running Dask scheduler (overrides cluster.address).")
@click.option("--workers", type=int, help="Workers of the embedded LocalCluster.")
@click.option("--overwrite", is_flag=True, help="Replace an inventory at out that another config or model made.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_friendly
def run_cmd(config: str, out: str | None, model: str | None, address: str | None, workers: int | None, overwrite: bool,
            no_progress: bool) -> None:
    """Detect landslides over a basin on a Dask cluster → dissolved GeoParquet inventory.

    Rerunning the same config resumes and replaces its own inventory; an inventory made by
    another config or model is replaced only with --overwrite."""
    from .run.config import load_run_config

    cfg = load_run_config(config, out=out, model=model)  # a typo is reported before torch or Dask load
    from .run.pipeline import run

    quiet_dask_logs()
    if overwrite:
        cfg = cfg.model_copy(update={"overwrite": True})
    if address or workers:
        cfg = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={k: v for k, v in
                                                                             {"address": address, "workers": workers}.items() if v})})
    with progress_bars(not no_progress) as progress:
        run(cfg, progress=progress, echo=click.echo)


@main.command("update")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--address", help="Address of a running Dask scheduler (overrides cluster.address).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_friendly
def update_cmd(config: str, address: str | None, no_progress: bool) -> None:
    """Update the inventory with the mosaic's newest version: changed windows only, slide lifecycles."""
    from .run.config import load_run_config

    cfg = load_run_config(config)  # a typo is reported before torch or Dask load
    from .run.update import update

    quiet_dask_logs()
    if address:
        cfg = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"address": address})})
    with progress_bars(not no_progress) as progress:
        update(cfg, progress=progress, echo=click.echo)


@main.command("history")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--slide", help="One slide's record over the versions.")
@_friendly
def history_cmd(config: str, slide: str | None) -> None:
    """What changed between versions of the inventory, or one slide's record over time."""
    from .run.config import load_run_config
    from .run.update import history_report

    click.echo(history_report(load_run_config(config), slide))


@main.command()
@click.option("--out", "out_dir", default="out/demo", show_default=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--model", help="Checkpoint (default: the shipped reference model).")
@click.option("--workers", type=int, help="Workers of the embedded LocalCluster (default: one per core).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_friendly
def demo(out_dir: str, model: str | None, workers: int | None, no_progress: bool) -> None:
    """Simulate the built-in demo basin and run the detector over it (configs/basin_demo.yaml).

    Writes out/demo/{basin.zarr, basin.truth.parquet, inventory.parquet, inventory.gpkg,
    inventory.kml, inventory.slide_id.zarr}, scores the inventory against the simulated truth and
    draws inventory.png and the report inventory.html with hits, misses and false alarms marked.
    """
    import geopandas as gpd

    from .compare import hidden_truth, match, visible_truth, within_extent
    from .mosaic import grid_of, open_basin
    from .run.config import demo_run_config
    from .run.pipeline import run
    from .sim.basin import simulate as do_simulate
    from .sim.config import demo_config

    out = Path(out_dir)
    t0 = time.perf_counter()
    mosaic, truth = do_simulate(demo_config(), out / "basin.zarr", overwrite=True)
    click.echo(f"simulated {mosaic} and {truth} in {time.perf_counter() - t0:.1f} s")
    cfg = demo_run_config(out)
    # the quick look and the report are drawn once, below, with the truth marked
    upd: dict[str, Any] = {"outputs": cfg.outputs.model_copy(update={"quicklook": False, "report": False})}
    if model:
        upd["model"] = model
    if workers:
        upd["cluster"] = cfg.cluster.model_copy(update={"workers": workers})
    quiet_dask_logs()
    with progress_bars(not no_progress) as progress:
        result = run(cfg.model_copy(update=upd), progress=progress, echo=click.echo)
    full = gpd.read_parquet(truth)
    full = within_extent(full, grid_of(open_basin(mosaic)).bounds)  # what the mosaic shows (the demo's slides all lie inside it)
    ref = visible_truth(full)
    c = match(result.inventory, ref, ignore=hidden_truth(full)).counts()
    click.echo(f"against the simulated truth ({len(ref)} visible slides with |peak LOS| >= 10 mm/yr, {c['rule']}): "
               f"found {c['correctly_detected']}, missed {c['not_detected']}, false {c['newly_detected']}, "
               f"{c['below_threshold']} more on slower or masked simulated slides (not counted); "
               f"precision {c['precision']:.2f} ({c['precision_all']:.2f} counting those as false), "
               f"recall {c['recall']:.2f}, F1 {c['f1']:.2f}")
    from .quicklook import quicklook as do_quicklook
    from .report import write_report
    stem = Path(cfg.out).with_suffix("")
    png = do_quicklook(cfg.mosaic, f"{stem}.png", inventory=result.inventory, truth=full)
    page = write_report(cfg.mosaic, result.inventory, f"{stem}.html", truth=full)
    click.echo(f"hits, misses and false alarms marked in {png} and {page}")


for _cmd in [*COMPARE_COMMANDS, *TRAINING_COMMANDS, *COMPARATOR_COMMANDS, *TIMESERIES_COMMANDS]:  # baseline, compare; chips, train, evaluate, ...; timeseries
    main.add_command(_cmd)

if __name__ == "__main__":  # pragma: no cover
    main()
