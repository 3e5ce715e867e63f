"""GIS-ready outputs: what QGIS, ArcGIS and Google Earth open without a plug-in.

- :func:`write_geopackage` — one GeoPackage with the inventory's polygons as layer
  ``landslides`` and the refined outlines as their own layer ``outlines`` (a GeoPackage layer
  has one geometry, so QGIS shows both), and a QGIS style for each stored in the package's
  ``layer_styles`` table, where QGIS looks for a layer's default style when it opens it;
- :func:`write_kml` — KML for Google Earth: every slide's outline in WGS 84, coloured by score,
  named by its number, with its attributes in a balloon table and as ``ExtendedData``;
- :func:`export_cogs` — the mosaic (or one version) as one Cloud-Optimized GeoTIFF per track,
  tiled 512², DEFLATE with the floating-point predictor, NaN no-data, with overviews. It is
  streamed: chunk rows of the Zarr store are written into a tiled GeoTIFF, which GDAL's COG
  driver then copies (building the overviews) — memory stays at one row of chunks.
"""

from __future__ import annotations

import html
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np

from .mosaic import RATE, grid_of, open_basin
from .storage import is_url, join, staged

KML_NS = "http://www.opengis.net/kml/2.2"
# score bins of the KML styles: (lowest score, name, colour as #rrggbb)
SCORE_STYLES = [(0.0, "score_low", "#fdae61"), (0.8, "score_mid", "#f46d43"), (0.95, "score_high", "#a50026")]


def _plain(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """``gdf`` with its active geometry as its only geometry column."""
    return gdf.drop(columns=[c for c in gdf.columns
                             if c != gdf.geometry.name and isinstance(gdf[c].dtype, gpd.array.GeometryDtype)])


_QML = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28.0" styleCategories="Symbology|Labeling">
 <renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">
  <symbols>
   <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
    <layer class="SimpleFill" enabled="1" locked="0" pass="0">
     <Option type="Map">
      <Option type="QString" name="color" value="0,0,0,0"/>
      <Option type="QString" name="style" value="no"/>
      <Option type="QString" name="outline_color" value="{colour}"/>
      <Option type="QString" name="outline_style" value="{line}"/>
      <Option type="QString" name="outline_width" value="{width}"/>
      <Option type="QString" name="outline_width_unit" value="MM"/>
     </Option>
    </layer>
   </symbol>
  </symbols>
 </renderer-v2>
 <labeling type="simple">
  <settings calloutType="simple">
   <text-style fieldName="slide_num" fontSize="8" textColor="0,0,0,255" isExpression="0"/>
   <text-buffer bufferDraw="1" bufferSize="0.8" bufferColor="255,255,255,255"/>
   <placement placement="1"/>
  </settings>
 </labeling>
</qgis>
"""

_STYLES = {"landslides": dict(colour="40,40,40,255", line="dash", width="0.4"),
           "outlines": dict(colour="215,48,39,255", line="solid", width="0.6")}


def write_geopackage(gdf: gpd.GeoDataFrame, path: str | Path) -> str | Path:
    """Layers ``landslides`` (polygons, every attribute) and, when the inventory has refined
    outlines, ``outlines`` (one per slide, keyed by ``slide_id``), each with a default QGIS style."""
    target = path if is_url(path) else Path(path)
    layers = {"landslides": _plain(gdf)}
    if "outline" in gdf:
        keep = [c for c in ("slide_id", "slide_num", "score", "tracks", "area_m2", "rate_p95_abs", "status") if c in gdf]
        o = gpd.GeoDataFrame(gdf[keep].copy(), geometry=gpd.GeoSeries(gdf["outline"], crs=gdf.crs).values, crs=gdf.crs)
        layers["outlines"] = o[~(o.geometry.isna() | o.geometry.is_empty)]
    with staged(target, overwrite=True) as tmp:
        for name, layer in layers.items():
            layer.to_file(tmp, driver="GPKG", layer=name, engine="pyogrio")
        _add_qgis_styles(Path(tmp), {n: _QML.format(**_STYLES[n]) for n in layers})
    return target


def _add_qgis_styles(gpkg: Path, styles: dict[str, str]) -> None:
    """The ``layer_styles`` table QGIS reads a layer's default style from (registered as an
    attribute table in ``gpkg_contents``, as QGIS itself writes it)."""
    con = sqlite3.connect(gpkg)
    try:
        con.execute("""CREATE TABLE IF NOT EXISTS layer_styles (id INTEGER PRIMARY KEY AUTOINCREMENT,
            f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name TEXT(256), f_geometry_column TEXT(256),
            styleName TEXT(30), styleQML TEXT, styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30),
            ui TEXT(30), update_time DATETIME DEFAULT CURRENT_TIMESTAMP)""")
        con.execute("INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier) VALUES ('layer_styles', 'attributes', 'layer_styles')")
        for layer, qml in styles.items():
            geom_col = con.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)).fetchone()[0]
            con.execute("INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "
                        "styleQML, styleSLD, useAsDefault, description, owner, ui) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', '')",
                        (layer, geom_col, f"insar-slide {layer}", qml, "written by insar-slide"))
        con.commit()
    finally:
        con.close()


def _kml_colour(hex_rgb: str, alpha: int = 255) -> str:
    """#rrggbb → KML's aabbggrr."""
    r, g, b = hex_rgb[1:3], hex_rgb[3:5], hex_rgb[5:7]
    return f"{alpha:02x}{b}{g}{r}"


def write_kml(gdf: gpd.GeoDataFrame, path: str | Path, *, name: str = "insar-slide inventory") -> str | Path:
    """Every slide's outline (else its polygon) in WGS 84 as a KML Placemark."""
    from .maps import outlines

    geoms = outlines(gdf) if len(gdf) else gdf.geometry
    if gdf.crs is not None:
        geoms = geoms.to_crs("EPSG:4326")
    ET.register_namespace("", KML_NS)
    k = f"{{{KML_NS}}}"
    root = ET.Element(f"{k}kml")
    doc = ET.SubElement(root, f"{k}Document")
    ET.SubElement(doc, f"{k}name").text = name
    for _, sid, colour in SCORE_STYLES:
        st = ET.SubElement(doc, f"{k}Style", id=sid)
        ls = ET.SubElement(st, f"{k}LineStyle")
        ET.SubElement(ls, f"{k}color").text = _kml_colour(colour)
        ET.SubElement(ls, f"{k}width").text = "2"
        ps = ET.SubElement(st, f"{k}PolyStyle")
        ET.SubElement(ps, f"{k}color").text = _kml_colour(colour, 0x40)
    attrs = [c for c in ("slide_id", "score", "area_m2", "rate_mean", "rate_p95_abs", "rate_track", "tracks",
                         "v_slope_mm_yr", "v_up_mm_yr", "v_east_mm_yr", "status", "first_seen", "last_seen", "run_id", "model_id") if c in gdf]
    for i in range(len(gdf)):
        row = gdf.iloc[i]
        pm = ET.SubElement(doc, f"{k}Placemark")
        num = row["slide_num"] if "slide_num" in gdf else i + 1
        ET.SubElement(pm, f"{k}name").text = f"#{num}"
        score = float(row["score"]) if "score" in gdf and row["score"] == row["score"] else 0.0
        ET.SubElement(pm, f"{k}styleUrl").text = "#" + [s for lo, s, _ in SCORE_STYLES if score >= lo][-1]
        ET.SubElement(pm, f"{k}description").text = "<table>" + "".join(
            f"<tr><th>{a}</th><td>{html.escape(_fmt(row[a]))}</td></tr>" for a in attrs) + "</table>"
        ext = ET.SubElement(pm, f"{k}ExtendedData")
        for a in attrs:
            d = ET.SubElement(ext, f"{k}Data", name=a)
            ET.SubElement(d, f"{k}value").text = _fmt(row[a])
        _kml_geometry(pm, geoms.iloc[i], k)
    target = path if is_url(path) else Path(path)
    with staged(target, overwrite=True) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    return target


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"
    return "" if v is None else str(v)


def _kml_geometry(pm: ET.Element, geom: Any, k: str) -> None:
    polys = [p for p in getattr(geom, "geoms", [geom]) if hasattr(p, "exterior") and not p.is_empty]
    parent = ET.SubElement(pm, f"{k}MultiGeometry") if len(polys) > 1 else pm
    for p in polys:
        pe = ET.SubElement(parent, f"{k}Polygon")
        for tag, ring in [("outerBoundaryIs", p.exterior), *[("innerBoundaryIs", r) for r in p.interiors]]:
            lr = ET.SubElement(ET.SubElement(pe, f"{k}{tag}"), f"{k}LinearRing")
            ET.SubElement(lr, f"{k}coordinates").text = " ".join(f"{x:.7f},{y:.7f}" for x, y in np.asarray(ring.coords)[:, :2])


def export_cogs(mosaic: str | Path, out_dir: str | Path, *, version: str | None = None,
                tracks: list[str] | None = None, overwrite: bool = False) -> list[str | Path]:
    """One COG per track, ``<out_dir>/<track>.tif``; the written paths."""
    import rasterio
    from rasterio.shutil import copy as rio_copy

    ds = open_basin(mosaic, version)
    grid = grid_of(ds)
    names = [str(t) for t in ds["track"].values]
    wanted = tracks or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        from .errors import InputError
        raise InputError(f"{mosaic} has no track {', '.join(unknown)}; its tracks are {', '.join(names)}")
    if not is_url(out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    written: list[str | Path] = []
    rate = ds[RATE]
    rows = rate.data.chunks[1]
    for t in wanted:
        band = rate.sel(track=t)
        target = join(out_dir, f"{t}.tif")
        with staged(target, overwrite=overwrite) as tmp:
            work = Path(tmp).with_name(Path(tmp).name + ".tiled.tif")
            try:
                profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="float32",
                               crs=grid.crs, transform=grid.transform, nodata=float("nan"), tiled=True,
                               blockxsize=512, blockysize=512, compress="deflate", predictor=3, BIGTIFF="IF_SAFER")
                with rasterio.open(work, "w", **profile) as dst:
                    r0 = 0
                    for n in rows:
                        block = np.asarray(band.isel(y=slice(r0, r0 + n)).values, dtype=np.float32)
                        dst.write(block, 1, window=((r0, r0 + n), (0, grid.width)))
                        r0 += n
                    dst.update_tags(1, track=t, units="mm/yr", positive="toward the satellite",
                                    heading=str(float(ds["heading"].sel(track=t))), incidence=str(float(ds["incidence"].sel(track=t))))
                    dst.set_band_description(1, f"LOS rate {t} (mm/yr, + toward the satellite)")
                rio_copy(work, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR="FLOATING_POINT", BLOCKSIZE=512,
                         OVERVIEWS="AUTO", OVERVIEW_RESAMPLING="AVERAGE", BIGTIFF="IF_SAFER")
            finally:
                work.unlink(missing_ok=True)
        written.append(target)
    return written

