"""Icechunk repositories: open/create, virtual-chunk containers, snapshot resolution.

:class:`RepoRef` is a small picklable recipe (location + storage profile + snapshot id)
that workers turn into a read-only session, cached once per process. The scene catalog
lives inside the repository (group ``catalog``), so searching at a snapshot returns
exactly the scenes of that snapshot.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import icechunk as ic
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import StorageProfile
from ..errors import RepositoryError, StorageError
from .sources import is_remote, split_url, to_url

if TYPE_CHECKING:
    from .models import Catalog

__all__ = [
    "CATALOG_GROUP",
    "RepoRef",
    "commit_lock",
    "container_prefix",
    "open_repository",
    "read_catalog_tables",
    "write_catalog_tables",
]

logger = logging.getLogger(__name__)

CATALOG_GROUP = "catalog"
CATALOG_FORMAT = 1
SCENES_GROUP = "scenes"

if "ICECHUNK_LOG" not in os.environ:  # Rust WARN lines (e.g. local-FS concurrency) are noise
    ic.set_logs_filter("error")


def container_prefix(url: str) -> str:
    """Virtual-chunk container prefix covering ``url``.

    One container per bucket for object stores, one per top-level directory for local
    files (Icechunk needs a path in ``file://`` prefixes).

    >>> container_prefix("file:///data/cogs/a.tif")
    'file:///data/'
    >>> container_prefix("s3://bucket/x/y.tif")
    's3://bucket/'
    """
    root, key = split_url(url)
    if root == "file:///":
        top = key.split("/", 1)[0]
        return f"file:///{top}/"
    return root + "/"


def _container(prefix: str, profile: StorageProfile) -> ic.VirtualChunkContainer:
    if prefix.startswith("file://"):
        return ic.VirtualChunkContainer(prefix, ic.local_filesystem_store(prefix[len("file://") :]))
    s3 = profile.s3.resolved()
    return ic.VirtualChunkContainer(
        prefix,
        ic.s3_store(
            region=s3.region,
            endpoint_url=s3.endpoint_url,
            allow_http=s3.allow_http,
            anonymous=s3.anonymous,
            s3_compatible=s3.endpoint_url is not None,
            force_path_style=s3.force_path_style,
        ),
    )


def _credentials(prefix: str, profile: StorageProfile) -> Any:
    if prefix.startswith("file://"):
        return ic.credentials.LocalFileSystemAccess
    s3 = profile.s3.resolved()
    if s3.anonymous:
        return ic.s3_anonymous_credentials()
    keys = s3.static_keys()
    return ic.s3_credentials(**keys) if keys else ic.s3_from_env_credentials()


def _storage(location: str, profile: StorageProfile) -> ic.Storage:
    if is_remote(location):
        root, key = split_url(location)
        s3 = profile.s3.resolved()
        kwargs: dict[str, Any] = {
            "bucket": root[5:],
            "prefix": key.rstrip("/") or None,
            "region": s3.region,
            "endpoint_url": s3.endpoint_url,
            "allow_http": s3.allow_http,
            "force_path_style": s3.force_path_style,
        }
        if s3.anonymous:
            kwargs["anonymous"] = True
        else:
            kwargs.update(s3.static_keys() or {"from_env": True})
        return ic.s3_storage(**kwargs)
    return ic.local_filesystem_storage(os.path.abspath(location))


def _authorize(config: ic.RepositoryConfig | None, profile: StorageProfile) -> dict[str, Any]:
    containers = (config.virtual_chunk_containers or {}) if config is not None else {}
    return ic.containers_credentials({prefix: _credentials(prefix, profile) for prefix in containers})


def _check_local_location(path: Path, *, create: bool) -> None:
    if path.exists() and not path.is_dir():
        raise RepositoryError(
            f"repository path {path} is a file, not a repository",
            hint="pass a directory (it is created when missing)",
            path=str(path),
        )
    if path.is_dir():
        entries = {p.name for p in path.iterdir()}
        if entries and "repo" not in entries:
            raise RepositoryError(
                f"{path} is not a pixelquery repository (not an Icechunk repository and not empty)",
                hint="point --repo at an existing repository or at a new/empty directory",
                path=str(path),
            )
        if not os.access(path, os.W_OK) and create:
            raise RepositoryError(
                f"repository {path} is not writable",
                hint="check the directory permissions or choose another --repo",
                path=str(path),
            )
    elif create:
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise RepositoryError(
                f"cannot create repository {path}: {parent} is not writable",
                path=str(path),
            )


def check_repository_location(location: str | os.PathLike[str]) -> None:
    """Fail early when a local repository location cannot hold a repository."""
    loc = os.fspath(location)
    if not is_remote(loc):
        _check_local_location(Path(loc).expanduser().resolve(), create=True)


def open_repository(
    location: str | os.PathLike[str],
    *,
    profile: StorageProfile | None = None,
    create: bool = False,
    extra_containers: tuple[str, ...] = (),
) -> ic.Repository:
    """Open (or with ``create=True`` create) a repository with its containers authorised.

    Parameters
    ----------
    location
        Local directory or ``s3://bucket/prefix``.
    profile
        Storage profile (S3 endpoint and credentials).
    create
        Create the repository when it does not exist.
    extra_containers
        Virtual-chunk container prefixes to add (and save) if missing.

    Raises
    ------
    RepositoryError
        Not a repository, missing (without ``create``), or not writable.
    """
    profile = profile or StorageProfile()
    loc = os.fspath(location)
    if not is_remote(loc):
        path = Path(loc).expanduser().resolve()
        _check_local_location(path, create=create)
        loc = str(path)
    storage = _storage(loc, profile)
    try:
        exists = ic.Repository.exists(storage)
    except ic.IcechunkError as exc:
        raise StorageError(f"cannot reach repository {loc}: {exc}", path=loc) from exc
    if not exists:
        if not create:
            raise RepositoryError(
                f"no repository at {loc}",
                hint="create one with `pqb ingest SOURCE --repo ...`",
                path=loc,
            )
        config = ic.RepositoryConfig.default()
        for prefix in extra_containers:
            config.set_virtual_chunk_container(_container(prefix, profile))
        try:
            repo = ic.Repository.create(
                storage, config=config, authorize_virtual_chunk_access=_authorize(config, profile)
            )
        except ic.IcechunkError as exc:
            if "clean prefix" not in str(exc) and "already exists" not in str(exc).lower():
                raise RepositoryError(f"cannot create repository at {loc}: {exc}", path=loc) from exc
            # Created concurrently by another process: open it instead.
        else:
            repo.set_metadata({"pixelquery_batch": {"catalog_format": CATALOG_FORMAT}})
            return repo
    try:
        config = ic.Repository.fetch_config(storage) or ic.RepositoryConfig.default()
    except ic.IcechunkError as exc:
        raise RepositoryError(f"{loc} is not a readable repository: {exc}", path=loc) from exc
    missing = [p for p in extra_containers if p not in (config.virtual_chunk_containers or {})]
    for prefix in missing:
        config.set_virtual_chunk_container(_container(prefix, profile))
    repo = ic.Repository.open(
        storage, config=config, authorize_virtual_chunk_access=_authorize(config, profile)
    )
    if missing:
        repo.save_config()
    return repo


@contextlib.contextmanager
def commit_lock(location: str | os.PathLike[str]) -> Iterator[None]:
    """Serialise committers of a local repository (Icechunk's local storage is not safe
    for concurrent commits). Object stores use conditional writes instead: no-op there."""
    loc = os.fspath(location)
    if is_remote(loc):
        yield
        return
    path = Path(loc).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.pqb-lock"
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_blob(store: Any, name: str, data: bytes) -> None:
    import numpy as np
    import zarr

    arr = np.frombuffer(data, dtype="uint8")
    z = zarr.create_array(
        store,
        name=f"{CATALOG_GROUP}/{name}",
        shape=arr.shape,
        chunks=(max(len(arr), 1),),
        dtype="uint8",
        compressors=None,
        fill_value=0,
        overwrite=True,
    )
    if len(arr):
        z[:] = arr


def write_catalog_tables(store: Any, scenes: pa.Table, files: pa.Table) -> None:
    """Write the scene and file tables (Parquet bytes) into the ``catalog`` group."""
    import zarr

    group = zarr.open_group(store, path=CATALOG_GROUP, mode="a", zarr_format=3)
    group.attrs.update({"format": CATALOG_FORMAT, "encoding": "parquet"})
    for name, table in (("scenes", scenes), ("files", files)):
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        _write_blob(store, name, buf.getvalue())


def read_catalog_tables(store: Any) -> tuple[pa.Table, pa.Table] | None:
    """The (scenes, files) tables of a session's store, or ``None`` if it has no catalog."""
    import zarr

    out = []
    for name in ("scenes", "files"):
        try:
            z = zarr.open_array(store, path=f"{CATALOG_GROUP}/{name}", mode="r", zarr_format=3)
        except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
            return None
        data = z[:].tobytes() if z.shape[0] else b""
        out.append(pq.read_table(io.BytesIO(data)) if data else None)
    if out[0] is None or out[1] is None:
        return None
    from .models import FILE_SCHEMA, SCENE_SCHEMA

    return _conform(out[0], SCENE_SCHEMA), _conform(out[1], FILE_SCHEMA)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A stored table in the current schema (columns added since it was written are null)."""
    for f in schema:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(schema.names).cast(schema)


@dataclass(frozen=True)
class RepoRef:
    """Picklable recipe for a repository at one snapshot.

    Workers call :meth:`session` and get a read-only session cached once per process
    (keyed by this recipe), so tasks never re-fetch the snapshot and manifests.
    """

    location: str
    snapshot_id: str
    profile: StorageProfile = field(default_factory=StorageProfile)

    def __repr__(self) -> str:  # never show credentials
        return f"RepoRef({self.location!r}, snapshot_id={self.snapshot_id!r})"

    @property
    def cache_key(self) -> tuple[str, str, str]:
        return (self.location, self.snapshot_id, self.profile.model_dump_json())

    def repository(self) -> ic.Repository:
        """The opened repository (cached per process)."""
        return _cached_repository(self.location, self.profile)

    def session(self) -> ic.Session:
        """Read-only session at :attr:`snapshot_id` (cached per process)."""
        key = self.cache_key
        with _LOCK:
            sess = _SESSIONS.get(key)
        if sess is None:
            sess = self.repository().readonly_session(snapshot_id=self.snapshot_id)
            with _LOCK:
                sess = _SESSIONS.setdefault(key, sess)
        return sess

    def catalog(self) -> Catalog:
        """The scene catalog at this snapshot (cached per process)."""
        from .models import Catalog

        key = self.cache_key
        with _LOCK:
            cat = _CATALOGS.get(key)
        if cat is None:
            tables = read_catalog_tables(self.session().store)
            if tables is None:
                raise RepositoryError(
                    f"{self.location} has no pixelquery catalog at snapshot {self.snapshot_id}",
                    hint="ingest COGs with `pqb ingest` first",
                    path=self.location,
                )
            cat = Catalog(tables[0], files=tables[1], snapshot_id=self.snapshot_id)
            with _LOCK:
                _CATALOGS[key] = cat
        return cat


_LOCK = threading.Lock()
_REPOS: dict[tuple[str, str], ic.Repository] = {}
_SESSIONS: dict[tuple[str, str, str], ic.Session] = {}
_CATALOGS: dict[tuple[str, str, str], Catalog] = {}


def _cached_repository(location: str, profile: StorageProfile) -> ic.Repository:
    key = (location, profile.model_dump_json())
    with _LOCK:
        repo = _REPOS.get(key)
    if repo is None:
        repo = open_repository(location, profile=profile)
        with _LOCK:
            repo = _REPOS.setdefault(key, repo)
    return repo


def clear_caches() -> None:
    """Forget cached repositories, sessions and catalogs (tests; after external commits)."""
    with _LOCK:
        _REPOS.clear()
        _SESSIONS.clear()
        _CATALOGS.clear()


def resolve_snapshot(
    location: str | os.PathLike[str],
    snapshot: str | None = None,
    *,
    profile: StorageProfile | None = None,
) -> RepoRef:
    """Resolve a branch, tag or snapshot id (default: branch ``main``) to a :class:`RepoRef`.

    Raises
    ------
    RepositoryError
        The repository or the ref does not exist.
    """
    profile = profile or StorageProfile()
    loc = os.fspath(location)
    loc = loc if is_remote(loc) else str(Path(loc).expanduser().resolve())
    repo = open_repository(loc, profile=profile)
    ref = snapshot or "main"
    try:
        if ref in repo.list_branches():
            snap = repo.lookup_branch(ref)
        elif ref in repo.list_tags():
            snap = repo.lookup_tag(ref)
        else:
            snap = repo.lookup_snapshot(ref).id
    except ic.IcechunkError as exc:
        raise RepositoryError(
            f"{loc}: no branch, tag or snapshot named {ref!r}",
            hint=f"branches: {sorted(repo.list_branches())}, tags: {sorted(repo.list_tags())}; "
            "`pqb history --repo ...` lists snapshots",
            path=loc,
            snapshot=ref,
        ) from exc
    with _LOCK:
        _REPOS.setdefault((loc, profile.model_dump_json()), repo)
    return RepoRef(loc, snap, profile)


def repo_location(location: str | os.PathLike[str]) -> str:
    """Canonical location string (absolute local path, or URL)."""
    loc = os.fspath(location)
    return loc if is_remote(loc) else str(Path(loc).expanduser().resolve())


__all__ += ["SCENES_GROUP", "check_repository_location", "clear_caches", "repo_location", "resolve_snapshot", "to_url"]
