"""Source listing through one storage layer (obstore): local paths and ``s3://`` URLs alike.

A SOURCE is a directory (or prefix), a glob, a single file or a list file (``.txt``,
``.lst``, ``.list``: one path or URL per line, ``#`` comments). Every file becomes a
:class:`SourceFile` addressed by URL (``file:///abs/path`` or ``s3://bucket/key``) with
its size, modification time and ETag, so changed files can be detected.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import obstore
from obstore.store import LocalStore, S3Store

from ..config import StorageProfile
from ..errors import ConfigError, InputDataError, StorageError
from ..storage import profile_key, s3_store_options

__all__ = [
    "SourceFile",
    "is_remote",
    "list_source",
    "object_store_for",
    "split_url",
    "to_url",
]

_LIST_SUFFIXES = (".txt", ".lst", ".list")
_TIFF_SUFFIXES = (".tif", ".tiff")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One listed object."""

    url: str
    relpath: str
    size: int
    last_modified: dt.datetime | None
    etag: str | None

    @property
    def fingerprint(self) -> str:
        """What identifies this version of the object (size + ETag, else mtime)."""
        stamp = self.etag or (self.last_modified.isoformat() if self.last_modified else "")
        return f"{self.size}:{stamp}"


def is_remote(location: str) -> bool:
    """Whether a location is an object-store URL (``s3://``) rather than a local path."""
    return location.startswith("s3://")


def to_url(location: str | os.PathLike[str]) -> str:
    """Canonical URL of a local path or object-store URL.

    >>> to_url("/data/x.tif")
    'file:///data/x.tif'
    >>> to_url("s3://bucket/a/b.tif")
    's3://bucket/a/b.tif'
    """
    text = os.fspath(location)
    if is_remote(text):
        return text
    if text.startswith("file://"):
        text = unquote(urlparse(text).path)
    return "file://" + os.path.abspath(os.path.expanduser(text))


def split_url(url: str) -> tuple[str, str]:
    """``(store root URL, key)``: ``s3://bucket`` + key, or ``file:///`` + absolute path."""
    if url.startswith("s3://"):
        bucket, _, key = url[5:].partition("/")
        return f"s3://{bucket}", key
    if url.startswith("file://"):
        return "file:///", url[len("file:///") :]
    raise ConfigError(f"unsupported URL scheme in {url!r}", hint="use a local path or s3://")


_STORES: dict[tuple[str, str], Any] = {}


def object_store_for(url: str, profile: StorageProfile | None = None) -> Any:
    """An obstore store for the root of ``url`` (cached per root and profile)."""
    root, _ = split_url(url)
    profile = profile or StorageProfile()
    key = (root, profile_key(profile))  # secrets hashed in: two key pairs, two stores
    store = _STORES.get(key)
    if store is not None:
        return store
    store = LocalStore("/") if root == "file:///" else S3Store(root[5:], **s3_store_options(profile))
    _STORES[key] = store
    return store


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Glob with ``**`` (any depth), ``*`` and ``?`` within one segment."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            j = pattern.find("]", i)
            if j < 0:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                out.append(fnmatch.translate(pattern[i : j + 1])[4:-3])
                i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _list_prefix(url: str, profile: StorageProfile | None) -> list[dict[str, Any]]:
    root, key = split_url(url)
    store = object_store_for(url, profile)
    prefix = key.rstrip("/")
    try:
        if root == "file:///":
            entries = obstore.list(LocalStore("/" + prefix)).collect()
            return [{**e, "path": f"{prefix}/{e['path']}"} for e in entries]
        return obstore.list(store, prefix=prefix + "/" if prefix else None).collect()
    except FileNotFoundError as exc:
        raise InputDataError(f"source not found: {url}", path=url) from exc
    except Exception as exc:  # obstore raises its own error types
        raise StorageError(f"cannot list {url}: {exc}", path=url) from exc


def _head(url: str, profile: StorageProfile | None) -> dict[str, Any]:
    _, key = split_url(url)
    try:
        return obstore.head(object_store_for(url, profile), key)
    except FileNotFoundError as exc:
        raise InputDataError(f"source not found: {_display(url)}", path=_display(url)) from exc
    except Exception as exc:
        if "not found" in str(exc).lower():
            raise InputDataError(f"source not found: {_display(url)}", path=_display(url)) from exc
        raise StorageError(f"cannot stat {_display(url)}: {exc}", path=_display(url)) from exc


def _display(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def _to_file(entry: dict[str, Any], root_url: str, base_key: str) -> SourceFile:
    root, _ = split_url(root_url)
    key = entry["path"].lstrip("/") if root == "file:///" else entry["path"]
    url = f"file:///{key}" if root == "file:///" else f"{root}/{key}"
    rel = key[len(base_key) :].lstrip("/") if base_key and key.startswith(base_key) else key
    return SourceFile(
        url=url,
        relpath=rel,
        size=int(entry["size"]),
        last_modified=entry.get("last_modified"),
        etag=entry.get("e_tag"),
    )


def list_source(
    source: str | os.PathLike[str],
    *,
    profile: StorageProfile | None = None,
    suffixes: Iterable[str] | None = _TIFF_SUFFIXES,
) -> tuple[str, list[SourceFile]]:
    """List the files a SOURCE names.

    Parameters
    ----------
    source
        Directory/prefix, glob, single file, or list file (local or ``s3://``).
    profile
        Storage profile for object stores.
    suffixes
        For directories, keep only these file suffixes (case-insensitive); ``None`` keeps all.

    Returns
    -------
    (root_url, files)
        The URL that relative paths are relative to, and the files sorted by URL.

    Raises
    ------
    InputDataError
        Missing source, empty directory, list file naming missing files.
    """
    text = os.fspath(source)
    remote = is_remote(text)
    if not remote and not _GLOB_CHARS.search(text):
        path = Path(text).expanduser()
        if not path.exists():
            raise InputDataError(
                f"source not found: {path}",
                hint="give a directory of COGs, a glob such as 'data/*.tif', or a list file",
                path=str(path),
            )
        if path.is_file() and path.suffix.lower() in _LIST_SUFFIXES:
            return _list_file(path, profile)
        if path.is_file():
            url = to_url(path)
            head = _head(url, profile)
            parent_key = split_url(to_url(path.parent))[1]
            return to_url(path.parent), [_to_file(head, url, parent_key)]
    if _GLOB_CHARS.search(text):
        url = to_url(text) if not remote else text
        m = _GLOB_CHARS.search(url)
        assert m is not None
        base_url = url[: m.start()].rsplit("/", 1)[0]
        rx = _glob_regex(split_url(url)[1])
        entries = [e for e in _list_prefix(base_url, profile)
                   if rx.fullmatch(e["path"].lstrip("/"))]
        base_key = split_url(base_url)[1]
        files = [_to_file(e, base_url, base_key) for e in entries]
        if not files:
            raise InputDataError(f"glob {text!r} matches no file", path=text)
        return base_url, sorted(files, key=lambda f: f.url)
    base_url = to_url(text).rstrip("/")
    base_key = split_url(base_url)[1].rstrip("/")
    entries = _list_prefix(base_url, profile)
    files = [_to_file(e, base_url, base_key) for e in entries]
    files = [f for f in files if not any(part.startswith(".") for part in f.relpath.split("/"))]
    if suffixes is not None:
        keep = tuple(s.lower() for s in suffixes)
        files = [f for f in files if f.relpath.lower().endswith(keep)]
    if not files:
        what = "no files" if suffixes is None else f"no {'/'.join(suffixes)} files"
        raise InputDataError(
            f"{what} in {_display(base_url)}",
            hint="check the path, or pass a glob/--pattern that matches your files",
            path=_display(base_url),
        )
    return base_url, sorted(files, key=lambda f: f.url)


def _list_file(path: Path, profile: StorageProfile | None) -> tuple[str, list[SourceFile]]:
    urls: list[str] = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        loc = line if is_remote(line) else str((path.parent / line).expanduser())
        if not is_remote(loc) and not Path(loc).is_file():
            raise InputDataError(
                f"{path}:{lineno}: listed file not found: {line}", path=str(path), line=lineno
            )
        urls.append(to_url(loc))
    if not urls:
        raise InputDataError(f"list file {path} names no files", path=str(path))
    base_url = os.path.commonprefix(urls).rsplit("/", 1)[0]  # noqa: RUF071 (URLs, not paths)
    base_key = split_url(base_url)[1]
    files = [_to_file(_head(u, profile), u, base_key) for u in urls]
    return base_url, sorted(files, key=lambda f: f.url)
