#!/usr/bin/env bash
# The embedded default run: set up .venv (pinned packages, FFmpeg), build the demo assets, start a local Ray
# instance and run the nightly retrieve-then-rerank refresh on real text, then a multimodal rerank.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup_env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_DISABLE_USAGE_STATS=1
exec .venv/bin/python -m jobs.demo "$@"
