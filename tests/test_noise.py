import numpy as np

from insar_slide.sim.noise import fbm_grid, hash_uniform, spline_grid, spline_points


def test_hash_is_deterministic_and_seed_dependent():
    iy, ix = np.arange(100)[:, None], np.arange(100)[None, :]
    a = hash_uniform(1, 2, iy, ix)
    assert np.array_equal(a, hash_uniform(1, 2, iy, ix))
    assert not np.array_equal(a, hash_uniform(2, 2, iy, ix))
    assert -1 <= a.min() and a.max() < 1 and abs(a.mean()) < 0.05


def test_spline_noise_is_seamless_and_point_evaluation_agrees():
    rows, cols = np.arange(0, 600), np.arange(0, 500)
    whole = spline_grid(3, 5, rows, cols, 13.7)
    part = spline_grid(3, 5, rows[123:456], cols[77:301], 13.7)
    assert np.array_equal(part, whole[123:456, 77:301])
    r, c = np.meshgrid(rows[:40], cols[:30], indexing="ij")
    assert np.array_equal(spline_points(3, 5, r, c, 13.7), whole[:40, :30])


def test_fbm_is_seamless_across_arbitrary_splits():
    rows, cols = np.arange(200, 520), np.arange(1000, 1300)
    whole = fbm_grid(9, 1, rows, cols, largest=256, smallest=2, hurst=0.7)
    top = fbm_grid(9, 1, rows[:111], cols, largest=256, smallest=2, hurst=0.7)
    bottom = fbm_grid(9, 1, rows[111:], cols, largest=256, smallest=2, hurst=0.7)
    assert np.array_equal(np.vstack([top, bottom]), whole)
