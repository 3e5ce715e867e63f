"""The pure core: rules on boxes and polygons that both ``run`` and the baselines use.

Modules here import numpy, pandas, scipy and shapely only (and :mod:`insar_slide.errors` /
:mod:`insar_slide.grid`): no Dask, no xarray, no file I/O, so every rule is testable on a
few hand-made geometries. ``tests/test_imports.py`` checks it.
"""
