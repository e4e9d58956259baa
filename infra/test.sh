#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up .venv, lint with ruff, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup_env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_DISABLE_USAGE_STATS=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
