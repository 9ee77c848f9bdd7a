"""A real S3-protocol server on 127.0.0.1 for tests (moto's server mode). Test support only.

With ``enforce_auth`` (the default) the server checks request signatures like AWS does:
an IAM user with full access is created and its generated key pair is the only one that
works, so a request signed with anything else (or not signed) gets 403.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["MotoS3", "moto_s3"]


@dataclass(frozen=True)
class MotoS3:
    """A running moto server: its endpoint, the valid key pair and a boto3 client."""

    endpoint: str
    key: str
    secret: str
    client: Any

    def __repr__(self) -> str:
        return f"MotoS3({self.endpoint!r})"


@contextmanager
def moto_s3(buckets: Sequence[str], *, region: str = "us-east-1",
            enforce_auth: bool = True) -> Iterator[MotoS3]:
    """Start moto's S3 server on a free loopback port with ``buckets``; stop it on exit."""
    import boto3
    import moto.settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    saved = (moto.settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count)
    try:
        host, port = srv.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        key, secret = "setup", "setup"
        if enforce_auth:  # three unauthenticated calls create the only valid key pair
            moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 3
            ActionAuthenticatorMixin.request_count = 0
            iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id=key,
                               aws_secret_access_key=secret, region_name=region)
            user = f"pqb-tests-{port}"  # moto's backends are per process, servers come and go
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(
                {"Version": "2012-10-17",
                 "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
            made = iam.create_access_key(UserName=user)["AccessKey"]
            key, secret = made["AccessKeyId"], made["SecretAccessKey"]
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                              aws_secret_access_key=secret, region_name=region)
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield MotoS3(endpoint, key, secret, client)
    finally:
        srv.stop()
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = saved
