"""File-name patterns that group files into scenes (pure: no I/O).

A pattern is literal text with named fields in braces, e.g. ``S2_{tile}_{date}_{band}.tif``:

- ``{band}``: the band key (``B04``, ``red``), matched against the product profile;
- ``{scene}``: the scene id (otherwise the id is the matched path with the band removed);
- ``{date}`` / ``{datetime}``: the acquisition time (``2025-03-15``, ``20250315``,
  ``2025-03-15T10:30:00Z``); a strptime format may follow a colon: ``{date:%Y%m%d}``;
- any other name (``{tile}``): free text kept as a scene property;
- ``*``: any text within one path segment, not captured.

A pattern containing ``/`` is matched against the path relative to the source root;
otherwise against the file name.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from ..errors import InputDataError, SpecError

__all__ = ["FilenamePattern", "PatternMatch", "find_date", "parse_datetime"]

_FIELD = re.compile(r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<fmt>[^{}]+))?\}")
_STRPTIME_RE = {
    "%Y": r"\d{4}", "%m": r"\d{2}", "%d": r"\d{2}", "%H": r"\d{2}", "%M": r"\d{2}",
    "%S": r"\d{2}", "%j": r"\d{3}", "%y": r"\d{2}", "%f": r"\d{1,6}", "%z": r"[+-]\d{4}|Z",
    "%%": "%",
}
_DATE_RE = r"\d{4}-?\d{2}-?\d{2}"
_DATETIME_RE = r"\d{4}-?\d{2}-?\d{2}(?:[T_ ]?\d{2}:?\d{2}(?::?\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?"
_SCENE_ID_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def _fmt_to_regex(fmt: str) -> str:
    out, i = [], 0
    while i < len(fmt):
        tok = fmt[i : i + 2]
        if tok in _STRPTIME_RE:
            out.append(_STRPTIME_RE[tok])
            i += 2
        else:
            out.append(re.escape(fmt[i]))
            i += 1
    return "".join(out)


def parse_datetime(text: str, fmt: str | None = None) -> dt.datetime:
    """Parse a date or datetime string into an aware UTC datetime.

    >>> parse_datetime("20250315").isoformat()
    '2025-03-15T00:00:00+00:00'
    >>> parse_datetime("2025-03-15T10:30:00Z").isoformat()
    '2025-03-15T10:30:00+00:00'
    >>> parse_datetime("15.03.2025", "%d.%m.%Y").date().isoformat()
    '2025-03-15'
    """
    if fmt:
        value = dt.datetime.strptime(text, fmt)
    else:
        t = text.strip().replace("_", "T").replace(" ", "T")
        if t.endswith("Z"):
            t = t[:-1] + "+00:00"
        if re.fullmatch(r"\d{8}(T\d{6}(\.\d+)?)?([+-]\d{2}:?\d{2})?", t):
            t = f"{t[:4]}-{t[4:6]}-{t[6:]}"
            if "T" in t:
                d, rest = t.split("T", 1)
                t = f"{d}T{rest[:2]}:{rest[2:4]}:{rest[4:]}"
        value = dt.datetime.fromisoformat(t)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


_LOOSE_DATE = re.compile(
    r"(?<!\d)(\d{4})-?(0[1-9]|1[0-2])-?(0[1-9]|[12]\d|3[01])(?:[T_]?(\d{2})(\d{2})(\d{2}))?(?!\d)"
)


def find_date(text: str) -> dt.datetime | None:
    """First plausible ``YYYY[-]MM[-]DD[THHMMSS]`` in a file name, or ``None``.

    >>> find_date("LC09_L2SP_190026_20250315_02_T1.tif").date().isoformat()
    '2025-03-15'
    >>> find_date("ortho_block7.tif") is None
    True
    """
    for m in _LOOSE_DATE.finditer(text):
        y, mo, d, hh, mm, ss = m.groups()
        try:
            return dt.datetime(
                int(y), int(mo), int(d), int(hh or 0), int(mm or 0), int(ss or 0), tzinfo=dt.UTC
            )
        except ValueError:
            continue
    return None


@dataclass(frozen=True, slots=True)
class PatternMatch:
    """What a pattern extracted from one path."""

    scene_id: str
    band_key: str | None
    datetime: dt.datetime | None
    properties: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class FilenamePattern:
    """A compiled file-name pattern (see the module docstring for the syntax)."""

    text: str
    regex: re.Pattern[str]
    formats: tuple[tuple[str, str], ...]

    @classmethod
    def compile(cls, text: str) -> FilenamePattern:
        """Compile ``text``; raises :class:`SpecError` naming the problem."""
        parts: list[str] = []
        formats: dict[str, str] = {}
        pos = 0
        seen: set[str] = set()
        for m in _FIELD.finditer(text):
            literal = text[pos : m.start()]
            if "{" in literal or "}" in literal:
                raise SpecError(f"pattern {text!r}: unbalanced braces near {literal!r}")
            parts.append(re.escape(literal).replace(r"\*", r"[^/]*"))
            name, fmt = m.group("name"), m.group("fmt")
            if name in seen:
                raise SpecError(f"pattern {text!r}: field {{{name}}} appears twice")
            seen.add(name)
            if fmt:
                if name not in ("date", "datetime"):
                    raise SpecError(
                        f"pattern {text!r}: only {{date}} and {{datetime}} take a format, "
                        f"not {{{name}:{fmt}}}"
                    )
                formats[name] = fmt
                parts.append(f"(?P<{name}>{_fmt_to_regex(fmt)})")
            elif name == "date":
                parts.append(f"(?P<date>{_DATE_RE})")
            elif name == "datetime":
                parts.append(f"(?P<datetime>{_DATETIME_RE})")
            else:
                parts.append(f"(?P<{name}>[^/]+?)")
            pos = m.end()
        tail = text[pos:]
        if "{" in tail or "}" in tail:
            raise SpecError(f"pattern {text!r}: unbalanced braces near {tail!r}")
        parts.append(re.escape(tail).replace(r"\*", r"[^/]*"))
        if "date" in seen and "datetime" in seen:
            raise SpecError(f"pattern {text!r}: give either {{date}} or {{datetime}}, not both")
        return cls(text, re.compile("".join(parts)), tuple(formats.items()))

    @property
    def uses_dirs(self) -> bool:
        """Whether the pattern is matched against the relative path rather than the name."""
        return "/" in self.text

    @property
    def has_band(self) -> bool:
        return "band" in self.regex.groupindex

    def match(self, relpath: str) -> PatternMatch | None:
        """Match a path relative to the source root; ``None`` when it does not fit.

        Raises
        ------
        InputDataError
            When the path matches but its date field does not parse.
        """
        subject = relpath if self.uses_dirs else relpath.rsplit("/", 1)[-1]
        m = self.regex.fullmatch(subject)
        if m is None:
            return None
        groups = m.groupdict()
        formats = dict(self.formats)
        when: dt.datetime | None = None
        for key in ("date", "datetime"):
            if groups.get(key):
                try:
                    when = parse_datetime(groups[key], formats.get(key))
                except ValueError as exc:
                    raise InputDataError(
                        f"{relpath}: {{{key}}} value {groups[key]!r} is not a valid date "
                        f"({exc})",
                        path=relpath,
                    ) from exc
        band = groups.get("band")
        if groups.get("scene"):
            scene = groups["scene"]
        elif band is not None:
            s, e = m.span("band")
            before, after = subject[:s], subject[e:]
            before = before[:-1] if before[-1:] in "_-./" else before
            after = after.lstrip("_-") if not before else after
            scene = before + after
        else:
            scene = subject
        scene = scene.rsplit(".", 1)[0] if "." in scene.rsplit("/", 1)[-1] else scene
        props = tuple(
            (k, v)
            for k, v in sorted(groups.items())
            if k not in ("band", "scene", "date", "datetime") and v is not None
        )
        return PatternMatch(sanitize_scene_id(scene), band, when, props)


def sanitize_scene_id(text: str) -> str:
    """A scene id that is safe as an Icechunk group name.

    >>> sanitize_scene_id("tiles/33UXP 2025-03-15")
    'tiles_33UXP_2025-03-15'
    """
    out = _SCENE_ID_BAD.sub("_", text.replace("/", "_")).strip("._")
    if not out:
        raise InputDataError(f"cannot derive a scene id from {text!r}")
    return out
