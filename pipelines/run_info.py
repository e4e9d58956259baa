"""What a manifest records about the model and the software that produced a run."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("ray", "torch", "transformers", "sentence-transformers", "pyarrow", "numpy", "torchcodec")
SMALL_FILES = (
    "modules.json",
    "config.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def model_fingerprint(model: str) -> dict:
    """A revision for the manifest and for score caches: the hub revision when given, else a hash of a local
    directory's config files and the sizes of its weight files."""
    path = os.path.expanduser(model)
    if not os.path.isdir(path):
        return {"revision": None}
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            h.update(rel.encode())
            if name in SMALL_FILES or (
                name.endswith((".jinja", ".json")) and os.path.getsize(full) < 1 << 20
            ):
                with open(full, "rb") as f:
                    h.update(f.read())
            else:
                h.update(str(os.path.getsize(full)).encode())
    return {"revision": "sha256:" + h.hexdigest()[:16], "path": os.path.abspath(path)}


def dumps(payload: dict) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, default=str)
