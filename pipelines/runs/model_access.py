"""Model access checked on the driver: code a model ships (`trust_remote_code`).

transformers runs a repository's own Python (`auto_map` in its config) only when `trust_remote_code` is
on; without it, loading fails on every worker with a long traceback. For a local directory that is known
before any cluster work, so the job fails there in one line naming the flag. When the flag is on, the
driver logs one warning per model, and the manifest records it (`model.trust_remote_code`).
"""

from __future__ import annotations

import json
import os

from actors.model_spec import ModelSpec
from pipelines.runs import progress
from schemas.settings import SettingError

CONFIG_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")

_warned: set[str] = set()


def shipped_code(model: str) -> list[str]:
    """The `auto_map` entries of a local model directory (its own configs and those of the modules in
    its `modules.json`): classes transformers imports from the model's files. [] for hub ids and s3://
    prefixes, which are only fetched on the workers."""
    root = os.path.expanduser(model)
    if not os.path.isdir(root):
        return []
    folders = [root]
    modules = os.path.join(root, "modules.json")
    if os.path.exists(modules):
        with open(modules) as f:
            folders += [os.path.join(root, m["path"]) for m in json.load(f) if m.get("path")]
    found: list[str] = []
    for folder in folders:
        for name in CONFIG_FILES:
            path = os.path.join(folder, name)
            if not os.path.exists(path):
                continue
            with open(path) as f:
                auto_map = json.load(f).get("auto_map") or {}
            for target in auto_map.values():
                for entry in target if isinstance(target, list) else [target]:
                    if entry and entry not in found:
                        found.append(entry)
    return found


def check_remote_code(spec: ModelSpec, owner: str) -> None:
    """Raise a SettingError on `<owner>.trust_remote_code` when `spec`'s local model ships code the flag
    has not allowed. `owner` is the spec's field in the job config (`reranker`, `embedder`)."""
    if spec.trust_remote_code:
        return
    code = shipped_code(spec.model)
    if code:
        raise SettingError(
            (owner, "trust_remote_code"),
            f"model {spec.model!r} ships its own Python code ({', '.join(code[:3])}), which transformers "
            "runs only when this flag is on; turn it on only if you trust that code",
        )


def warn_remote_code(spec: ModelSpec) -> None:
    """One warning per model and process (the driver) when `spec` lets the model run its own code."""
    if spec.trust_remote_code and spec.model not in _warned:
        _warned.add(spec.model)
        progress.logger.warning(
            "trust_remote_code is on for %s: its repository's Python code runs on every worker that loads "
            "it; use this only for models whose code you trust",
            spec.model,
        )
