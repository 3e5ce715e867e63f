"""Validation at the edge (issue 18): every constraint the planner and the merger rely on is a
one-line config error, checked before any cluster starts, never an ``assert`` (which
``python -O`` removes); the tiling invariants hold for every window and halo the config accepts."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from insar_slide.cli import main
from insar_slide.core.tiling import read_sources
from insar_slide.errors import ConfigError
from insar_slide.grid import PixelWindow, chunk_windows
from insar_slide.run.config import load_run_config

from .conftest import REPO

SRC = REPO / "src" / "insar_slide"


def _write(tmp: Path, **cfg: object) -> Path:
    p = tmp / "basin.yaml"
    p.write_text(yaml.safe_dump({"mosaic": str(tmp / "m.zarr"), "out": str(tmp / "inv.parquet"), **cfg}))
    return p


def test_a_halo_larger_than_the_window_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_run_config(_write(tmp_path, window=256, halo=300))
    msg = str(e.value)
    assert "\n" not in msg and "halo 300" in msg and "window 256" in msg and "at most window" in msg
    load_run_config(_write(tmp_path, window=256, halo=256))  # the limit itself is fine


def test_every_problem_of_a_config_is_reported_at_once_before_torch_loads(tmp_path):
    p = _write(tmp_path, windwo=512, halo=-1, scales=[2], skip={"min_hot_pixel": 3})
    with pytest.raises(ConfigError) as e:
        load_run_config(p)
    lines = str(e.value).splitlines()
    assert len(lines) == 4 and all(line.startswith(f"{p}: ") for line in lines)
    text = str(e.value)
    assert "unknown key 'windwo'" in text and "'halo'" in text and "'scales'" in text and "skip.min_hot_pixel" in text
    assert "more problem" not in text
    for cmd in ("run", "plan", "update"):
        res = CliRunner().invoke(main, [cmd, str(p)])
        assert res.exit_code == 2, res.output
        assert res.output.count("error: ") == 4, res.output
    # A typo costs no torch import: `run` answers in a fresh interpreter without loading it.
    code = ("import sys; from click.testing import CliRunner; from insar_slide.cli import main; "
            f"r = CliRunner().invoke(main, ['run', {str(p)!r}]); "
            "print(r.exit_code, 'torch' in sys.modules, 'distributed' in sys.modules)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2", "False", "False"], out
    assert time.perf_counter() - t0 < 30  # (about 1 s; a generous bound for a loaded CI machine)


@pytest.mark.parametrize("package", ["run", "core"])
def test_the_planner_and_merger_check_with_errors_not_asserts(package):
    found = []
    for path in sorted((SRC / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, f"assert statements vanish under python -O: {found}"


def _reads(shape: tuple[int, int], window: int, halo: int) -> tuple[list[PixelWindow], list[PixelWindow]]:
    cores = chunk_windows(shape, window)
    full = PixelWindow(0, 0, *shape)
    reads = [full.intersection(PixelWindow(c.row0 - halo, c.col0 - halo, c.rows + 2 * halo, c.cols + 2 * halo))
             for c in cores]
    return cores, reads  # type: ignore[return-value]


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 700), w=st.integers(1, 700), window=st.integers(64, 300), data=st.data())
def test_every_pixel_in_one_core_and_the_pieces_tile_every_read(h, w, window, data):
    """For any grid, window and halo the config accepts (ragged edges included)."""
    halo = data.draw(st.integers(0, window))
    cores, reads = _reads((h, w), window, halo)
    cover = np.zeros((h, w), np.int32)
    for c in cores:
        cover[c.slices()] += 1
    assert (cover == 1).all()
    for core, read, src in zip(cores, reads, read_sources(cores, reads, window), strict=True):
        seen = np.zeros((read.rows, read.cols), np.int32)
        for j, piece in src:
            g = piece.shift(cores[j].row0 - read.row0, cores[j].col0 - read.col0)  # core-local → read-local
            seen[g.slices()] += 1
        assert (seen == 1).all(), (core, read)


def test_the_planning_checks_hold_under_python_O(tmp_path):
    """The planning checks are explicit, so ``python -O`` keeps them: a halo wider than the
    window (bypassing the config) is a ValueError, the config check a ConfigError, and the pure
    tiling of a ragged grid is exact."""
    script = tmp_path / "plan_O.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import numpy as np, yaml
        from insar_slide.errors import ConfigError
        from insar_slide.grid import PixelWindow, chunk_windows
        from insar_slide.run.config import load_run_config
        from insar_slide.core.tiling import read_sources

        if __debug__:
            sys.exit("not running under -O")
        def reads(shape, window, halo):
            cores = chunk_windows(shape, window)
            full = PixelWindow(0, 0, *shape)
            return cores, [full.intersection(PixelWindow(c.row0 - halo, c.col0 - halo, c.rows + 2 * halo,
                                                         c.cols + 2 * halo)) for c in cores]
        cores, rr = reads((300, 300), 100, 150)
        try:
            read_sources(cores, rr, 100)
            sys.exit("a halo of 150 px with 100-px windows was accepted")
        except ValueError:
            pass
        tmp = {str(tmp_path)!r}
        open(tmp + "/bad.yaml", "w").write(yaml.safe_dump({{"mosaic": "m.zarr", "out": "i.parquet",
                                                            "window": 100, "halo": 150}}))
        try:
            load_run_config(tmp + "/bad.yaml")
            sys.exit("halo 150 > window 100 passed the config")
        except ConfigError:
            pass
        cores, rr = reads((250, 230), 96, 40)
        for core, read, src in zip(cores, rr, read_sources(cores, rr, 96)):
            seen = np.zeros((read.rows, read.cols), int)
            for j, p in src:
                seen[p.shift(cores[j].row0 - read.row0, cores[j].col0 - read.col0).slices()] += 1
            if not (seen == 1).all():
                sys.exit(f"the pieces do not tile {{read}}")
        print("ok", len(cores))
    """))
    res = subprocess.run([sys.executable, "-O", str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("ok 9"), res.stdout + res.stderr


@pytest.mark.slow
def test_the_suites_planning_tests_pass_under_python_O():
    """The planning tests themselves (they read Zarr: insar-slide works around zarr 3.1's
    side-effect assert, see zarr_compat.zarr_under_optimize), run by pytest under ``python -O``
    (pytest rewrites a test module's asserts into plain checks, which -O keeps)."""
    tests = ["tests/test_run.py::test_plan_tiles_exactly_and_gives_reasons",
             "tests/test_run.py::test_input_hashes_change_exactly_with_the_bytes_a_window_reads",
             "tests/test_scales.py::test_plan_shows_the_windows_of_every_scale",
             "tests/test_validation.py::test_a_halo_larger_than_the_window_is_a_config_error",
             "tests/test_validation.py::test_every_pixel_in_one_core_and_the_pieces_tile_every_read",
             "tests/test_validation.py::test_a_missing_chunk_is_found_by_verify_and_refused_by_plan"]
    res = subprocess.run([sys.executable, "-O", "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and f"{len(tests)} passed" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]


# ---------------------------------------------------------------------------- merge rules


def _features(rects: list[tuple[int, int, int, int, float, int]]) -> pd.DataFrame:
    import shapely

    return pd.DataFrame({"geometry": [shapely.box(x, y, x + w, y + h) for x, y, w, h, _, _ in rects],
                         "score": [s for *_, s, _ in rects], "tracks": [("asc", "desc")[t] for *_, t in rects],
                         "n_boxes": 1})


HALF = st.integers(0, 120).map(lambda k: k / 2)  # half-pixel steps find more overlap cases than integers
RECTS = st.lists(st.tuples(HALF, HALF, st.integers(2, 60).map(lambda k: k / 2), st.integers(2, 60).map(lambda k: k / 2),
                           st.floats(0.5, 1.0), st.integers(0, 1)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(rects=RECTS, overlap=st.sampled_from([0.05, 0.15, 0.2, 0.5]))
@example(rects=[(0, 0, 10, 10, 0.9, 0), (8, 0, 10, 10, 0.8, 0), (4, 9.2, 10, 4.8, 0.7, 0)], overlap=0.15)
def test_dissolve_is_idempotent(rects, overlap):
    """The third box shares 10 % with each of the first two but 16.7 % with their union: one pass
    left it apart, a second merged it (fixed: dissolve runs to a fixpoint)."""
    from insar_slide.core.features import dissolve

    once = dissolve(_features(rects), overlap)
    twice = dissolve(once, overlap)
    assert len(once) == len(twice)
    assert all(a.equals(b) for a, b in zip(once["geometry"], twice["geometry"], strict=True))
    assert list(once["n_boxes"]) == list(twice["n_boxes"]) and list(once["tracks"]) == list(twice["tracks"])


@settings(max_examples=100, deadline=None)
@given(rects=RECTS)
def test_nms_is_idempotent(rects):
    from insar_slide.core.merge import MergeRules, nms
    from insar_slide.grid import Grid

    s = MergeRules(grid=Grid("EPSG:32647", 0.0, 0.0, 1.0, -1.0, 100, 100), halo=8, tracks=("asc", "desc"),
                   score_threshold=0.5, nms_iou=0.5, dissolve_overlap=0.2)
    boxes = pd.DataFrame([{"minx": x, "miny": y, "maxx": x + w, "maxy": y + h, "score": sc, "track": ("asc", "desc")[t],
                           "scale": 1} for x, y, w, h, sc, t in rects], columns=["minx", "miny", "maxx", "maxy", "score",
                                                                                 "track", "scale"])
    once = nms(boxes, s)
    pd.testing.assert_frame_equal(nms(once, s), once)


# ---------------------------------------------------------------------------- stores and checkpoints


def test_a_missing_chunk_is_found_by_verify_and_refused_by_plan(tmp_path):
    import dask.array as da

    from insar_slide.errors import StoreError
    from insar_slide.grid import Grid
    from insar_slide.manifest import missing_chunks
    from insar_slide.mosaic import TrackInfo, build_dataset, write_mosaic
    from insar_slide.run.plan import make_plan

    grid = Grid("EPSG:32647", 500_000.0, 3_000_000.0, 30.0, -30.0, 256, 384)
    rates = np.random.default_rng(1).normal(0, 20, (1, 256, 384)).astype("float32")
    rates[0, :128, :128] = np.nan  # an all-NaN chunk: zarr stores nothing for it, and that is no loss
    store = tmp_path / "m.zarr"
    write_mosaic(build_dataset(da.from_array(rates, chunks=(1, 128, 128)), grid,
                               [TrackInfo("asc", -12.0, 40.0, "2020-01-01", "2021-01-01", ("t",))]), store, chunk=128)
    assert missing_chunks(store) == []
    res = CliRunner().invoke(main, ["info", "--verify", str(store)])
    assert res.exit_code == 0 and "every chunk written at ingest is present" in res.output
    (store / "los_rate" / "c" / "0" / "1" / "2").unlink()
    assert missing_chunks(store) == ["los_rate/c/0/1/2"]
    res = CliRunner().invoke(main, ["info", "--verify", str(store)])
    assert res.exit_code == 1 and "missing los_rate/c/0/1/2" in res.output and "1 chunk(s)" in res.output
    with pytest.raises(StoreError, match=r"1 chunk\(s\) written at ingest are missing \(first: los_rate/c/0/1/2\)"):
        make_plan(load_run_config(_write(tmp_path, mosaic=str(store), window=128, halo=16)))


def test_import_weights_makes_a_foreign_state_dict_load_and_refuses_another_network(tmp_path):
    import torch
    import torchvision

    from insar_slide.errors import InputError
    from insar_slide.model import ModelConfig, build_model
    from insar_slide.model.checkpoint import load_checkpoint, read_metadata

    torch.manual_seed(3)
    net = build_model(ModelConfig(variant="r34_fpn"))
    pth = tmp_path / "trained.pth"
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 7}, pth)
    with pytest.raises(InputError, match="import-weights") as e:
        read_metadata(pth)  # the advice names the command that works …
    assert "--variant" in str(e.value)
    out = tmp_path / "imported.safetensors"
    res = CliRunner().invoke(main, ["import-weights", str(pth), "--variant", "r34_fpn", "--out", str(out),
                                    "--score-threshold", "0.6"])
    assert res.exit_code == 0, res.output  # … and following it gives a checkpoint that loads
    model, cfg, meta = load_checkpoint(out)
    assert cfg.variant == "r34_fpn" and meta["score_threshold"] == 0.6 and meta["imported_from"] == "trained.pth"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in net.state_dict().items())
    other = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    res = CliRunner().invoke(main, ["import-weights", str(other), "--variant", "r34_fpn", "--out", str(tmp_path / "x.st")])
    assert res.exit_code == 1 and "do not fit a r34_fpn model" in res.output and not (tmp_path / "x.st").exists()


def test_paths_given_as_flags_are_relative_to_where_they_are_typed(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    p = tmp_path / "cfg" / "basin.yaml"
    p.write_text(yaml.safe_dump({"mosaic": "m.zarr", "out": "inv.parquet", "model": "model.safetensors"}))
    monkeypatch.chdir(tmp_path)
    cfg = load_run_config(p, out="runs/inv.parquet", model="models/m.safetensors")
    assert cfg.mosaic == str(tmp_path / "cfg" / "m.zarr")  # from the file: beside the file
    assert cfg.out == str(tmp_path / "runs" / "inv.parquet") and cfg.model == str(tmp_path / "models" / "m.safetensors")
