"""Ingest-side rasterio access through obstore: opening sources (local and S3), CRSs
without an EPSG code, GDAL scale/offset, and copying files virtual references cannot
serve into native zarr arrays that the fast chunk reader reads back."""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio

from pixelquery_batch.catalog.chunks import ChunkRequest, IcechunkChunkReader, chunks_for_window
from pixelquery_batch.catalog.models import BandInfo
from pixelquery_batch.catalog.rio_source import (
    CopiedRaster,
    ScaleOffsetUnknownError,
    copied_data_array,
    gdal_metadata_scale_offset,
    gdal_scale_offset,
    open_source,
    read_source_pixels,
    source_crs,
    source_scale_offset,
)
from pixelquery_batch.catalog.sources import to_url
from pixelquery_batch.config import S3Options, StorageProfile
from pixelquery_batch.errors import InputDataError
from pixelquery_batch.testing.cogs import (
    make_cog,
    make_flavour,
    make_scale_offset_raster,
    make_striped_partial,
    make_wkt_crs_raster,
    read_with_rasterio,
)


def _virtual(path: Path):
    """virtual-tiff's parse of a local file (full resolution)."""
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore
    from virtual_tiff import VirtualTIFF
    from virtualizarr import open_virtual_dataset

    registry = ObjectStoreRegistry({"file://": LocalStore()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_virtual_dataset(to_url(path), registry=registry, parser=VirtualTIFF(ifd=0))


# --------------------------------------------------------------------------- open_source


@pytest.mark.parametrize("as_url", [True, False])
def test_open_source_local_reads_like_rasterio(tmp_path: Path, as_url: bool) -> None:
    path = make_flavour(tmp_path / "a.tif", "int16_4band_pixel")
    expected, meta = read_with_rasterio(path)
    with open_source(to_url(path) if as_url else str(path)) as src:
        assert src.name.startswith("/vsiriopener_")
        np.testing.assert_array_equal(src.read(), expected)
        assert tuple(src.transform)[:6] == meta["transform"]
        assert src.crs.to_epsg() == meta["crs_epsg"] and src.nodata == meta["nodata"]
        window = src.read(2, window=((37, 211), (101, 290)))
        np.testing.assert_array_equal(window, expected[1, 37:211, 101:290])


def test_open_source_errors(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="source not found"), open_source(str(tmp_path / "no.tif")):
        pass
    bad = make_flavour(tmp_path / "bad.tif", "not_a_tiff")
    with pytest.raises(InputDataError, match="GDAL cannot open"), open_source(str(bad)):
        pass
    truncated = make_flavour(tmp_path / "trunc.tif", "truncated")
    with pytest.raises(InputDataError, match="cannot decode"):
        read_source_pixels(str(truncated))


def test_open_source_reads_only_the_tiff_not_sidecars(tmp_path: Path) -> None:
    """An .aux.xml next to the file changes what plain rasterio reports; open_source sees
    the TIFF alone, as virtual-tiff does."""
    path = make_flavour(tmp_path / "a.tif", "uint16_deflate_pred2")
    Path(f"{path}.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><Offset>5</Offset><Scale>3</Scale>'
        "</PAMRasterBand></PAMDataset>")
    with rasterio.open(path) as src:
        assert src.scales == (3.0,)
    assert source_scale_offset(str(path)) is None


def test_open_source_from_threads(tmp_path: Path) -> None:
    paths = [make_flavour(tmp_path / f"{n}.tif", n)
             for n in ("uint16_deflate_pred2", "jpeg_ycbcr", "striped_partial", "sparse")]

    def same(path: Path) -> bool:
        expected, _ = read_with_rasterio(path)
        got = read_source_pixels(str(path)).array
        return bool(np.array_equal(got.reshape(expected.shape), expected))

    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(same, paths * 3))


# --------------------------------------------------------------------------- CRS


@pytest.mark.parametrize("flavor", ["STANDARD", "ESRI_PE"])
def test_user_defined_crs(tmp_path: Path, flavor: str) -> None:
    path = make_wkt_crs_raster(tmp_path / "aea.tif", keys_flavor=flavor)  # type: ignore[arg-type]
    # (a) virtual-tiff parses it and shows the raw GeoKeys only: no EPSG code anywhere
    attrs = _virtual(path)["0"].attrs
    assert attrs["projected_type"] == 32767 and attrs["geographic_type"] == 32767
    assert attrs["proj_coord_trans"] == 11  # CT_AlbersEqualArea
    assert (attrs["proj_std_parallel1"], attrs["proj_std_parallel2"]) == (29.5, 45.5)
    assert (attrs["proj_nat_origin_lat"], attrs["proj_nat_origin_long"]) == (23.0, -96.0)
    if flavor == "ESRI_PE":
        assert attrs["proj_citation"].startswith("ESRI PE String = PROJCS[")
    # (b) source_crs is what rasterio reports
    crs = source_crs(to_url(path))
    with rasterio.open(path) as src:
        from_rio = pyproj.CRS.from_wkt(src.crs.to_wkt())
        rio_default_epsg = src.crs.to_epsg()
    assert crs == from_rio
    assert crs.equals(pyproj.CRS(src.crs.to_wkt()))
    # (c) no exact EPSG code. With GeoKeys, pyproj's (and rasterio's) default 70 % match
    # claims EPSG:5070 (NAD83) for this unnamed GRS80 datum; the ESRI datum name matches
    # nothing even at 70 %.
    assert crs.to_epsg(min_confidence=100) is None
    assert crs.to_epsg() == rio_default_epsg == (5070 if flavor == "STANDARD" else None)
    assert not crs.equals(pyproj.CRS.from_epsg(5070))
    # and it is the intended grid
    assert crs.equals(pyproj.CRS.from_wkt(pyproj.CRS("+proj=aea +lat_0=23 +lon_0=-96 "
                      "+lat_1=29.5 +lat_2=45.5 +x_0=0 +y_0=0 +ellps=GRS80 +units=m").to_wkt()))


def test_epsg_coded_crs_is_returned_as_epsg(tmp_path: Path) -> None:
    path = make_flavour(tmp_path / "u.tif", "uint16_deflate_pred2")
    crs = source_crs(str(path))
    assert crs.to_epsg(min_confidence=100) == 32633
    assert crs == pyproj.CRS.from_epsg(32633)


def test_no_crs_is_refused(tmp_path: Path) -> None:
    from rasterio.errors import NotGeoreferencedWarning

    path = make_flavour(tmp_path / "n.tif", "no_georef")
    with pytest.raises(InputDataError, match="no CRS"), pytest.warns(NotGeoreferencedWarning):
        source_crs(str(path))
    with pytest.warns(NotGeoreferencedWarning):
        assert read_source_pixels(str(path)).crs is None


# --------------------------------------------------------------------------- scale/offset


def test_scale_offset_single_band(tmp_path: Path) -> None:
    path = make_scale_offset_raster(tmp_path / "s.tif", scales=(2.75e-5,), offsets=(-0.2,))
    attrs = _virtual(path)["0"].attrs
    assert attrs["SCALE"] == "2.7500000000000001e-05" and attrs["OFFSET"] == "-0.20000000000000001"
    with rasterio.open(path) as src:
        expected = list(zip(src.scales, src.offsets, strict=True))
    assert expected == [(2.75e-5, -0.2)]
    assert gdal_scale_offset(attrs, 1) == expected
    assert source_scale_offset(str(path)) == expected


def test_scale_offset_multi_band_needs_rasterio(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    scales, offsets = (1e-4, 2e-4, 1.0), (0.1, 0.2, 0.0)
    path = make_scale_offset_raster(tmp_path / "m.tif", scales=scales, offsets=offsets)
    attrs = _virtual(path)["0"].attrs
    assert attrs["SCALE"] == "0.00020000000000000001"  # the last band that has an item
    with pytest.raises(ScaleOffsetUnknownError):
        gdal_scale_offset(attrs, 3)
    with rasterio.open(path) as src:
        expected = list(zip(src.scales, src.offsets, strict=True))
    assert expected == list(zip(scales, offsets, strict=True))
    assert source_scale_offset(str(path)) == expected
    with tifffile.TiffFile(path) as tif:  # the raw tag keeps the band numbers
        xml = tif.pages[0].tags[42112].value
    assert gdal_metadata_scale_offset(xml, 3) == expected


def test_scale_offset_unset_is_none(tmp_path: Path) -> None:
    path = make_scale_offset_raster(tmp_path / "u.tif", scales=(1.0, 1.0), offsets=(0.0, 0.0))
    attrs = _virtual(path)["0"].attrs
    assert "SCALE" not in attrs and "OFFSET" not in attrs
    with rasterio.open(path) as src:
        assert (src.scales, src.offsets) == ((1.0, 1.0), (0.0, 0.0))
    assert gdal_scale_offset(attrs, 2) is None
    assert source_scale_offset(str(path)) is None


# --------------------------------------------------------------------------- copies


def _jpeg_ortho(path: Path) -> Path:
    """An RGB JPEG (YCbCr) orthophoto larger than one 512 chunk in both directions."""
    return make_cog(path, shape_yx=(600, 1100), count=3, dtype="uint8", interleave="pixel",
                    compress="JPEG", photometric="YCBCR", nodata=None)


COPY_CASES = {
    "jpeg_ycbcr": lambda p: make_flavour(p, "jpeg_ycbcr"),
    "jpeg_rgb": lambda p: make_flavour(p, "jpeg_rgb"),
    "jpeg_ortho_600x1100": _jpeg_ortho,
    "striped_partial": lambda p: make_flavour(p, "striped_partial"),
    "striped_partial_78x100_float": make_striped_partial,
    "bigendian_pred2": lambda p: make_flavour(p, "bigendian_pred2"),
    "sparse": lambda p: make_flavour(p, "sparse"),
}


@pytest.mark.parametrize("case", sorted(COPY_CASES))
def test_copy_unsupported_into_icechunk(tmp_path: Path, case: str) -> None:
    import xarray as xr
    import zarr

    from pixelquery_batch.catalog.store import container_prefix, open_repository

    src_path = COPY_CASES[case](tmp_path / f"{case}.tif")
    expected, meta = read_with_rasterio(src_path)  # GDAL's own decode, no obstore opener
    copied = read_source_pixels(to_url(src_path))
    assert isinstance(copied, CopiedRaster)
    count = expected.shape[0]
    assert copied.array.shape == (expected.shape[1:] if count == 1 else expected.shape)
    assert copied.dtype == meta["dtype"] and copied.nodata == meta["nodata"]
    assert copied.transform == meta["transform"] and copied.crs == pyproj.CRS.from_epsg(32633)
    assert copied.nbytes == expected.nbytes

    da = copied_data_array(copied)
    h, w = copied.shape_yx
    chunks_yx = (min(512, h), min(512, w))
    # a virtual neighbour on the same grid, in the same dataset
    neighbour = make_cog(tmp_path / "neighbour.tif", shape_yx=(h, w), nodata=0)
    virt = _virtual(neighbour)["0"]
    ds = xr.Dataset({"virt": virt, "copy": da})
    group = "scenes/x"
    repo = open_repository(tmp_path / "repo", create=True,
                           extra_containers=(container_prefix(to_url(neighbour)),))
    session = repo.writable_session("main")
    ds.vz.to_icechunk(session.store, group=group, mode="w")
    session.commit("copy")
    ro = repo.readonly_session("main")

    # native array: chunking, codecs, fill value; only the neighbour is referenced
    meta_json = zarr.open_array(ro.store, path=f"{group}/copy", mode="r").metadata.to_dict()
    assert tuple(meta_json["chunk_grid"]["configuration"]["chunk_shape"]) == (
        chunks_yx if count == 1 else (1, *chunks_yx))
    assert [c["name"] for c in meta_json["codecs"]] == ["bytes", "zstd"]
    assert tuple(meta_json["dimension_names"]) == (("y", "x") if count == 1 else ("band", "y", "x"))
    assert set(ro.all_virtual_chunk_locations()) == {to_url(neighbour)}

    # the fast chunk reader (its fast path) and zarr both return GDAL's pixels
    reader = IcechunkChunkReader(ro)
    windows = [(0, h, 0, w), (37, min(h, 211), 11, min(w, 600))]
    for window in windows:
        bands = [BandInfo(name=f"b{i}", role=None, array="copy", index=None if count == 1 else i,
                          dtype=copied.dtype, nodata=copied.nodata, scale=1.0, offset=0.0,
                          chunks_yx=chunks_yx, source=to_url(src_path)) for i in range(count)]
        got = reader.read([ChunkRequest(group, b, window,
                                        frozenset(chunks_for_window(window, chunks_yx)))
                           for b in bands])
        r0, r1, c0, c1 = window
        for i, arr in enumerate(got):
            assert arr.dtype == expected.dtype
            np.testing.assert_array_equal(arr, expected[i, r0:r1, c0:c1])
    assert reader._plans[f"{group}/copy"].fast
    stored = zarr.open_array(ro.store, path=f"{group}/copy", mode="r")[:]
    np.testing.assert_array_equal(stored.reshape(expected.shape), expected)
    # the virtual neighbour is untouched
    np.testing.assert_array_equal(
        zarr.open_array(ro.store, path=f"{group}/virt", mode="r")[:], read_with_rasterio(neighbour)[0][0])
    opened = xr.open_zarr(ro.store, group=group, consolidated=False, zarr_format=3,
                          mask_and_scale=False, chunks=None)
    assert opened["copy"].dtype == expected.dtype


def test_copied_data_array_encoding() -> None:
    raster = CopiedRaster(array=np.zeros((3, 1100, 600), "uint16"), transform=(1, 0, 0, 0, -1, 0),
                          crs=None, nodata=0.0, dtype="uint16", source="file:///x.tif")
    da = copied_data_array(raster, chunks_yx=(512, 256))
    assert da.dims == ("band", "y", "x")
    assert da.encoding["chunks"] == (1, 512, 256)
    assert da.encoding["fill_value"] == 0 and da.attrs["_FillValue"] == 0
    small = CopiedRaster(array=np.zeros((78, 100), "float32"), transform=(1, 0, 0, 0, -1, 0),
                         crs=None, nodata=float("nan"), dtype="float32", source="file:///y.tif")
    da = copied_data_array(small)
    assert da.dims == ("y", "x") and da.encoding["chunks"] == (78, 100)
    assert np.isnan(da.encoding["fill_value"])
    out_of_range = CopiedRaster(array=np.zeros((4, 4), "uint8"), transform=(1, 0, 0, 0, -1, 0),
                                crs=None, nodata=-9999.0, dtype="uint8", source="file:///z.tif")
    assert "fill_value" not in copied_data_array(out_of_range).encoding


# --------------------------------------------------------------------------- S3 (moto)



class _AccessLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("boto3")
    from pixelquery_batch.testing.s3 import moto_s3 as start_moto

    access = _AccessLog()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(access)
    old_level = werkzeug.level
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    with start_moto(("cogs",)) as server:
        d = tmp_path_factory.mktemp("s3src")
        files = {"jpeg.tif": make_flavour(d / "jpeg.tif", "jpeg_ycbcr"),
                 "aea.tif": make_wkt_crs_raster(d / "aea.tif")}
        for name, path in files.items():
            server.client.upload_file(str(path), "cogs", f"dir/{name}")
        profile = StorageProfile(s3=S3Options(endpoint_url=server.endpoint, allow_http=True,
                                              access_key_id=server.key,
                                              secret_access_key=server.secret))
        yield profile, files, access
    werkzeug.removeHandler(access)
    werkzeug.setLevel(old_level)
    werkzeug.propagate = True


def test_open_source_s3(moto_s3, monkeypatch: pytest.MonkeyPatch) -> None:
    profile, files, access = moto_s3
    for var in [v for v in os.environ if v.startswith(("AWS_", "PIXELQUERY_S3_"))]:
        monkeypatch.delenv(var)
    env_before = dict(os.environ)
    expected, _ = read_with_rasterio(files["jpeg.tif"])
    n0 = len(access.lines)
    copied = read_source_pixels("s3://cogs/dir/jpeg.tif", profile)
    np.testing.assert_array_equal(copied.array, expected)
    lines = access.lines[n0:]
    gets = [ln for ln in lines if "GET /cogs/dir/jpeg.tif" in ln]
    heads = [ln for ln in lines if "HEAD /cogs/dir/jpeg.tif" in ln]
    # one HEAD, then ranged GETs only: the 256 KiB read-ahead serves GDAL's many small
    # header reads (and here the whole file) from one GET
    assert len(heads) == 1 and len(lines) == len(heads) + len(gets), lines
    assert len(gets) >= 1 and all(" 206 " in ln for ln in gets), lines
    assert len(gets) <= 1 + files["jpeg.tif"].stat().st_size // (256 * 1024), lines
    assert not any("aux" in ln or "msk" in ln or "list-type" in ln for ln in lines), lines
    with rasterio.open(files["aea.tif"]) as src:
        assert source_crs("s3://cogs/dir/aea.tif", profile) == pyproj.CRS.from_wkt(src.crs.to_wkt())
    # credentials never reach the process environment
    assert dict(os.environ) == env_before
    secret = profile.s3.secret_access_key.get_secret_value()
    assert not any(secret in v for v in os.environ.values())
    with pytest.raises(InputDataError, match="source not found"), \
            open_source("s3://cogs/dir/missing.tif", profile):
        pass


@pytest.mark.parametrize("case", ["jpeg_ortho_600x1100", "striped_partial_78x100_float"])
def test_new_copy_cases_are_refused_by_virtual_tiff(tmp_path: Path, case: str) -> None:
    path = COPY_CASES[case](tmp_path / f"{case}.tif")
    with pytest.raises((NotImplementedError, ValueError), match=r"YCbCr|strip|evenly divisible"):
        _virtual(path)


def test_storage_failure_during_read_is_a_storage_error(tmp_path: Path) -> None:
    from pixelquery_batch.errors import StorageError

    path = make_flavour(tmp_path / "gone.tif", "uint16_deflate_pred2")

    def read_after_delete() -> None:
        with open_source(str(path), read_ahead=1024) as src:  # header read, no tiles yet
            path.unlink()
            src.read(1)

    with pytest.raises(StorageError, match=r"reading .*gone\.tif failed"):
        read_after_delete()
