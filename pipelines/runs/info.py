"""What a manifest records about the model and the software that produced a run."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("ray", "torch", "transformers", "sentence-transformers", "pyarrow", "numpy", "torchcodec")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def model_fingerprint(model: str, revision: str | None = None) -> dict:
    """What identifies a model's weights, for manifests, run keys and caches.

    A local directory: a sha256 over every file's relative path and bytes (weights, tokenizer, config,
    templates), so a byte changed in place changes it; hashes are memoised per (path, size, mtime, inode)
    in `~/.cache/ray-rerank/fingerprints.json`, so an unchanged 1 GB file is read once, not every run.
    A hub id: the commit `revision` (default main) resolves to, from the hub, or from the local HF cache
    when offline. An s3:// prefix: the ETags and sizes of its objects (`actors.model_source`)."""
    from actors.model_source import source_fingerprint

    path = os.path.expanduser(model)
    fingerprint = source_fingerprint(model)
    if os.path.isdir(path):
        return {"revision": revision, "fingerprint": fingerprint, "path": os.path.abspath(path)}
    if fingerprint is not None:
        return {"revision": revision, "fingerprint": fingerprint}
    commit = hub_commit(model, revision)
    return {"revision": commit or revision, "fingerprint": f"hub:{commit}" if commit else None}


def pinned(spec):
    """`spec` with a hub id's revision resolved to its commit, so every actor loads exactly that commit
    (a local directory or an s3:// prefix is returned as is)."""
    from dataclasses import replace

    from actors.model_source import is_remote

    if os.path.isdir(os.path.expanduser(spec.model)) or is_remote(spec.model):
        return spec
    commit = hub_commit(spec.model, spec.revision)
    return replace(spec, revision=commit) if commit else spec


HUB_TIMEOUT_S = 10.0  # a driver without network must not stall at start-up resolving a hub id


def _transport_error() -> type[Exception]:
    """The hub client's timeout / connection error class (huggingface_hub 2.x talks through httpx2)."""
    try:
        from httpx2 import TransportError
    except ImportError:
        return OSError
    return TransportError


def hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub id at `revision` resolves to (online, or from the local cache when HF_HUB_OFFLINE
    is set or the hub is unreachable); None when neither knows it. A full commit hash is already that, so
    a spec pinned once (`pinned`) is not resolved again for the run's identity and manifest."""
    if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if not offline:
        try:
            from huggingface_hub import HfApi

            return HfApi().model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_S).sha
        except (HfHubHTTPError, OSError, ValueError, _transport_error()):
            pass  # unreachable, timed out or unknown: fall back to what the local cache knows
    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return os.path.basename(os.path.normpath(folder))


def resolved_dtype(spec, pool) -> str:
    """The dtype `auto` means where the pool's actors run: bfloat16 on GPU, float32 on CPU."""
    if spec.dtype != "auto":
        return spec.dtype
    on_gpu = (spec.device or "").startswith("cuda") or (spec.device is None and pool.num_gpus() > 0)
    return "bfloat16" if on_gpu else "float32"


def value_key(spec, **resolved) -> str:
    """A key of everything about a model stage that changes the values it produces: the model's identity
    and every setting of its spec that reaches the forward (not batching or threads, which do not), plus
    `resolved` extras (e.g. the dtype `auto` resolved to). Equal keys mean reusable values."""
    from dataclasses import asdict

    ignored = {"batch_tokens", "device"}
    settings = {k: v for k, v in asdict(spec).items() if k not in ignored}
    identity = model_fingerprint(spec.model, spec.revision)
    payload = json.dumps(
        [settings, identity.get("fingerprint"), identity.get("revision"), resolved],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def dumps(payload: dict) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, default=str)
