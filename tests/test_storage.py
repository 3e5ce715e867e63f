"""Object storage (issue 18): the mosaic and the outputs on an S3-compatible server (moto's
server mode on loopback, a real HTTP endpoint), against the same commands on local files."""

from __future__ import annotations

import json
import os
import re

import fsspec
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from insar_slide.cli import main
from insar_slide.errors import ConfigError, StoreError
from insar_slide.inventory import inventory_metadata
from insar_slide.mosaic import open_basin
from insar_slide.run.config import config_record, load_run_config
from insar_slide.storage import join, redact, with_suffix

from .conftest import new_bucket, write_tif


def test_urls_and_secrets():
    assert join("s3://b/x.zarr", "versions", "v1") == "s3://b/x.zarr/versions/v1"
    assert with_suffix("s3://b/out/inv.parquet", ".gpkg") == "s3://b/out/inv.gpkg"
    assert with_suffix("s3://b/out/inv.parquet", "") == "s3://b/out/inv"
    r = redact({"endpoint_url": "http://h", "key": "AKIA", "secret": "s", "client_kwargs": {"aws_session_token": "t"},
                "anon": False})
    assert r == {"endpoint_url": "http://h", "key": "***", "secret": "***", "client_kwargs": {"aws_session_token": "***"},
                 "anon": False}


def test_run_dir_on_object_storage_is_a_config_error(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text(yaml.safe_dump({"mosaic": "s3://b/m.zarr", "out": "s3://b/i.parquet", "run_dir": "s3://b/run"}))
    with pytest.raises(ConfigError, match=r"run_dir.*shared by the workers"):
        load_run_config(p)
    p.write_text(yaml.safe_dump({"mosaic": "s3://b/m.zarr", "out": "s3://b/i.parquet"}))
    cfg = load_run_config(p)
    assert cfg.mosaic == "s3://b/m.zarr" and cfg.out == "s3://b/i.parquet" and "://" not in str(cfg.run_path)


SHAPE = (320, 384)
SLIDES = [(40, 100, 90, 150), (120, 110, 170, 160), (200, 250, 250, 320), (60, 300, 100, 350)]


def _tifs(tmp) -> list[str]:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    out = []
    for t, name in enumerate(("asc", "desc")):
        r = rng.normal(0, 1.5, SHAPE).astype("float32")
        for k, (r0, c0, r1, c1) in enumerate(SLIDES):
            if t == 0 and k == 3:
                continue
            inside = ((yy - (r0 + r1) / 2) / ((r1 - r0) / 2)) ** 2 + ((xx - (c0 + c1) / 2) / ((c1 - c0) / 2)) ** 2 <= 1
            r[inside] = -45.0
        out.append(str(write_tif(tmp / f"{name}.tif", r)))
    return out


def _cfg(tmp, name: str, **kw: object) -> str:
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"window": 128, "halo": 32, "cluster": {"workers": 1, "dashboard": False},
                                 "outputs": {"geopackage": True}, **kw}))
    return str(p)


def _same_rows(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> None:
    cols = [c for c in a.columns if c != "run_id"]  # the run id hashes the mosaic's location
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    pd.testing.assert_frame_equal(a[cols].drop(columns=["geometry", "outline"]), b[cols].drop(columns=["geometry", "outline"]))
    assert list(a.geometry.to_wkb()) == list(b.geometry.to_wkb())


@pytest.mark.slow
def test_ingest_run_update_baseline_quicklook_on_s3_match_local(tmp_path, s3_endpoint, model_file):
    bucket = new_bucket("basins")
    cli = CliRunner()
    tifs = _tifs(tmp_path)
    local_m, s3_m = str(tmp_path / "basin.zarr"), f"{bucket}/valley/basin.zarr"
    for out in (local_m, s3_m):
        res = cli.invoke(main, ["ingest", *tifs, "--track", "asc", "--track", "desc", "--heading", "-12",
                                "--incidence", "40", "--chunk", "128", "--out", out])
        assert res.exit_code == 0, res.output
    assert open_basin(s3_m)["los_rate"].shape == (2, *SHAPE)
    res = cli.invoke(main, ["info", s3_m])
    assert res.exit_code == 0 and "320 rows x 384 cols" in res.output, res.output

    local = _cfg(tmp_path, "local", mosaic=local_m, out=str(tmp_path / "inv.parquet"), model=str(model_file))
    remote = _cfg(tmp_path, "remote", mosaic=s3_m, out=f"{bucket}/valley/inv.parquet", model=str(model_file),
                  run_dir=str(tmp_path / "remote.run"))
    for cfg in (local, remote):
        res = cli.invoke(main, ["run", cfg, "--no-progress"])
        assert res.exit_code == 0, res.output
    a = gpd.read_parquet(tmp_path / "inv.parquet")
    b = gpd.read_parquet(f"{bucket}/valley/inv.parquet")
    assert len(a) >= 3
    _same_rows(a, b)
    fs = fsspec.filesystem("s3")
    for name in ("inv.png", "inv.gpkg", "inv.slide_id.zarr/zarr.json"):
        assert fs.exists(f"basins/valley/{name}"), name
    assert not list(tmp_path.glob(".*tmp*"))

    res = cli.invoke(main, ["run", remote, "--no-progress"])  # a rerun reuses every window
    assert res.exit_code == 0 and re.search(r"run (\d+) \(0 computed, \1 reused", res.output), res.output

    for cfg in (local, remote):  # → inv.hotspot.parquet beside each inventory
        res = cli.invoke(main, ["baseline", "hotspot", cfg])
        assert res.exit_code == 0, res.output
    ha, hb = gpd.read_parquet(tmp_path / "inv.hotspot.parquet"), gpd.read_parquet(f"{bucket}/valley/inv.hotspot.parquet")
    assert len(ha) == len(hb) and list(ha.geometry.to_wkb()) == list(hb.geometry.to_wkb())

    res = cli.invoke(main, ["quicklook", s3_m, "--out", f"{bucket}/valley/look.png",
                            "--inventory", f"{bucket}/valley/inv.parquet"])
    assert res.exit_code == 0 and fs.cat("basins/valley/look.png")[:4] == b"\x89PNG", res.output

    upd = _cfg(tmp_path, "upd", mosaic=s3_m, out=f"{bucket}/valley/upd.parquet", model=str(model_file),
               run_dir=str(tmp_path / "remote.run"), outputs={"quicklook": False, "slide_id_raster": False, "report": False, "kml": False, "geopackage": False})
    res = cli.invoke(main, ["update", upd, "--no-progress"])
    assert res.exit_code == 0, res.output
    state = json.loads(fs.cat("basins/valley/upd.parquet.history/state.json"))
    assert state["versions"] == ["base"]
    assert fs.exists("basins/valley/upd.parquet.history/versions/version=base/part.parquet")
    assert len(gpd.read_parquet(f"{bucket}/valley/upd.parquet")) == len(a)


@pytest.mark.slow
def test_storage_options_reach_the_workers_and_stay_secret(tmp_path, s3_endpoint, model_file):
    """With no AWS variables at all, the config's storage_options alone open the store — in
    this process and in the cluster's worker processes — and no secret is written out."""
    bucket = new_bucket("opts")
    tifs = _tifs(tmp_path)
    s3_m = f"{bucket}/basin.zarr"
    res = CliRunner().invoke(main, ["ingest", *tifs, "--track", "asc", "--track", "desc", "--heading", "-12",
                                    "--incidence", "40", "--chunk", "128", "--out", s3_m])
    assert res.exit_code == 0, res.output
    saved = {k: os.environ.pop(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    try:
        fsspec.config.conf.pop("s3", None)
        fsspec.filesystem("s3").clear_instance_cache()
        with pytest.raises(StoreError, match=r"cannot reach|no basin mosaic"):
            open_basin(s3_m)  # no endpoint, no credentials: a clear error, not a traceback
        opts = {"endpoint_url": saved["AWS_ENDPOINT_URL"], "key": saved["AWS_ACCESS_KEY_ID"],
                "secret": saved["AWS_SECRET_ACCESS_KEY"]}
        cfg = _cfg(tmp_path, "opts", mosaic=s3_m, out=f"{bucket}/inv.parquet", model=str(model_file),
                   storage_options=opts, outputs={"quicklook": False, "slide_id_raster": False, "report": False, "kml": False, "geopackage": False})
        res = CliRunner().invoke(main, ["run", cfg, "--no-progress"])
        assert res.exit_code == 0, res.output
        assert "testing" not in res.output
        meta = inventory_metadata(f"{bucket}/inv.parquet")
        assert meta["config"]["storage_options"] == {**opts, "key": "***", "secret": "***"}
        assert config_record(load_run_config(cfg))["storage_options"]["secret"] == "***"
    finally:
        os.environ.update(saved)
        fsspec.config.conf.pop("s3", None)
