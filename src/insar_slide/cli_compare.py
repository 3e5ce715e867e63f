"""The baseline and comparison commands (``baseline``, ``compare``), added to the main group
by :mod:`.cli`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from .cli_common import _friendly, progress_bars
from .errors import ConfigError
from .version import __version__


@click.command("baseline")
@click.argument("method", type=click.Choice(["hotspot", "kmeans"]))
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", help="Inventory GeoParquet (default: <config out>.<method>.parquet).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_friendly
def baseline_cmd(method: str, config: str, out: str | None, no_progress: bool) -> None:
    """The paper's baselines on a basin config: Gi* hot spots or K-means → inventory (same schema as run)."""
    from .baselines import baseline_inventory
    from .inventory import write_inventory
    from .mosaic import open_basin
    from .run.config import config_record, load_run_config
    from .run.plan import aoi_geometry
    from .storage import use_options, with_suffix

    cfg = load_run_config(config)
    target = out or with_suffix(cfg.out, f".{method}.parquet")
    use_options(cfg.storage_options, cfg.mosaic, target)
    ds = open_basin(cfg.mosaic)
    aoi = aoi_geometry(cfg.aoi, ds.rio.crs.to_string()) if cfg.aoi else None
    t0 = time.perf_counter()
    with progress_bars(not no_progress) as progress:
        gdf, notes = baseline_inventory(ds, method, cfg=cfg.baseline, tracks=cfg.tracks, aoi=aoi,  # type: ignore[arg-type]
                                        run_id=f"{method}-baseline", min_coherence=cfg.min_coherence, progress=progress)
    params = cfg.baseline.model_dump()
    write_inventory(gdf, target, metadata={"method": method, "config": config_record(cfg), "parameters": params,
                                           "notes": notes, "code_version": __version__}, overwrite=True)
    click.echo(f"{method}: {len(gdf)} regions in {time.perf_counter() - t0:.1f} s → {target}")
    for t, n in notes.items():
        click.echo(f"  {t}: {n}")


@click.command("compare")
@click.argument("inventories", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--reference", "reference", type=click.Path(dir_okay=False),
              help="Truth or manual inventory (any vector format); default: the last INVENTORIES argument.")
@click.option("--rule", type=click.Choice(["box", "polygon"]), default="box", show_default=True,
              help="box: IoU of bounding boxes; polygon: IoU of the polygons.")
@click.option("--iou", type=float, default=0.5, show_default=True)
@click.option("--visible-only", is_flag=True,
              help="Simulated truth: score against slides with |peak LOS| >= 10 mm/yr on >= 50 %% measured pixels; "
                   "a detection of one of the others counts as 'below threshold', neither correct nor new.")
@click.option("--mosaic", type=click.Path(), help="Basin mosaic: the reference clipped to its extent (slides past its edge "
              "are matched by their part inside), and the strict report with size classes in its pixels, "
              "AP50 and false alarms per 1,000 km² of its measured area.")
@click.option("--pixel-size", type=float, help="Strict report without a mosaic: pixel size in the reference's CRS units (no rates per km²).")
@click.option("--nuisance", type=click.Path(dir_okay=False),
              help="Look-alike catalogue (GeoParquet); default: <stem>.nuisance.parquet beside <stem>.truth.parquet, if it exists.")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for table.md, table.csv and status_<name>.parquet "
              "(with the strict report also size_classes.md, false_alarms.md, scores.json).")
@_friendly
def compare_cmd(inventories: tuple[str, ...], reference: str | None, rule: str, iou: float, visible_only: bool,
                mosaic: str | None, pixel_size: float | None, nuisance: str | None, out: str | None) -> None:
    """Match inventories against a reference: the paper's Table 4 counts and object-level P/R/F1.

    With --mosaic (or --pixel-size) also the strict report: recall and AP50 per COCO size class,
    and false alarms per look-alike kind per 1,000 km². With --mosaic the reference is clipped to
    the mosaic's extent first: only what the mosaic shows can be asked for.
    """
    from .atomic import atomic_path
    from .compare import (
        compare_inventories,
        hidden_truth,
        table_markdown,
        visible_truth,
        within_extent,
    )
    from .inventory import read_inventory

    paths = list(inventories)
    if reference is None:
        if len(paths) < 2:
            raise ConfigError("compare needs an inventory and a reference: `insar-slide compare A.parquet B.parquet`")
        reference = paths.pop()
    if mosaic and pixel_size is not None:
        raise ConfigError("give --mosaic or --pixel-size, not both (the mosaic's grid sets the pixel size)")
    strict = bool(mosaic) or pixel_size is not None
    if nuisance and not strict:
        raise ConfigError("--nuisance is used by the strict report: add --mosaic basin.zarr (or --pixel-size)")
    ref = read_inventory(reference)
    ds = None
    if mosaic:
        from .mosaic import open_basin
        ds = open_basin(mosaic)
        crs = ds.rio.crs
        if ref.crs is not None and crs is not None and ref.crs != crs:
            click.echo(f"note: {reference} is in {ref.crs.to_string()}; reprojected to the mosaic's {crs.to_string()}")
            ref = ref.to_crs(crs)
    ignore = None
    if ds is not None:  # only what the mosaic shows can be asked for: the reference clipped to its extent
        from .mosaic import grid_of
        ref = within_extent(ref, grid_of(ds).bounds)
    full = ref
    if visible_only:
        ref, ignore = visible_truth(full), hidden_truth(full)
    invs = {}
    for p in paths:
        inv = read_inventory(p)
        if inv.crs is not None and ref.crs is not None and inv.crs != ref.crs:
            click.echo(f"note: {p} is in {inv.crs.to_string()}; reprojected to the reference's {ref.crs.to_string()}")
        invs[Path(p).stem] = inv
    table, statuses = compare_inventories(invs, ref, rule=rule, threshold=iou, ignore=ignore)  # type: ignore[arg-type]
    md = table_markdown(table)
    click.echo(md)
    files: list[tuple[str, str]] = [("table.md", md), ("table.csv", table.to_csv(index=False))]
    if strict:
        from . import scoring as sc
        px = sc.PixelSize.of(ds) if ds is not None else sc.PixelSize(float(pixel_size or 0), float(pixel_size or 0))
        area = sc.mosaic_area(ds) if ds is not None else None
        beside = sc.nuisance_path_for(reference)
        nuis_path = Path(nuisance) if nuisance else beside if beside.exists() else None
        nuis = sc.read_nuisance(nuis_path) if nuis_path else None
        reports = {name: sc.strict_report(inv, ref, pixel_size=px, ignore=ignore, nuisance=nuis, area=area,
                                          rule=rule, iou=iou) for name, inv in invs.items()}  # type: ignore[arg-type]
        from .scoring_tables import false_alarm_markdown, size_class_markdown
        sizes_md, fa_md = size_class_markdown(reports), false_alarm_markdown(reports)
        click.echo(sizes_md)
        click.echo(fa_md)
        doc = {"reference": str(reference), "mosaic": mosaic, "nuisance": str(nuis_path) if nuis_path else None,
               "visible_only": visible_only, "rule": f"{rule} IoU >= {iou}", "ap_iou": sc.AP_IOU,
               "pixel_size": {"dx": px.dx, "dy": px.dy, "units": ref.crs.axis_info[0].unit_name if ref.crs else "map units"},
               "areas": {"grid_km2": area.grid_km2, "valid_km2": area.valid_km2} if area else None,
               "inventories": {name: r.to_dict() for name, r in reports.items()}}
        files += [("size_classes.md", sizes_md), ("false_alarms.md", fa_md), ("scores.json", json.dumps(doc, indent=2))]
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files:
            with atomic_path(folder / name, overwrite=True) as tmp:
                tmp.write_text(text)
        for name, st in statuses.items():
            with atomic_path(folder / f"status_{name}.parquet", overwrite=True) as tmp:
                st.to_parquet(tmp, index=False)
        extra = ", size_classes.md, false_alarms.md, scores.json" if strict else ""
        click.echo(f"wrote {folder}/table.md, table.csv{extra} and {len(statuses)} status file(s)")


COMPARE_COMMANDS = [baseline_cmd, compare_cmd]
