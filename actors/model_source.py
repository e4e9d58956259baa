"""Where a model comes from: a local directory, a hub id, or an `s3://` prefix fetched once per node.

A remote prefix is listed first; its fingerprint (every object's relative key, size and ETag) names the
node's cache directory and is recorded in that directory's completion marker, so a changed model is
downloaded again and a marker left by anything else is not trusted. The cache root is private to the
worker's user (0700, owned by it). Every object key must be a plain path below the prefix: a key holding
`..`, an empty segment or a leading `/` would land outside the model directory, and fails the load with one
line instead of being written. Objects are downloaded into a private temporary directory that is renamed
into place once complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://")
RACY_SECONDS = 2.0
DEFAULT_CACHE = "/tmp/ray-rerank-models"
MARKER = ".complete"


class ModelSourceError(ValueError):
    """A remote model that cannot be fetched safely; the message is one line."""


def is_remote(model: str) -> bool:
    return model.startswith(REMOTE_SCHEMES)


class ModelChanged(ValueError):
    """The model an actor loads is not the one the driver fingerprinted for the run; one line."""


def source_fingerprint(model: str) -> str | None:
    """What identifies the bytes a model is loaded from, computed the same way on the driver and in an actor:
    a local directory: `sha256:` and a digest of every file's relative path and bytes (memoised per path,
    size, mtime and inode in `~/.cache/ray-rerank/fingerprints.json`, so an unchanged file is read once per
    machine); an s3:// prefix: `objects:` and a digest of its objects' keys, sizes and ETags (nothing is
    downloaded). None for a hub id, which a run pins to a commit instead."""
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        return "sha256:" + _directory_digest(path)
    if is_remote(model):
        return _remote_digest(model)
    return None


def check_loaded(model: str, loaded: str | None, expected: str | None) -> None:
    """Raise `ModelChanged` when the fingerprint of what an actor loaded (`loaded`, from `source_fingerprint`
    just before loading) differs from the driver's (`expected`): the model changed under the run, or differs
    on this node."""
    if expected is None or loaded is None or loaded == expected:
        return
    import socket

    raise ModelChanged(
        f"model {model!r} changed under the run: the driver fingerprinted {expected}, a scoring actor on "
        f"{socket.gethostname()} loaded {loaded}; restore the model or start a new --run-id"
    )


def model_changed_in(exc: BaseException) -> str | None:
    """The one-line message of a `ModelChanged` raised in an actor, wherever Ray and Ray Data wrapped it: in
    the exception chain, or (Ray Data's `UserCodeException` keeps only the text of the actor's traceback) as
    the traceback's `...ModelChanged: message` line."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)  # a RayTaskError holds the original exception here
        if isinstance(cause, ModelChanged) or type(exc) is ModelChanged:
            return str(cause if isinstance(cause, ModelChanged) else exc)
        for line in str(exc).splitlines():
            if f"{ModelChanged.__module__}.{ModelChanged.__name__}: " in line:
                return line.split(f"{ModelChanged.__name__}: ", 1)[1].strip()
        exc = cause or exc.__cause__ or exc.__context__
    return None


def check_model_reference(model: str) -> None:
    """Driver-side check: a path-looking reference must exist; a hub id must look like `org/name`."""
    if is_remote(model):
        return
    looks_like_path = model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 2)[-1]
    if os.path.isdir(os.path.expanduser(model)):
        return
    if looks_like_path or os.path.exists(model):
        raise ValueError(
            f"model {model!r} is not a directory; pass a saved model directory, a hub id, or s3://"
        )
    if model.count("/") != 1:
        raise ValueError(f"model {model!r} is neither a local directory nor a hub id like 'org/name'")


def materialize(model: str, cache_dir: str | None = None) -> str:
    """Return a local path for `model`. A remote prefix is downloaded once per node (and again when its
    objects change) into the private cache; concurrent actors on a node wait on a lock file instead of
    downloading twice."""
    if not is_remote(model):
        return os.path.expanduser(model)
    import fcntl

    import fsspec

    fs, prefix = fsspec.core.url_to_fs(model)
    objects = remote_objects(model, fs, prefix.rstrip("/"))
    fingerprint = model_fingerprint(model, objects)
    root = private_root(Path(cache_dir or os.environ.get("RERANK_MODEL_CACHE", DEFAULT_CACHE)))
    local = root / fingerprint[:32]
    if _complete(local, fingerprint):
        return str(local)
    lock_fd = os.open(root / f"{local.name}.lock", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    with os.fdopen(lock_fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _complete(local, fingerprint):
            _download(fs, objects, root, local, model, fingerprint)
    return str(local)


def remote_objects(model: str, fs, prefix: str) -> list[tuple[str, str, int, str]]:
    """(relative path, key, size, etag) of every object under `prefix`, each key checked to be a plain path
    below it."""
    fs.invalidate_cache(prefix)  # a long-lived worker must see the objects as they are now
    found = fs.find(prefix, detail=True)
    objects = []
    for key, info in sorted(found.items()):
        if not key.startswith(prefix + "/") or key.endswith("/"):
            continue  # a sibling prefix (`m2/` next to `m/`) or a directory marker
        rel = key[len(prefix) + 1 :]
        parts = rel.split("/")
        if any(part in ("", ".", "..") for part in parts) or "\0" in rel:
            raise ModelSourceError(
                f"model {model!r}: object key {key!r} would be written outside the model directory "
                "(a '..', '.' or empty path segment); refusing to download the model"
            )
        tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("LastModified") or ""
        objects.append((rel, key, int(info.get("size") or 0), str(tag)))
    if not objects:
        raise ModelSourceError(f"model {model!r}: no objects under this prefix")
    return objects


def model_fingerprint(model: str, objects: list[tuple[str, str, int, str]]) -> str:
    """sha256 of the model URI and every object's relative path, size and ETag."""
    h = hashlib.sha256(model.rstrip("/").encode())
    for rel, _, size, tag in objects:
        h.update(f"\0{rel}\0{size}\0{tag}".encode())
    return h.hexdigest()


def private_root(root: Path) -> Path:
    """The cache root, created 0700; an existing one must belong to this user (it is made 0700 if not)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.stat(root)
    if info.st_uid != os.getuid():
        raise ModelSourceError(
            f"model cache {str(root)!r} belongs to another user (uid {info.st_uid}); "
            "set RERANK_MODEL_CACHE to a directory of your own"
        )
    if info.st_mode & 0o077:
        os.chmod(root, 0o700)
    return root


def _complete(local: Path, fingerprint: str) -> bool:
    try:
        marker = json.loads((local / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("fingerprint") == fingerprint


def _download(fs, objects, root: Path, local: Path, model: str, fingerprint: str) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{local.name}-", dir=root))
    try:
        destinations = []
        for rel, _, _, _ in objects:
            dest = staging.joinpath(*rel.split("/"))
            if not os.path.normpath(dest).startswith(str(staging) + os.sep):
                raise ModelSourceError(f"model {model!r}: object {rel!r} would be written outside {staging}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            destinations.append(str(dest))
        fs.get([key for _, key, _, _ in objects], destinations)
        for (rel, _, size, _), dest in zip(objects, destinations, strict=True):
            if os.path.getsize(dest) != size:
                raise ModelSourceError(
                    f"model {model!r}: {rel!r} downloaded {os.path.getsize(dest)} of {size} bytes"
                )
        marker = {"model": model, "fingerprint": fingerprint, "objects": len(objects)}
        (staging / MARKER).write_text(json.dumps(marker))
        if local.exists():  # an incomplete or stale copy under this name
            shutil.rmtree(local)
        os.rename(staging, local)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _directory_digest(path: str) -> str:
    memo_path = os.path.join(os.path.expanduser("~"), ".cache", "ray-rerank", "fingerprints.json")
    try:
        with open(memo_path) as f:
            memo = json.load(f)
    except (OSError, ValueError):
        memo = {}
    h = hashlib.sha256()
    changed = False
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            st = os.stat(full)
            stamp = f"{os.path.abspath(full)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
            digest = memo.get(stamp)
            if digest is None:
                digest = _file_digest(full)
                # A file written in the last seconds may be written again within the same mtime tick
                # (git's "racy" case): hash it every time until it has settled.
                if time.time() - st.st_mtime > RACY_SECONDS:
                    memo[stamp], changed = digest, True
            h.update(os.path.relpath(full, path).encode() + b"\0" + digest.encode())
    if changed:
        os.makedirs(os.path.dirname(memo_path), exist_ok=True)
        tmp = f"{memo_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(memo, f)
        os.replace(tmp, memo_path)
    return h.hexdigest()[:32]


def _remote_digest(uri: str) -> str:
    """sha256 over each object's key (relative to the prefix), size and ETag: no object is downloaded."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    root = root.rstrip("/")
    h = hashlib.sha256()
    for key, info in sorted(fs.find(root, detail=True).items()):
        etag = info.get("ETag") or info.get("etag") or info.get("md5") or ""
        h.update(f"{key[len(root) :]}|{info.get('size')}|{etag}\n".encode())
    return "objects:" + h.hexdigest()[:32]


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
