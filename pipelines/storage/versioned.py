"""One small object written only under a condition: created if absent, replaced only if unchanged since it
was read. What a lease and a published pointer (`LATEST`) need so that two writers racing never both win.

On object storage the conditions are the store's own (`If-None-Match: *` to create, `If-Match: <ETag>` to
replace; S3 and S3-compatible servers honour both). On a local disk a lock on the object's folder serialises
read-compare-write between processes of one host, the version is a hash of the bytes, and a replacement is written aside,
fsynced and renamed over the object. `age` measures on the store's clock: the object's modification time
against that of a probe object written now, never the writer's clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator

from pipelines.storage import uris


class VersionedObject:
    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.path = uris.filesystem(uri)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocols or "local" in protocols

    def read(self) -> tuple[bytes, str] | None:
        """(content, version), or None when the object is absent."""
        try:
            if self.local:
                with open(self.path, "rb") as f:
                    data = f.read()
                return data, hashlib.sha256(data).hexdigest()
            self.fs.invalidate_cache(self.path)
            info = self.fs.info(self.path)
            return self.fs.cat_file(self.path), str(info.get("ETag"))
        except FileNotFoundError:
            return None

    def read_json(self) -> tuple[dict, str] | None:
        current = self.read()
        return (json.loads(current[0]), current[1]) if current is not None else None

    def write(self, data: bytes | dict, version: str | None) -> bool:
        """Write `data` (a dict as JSON) if the object is still at `version` (None: only if absent).
        Returns False, writing nothing, when another writer got there first."""
        if isinstance(data, dict):
            data = json.dumps(data).encode()
        if self.local:
            with self._locked():
                current = self.read()
                if (current[1] if current else None) != version:
                    return False
                tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
                return True
        bucket, key, _ = self.fs.split_path(self.path)
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        except Exception as exc:  # botocore's ClientError, as s3fs translates it (or not)
            if (
                isinstance(exc, FileExistsError)
                or _precondition_failed(exc)
                or _precondition_failed(exc.__cause__)
            ):
                return False
            raise
        finally:
            self.fs.invalidate_cache(self.path)
        return True

    def remove(self, version: str) -> None:
        """Remove the object if it is still at `version`."""
        with self._locked():
            current = self.read()
            if current is not None and current[1] == version:
                self.fs.rm(self.path)

    def age(self) -> float | None:
        """Seconds since the object was last written, on the store's clock; None when absent."""
        probe = f"{self.path}.clock-{uuid.uuid4().hex}"
        try:
            self.fs.invalidate_cache(self.path)
            then = _mtime(self.fs.info(self.path))
        except FileNotFoundError:
            return None
        self.fs.pipe_file(probe, b"")
        try:
            now = _mtime(self.fs.info(probe))
        finally:
            self.fs.rm(probe)
        return now - then

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.local:
            yield
            return
        import fcntl

        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        lock = os.open(folder, os.O_RDONLY)  # the folder itself is the lock: no lock file left behind
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)


def _precondition_failed(exc: BaseException | None) -> bool:
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code") in ("PreconditionFailed", "412")


def _mtime(info: dict) -> float:
    value = info.get("mtime") or info.get("LastModified") or info.get("created")
    return value.timestamp() if hasattr(value, "timestamp") else float(value)
