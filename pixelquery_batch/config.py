"""Storage profiles: where COGs, repositories and outputs live, and how to reach them.

A profile is YAML in ``configs/storage/NAME.yaml`` (or any path), validated by pydantic.
Secrets are :class:`pydantic.SecretStr`, never printed; :func:`redact` masks them in any
mapping (logs, manifests). Environment variables override profile values
(``PIXELQUERY_S3_ENDPOINT_URL``, ``PIXELQUERY_S3_REGION``, ``PIXELQUERY_S3_ACCESS_KEY_ID``,
``PIXELQUERY_S3_SECRET_ACCESS_KEY``, ``PIXELQUERY_S3_ALLOW_HTTP``); without explicit keys the
standard AWS variables are used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from .errors import ConfigError

__all__ = ["S3Options", "StorageProfile", "load_storage_profile", "redact"]

_SECRET_KEYS = re.compile(r"(secret|password|token|credential|session_key)", re.IGNORECASE)


class S3Options(BaseModel):
    """How to reach an S3-compatible object store (AWS, MinIO, moto)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = Field(default=None, description="Custom endpoint (MinIO...).")
    region: str = Field(default="us-east-1", description="Bucket region.")
    allow_http: bool = Field(default=False, description="Allow plain-HTTP endpoints.")
    force_path_style: bool = Field(default=True, description="Path-style requests.")
    anonymous: bool = Field(default=False, description="Unsigned requests (public buckets).")
    access_key_id: SecretStr | None = Field(default=None, description="Access key id.")
    secret_access_key: SecretStr | None = Field(default=None, description="Secret key.")
    session_token: SecretStr | None = Field(default=None, description="Session token.")
    from_environment: bool = Field(
        default=True,
        description="Apply the `PIXELQUERY_S3_*` and standard AWS variables of the machine "
        "resolving the profile (the client); a resolved profile sent to workers has it off, "
        "so workers use the client's settings, not their own environment.")

    def resolved(self) -> S3Options:
        """The options with ``PIXELQUERY_S3_*`` and AWS environment variables applied
        (once: the result does not read the environment again)."""
        if not self.from_environment:
            return self
        env = os.environ
        update: dict[str, Any] = {"from_environment": False}
        if v := env.get("PIXELQUERY_S3_ENDPOINT_URL"):
            update["endpoint_url"] = v
        if v := env.get("PIXELQUERY_S3_REGION"):
            update["region"] = v
        if v := env.get("PIXELQUERY_S3_ALLOW_HTTP"):
            update["allow_http"] = v.lower() in ("1", "true", "yes")
        key = env.get("PIXELQUERY_S3_ACCESS_KEY_ID")
        secret = env.get("PIXELQUERY_S3_SECRET_ACCESS_KEY")
        if key and secret:
            update["access_key_id"], update["secret_access_key"] = SecretStr(key), SecretStr(secret)
        elif self.access_key_id is None and not self.anonymous:
            key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
            if key and secret:
                update["access_key_id"] = SecretStr(key)
                update["secret_access_key"] = SecretStr(secret)
                if tok := env.get("AWS_SESSION_TOKEN"):
                    update["session_token"] = SecretStr(tok)
        if (self.endpoint_url is None and "endpoint_url" not in update
                and (v := env.get("AWS_ENDPOINT_URL"))):
            update["endpoint_url"] = v
        return self.model_copy(update=update)
    def static_keys(self) -> dict[str, str]:
        """``access_key_id``/``secret_access_key``/``session_token`` in clear (for the
        storage clients only; never log the result). Empty without explicit keys."""
        if self.access_key_id is None or self.secret_access_key is None:
            return {}
        keys = {"access_key_id": self.access_key_id.get_secret_value(),
                "secret_access_key": self.secret_access_key.get_secret_value()}
        if self.session_token is not None:
            keys["session_token"] = self.session_token.get_secret_value()
        return keys


class StorageProfile(BaseModel):
    """A named storage profile (``configs/storage/*.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "default"
    description: str = ""
    s3: S3Options = Field(default_factory=S3Options, description="S3 settings for s3:// URLs.")

    def resolved(self) -> StorageProfile:
        """The profile with this machine's environment applied once (what the client sends
        to workers with the tasks: they never consult their own environment for it)."""
        s3 = self.s3.resolved()
        return self if s3 is self.s3 else self.model_copy(update={"s3": s3})

    def __repr__(self) -> str:  # pydantic masks SecretStr; keep the repr short as well
        return f"StorageProfile(name={self.name!r})"


def load_storage_profile(name_or_path: str | None) -> StorageProfile:
    """Load a storage profile by name (``configs/storage/NAME.yaml``) or path.

    ``None`` gives the default profile (local files; S3 through the environment).
    """
    if name_or_path is None:
        return StorageProfile()
    path = Path(name_or_path)
    if not path.suffix:
        base = Path(os.environ.get("PIXELQUERY_CONFIG_DIR", Path.cwd() / "configs"))
        path = base / "storage" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"storage profile not found: {path}",
            hint="create it (see configs/storage/ for examples) or pass a path",
            path=str(path),
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return StorageProfile.model_validate({"name": path.stem, **data})
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{path}: invalid storage profile: {exc}", path=str(path)) from exc


def redact(value: Any) -> Any:
    """Copy of a nested mapping/list with secret-looking keys and ``SecretStr`` masked.

    >>> redact({"s3": {"secret_access_key": "abc", "region": "eu"}})
    {'s3': {'secret_access_key': '***', 'region': 'eu'}}
    """
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, Mapping):
        return {
            k: ("***" if v is not None and _SECRET_KEYS.search(str(k)) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value
