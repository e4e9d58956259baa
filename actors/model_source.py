"""Where a model comes from: a local directory, a hub id, or an `s3://` prefix fetched once per node."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://")


def is_remote(model: str) -> bool:
    return model.startswith(REMOTE_SCHEMES)


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
    """Return a local path for `model`. Remote prefixes are downloaded once per node into a cache keyed
    by the URI; concurrent actors on a node wait on a lock file instead of downloading twice."""
    if not is_remote(model):
        return os.path.expanduser(model)
    import fcntl

    import fsspec

    root = Path(cache_dir or os.environ.get("RERANK_MODEL_CACHE", "/tmp/ray-rerank-models"))
    local = root / hashlib.sha256(model.encode()).hexdigest()[:16]
    done = local / ".complete"
    if done.exists():
        return str(local)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{local.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            fs, path = fsspec.core.url_to_fs(model)
            fs.get(path.rstrip("/") + "/", str(local), recursive=True)
            done.touch()
    return str(local)
