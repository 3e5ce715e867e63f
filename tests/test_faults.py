"""The fault matrix (issue 18), each fault with real processes: a worker, the client or the
scheduler killed, Ctrl-C, a full or read-only output disk, a corrupt chunk, an S3 endpoint that
stops answering. Each ends in one clear line (or a completed run) and a rerun that resumes to
the inventory of an undisturbed run. The README's fault table lists the measured outcomes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import yaml

from insar_slide.grid import Grid
from insar_slide.mosaic import TrackInfo, build_dataset, write_mosaic
from insar_slide.run.config import load_run_config
from insar_slide.run.pipeline import run
from insar_slide.run.plan import make_plan

from .conftest import dask_processes, new_bucket

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("insar-slide"))
GRID = Grid("EPSG:32647", 500_000.0, 3_000_000.0, 30.0, -30.0, 512, 640)
SLIDES = [(60, 60), (200, 330), (400, 120), (420, 560), (250, 250), (120, 500)]
#: Windows of a run at the default scales [1, 2]: 4 x 5 native cores and 2 x 3 at the x2 level.
N_WINDOWS = 20 + 6


def _rates() -> np.ndarray:
    rng = np.random.default_rng(11)
    r = rng.normal(0, 3, (1, *GRID.shape)).astype("float32")
    yy, xx = np.mgrid[0:GRID.height, 0:GRID.width]
    for cy, cx in SLIDES:
        r[0][((yy - cy) / 28) ** 2 + ((xx - cx) / 18) ** 2 <= 1] = -40.0
    return r


def _write_basin(path: Path | str) -> None:
    write_mosaic(build_dataset(da.from_array(_rates(), chunks=(1, 128, 128)), GRID,
                               [TrackInfo("asc", -12.0, 40.0, "2020-01-01", "2021-01-01", ("test",))]), path, chunk=128,
                 overwrite=True)


@pytest.fixture(scope="module")
def basin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "basin.zarr"
    _write_basin(path)
    return path


def _config(tmp: Path, basin: Path | str, model: Path, **kw: object) -> Path:
    """Every window runs (20 of them, 128-px cores): enough work to be interrupted."""
    cfg = {"mosaic": str(basin), "out": str(tmp / "inv.parquet"), "model": str(model), "window": 128, "halo": 32,
           "batch_size": 1, "skip": {"min_abs_rate": 0.0, "min_hot_pixels": 1, "min_valid_fraction": 0.0},
           "cluster": {"workers": 1, "dashboard": False}, "outputs": {"quicklook": False, "slide_id_raster": False, "report": False, "kml": False, "geopackage": False}, **kw}
    p = tmp / "basin.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory, basin, model_file) -> gpd.GeoDataFrame:
    tmp = tmp_path_factory.mktemp("undisturbed")
    run(load_run_config(_config(tmp, basin, model_file)), echo=lambda s: None)
    return gpd.read_parquet(tmp / "inv.parquet")


def _same(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> None:
    """Row for row; the run id is left out (it hashes the mosaic's location, which some tests move)."""
    assert len(a) == len(b) > 0
    drop = ["geometry", "outline", "run_id"]
    pd.testing.assert_frame_equal(pd.DataFrame(a.drop(columns=drop)), pd.DataFrame(b.drop(columns=drop)))
    assert list(a.geometry.to_wkb()) == list(b.geometry.to_wkb())


def _results(tmp: Path, run_dir: str = "inv.parquet.run") -> dict[str, int]:
    """Stored window results → their mtime (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in (tmp / run_dir / "windows").glob("*/*.parquet")}


def _wait_for(cond, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise TimeoutError("the condition never held")
        time.sleep(0.05)


_STARTED: list[subprocess.Popen[str]] = []


def _terminal_signals() -> None:
    # A run started from a terminal has SIGINT at its default. A non-interactive shell that runs
    # pytest in the background (CI's `... &`) sets SIGINT to "ignore", and a child inherits that:
    # the run would then rightly ignore Ctrl-C, as under nohup. The tests here are about the
    # terminal case, so each run starts with the default restored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(cfg: Path, *args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([CLI, "run", str(cfg), "--no-progress", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=_terminal_signals)
    _STARTED.append(p)
    return p


@pytest.fixture(autouse=True)
def _no_leftover_runs() -> Iterator[None]:
    """A failed test leaves no run behind (its process group is killed)."""
    yield
    while _STARTED:
        p = _STARTED.pop()
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


# ---------------------------------------------------------------------------- the cluster


def test_a_worker_killed_mid_detection_the_run_completes_identically(tmp_path, basin, model_file, undisturbed):
    procs: list[subprocess.Popen[bytes]] = []
    with dask_processes(tmp_path, workers=2, procs_out=procs, nanny=False) as address:
        cfg = _config(tmp_path, basin, model_file)
        p = _start(cfg, "--address", address)
        _wait_for(lambda: len(_results(tmp_path)) >= 3 or p.poll() is not None)
        assert p.poll() is None, "the run ended before a worker could be killed"
        t_kill = time.time()
        procs[1].send_signal(signal.SIGKILL)  # one of the two workers, mid-detection
        _, err = p.communicate(timeout=300)
        recovered = time.time() - t_kill
    assert p.returncode == 0, err
    _same(undisturbed, gpd.read_parquet(tmp_path / "inv.parquet"))
    print(f"\nworker SIGKILL: run completed {recovered:.1f} s after the kill, inventory identical")


@pytest.mark.slow
def test_the_client_killed_a_rerun_recomputes_almost_nothing(tmp_path, basin, model_file, undisturbed):
    with dask_processes(tmp_path, workers=2) as address:
        cfg = _config(tmp_path, basin, model_file)
        p = _start(cfg, "--address", address)
        _wait_for(lambda: len(_results(tmp_path)) >= 6 or p.poll() is not None)
        assert p.poll() is None, "the run ended before it could be killed"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        before = _results(tmp_path)
        time.sleep(1.0)  # tasks already on the workers may finish after the client is gone
        t0 = time.time()
        res = subprocess.run([CLI, "run", str(cfg), "--no-progress", "--address", address], capture_output=True, text=True)
        rerun_s = time.time() - t0
    assert res.returncode == 0, res.stderr
    after = _results(tmp_path)
    recomputed = [k for k, t in before.items() if after[k] != t]
    assert len(recomputed) <= 0.1 * len(before), recomputed
    _same(undisturbed, gpd.read_parquet(tmp_path / "inv.parquet"))
    print(f"\nclient SIGKILL: {len(before)} windows saved before the kill, {len(recomputed)} of them recomputed; "
          f"rerun {rerun_s:.1f} s")


@pytest.mark.slow
def test_the_scheduler_killed_is_one_line_naming_it_and_a_rerun_resumes(tmp_path, basin, model_file, undisturbed):
    procs: list[subprocess.Popen[bytes]] = []
    with dask_processes(tmp_path, workers=1, procs_out=procs) as address:
        cfg = _config(tmp_path, basin, model_file)
        p = _start(cfg, "--address", address)
        _wait_for(lambda: len(_results(tmp_path)) >= 3 or p.poll() is not None)
        assert p.poll() is None
        procs[0].send_signal(signal.SIGKILL)
        t_kill = time.time()
        _, err = p.communicate(timeout=120)
        failed_after = time.time() - t_kill
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"error: lost the Dask scheduler at {address}") and "rerun the same command" in lines[0]
    saved = len(_results(tmp_path))
    res = run(load_run_config(cfg), echo=lambda s: None)  # an embedded cluster this time
    assert res.summary.windows["reused"] >= saved - 1  # (a result written as the scheduler died may lack its footer)
    _same(undisturbed, res.inventory)
    print(f"\nscheduler SIGKILL: one-line error {failed_after:.1f} s after the kill; rerun reused "
          f"{res.summary.windows['reused']} of {res.summary.windows['run']} windows")


def test_after_ctrl_c_the_clusters_shutdown_logs_are_dropped_and_others_kept():
    import io
    import logging

    from insar_slide import cli_common

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cli_common.quiet_after_ctrl_c()
        logging.getLogger("distributed.scheduler").error("before: kept")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
        logging.getLogger("distributed.scheduler").error("Couldn't gather keys")
        logging.getLogger("tornado.application").error("Exception in callback")
        logging.getLogger("insar_slide.run").error("after: kept")
    finally:
        cli_common.STOPPING.clear()
        signal.signal(signal.SIGINT, previous)
        root.removeHandler(handler)
    assert stream.getvalue().splitlines() == ["before: kept", "after: kept"]


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_saves_and_says_how_to_resume(tmp_path, basin, model_file, undisturbed):
    cfg = _config(tmp_path, basin, model_file)
    p = _start(cfg)  # embedded LocalCluster: its workers share the process group, as in a terminal
    _wait_for(lambda: len(_results(tmp_path)) >= 3 or p.poll() is not None)
    assert p.poll() is None
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("error: interrupted: ") and "windows saved" in err and "rerun the same command" in err
    saved = len(_results(tmp_path))
    res = run(load_run_config(cfg), echo=lambda s: None)
    assert res.summary.windows["reused"] >= saved - 1
    _same(undisturbed, res.inventory)


# ---------------------------------------------------------------------------- the output disk


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'not root'}): the full-disk case needs one")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_a_full_output_disk_keeps_the_previous_inventory_history_and_windows(tmp_path, basin, model_file):
    """`update` onto a small tmpfs: the first version fits; with the disk full, the next version
    fails in one line and leaves the inventory and its history byte for byte as they were."""
    from insar_slide.mosaic import write_version

    store = tmp_path / "basin.zarr"
    shutil.copytree(basin, store)
    with _tmpfs(tmp_path / "small", "4m") as disk:
        cfg = _config(tmp_path, store, model_file, out=str(disk / "inv.parquet"), run_dir=str(tmp_path / "run"))
        res = subprocess.run([CLI, "update", str(cfg), "--no-progress"], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        write_version(build_dataset(da.from_array(_rates(), chunks=(1, 128, 128)), GRID,
                                    [TrackInfo("asc", -12.0, 40.0, "2021-01-01", "2022-01-01", ("test",))]),
                      store, "v2", chunk=128)
        before = {p: p.read_bytes() for p in disk.rglob("*") if p.is_file()}
        assert disk / "inv.parquet.history" / "state.json" in before
        (disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(disk).free - 8192))  # less than one inventory
        res = subprocess.run([CLI, "update", str(cfg), "--no-progress"], capture_output=True, text=True)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and len(lines) == 1 and "No space left on device" in lines[0], res.stderr
        (disk / "filler").unlink()
        after = {p: p.read_bytes() for p in disk.rglob("*") if p.is_file()}
        assert after == before  # the inventory and its history untouched, no temporaries left
        res = subprocess.run([CLI, "update", str(cfg), "--no-progress"], capture_output=True, text=True)
        assert res.returncode == 0 and f"{N_WINDOWS} reused" in res.stdout, res.stdout + res.stderr
        assert '"v2"' in (disk / "inv.parquet.history" / "state.json").read_text()


@pytest.mark.slow
def test_a_read_only_output_is_one_line(tmp_path, basin, model_file):
    with _tmpfs(tmp_path / "ro", "1m") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        cfg = _config(tmp_path, basin, model_file, out=str(disk / "inv.parquet"))
        res = subprocess.run([CLI, "run", str(cfg), "--no-progress"], capture_output=True, text=True)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and "Read-only file system" in lines[0], res.stderr


# ---------------------------------------------------------------------------- the mosaic


@pytest.mark.slow
def test_a_corrupt_chunk_names_store_variable_chunk_and_window(tmp_path, basin, model_file, undisturbed):
    store = tmp_path / "basin.zarr"
    shutil.copytree(basin, store)
    chunk = store / "los_rate" / "c" / "0" / "2" / "3"
    good = chunk.read_bytes()
    chunk.write_bytes(b"not zstd at all")
    cfg = _config(tmp_path, store, model_file)
    res = subprocess.run([CLI, "run", str(cfg), "--no-progress"], capture_output=True, text=True)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert f"{store}: chunk los_rate/c/0/2/3 cannot be read" in lines[0] and "needed by window asc/r0000" in lines[0]
    assert "re-ingest" in lines[0] and "windows done and kept" in lines[0]
    # The chunk (rows 256-383, cols 384-511) lies under the reads of 9 native windows and, in
    # native pixels, of 4 of the 6 x2 windows. A window that does not read it may be stopped
    # unstarted when the run gives up; one that does is never stored.
    readers = {w.key.split("/")[1] for w in make_plan(load_run_config(cfg)).windows if _native_read_overlaps(w, 256, 384, 384, 512)}
    assert len(readers) == 9 + 4
    kept = {Path(name).stem for name in _results(tmp_path)}
    assert kept and not kept & readers
    chunk.write_bytes(good)
    r = run(load_run_config(cfg), echo=lambda s: None)
    assert r.summary.windows["reused"] == len(kept) and r.summary.windows["computed"] == N_WINDOWS - len(kept)
    _same(undisturbed, r.inventory)


def _native_read_overlaps(w, row0: int, row1: int, col0: int, col1: int) -> bool:  # type: ignore[no-untyped-def]
    f = w.scale
    return w.read.row0 * f < row1 and w.read.row1 * f > row0 and w.read.col0 * f < col1 and w.read.col1 * f > col0


class _Proxy:
    """A TCP forwarder to ``target``; with ``refuse`` set it drops every connection at once (an
    S3 endpoint that stops answering)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.refuse = target, False
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.refuse:
                conn.close()
                continue
            up = socket.create_connection(self.target)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self.refuse and (data := a.recv(65536)):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


@pytest.mark.slow
def test_an_s3_endpoint_that_stops_answering_is_retried_then_one_line_and_resumes(tmp_path, s3_endpoint, model_file,
                                                                                 undisturbed):
    url = f"{new_bucket('flaky')}/basin.zarr"
    _write_basin(url)
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = _Proxy((host, int(port)))
    opts = {"endpoint_url": proxy.url, "config_kwargs": {"connect_timeout": 2, "read_timeout": 5,
                                                          "retries": {"max_attempts": 2}}}
    cfg = _config(tmp_path, url, model_file, storage_options=opts)
    p = _start(cfg)
    _wait_for(lambda: len(_results(tmp_path)) >= 3 or p.poll() is not None)
    assert p.poll() is None
    proxy.refuse = True
    t0 = time.time()
    _, err = p.communicate(timeout=300)
    failed_after = time.time() - t0
    lines = err.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and "window(s) failed" in lines[0] and "resume" in lines[0], err
    saved = len(_results(tmp_path))
    proxy.refuse = False
    r = subprocess.run([CLI, "run", str(cfg), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0 and f"{saved} of {N_WINDOWS} windows unchanged" in r.stdout, r.stdout + r.stderr
    _same(undisturbed, gpd.read_parquet(tmp_path / "inv.parquet"))
    print(f"\nS3 endpoint down: one-line error {failed_after:.1f} s after it stopped answering; "
          f"rerun reused {saved} of {N_WINDOWS} windows")
