"""What every model actor shares: the settings that pick and load a model, and its device and dtype.

`RerankerSpec` and `EmbedderSpec` extend `ModelSpec`; each setting's default and description live here
once, and `jobs/cli.py` turns them into flags (`--dtype`, or `--rerank-dtype` / `--embed-dtype`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from actors.model_source import check_model_reference
from schemas.settings import SettingError, at_least, one_of, setting

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(Dtype)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Small, picklable, validated on the driver; the worker builds the heavy model from it on the node."""

    model: str = setting(help="model: a saved sentence-transformers directory, a hub id, or an s3:// prefix")
    revision: str | None = setting(
        None, help="hub revision (branch, tag or commit) to load; default: the hub's main"
    )
    trust_remote_code: bool = setting(
        False, help="let transformers run the model repository's own Python code (only for models you trust)"
    )
    max_length: int | None = setting(
        None, help="truncate inputs to this many tokens (default: the model's own limit)"
    )
    batch_tokens: int = setting(
        16384,
        help="token budget of one micro-batch, padded tokens counted (rows x longest row)",
    )
    dtype: Dtype = setting("auto", help="model weights dtype (auto: bfloat16 on GPU, float32 on CPU)")
    device: str | None = setting(
        None, help="torch device of each actor, e.g. cuda, cuda:1, cpu (default: cuda when available)"
    )

    min_length = 2  # tokens: shorter max_length leaves no room for the content

    def validate(self):
        try:
            check_model_reference(self.model)
        except ValueError as exc:
            raise SettingError("model", str(exc)) from None
        at_least(self, 1, "batch_tokens")
        at_least(self, self.min_length, "max_length")
        one_of(self, "dtype", DTYPES)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device_and_dtype(spec: ModelSpec):
    """(`device`, torch dtype) of `spec`: cuda when available, bfloat16 on GPU and float32 on CPU for auto."""
    import torch

    device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = spec.dtype
    if name == "auto":
        name = "bfloat16" if device.startswith("cuda") else "float32"
    return device, getattr(torch, name)
