"""Placeholder until the media stage lands: media payloads are not decoded yet."""

from __future__ import annotations


def payload_to_input(modality: str, payload):
    raise NotImplementedError(f"{modality} payloads are not supported yet")
