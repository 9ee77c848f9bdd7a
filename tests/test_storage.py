"""The output layer on a local directory (the S3 side runs in tests/test_cluster_s3.py)
and the classification of storage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelquery_batch.errors import StorageError
from pixelquery_batch.storage import Location, RetryPolicy, io_counters, is_transient, with_retries


@pytest.mark.parametrize(("message", "transient"), [
    ("Generic S3 error: Error performing PUT http://127.0.0.1:40387/b/k - HTTP error: error "
     "sending request", True),  # a port holding "403" is no 403
    ("Error performing GET http://h:9000/b/a404b - Server returned non-2xx status code: 503 "
     "Service Unavailable: <Code>SlowDown</Code>", True),
    ("Server returned non-2xx status code: 500 Internal Server Error", True),
    ("operation timed out", True),
    ("Connection reset by peer (os error 104)", True),
    ("Server returned non-2xx status code: 403 Forbidden: <Code>SignatureDoesNotMatch</Code>", False),
    ("Object at location b/k not found: No such file or directory", False),
    ("The specified key does not exist. <Code>NoSuchKey</Code>", False),
    ("something else entirely", False),
])
def test_transient_or_permanent(message: str, transient: bool) -> None:
    assert is_transient(Exception(message)) is transient


def test_retries_back_off_count_and_give_up_naming_the_object() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Exception("Server returned non-2xx status code: 503 Service Unavailable")
        return "ok"

    before = io_counters()["retries"]
    fast = RetryPolicy(attempts=4, base_s=0.001, max_backoff_s=0.002)
    assert with_retries("get", "s3://b/k", flaky, policy=fast) == "ok"
    assert io_counters()["retries"] - before == 2
    with pytest.raises(StorageError, match=r"get s3://b/k failed after 2 tries"):
        with_retries("get", "s3://b/k", lambda: (_ for _ in ()).throw(TimeoutError("slow")),
                     policy=RetryPolicy(attempts=2, base_s=0.001))
    with pytest.raises(FileNotFoundError):  # permanent: raised at once, not retried
        with_retries("get", "s3://b/k", lambda: (_ for _ in ()).throw(FileNotFoundError("k")),
                     policy=fast)


def test_local_location_put_list_move_and_swap(tmp_path: Path) -> None:
    loc = Location.of(tmp_path / "out")
    assert loc.url == f"file://{tmp_path}/out" and loc.list() == []
    loc.put("stage/t/part-1.parquet", b"1")
    loc.put("stage/t/part-2.parquet", b"2")
    loc.put("t/old.parquet", b"old")
    assert loc.list("stage") == ["stage/t/part-1.parquet", "stage/t/part-2.parquet"]
    assert loc.list_dirs() == ["stage", "t"]
    loc.move_prefix("stage/t", "t")  # the old directory is replaced whole
    assert loc.list("t") == ["t/part-1.parquet", "t/part-2.parquet"]
    assert loc.get("t/part-2.parquet") == b"2" and not loc.exists("t/old.parquet")
    with pytest.raises(FileNotFoundError, match="missing"):
        loc.get("missing")
    loc.delete_prefix("t")
    assert loc.list("t") == []
    assert Location.of("s3://bucket/a/b/").url == "s3://bucket/a/b"
    assert repr(Location.of("s3://bucket/x")) == "Location('s3://bucket/x')"


def test_put_many_writes_staging_files_in_place_and_remakes_a_vanished_directory(
        tmp_path: Path) -> None:
    """Unpublished (staging) writes go straight to their name: no temporary file is left,
    a directory removed since the last write is made again; atomic puts still work."""
    import shutil

    loc = Location.of(str(tmp_path / "out"))
    loc.put_many([("stage/a/x.png", b"1"), ("stage/a/y.png", b"2")], atomic=False)
    assert loc.get("stage/a/x.png") == b"1" and loc.get("stage/a/y.png") == b"2"
    shutil.rmtree(tmp_path / "out" / "stage")
    loc.put_many([("stage/a/x.png", b"3")], atomic=False)
    assert loc.get("stage/a/x.png") == b"3"
    loc.put_many([("final/z.png", b"4")])
    assert loc.get("final/z.png") == b"4"
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]


def test_put_stream_writes_in_place_of_a_temporary_file_and_leaves_nothing_when_it_fails(
        tmp_path: Path) -> None:
    """A streamed object appears whole under its name; a writer failing half-way leaves
    the previous object as it was and no temporary file."""
    loc = Location.of(tmp_path / "out")

    def chunks(fh: object) -> None:
        for i in range(3):
            fh.write(bytes([i]) * 1000)  # type: ignore[attr-defined]

    loc.put_stream("work/part-1.arrow", chunks)
    assert loc.get("work/part-1.arrow") == b"\x00" * 1000 + b"\x01" * 1000 + b"\x02" * 1000

    def broken(fh: object) -> None:
        fh.write(b"half")  # type: ignore[attr-defined]
        raise RuntimeError("the writer gave up")

    with pytest.raises(RuntimeError, match="gave up"):
        loc.put_stream("work/part-1.arrow", broken)
    assert loc.get("work/part-1.arrow")[:1000] == b"\x00" * 1000
    assert [p.name for p in (tmp_path / "out" / "work").iterdir()] == ["part-1.arrow"]
