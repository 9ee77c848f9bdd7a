"""A real S3-protocol server on 127.0.0.1 for tests (moto's server mode). Test support only."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["MotoS3", "moto_s3"]


@dataclass(frozen=True)
class MotoS3:
    """A running moto server: its endpoint and a boto3 client for it."""

    endpoint: str
    client: Any


@contextmanager
def moto_s3(buckets: Sequence[str], *, key: str, secret: str,
            region: str = "us-east-1") -> Iterator[MotoS3]:
    """Start moto's S3 server on a free loopback port with ``buckets``; stop it on exit."""
    import boto3
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                              aws_secret_access_key=secret, region_name=region)
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield MotoS3(endpoint, client)
    finally:
        srv.stop()
