"""The output layer: one API over local directories and ``s3://`` prefixes (obstore).

Every output byte, whether written by the client or by a worker, goes through a
:class:`Location`: ``put``/``get``/``list``/``delete`` on keys relative to the location's
root, with retries and exponential backoff (full jitter) on transient errors (timeouts,
connection resets, HTTP 5xx, throttling) and an immediate, named error on permanent ones
(403, 404, bad credentials). Retries are counted per process (:func:`io_counters`), so a run
can report the retries of the client and of every worker.

Locations are picklable and never show credentials: the storage profile they carry is
resolved on the client (keys from the profile or the client's standard places) and travels
with the task payload, so a worker needs no credentials of its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import os
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import obstore
from obstore.store import LocalStore, S3Store

from .config import StorageProfile
from .errors import OutputError, StorageError

__all__ = [
    "IoCounters",
    "Location",
    "RetryPolicy",
    "io_counters",
    "is_transient",
    "profile_key",
    "s3_store_options",
    "with_retries",
]



# --------------------------------------------------------------------------- retries


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient storage errors are retried: ``attempts`` tries in all, sleeping a random
    time in ``[0, min(max_backoff_s, base_s * 2**n)]`` before try ``n + 1`` (full jitter)."""

    attempts: int = 6
    base_s: float = 0.1
    max_backoff_s: float = 5.0

    def backoff(self, n: int) -> float:
        return random.uniform(0.0, min(self.max_backoff_s, self.base_s * 2**n))


DEFAULT_RETRY = RetryPolicy(
    attempts=int(os.environ.get("PIXELQUERY_STORAGE_ATTEMPTS", "6")),
)

_TRANSIENT = re.compile(
    r"timed out|timeout|connection (reset|closed|refused|aborted)|broken pipe|error sending "
    r"request|incomplete message|unexpected eof|slow ?down|throttl|too many requests|server "
    r"error|service unavailable|internal ?error|bad gateway|gateway|\b5\d\d\b|hyper::error|"
    r"dispatch task is gone|body error")
_PERMANENT = re.compile(
    r"\b(400|401|403|404|405|409|412)\b|forbidden|access ?denied|not ?found|nosuchkey|"
    r"nosuchbucket|invalidaccesskeyid|signaturedoesnotmatch")
_URL = re.compile(r"\w+://\S+")
_PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    FileNotFoundError, PermissionError,
    obstore.exceptions.NotFoundError, obstore.exceptions.PermissionDeniedError,
    obstore.exceptions.UnauthenticatedError, obstore.exceptions.InvalidPathError,
    obstore.exceptions.UnknownConfigurationKeyError, obstore.exceptions.NotSupportedError,
    obstore.exceptions.AlreadyExistsError, obstore.exceptions.PreconditionError,
)


_DENIED = (obstore.exceptions.PermissionDeniedError, obstore.exceptions.UnauthenticatedError)


def _first_line(exc: BaseException) -> str:
    """The head of a storage error (obstore appends request dumps after it)."""
    text = str(exc).split("Debug source:")[0].strip()
    code = re.search(r"<Code>([^<]+)</Code>", text)
    head = text.splitlines()[0] if text else type(exc).__name__
    return f"{code.group(1)}: {head[:200]}" if code else head[:240]


def is_transient(exc: BaseException) -> bool:
    """Whether retrying ``exc`` can help (timeouts, resets, 5xx, throttling).

    >>> is_transient(TimeoutError())
    True
    >>> is_transient(FileNotFoundError("x"))
    False
    """
    if isinstance(exc, _PERMANENT_TYPES):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    text = _URL.sub("", str(exc)).lower()  # URLs hold ports and keys that look like codes
    if _PERMANENT.search(text):
        return False
    return bool(_TRANSIENT.search(text))


@dataclass
class IoCounters:
    """Storage operations of this process since it started (thread-safe)."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, op: str, *, retry: bool = False, failed: bool = False) -> None:
        with self._lock:
            self.requests += 1
            self.by_op[op] = self.by_op.get(op, 0) + 1
            self.retries += retry
            self.failures += failed

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"pid": os.getpid(), "requests": self.requests, "retries": self.retries,
                    "failures": self.failures, "by_op": dict(self.by_op)}


_COUNTERS = IoCounters()


def io_counters() -> dict[str, Any]:
    """This process's storage counters (requests, retries, permanent failures, per op)."""
    return _COUNTERS.snapshot()


def with_retries[T](op: str, what: str, fn: Callable[[], T], *,
                 policy: RetryPolicy = DEFAULT_RETRY) -> T:
    """Run ``fn`` and retry it on transient errors; ``what`` names the object in errors."""
    for attempt in range(policy.attempts):
        try:
            result = fn()
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            if is_transient(exc) and attempt + 1 < policy.attempts:
                _COUNTERS.count(op, retry=True)
                time.sleep(policy.backoff(attempt))
                continue
            _COUNTERS.count(op, failed=True)
            if isinstance(exc, _DENIED):
                raise StorageError(f"{op} {what}: access denied ({_first_line(exc)})",
                                   hint="check the storage profile's endpoint and the "
                                   "credentials (key, secret, permissions) for this location",
                                   path=what) from None
            if is_transient(exc):
                raise StorageError(f"{op} {what} failed after {policy.attempts} tries: {exc}",
                                   hint="the storage service kept failing; try again later",
                                   path=what) from exc
            raise
        _COUNTERS.count(op)
        return result
    raise AssertionError("unreachable")  # pragma: no cover


async def get_with_retries_async(op: str, what: str, fn: Callable[[], Any], *,
                                 policy: RetryPolicy = DEFAULT_RETRY) -> Any:
    """Async :func:`with_retries` (chunk reads on zarr's event loop)."""
    import asyncio

    for attempt in range(policy.attempts):
        try:
            result = await fn()
        except Exception as exc:
            if is_transient(exc) and attempt + 1 < policy.attempts:
                _COUNTERS.count(op, retry=True)
                await asyncio.sleep(policy.backoff(attempt))
                continue
            _COUNTERS.count(op, failed=True)
            raise
        _COUNTERS.count(op)
        return result
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- stores


def profile_key(profile: StorageProfile) -> str:
    """A cache key for stores built from ``profile`` (secrets hashed, never kept in clear)."""
    keys = profile.s3.static_keys()
    digest = hashlib.sha256(repr(sorted(keys.items())).encode()).hexdigest()[:16]
    return f"{profile.model_dump_json()}#{digest}"


_STORES: dict[tuple[str, str], Any] = {}
_MADE_DIRS: set[str] = set()  # local directories known to exist (puts skip the mkdir)
_STORES_LOCK = threading.Lock()


def s3_store_options(profile: StorageProfile) -> dict[str, Any]:
    """``S3Store`` keyword arguments of a storage profile (endpoint, region, addressing,
    plain HTTP, credentials); the callers add their client and retry settings."""
    s3 = profile.s3.resolved()
    kwargs: dict[str, Any] = {
        "region": s3.region,
        "virtual_hosted_style_request": not s3.force_path_style,
        "client_options": {"allow_http": s3.allow_http},
    }
    if s3.endpoint_url:
        kwargs["endpoint"] = s3.endpoint_url
    if s3.anonymous:
        kwargs["skip_signature"] = True
    else:
        kwargs.update(s3.static_keys())
    return kwargs


def _s3_store(bucket: str, prefix: str, profile: StorageProfile) -> Any:
    kwargs = s3_store_options(profile)
    kwargs["client_options"].update(timeout="120s", connect_timeout="10s")
    # retries are ours (counted, named errors): the client's own are switched off
    kwargs["retry_config"] = {"max_retries": 0, "retry_timeout": dt.timedelta(0)}
    if prefix:
        kwargs["prefix"] = prefix
    return S3Store(bucket, **kwargs)


@dataclass(frozen=True)
class Location:
    """A directory or ``s3://`` prefix that outputs are written under.

    Keys are ``/``-separated paths relative to :attr:`url`. Create with :meth:`of`.
    """

    url: str  # file:///abs/dir or s3://bucket/prefix (no trailing slash)
    profile: StorageProfile = field(default_factory=StorageProfile)

    @classmethod
    def of(cls, location: str | os.PathLike[str], profile: StorageProfile | None = None,
           *, base: str | os.PathLike[str] | None = None) -> Location:
        """The location of a local path (relative to ``base``) or an ``s3://`` URL.

        >>> Location.of("s3://bucket/out/").url
        's3://bucket/out'
        >>> Location.of("out", base="/data").url
        'file:///data/out'
        """
        text = os.fspath(location)
        profile = profile or StorageProfile()
        if text.startswith("s3://"):
            bucket, _, key = text[5:].partition("/")
            if not bucket:
                raise OutputError(f"no bucket in {text!r}", hint="use s3://bucket/prefix",
                                  path=text)
            key = key.strip("/")
            return cls(f"s3://{bucket}" + (f"/{key}" if key else ""), profile)
        if text.startswith("file://"):
            text = text[len("file://"):]
        if "://" in text:
            raise OutputError(f"unsupported output location {text!r}",
                              hint="use a local directory or an s3://bucket/prefix URL", path=text)
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = Path(base or os.getcwd()) / path
        return cls("file://" + os.path.normpath(path), profile)

    def __repr__(self) -> str:  # the profile (credentials) is never shown
        return f"Location({self.url!r})"

    def __str__(self) -> str:
        return self.display()

    # ---- addressing

    @property
    def is_local(self) -> bool:
        return self.url.startswith("file://")

    @property
    def local_path(self) -> Path:
        """The directory of a local location (:class:`OutputError` for ``s3://``)."""
        if not self.is_local:
            raise OutputError(f"{self.url} is not a local directory", path=self.url)
        return Path(self.url[len("file://"):])

    def display(self, key: str = "") -> str:
        """A local path or ``s3://`` URL for ``key`` (for messages and manifests)."""
        base = str(self.local_path) if self.is_local else self.url
        return f"{base}/{key}" if key else base

    def child(self, *parts: str) -> Location:
        """The location of a sub-directory."""
        key = "/".join(p.strip("/") for p in parts if p)
        return Location(f"{self.url}/{key}" if key else self.url, self.profile)

    def store(self) -> Any:
        """The obstore store rooted at this location (cached per process)."""
        ck = (self.url, profile_key(self.profile))
        with _STORES_LOCK:
            store = _STORES.get(ck)
            if store is None:
                if self.is_local:
                    self.local_path.mkdir(parents=True, exist_ok=True)
                    store = LocalStore(self.local_path)
                else:
                    bucket, _, prefix = self.url[5:].partition("/")
                    store = _s3_store(bucket, prefix, self.profile)
                _STORES[ck] = store
        return store

    # ---- operations (retried, counted)

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Write one object; readers see the old object or the whole new one."""
        if self.is_local:  # a temporary file and a rename: ~3x faster than the store's put
            self._put_local(key, data)
            return
        if isinstance(data, memoryview):  # obstore would take it for an iterable of chunks
            data = data.tobytes()
        try:
            with_retries("put", self.display(key), lambda: obstore.put(self.store(), key, data))
        except StorageError:
            raise
        except Exception as exc:
            raise OutputError(f"cannot write {self.display(key)}: {exc}",
                              path=self.display(key)) from exc

    def put_stream(self, key: str, write: Callable[[Any], None]) -> None:
        """Write one object by handing ``write`` a binary file-like to write it into;
        readers see the old object or the whole new one. A local object is written
        straight into a temporary file and renamed (no copy of it in memory); an object
        in a store is gathered in memory and put in one request."""
        if self.is_local:
            self._put_local(key, write)
            return
        buf = io.BytesIO()
        write(buf)
        self.put(key, buf.getbuffer())

    def put_many(self, items: Sequence[tuple[str, bytes]], *, atomic: bool = True) -> None:
        """:meth:`put` each ``(key, data)``. ``atomic=False``, for a run's private staging
        area only: local files are written straight in place (no temporary file and
        rename; nothing reads a staging area while a unit writes it, and the parts of a
        unit killed half-way are rewritten when it is computed again)."""
        for key, data in items:
            if self.is_local:
                self._put_local(key, data, atomic=atomic)
            else:
                self.put(key, data)

    def _put_local(self, key: str, data: bytes | memoryview | Callable[[Any], None], *,
                   atomic: bool = True) -> None:
        path = os.path.join(str(self.local_path), key)
        parent = os.path.dirname(path)
        target = (os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}-"
                               f"{threading.get_ident()}.tmp") if atomic else path)
        try:
            if parent not in _MADE_DIRS:
                os.makedirs(parent, exist_ok=True)
                _MADE_DIRS.add(parent)
            try:
                fh = open(target, "wb")  # noqa: SIM115 (closed below, written once)
            except FileNotFoundError:  # the directory went away since: make it again
                os.makedirs(parent, exist_ok=True)
                fh = open(target, "wb")  # noqa: SIM115
            with fh:
                if callable(data):
                    data(fh)
                else:
                    fh.write(data)
            if atomic:
                os.replace(target, path)
        except BaseException as exc:  # no temporary file left behind, whatever failed
            if atomic:
                with contextlib.suppress(OSError):
                    os.unlink(target)
            if not isinstance(exc, OSError):  # the writer's own error, as it is
                raise
            _COUNTERS.count("put", failed=True)
            raise OutputError(f"cannot write {path}: {exc}", path=path) from exc
        _COUNTERS.count("put")

    def get(self, key: str) -> bytes:
        """Read one object (:class:`FileNotFoundError` when it does not exist)."""
        def read() -> bytes:
            return bytes(obstore.get(self.store(), key).bytes())

        try:
            return with_retries("get", self.display(key), read)
        except (FileNotFoundError, obstore.exceptions.NotFoundError) as exc:
            raise FileNotFoundError(self.display(key)) from exc

    def exists(self, key: str) -> bool:
        try:
            with_retries("head", self.display(key), lambda: obstore.head(self.store(), key))
        except (FileNotFoundError, obstore.exceptions.NotFoundError):
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (recursive), sorted."""
        if self.is_local and not (self.local_path / prefix).exists():
            return []
        pfx = prefix.strip("/") or None

        def run() -> list[str]:
            out: list[str] = []
            for batch in obstore.list(self.store(), prefix=pfx):
                out.extend(str(m["path"]) for m in batch)
            return out

        try:
            return sorted(with_retries("list", self.display(prefix), run))
        except (FileNotFoundError, obstore.exceptions.NotFoundError):
            return []

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Names of the directories (common prefixes) directly under ``prefix``."""
        if self.is_local:
            base = self.local_path / prefix
            return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        pfx = prefix.strip("/")

        def run() -> list[str]:
            res = obstore.list_with_delimiter(self.store(), prefix=pfx or None)
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in res["common_prefixes"]]

        return sorted(with_retries("list", self.display(prefix), run))

    def delete(self, keys: Iterable[str]) -> None:
        """Delete objects (missing ones are ignored)."""
        keys = list(keys)
        if not keys:
            return
        if self.is_local:
            for key in keys:
                (self.local_path / key).unlink(missing_ok=True)
            return
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            with_retries("delete", self.display(batch[0]),
                         lambda b=batch: obstore.delete(self.store(), b))

    def delete_prefix(self, prefix: str) -> None:
        """Delete everything under ``prefix``."""
        if self.is_local:
            shutil.rmtree(self.local_path / prefix, ignore_errors=True)
            return
        self.delete(self.list(prefix))

    def move_prefix(self, src: str, dst: str) -> None:
        """Put what is under ``src`` in place of what is under ``dst`` (the old ``dst`` is
        removed). Local directories are swapped by renames (atomic per directory); on S3
        the objects are copied server-side, the stale ones deleted, then ``src`` removed."""
        if self.is_local:
            _swap_dir(self.local_path / src, self.local_path / dst)
            return
        src, dst = src.strip("/"), dst.strip("/")
        new = self.list(src)
        old = set(self.list(dst))
        store = self.store()
        keep = set()
        for key in new:
            target = dst + key[len(src):]
            keep.add(target)
            with_retries("copy", self.display(target),
                         lambda k=key, t=target: obstore.copy(store, k, t))
        self.delete(sorted(old - keep))
        self.delete(new)

    def move(self, src: str, dst: str) -> None:
        """Replace object ``dst`` by ``src`` (a rename locally, copy + delete on S3)."""
        if self.is_local:
            target = self.local_path / dst
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.local_path / src, target)
            return
        with_retries("copy", self.display(dst), lambda: obstore.copy(self.store(), src, dst))
        self.delete([src])


    def place_many(self, moves: Sequence[tuple[str, str]]) -> None:
        """:meth:`place` each ``(src, dst)``; locally every target directory is made once
        (tens of thousands of pictures: one ``mkdir`` per field, not per file)."""
        if not self.is_local:
            for src, dst in moves:
                self.place(src, dst)
            return
        root = self.local_path
        for parent in {(root / dst).parent for _, dst in moves}:
            parent.mkdir(parents=True, exist_ok=True)
        for src, dst in moves:
            os.replace(root / src, root / dst)

    def place(self, src: str, dst: str) -> None:
        """Put object ``src`` at ``dst``: a rename locally, a server-side copy on S3 (the
        source is left for a prefix delete: one batched request instead of one each)."""
        if self.is_local:
            self.move(src, dst)
        else:
            with_retries("copy", self.display(dst), lambda: obstore.copy(self.store(), src, dst))


def _swap_dir(new: Path, final: Path) -> None:
    """Put directory (or file) ``new`` in place of ``final``; the old one is removed."""
    old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            os.replace(final, old)
        if new.exists():
            os.replace(new, final)
    except OSError as exc:
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise OutputError(f"cannot publish {final}: {exc}", path=str(final)) from exc
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


# --------------------------------------------------------------------------- worker output


@dataclass(frozen=True)
class OutputSink:
    """Where a task puts the files it produces.

    ``direct``: straight into the run's staging location through the output layer (the
    workers reach it: checked by a probe before any work starts). Otherwise the bytes go
    back to the client with the task's result and the client writes them: a worker never
    writes to a path it cannot prove the client sees.
    """

    stage: Location
    direct: bool = True

    def __repr__(self) -> str:
        return f"OutputSink({self.stage.url!r}, direct={self.direct})"

    def deliver(self, key: str, data: bytes) -> list[tuple[str, bytes]]:
        """Write ``data`` at ``key`` (direct) or return it for the client to write."""
        if self.direct:
            self.stage.put(key, data)
            return []
        return [(key, data)]


def probe_location(loc: Location, key: str, token: str) -> str | None:
    """Run on a worker: ``None`` if it reads ``token`` at ``key`` and can write beside it,
    else what went wrong (the worker does not see the client's location)."""
    try:
        if loc.get(key).decode() != token:
            return f"{loc.display(key)} holds other content on this worker"
        loc.put(f"{key}.w-{uuid.uuid4().hex[:8]}", b"ok")
    except FileNotFoundError:
        return f"{loc.display(key)} not found from this worker"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
