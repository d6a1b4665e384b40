"""s3.py
=====

An :class:`~sonoshot.objects.ObjectStore` on an S3-compatible service through boto3: one bucket
per kind (``<bucket_prefix>-originals``, ``-work``, ``-reports``), so each role's key can be
granted exactly the buckets it needs. Requests time out (connect 5 s, read 60 s) and are tried
twice; every failure becomes :class:`~sonoshot.objects.ObjectStoreError` naming the bucket and
key, never the credentials.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sonoshot.config import ConfigError, ObjectsConfig
from sonoshot.objects import Kind, ObjectNotFound, ObjectStoreError, check_key

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
SINGLE_PUT_MAX = 5 * 2**30 - 1


def _error(what: str, exc: Exception) -> ObjectStoreError:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            return ObjectNotFound(f"no object {what}")
        return ObjectStoreError(f"{what}: {code or 'refused'}")
    return ObjectStoreError(f"{what}: {type(exc).__name__}")


class S3Store:
    """Objects in three buckets of an S3-compatible endpoint, reached with one role's key."""

    def __init__(self, client: Any, bucket_prefix: str, server_side_encryption: str = "",
                 endpoint: str = "") -> None:
        from boto3.s3.transfer import TransferConfig

        self.client = client
        # One PUT per object (S3 allows 5 GiB): multipart uploads need segment containers and
        # rights of their own on some servers (Swift's s3api), and an instance is rarely that big.
        self.transfer = TransferConfig(multipart_threshold=SINGLE_PUT_MAX, multipart_chunksize=SINGLE_PUT_MAX)
        self.buckets = {kind: f"{bucket_prefix}-{kind.value}" for kind in Kind}
        self.extra = {"ServerSideEncryption": server_side_encryption} if server_side_encryption else {}
        self.endpoint = endpoint

    @classmethod
    def from_config(cls, objects: ObjectsConfig) -> "S3Store":
        """Connect with ``objects.*`` (the secret is read from ``secret_access_key_file``).

        Raises
        ------
        ConfigError
            If the endpoint, key ID or secret file is missing or unreadable.
        """
        import boto3
        from botocore.config import Config as BotoConfig

        for key in ("endpoint_url", "access_key_id", "secret_access_key_file"):
            if not getattr(objects, key):
                raise ConfigError(f"objects.{key}", "required when objects.store is 's3'")
        try:
            secret = Path(objects.secret_access_key_file).read_text().strip()
        except OSError as exc:
            raise ConfigError("objects.secret_access_key_file", f"cannot read it: {exc.strerror}") from exc
        client = boto3.client(
            "s3", endpoint_url=objects.endpoint_url, region_name=objects.region, verify=objects.verify_tls,
            aws_access_key_id=objects.access_key_id, aws_secret_access_key=secret,
            config=BotoConfig(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=60,
                              retries={"max_attempts": 2, "mode": "standard"}))
        return cls(client, objects.bucket_prefix, objects.server_side_encryption, objects.endpoint_url)

    def _where(self, kind: Kind, key: str) -> str:
        return f"{self.buckets[kind]}/{key}"

    def put(self, kind: Kind, key: str, data: bytes) -> None:
        check_key(key)
        try:
            self.client.put_object(Bucket=self.buckets[kind], Key=key, Body=data, **self.extra)
        except Exception as exc:  # botocore raises many types: all mean "not stored"
            raise _error(f"cannot write {self._where(kind, key)}", exc) from exc

    def put_file(self, kind: Kind, key: str, path: Path) -> None:
        check_key(key)
        try:
            self.client.upload_file(str(path), self.buckets[kind], key, ExtraArgs=self.extra or None,
                                    Config=self.transfer)
        except Exception as exc:
            raise _error(f"cannot write {self._where(kind, key)}", exc) from exc

    def get(self, kind: Kind, key: str) -> bytes:
        check_key(key)
        try:
            return self.client.get_object(Bucket=self.buckets[kind], Key=key)["Body"].read()
        except Exception as exc:
            raise _error(f"cannot read {self._where(kind, key)}", exc) from exc

    @contextlib.contextmanager
    def local_file(self, kind: Kind, key: str) -> Iterator[Path]:
        check_key(key)
        fd, name = tempfile.mkstemp(prefix="sonoshot-", suffix=Path(key).suffix)
        os.close(fd)
        try:
            try:
                self.client.download_file(self.buckets[kind], key, name)
            except Exception as exc:
                raise _error(f"cannot read {self._where(kind, key)}", exc) from exc
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def exists(self, kind: Kind, key: str) -> bool:
        check_key(key)
        try:
            self.client.head_object(Bucket=self.buckets[kind], Key=key)
            return True
        except Exception as exc:
            error = _error(f"cannot read {self._where(kind, key)}", exc)
            if isinstance(error, ObjectNotFound):
                return False
            raise error from exc

    def _keys(self, kind: Kind, prefix: str) -> list[str]:
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.buckets[kind],
                                                                               Prefix=prefix):
                keys += [item["Key"] for item in page.get("Contents", [])]
        except Exception as exc:
            raise _error(f"cannot list {self._where(kind, prefix)}", exc) from exc
        return keys

    def delete(self, kind: Kind, keys: Sequence[str]) -> int:
        checked = [check_key(key) for key in keys]
        removed = 0
        for key in checked:
            if self.exists(kind, key):
                try:
                    self.client.delete_object(Bucket=self.buckets[kind], Key=key)
                except Exception as exc:
                    raise _error(f"cannot delete {self._where(kind, key)}", exc) from exc
                removed += 1
        return removed

    def delete_prefix(self, kind: Kind, prefix: str) -> int:
        return self.delete(kind, self._keys(kind, prefix))

    def top_level(self, kind: Kind) -> list[str]:
        names: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.buckets[kind],
                                                                               Delimiter="/"):
                names += [p["Prefix"].rstrip("/") for p in page.get("CommonPrefixes", [])]
        except Exception as exc:
            raise _error(f"cannot list {self.buckets[kind]}", exc) from exc
        return sorted(names)

    def describe(self) -> str:
        return f"s3 {self.endpoint} buckets {', '.join(self.buckets.values())}"

    def check(self) -> None:
        """Each bucket answers; ``AccessDenied`` counts as an answer (a role's key may only write
        some buckets or read others), an unknown key or an unreachable endpoint does not."""
        for bucket in self.buckets.values():
            try:
                self.client.list_objects_v2(Bucket=bucket, MaxKeys=1)
            except Exception as exc:
                error = _error(f"cannot reach {bucket}", exc)
                if not str(error).endswith(": AccessDenied"):
                    raise error from exc
