"""The import graph of ``src/insar_slide``, read with :mod:`ast`: no cycle, no upward edge.

Every import counts: absolute and relative, at module level, inside functions and under
``if TYPE_CHECKING``. An edge goes to the module imported (``from .x import name`` to ``x``, or
to ``x.name`` when that is a module itself); the package ``__init__`` run implicitly on the way
is not an edge.

:data:`LAYERS` is the layer order the code has today, lowest first; a module may import from
its own layer and the layers below. The assertions hold for the whole package as it is.

The README's Development section shows the same layers as a diagram.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

from .conftest import REPO

SRC = REPO / "src" / "insar_slide"

#: Lowest first. Names are relative to ``insar_slide`` ("" is the package's ``__init__``).
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["version", "errors", "config", "atomic", "storage", "grid", "zarr_compat", "progress",
                    "run", "sim", "training"]),  # the last three: empty package files
    ("core", ["core", "core.features", "core.scales", "core.tiling", "core.merge", "core.geometry", "timeseries_fit", "training.boxes", "sim.geometry", "sim.noise"]),
    ("config", ["run.config", "sim.config", "training.config"]),
    ("model", ["model", "model.cbam", "model.encoding", "model.detector", "model.checkpoint", "model.device"]),
    ("store", ["manifest", "mosaic", "quality", "sources", "decompose", "inventory", "readers", "points", "pointgrid", "timeseries_readers", "timeseries", "ingest", "query", "run.io", "run.raster", "run.store",
               "training.voc"]),
    ("simulation", ["sim.objects", "sim.terrain", "sim.kinds", "sim.shapes", "sim.scene", "sim.render",
                    "sim.truth", "sim.basin"]),
    ("comparison and pictures", ["compare", "maps", "quicklook", "report", "gis", "timeseries_plot"]),
    ("run, baselines and comparison", ["run.plan", "run.detect", "run.merge", "run.cluster", "run.outputs", "run.pipeline",
                                       "run.update",
                                       "baselines", "scoring", "scoring_tables"]),
    ("training", ["training.metrics", "training.data", "training.mining", "training.train", "training.chips", "training.evaluate", "training.export",
                  "training.comparators", "training.yolo", "training.detr", "training.comparator_eval"]),
    ("interface", ["api", "cli_common", "cli_training", "cli_compare", "cli_comparators", "cli_timeseries", "cli", ""]),
]

#: What the core layer must not import: no Dask, no xarray, no file formats.
NOT_IN_CORE = {"dask", "distributed", "xarray", "rioxarray", "zarr", "rasterio", "pyarrow", "fsspec", "h5py",
               "geopandas", "tqdm"}


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name → (file, is a package ``__init__``) for every ``.py`` under ``root``."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module → the package's modules it imports, module → top-level names of other imports)."""
    mods = modules(root)
    pkg = root.name

    def nearest(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        deps: set[str] = set()
        other: set[str] = set()
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == pkg or a.name.startswith(pkg + "."):
                        deps.add(nearest(a.name) or pkg)
                    else:
                        other.add(a.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[:len(here) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                if not (target == pkg or target.startswith(pkg + ".")):
                    if not node.level and target != "__future__":
                        other.add(target.split(".")[0])
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    deps.add(sub if sub in mods else (nearest(target) or pkg))
        deps.discard(name)
        graph[name] = deps
        external[name] = other
    return graph, external


GRAPH, EXTERNAL = import_graph(SRC)


def _layer_of() -> dict[str, int]:
    out: dict[str, int] = {}
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            full = f"insar_slide.{n}" if n else "insar_slide"
            assert full not in out, f"{full} is in two layers"
            out[full] = i
    return out


def test_the_graph_has_no_cycle():
    try:
        order = list(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' → '.join(exc.args[1])}")
    assert set(order) == set(GRAPH)


def test_every_module_has_a_layer():
    layer = _layer_of()
    assert sorted(set(GRAPH) - set(layer)) == [], "place the new module in LAYERS"
    assert sorted(set(layer) - set(GRAPH)) == [], "LAYERS names a module that is gone"


def test_no_module_imports_from_a_layer_above_its_own():
    layer = _layer_of()
    upward = [f"{m} ({LAYERS[layer[m]][0]}) → {d} ({LAYERS[layer[d]][0]})"
              for m, deps in sorted(GRAPH.items()) for d in sorted(deps) if layer[d] > layer[m]]
    assert upward == []


def test_the_core_imports_no_dask_xarray_or_file_formats():
    core = [f"insar_slide.{n}" for n in dict(LAYERS)["core"]]
    assert {m: sorted(EXTERNAL[m] & NOT_IN_CORE) for m in core if EXTERNAL[m] & NOT_IN_CORE} == {}


def test_the_reader_sees_relative_function_level_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "a.py").write_text("import numpy\n\ndef f():\n    from .sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\nthing = 1\n")
    (pkg / "c.py").write_text("import pkg.sub.b\nfrom pkg import a\nfrom . import sub\n")
    graph, external = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.sub.b"}, "pkg.sub": {"pkg.sub.b"}, "pkg.sub.b": {"pkg.a"},
                     "pkg.c": {"pkg.sub.b", "pkg.a", "pkg.sub"}}
    assert external["pkg.a"] == {"numpy"} and external["pkg.sub.b"] == {"typing"}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())


def test_no_module_is_over_400_lines():
    """Issue 17: a module a newcomer reads in one sitting."""
    long = {name: n for name, (path, _) in modules(SRC).items() if (n := len(path.read_text().splitlines())) > 400}
    assert not long, long


def test_the_cli_draws_progress_and_the_library_only_reports_it(capsys):
    from insar_slide.cli_common import progress_bars

    with progress_bars(False) as p:
        assert p is None
    with progress_bars(True) as p:
        assert p is not None
        p("detect", 1, 3)
        p("detect", 3, 3)
    err = capsys.readouterr().err
    assert "detect" in err and "3/3" in err
    # no library module draws bars or prints
    import re

    drawing = [name for name, (path, _) in modules(SRC).items() if not name.startswith("insar_slide.cli")
               and re.search(r"\btqdm\b|(?<![\w.])print\(", path.read_text())]
    assert not drawing, drawing


def _readme_layers() -> list[set[str]]:
    """The layer diagram in the README's Development section, lowest layer first."""
    import re

    text = (REPO / "README.md").read_text()
    block = text[text.index("```\ninterface ") + 4:]
    block = block[:block.index("```")]
    layers = []
    for line in block.strip().splitlines():
        rest = line.split(None, 1)[1]
        names: set[str] = set()
        for item in re.findall(r"[\w.]+\{[^}]*\}|[\w.]+", rest):
            if "{" in item:
                prefix, inner = item.split("{")
                names |= {prefix + x.strip() for x in inner.rstrip("}").split(",")}
            else:
                names.add(item)
        layers.append(names)
    return layers[::-1]


def test_the_readme_diagram_is_the_layer_order_checked_here():
    packages = {name for name, (_, is_pkg) in modules(SRC).items() if is_pkg}
    ours = [{n for n in names if f"insar_slide.{n}".rstrip(".") not in packages and n} for _, names in LAYERS]
    assert _readme_layers() == ours
