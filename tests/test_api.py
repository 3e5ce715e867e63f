"""Detection from a notebook (issue 21): ``insar_slide.detect`` on a DataArray and
``insar_slide.simulate`` returning a Dataset, the example notebook run top to bottom, and the
light cluster a scene of a few windows gets."""

from __future__ import annotations

import os
import runpy

import numpy as np
import pytest
import xarray as xr

import insar_slide as isl
from insar_slide.errors import InputError

from .conftest import REPO


@pytest.fixture(scope="module")
def scene() -> tuple[xr.Dataset, object]:
    return isl.simulate(seed=11, shape=(512, 512), truth=True)


def test_simulate_returns_an_in_memory_mosaic_and_its_truth(scene):
    ds, truth = scene
    assert ds["los_rate"].dims == ("track", "y", "x") and ds.sizes["y"] == 512
    assert not hasattr(ds["los_rate"].data, "dask")  # loaded: the temporary store is gone
    assert ds["los_rate"].rio.crs is not None and list(ds["track"].values) == ["asc_099", "desc_062"]
    assert len(truth) > 0 and truth.crs == ds["los_rate"].rio.crs


@pytest.mark.slow
def test_detect_on_a_dataarray_matches_run_and_takes_any_orientation(scene):
    from distributed import Client, LocalCluster, get_task_stream

    ds, _ = scene
    inv = isl.detect(ds["los_rate"], window=512)
    assert len(inv) >= 3 and {"slide_id", "score", "outline", "tracks"} <= set(inv.columns)
    assert inv.crs == ds["los_rate"].rio.crs
    # a south-up copy and a Dask-backed 2-D track give the same slides
    flipped = ds["los_rate"].isel(y=slice(None, None, -1))
    again = isl.detect(flipped, window=512)
    assert sorted(again["slide_id"]) == sorted(inv["slide_id"])
    one = ds["los_rate"].sel(track="desc_062").chunk({"y": 256, "x": 256})
    desc = isl.detect(one, window=512, track="desc_062")
    expected = inv[inv["tracks"].str.contains("desc_062")]
    assert len(desc) == len(expected)
    # the notebook's current client is used
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client, \
            get_task_stream(client) as ts:
        isl.detect(ds["los_rate"], window=512)
    assert any(str(t["key"]).startswith("detect-desc_062-") for t in ts.data)  # the run's windows ran there


def test_detect_refuses_what_it_cannot_place(scene):
    ds, _ = scene
    bare = xr.DataArray(np.zeros((64, 64), "float32"), dims=("y", "x"))
    with pytest.raises(InputError, match="no CRS"):
        isl.detect(bare)
    with pytest.raises(InputError, match="dims"):
        isl.detect(ds["los_rate"].transpose("y", "x", "track"))
    with pytest.raises(InputError, match="DataArray"):
        isl.detect(ds)


@pytest.mark.slow
def test_the_example_notebook_runs(tmp_path, capsys):
    os.environ["NOTEBOOK_OUT"] = str(tmp_path)
    try:
        runpy.run_path(str(REPO / "workflows" / "notebook.py"), run_name="__main__")
    finally:
        del os.environ["NOTEBOOK_OUT"]
    out = capsys.readouterr().out
    assert "landslides" in out and "precision" in out and "slides in the western half" in out
    assert (tmp_path / "inventory.html").stat().st_size > 10_000 and (tmp_path / "inventory.kml").exists()


def test_a_small_run_keeps_its_cluster_in_process_and_the_dashboard_link_is_checked():
    from insar_slide.run.cluster import READ_AHEAD_THREADS, cluster_client, dashboard_serves
    from insar_slide.run.config import RunConfig

    cfg = RunConfig(mosaic="m.zarr", out="o.parquet")
    with cluster_client(cfg, in_process=True) as client:
        assert set(client.run(os.getpid).values()) == {os.getpid()}  # a worker of this process
        assert list(client.nthreads().values()) == [1 + READ_AHEAD_THREADS]  # the model's thread and a read-ahead one
        assert dashboard_serves(client.dashboard_link)  # bokeh is installed: the dashboard serves
    assert not dashboard_serves("http://127.0.0.1:9/status")
