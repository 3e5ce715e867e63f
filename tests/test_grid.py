import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from insar_slide.errors import GridError, InputError
from insar_slide.grid import Grid, PixelWindow, chunk_windows


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 700), w=st.integers(1, 700), chunk=st.integers(1, 300))
def test_chunk_windows_cover_every_pixel_once(h, w, chunk):
    count = np.zeros((h, w), int)
    for win in chunk_windows((h, w), chunk):
        count[win.slices()] += 1
    assert (count == 1).all()


def test_rotated_or_skewed_grid_is_refused():
    with pytest.raises(InputError, match="rotated or skewed"):
        Grid.from_transform("EPSG:4326", Affine(1, 0.2, 0, 0.1, -1, 0), 10, 10)


def test_south_up_grid_is_refused():
    with pytest.raises(InputError, match="south-up"):
        Grid.from_transform("EPSG:4326", Affine(1, 0, 0, 0, 1, 0), 10, 10)


def test_union_and_offsets_of_aligned_grids():
    a = Grid("EPSG:32647", 0.0, 300.0, 30.0, -30.0, 10, 10)
    b = Grid("EPSG:32647", 150.0, 150.0, 30.0, -30.0, 10, 10)
    u = a.union(b)
    assert (u.height, u.width) == (15, 15)
    assert u.offset_of(b) == (5, 5)


def test_union_of_misaligned_grids_is_refused():
    a = Grid("EPSG:32647", 0.0, 300.0, 30.0, -30.0, 10, 10)
    with pytest.raises(GridError):
        a.union(Grid("EPSG:32647", 10.0, 300.0, 30.0, -30.0, 10, 10))


def test_window_of_bounds_and_area():
    g = Grid("EPSG:32647", 0.0, 3000.0, 30.0, -30.0, 100, 100)
    assert g.window_of_bounds(45, 2900, 100, 2990) == PixelWindow(0, 1, 4, 3)
    assert g.area_km2() == pytest.approx(9.0)
    geo = Grid("EPSG:4326", 130.0, 32.0, 0.01, -0.01, 100, 100)
    assert 9000 < geo.area_km2() < 11000  # ~1° x 1° near 31.5° N


def test_grid_key_is_the_string_stored_with_window_results_and_update_histories():
    g = Grid("EPSG:32647", 500_000.0, 3_000_000.0, 30.0, -30.0, 2, 3)
    # run directories and history state.json files written before hold this exact string
    assert g.key == "EPSG:32647|(30.0, 0.0, 500000.0, 0.0, -30.0, 3000000.0)|(2, 3)"
    assert Grid("EPSG:32647", 500_000.0, 3_000_000.0, 30.0, -30.0, 2, 4).key != g.key
