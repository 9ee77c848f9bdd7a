"""Product profiles: band names, roles, nodata, scale/offset, cloud masks, file patterns.

Built-in profiles ship as YAML inside the package (``pixelquery_batch/products/``); user
profiles are YAML files of the same schema in ``configs/products/`` (or any directory
named by ``PIXELQUERY_CONFIG_DIR``), or a path given directly.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

__all__ = [
    "KNOWN_ROLES",
    "BandSpec",
    "CloudMaskSpec",
    "OffsetChange",
    "ProductProfile",
    "list_products",
    "load_product",
]

#: Roles band math and masks can refer to (``nir``, ``red`` ...), independent of band names.
KNOWN_ROLES = frozenset(
    {
        "coastal", "blue", "green", "red", "rededge", "rededge1", "rededge2", "rededge3",
        "nir", "nir08", "nir09", "swir1", "swir2", "classification", "qa", "pan", "alpha",
    }
)


class BandSpec(BaseModel):
    """One band of a product."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Canonical band name used in job specs (e.g. `red`).")
    aliases: tuple[str, ...] = Field(
        default=(), description="Other names the band has in file names (e.g. `B04`)."
    )
    role: str | None = Field(default=None, description="Semantic role (`red`, `nir`, ...).")
    nodata: float | None = Field(
        default=None, description="Nodata value; overrides the file's when set."
    )
    scale: float = Field(default=1.0, description="Physical value = DN * scale + offset.")
    offset: float = Field(default=0.0, description="Physical value = DN * scale + offset.")

    def matches(self, key: str) -> bool:
        """Whether a file-name key (``B04``, ``red``) names this band (case-insensitive)."""
        k = key.lower()
        return k == self.name.lower() or any(k == a.lower() for a in self.aliases)


class CloudMaskSpec(BaseModel):
    """How the product flags clouds: a classification band or QA bit flags."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    band: str = Field(description="Name of the band holding the classes or flags.")
    classes: tuple[int, ...] | None = Field(default=None, description="Class values to mask.")
    bits: tuple[int, ...] | None = Field(default=None, description="Bit positions to mask.")

    @model_validator(mode="after")
    def _one_kind(self) -> CloudMaskSpec:
        if (self.classes is None) == (self.bits is None):
            raise ValueError("cloud_mask needs exactly one of `classes` or `bits`")
        return self


class OffsetChange(BaseModel):
    """A change of DN encoding from an acquisition date on (e.g. a processing baseline)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    since: dt.date = Field(description="First acquisition date (UTC) the change applies to.")
    offset: float | None = Field(default=None, description="New offset from that date on.")
    scale: float | None = Field(default=None, description="New scale from that date on.")
    bands: tuple[str, ...] | None = Field(
        default=None,
        description="Bands it applies to (names); default: every band whose scale is not 1.",
    )
    reason: str = Field(default="", description="Why (shown with each scene's scale/offset).")

    def applies_to(self, band: BandSpec) -> bool:
        if self.bands is None:
            return band.scale != 1.0
        return any(band.matches(b) for b in self.bands)


class ProductProfile(BaseModel):
    """A product profile (see ``configs/products/`` for examples)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    layout: Literal["band_per_file", "multiband"] = Field(
        description="`band_per_file`: one COG per band, grouped by a pattern; "
        "`multiband`: one file is a whole scene."
    )
    patterns: tuple[str, ...] = Field(
        default=(), description="File-name patterns tried in order when --pattern is not given."
    )
    cloud_mask: CloudMaskSpec | None = None
    bands: tuple[BandSpec, ...] = ()
    offset_changes: tuple[OffsetChange, ...] = Field(
        default=(),
        description="Date-dependent changes of scale/offset (later entries win), e.g. "
        "Sentinel-2 processing baseline 04.00 adding BOA_ADD_OFFSET from 2022-01-25.",
    )

    def scale_offset(self, band: BandSpec, when: dt.date | dt.datetime) -> tuple[float, float, str]:
        """Scale, offset and their origin for a band of a scene acquired at ``when``.

        >>> p = load_product("sentinel2-l2a")
        >>> red = p.band_for_key("B04")
        >>> p.scale_offset(red, dt.date(2021, 6, 1))[:2], p.scale_offset(red, dt.date(2023, 6, 1))[:2]
        ((0.0001, 0.0), (0.0001, -0.1))
        """
        day = when.date() if isinstance(when, dt.datetime) else when
        scale, offset, source = band.scale, band.offset, f"profile {self.name}"
        for change in self.offset_changes:
            if day >= change.since and change.applies_to(band):
                if change.scale is not None:
                    scale = change.scale
                if change.offset is not None:
                    offset = change.offset
                source = f"profile {self.name}: {change.reason or f'since {change.since}'}"
        return scale, offset, source

    def band_for_key(self, key: str) -> BandSpec | None:
        """The band a file-name key refers to, or ``None`` when the profile does not know it."""
        for band in self.bands:
            if band.matches(key):
                return band
        return None

    def with_band_names(self, names: list[str]) -> ProductProfile:
        """A copy whose bands are ``names`` (for multiband files), keeping known specs."""
        bands = []
        for name in names:
            known = self.band_for_key(name)
            if known is not None:
                bands.append(known)
            else:
                role = name.lower() if name.lower() in KNOWN_ROLES else None
                bands.append(BandSpec(name=name, role=role))
        return self.model_copy(update={"bands": tuple(bands)})


def _config_dirs() -> list[Path]:
    env = os.environ.get("PIXELQUERY_CONFIG_DIR")
    dirs = [Path(env) / "products"] if env else []
    dirs.append(Path.cwd() / "configs" / "products")
    return dirs


def _parse_profile(text: str, origin: str) -> ProductProfile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}", path=origin) from exc
    try:
        return ProductProfile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{origin}: invalid product profile: {problems}", path=origin) from exc


def _builtin_profiles() -> dict[str, str]:
    pkg = Path(__file__).parent / "products"
    return {p.stem: p.read_text() for p in sorted(pkg.glob("*.yaml"))}


def list_products() -> list[str]:
    """Names of the built-in and user profiles that can be loaded by name."""
    names = set(_builtin_profiles())
    for d in _config_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def load_product(name_or_path: str) -> ProductProfile:
    """Load a product profile by name (user profiles shadow built-ins) or from a YAML path.

    Raises
    ------
    ConfigError
        Unknown name (the message lists the available ones) or an invalid profile file.
    """
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"product profile file not found: {path}", path=str(path))
        return _parse_profile(path.read_text(), str(path))
    for d in _config_dirs():
        candidate = d / f"{name_or_path}.yaml"
        if candidate.is_file():
            return _parse_profile(candidate.read_text(), str(candidate))
    builtins = _builtin_profiles()
    if name_or_path in builtins:
        return _parse_profile(builtins[name_or_path], f"<builtin {name_or_path}>")
    raise ConfigError(
        f"unknown product profile {name_or_path!r}",
        hint=f"expected one of {', '.join(list_products())}, or a path to a profile YAML",
        product=name_or_path,
    )
