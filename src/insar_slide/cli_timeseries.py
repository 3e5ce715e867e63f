"""The ``timeseries`` command: per-slide displacement time series, added to the main group by
:mod:`.cli`."""

from __future__ import annotations

import time

import click

from .cli_common import _friendly
from .errors import ConfigError, InputError


@click.command("timeseries")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.argument("series", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--track", "tracks", multiple=True,
              help="Track name: once for all SERIES, or once per SERIES (in order); default: from each product.")
@click.option("--out", help="Table (default: <inventory stem>.timeseries.parquet; the summary goes beside it as "
                            "<stem>.timeseries_summary.parquet).")
@click.option("--plots", type=click.Path(file_okay=False), help="Folder for one PNG per slide (<slide_id>.png).")
@click.option("--gap", "gap_m", type=click.FloatRange(min=0.0), help="Reference ring: gap between the outline and the ring (m, default 60).")
@click.option("--width", "width_m", type=click.FloatRange(min=0.0, min_open=True), help="Reference ring: its width (m, default 500).")
@click.option("--recent-days", type=click.FloatRange(min=0.0, min_open=True), help="Fit velocity and acceleration over the last N days "
                                                "(default: the last third of the series).")
@click.option("--recent-fraction", type=click.FloatRange(0.0, 1.0, min_open=True),
              help="Fit over this last share of the time span (default 1/3).")
@click.option("--overwrite", is_flag=True, help="Replace an existing table (and its summary) and existing plots.")
@_friendly
def timeseries_cmd(inventory: str, series: tuple[str, ...], tracks: tuple[str, ...], out: str | None,
                   plots: str | None, gap_m: float | None, width_m: float | None, recent_days: float | None,
                   recent_fraction: float | None, overwrite: bool) -> None:
    """Per-slide displacement time series from MintPy timeseries.h5, LiCSBAS cum.h5, EGMS or StaMPS CSVs.

    For each slide of INVENTORY and each date: the mean LOS displacement inside its outline, over
    the stable ring around it and their difference (mm, + toward the satellite), with the
    velocity and acceleration over the recent part of the series.
    """
    from .inventory import read_inventory
    from .storage import check_target
    from .timeseries import FASTEST_SHARE, series_for_inventory, slide_ids, timeseries_path
    from .timeseries import write_timeseries as write_table

    if len(tracks) not in (0, 1, len(series)):
        raise ConfigError(f"--track given {len(tracks)} times for {len(series)} series; give it once (for all) "
                          "or once per series, in order")
    names = list(tracks) * len(series) if len(tracks) == 1 else list(tracks) if tracks else None
    target = out or timeseries_path(inventory)
    check_target(target, overwrite=overwrite)
    inv = read_inventory(inventory)
    if plots:
        from .timeseries_plot import check_plots
        check_plots(plots, slide_ids(inv), overwrite=overwrite)
    t0 = time.perf_counter()
    table, summary, meta = series_for_inventory(inv, series, tracks=names, gap_m=gap_m, width_m=width_m,
                                                recent_days=recent_days, recent_fraction=recent_fraction)
    if table.empty:
        raise InputError(f"none of the {len(inv)} slides of {inventory} has a measurement of {', '.join(series)} inside it; "
                         "check that they cover the same area (the inventory's CRS is "
                         f"{inv.crs.to_string() if inv.crs else 'unset'})")
    written = write_table(table, target, summary=summary, metadata=meta, overwrite=overwrite)
    click.echo(f"{summary['slide_id'].nunique()} of {len(inv)} slides, {len(summary)} slide-track series, "
               f"{table['date'].nunique()} dates in {time.perf_counter() - t0:.1f} s → {', '.join(written)}")
    shown = summary.reindex(summary["fastest_velocity_recent_mm_yr"].abs().sort_values(ascending=False).index).head(20)
    starts = shown["recent_start"].dropna()  # NaT where a series has too few dates for a recent fit
    since = f"; recent since {starts.min():%Y-%m-%d}" if len(starts) else "; too few dates for a recent fit"
    if len(shown):
        click.echo(f"{'slide':>14} {'track':>10} {'n':>5} {'total':>8} {'v all':>7} {'v recent':>9} {'accel':>8} "
                   f"{f'fastest{FASTEST_SHARE:.0%}':>10}   (mm, mm/yr, mm/yr²{since})")
    for r in shown.itertuples():
        click.echo(f"{str(r.slide_id)[:14]:>14} {r.track:>10} {r.n_inside:>5} {r.total_mm:>+8.1f} {r.velocity_mm_yr:>+7.1f} "
                   f"{r.velocity_recent_mm_yr:>+9.1f} {r.acceleration_mm_yr2:>+8.1f} {r.fastest_velocity_recent_mm_yr:>+10.1f}")
    if plots:
        from .timeseries_plot import plot_slides
        pngs = plot_slides(table, plots, recent_days=recent_days, recent_fraction=recent_fraction,
                           ring_m=(meta["ring_m"][0], meta["ring_m"][1]), overwrite=overwrite)
        click.echo(f"{len(pngs)} plot(s) in {plots}")


TIMESERIES_COMMANDS = [timeseries_cmd]
