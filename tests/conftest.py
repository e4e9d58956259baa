"""Session fixtures: tiny models built once, one local Ray instance shared by all integration tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from jobs.loopback import keep_local_ray_on_loopback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every Ray process of the session, and every job the tests start, talks over loopback only (jobs.loopback);
# set before anything imports Ray.
keep_local_ray_on_loopback()
# The media decoder honours its test faults (two magic payloads that crash or hang it: actors.media.sandbox)
# in every worker of the session, so a test can feed a job a reference that crashes its decoder.
os.environ["RERANK_TEST_DECODE_FAULTS"] = "1"
# As with an activated virtualenv: `python` in a submitted job's entrypoint is this interpreter.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

REPO = Path(__file__).resolve().parent.parent


def start_job_on_session(module: str, argv: list[str]):
    """`python -m <module> ARGV` as its own process group, joined to the session's Ray instance (as a
    preemptible driver on a cluster runs), for tests that SIGKILL a driver mid-run."""
    import subprocess

    import ray

    env = {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "RAY_AUTH_MODE": "token",
        "PYTHONPATH": str(REPO),
    }
    return subprocess.Popen([sys.executable, "-m", module, *argv], cwd=REPO, env=env, start_new_session=True)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def qwen3_causal(models_dir) -> Path:
    """A plain Qwen3 causal-LM directory: CrossEncoder builds Transformer + LogitScore('yes', 'no')."""
    from tests.tiny_models import build_causal_lm

    return build_causal_lm(models_dir / "qwen3", arch="qwen3", seed=1)


@pytest.fixture(scope="session")
def llama_st_10(models_dir) -> Path:
    """A saved sentence-transformers reranker on a Llama body with LogitScore('1', '0') and a default prompt."""
    from tests.tiny_models import build_causal_lm, build_st_reranker

    hf = build_causal_lm(models_dir / "llama", arch="llama", seed=2)
    return build_st_reranker(hf, models_dir / "llama-st", "1", "0", prompt="Judge: does the document answer?")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session, with the dashboard on loopback so end-to-end
    tests can `ray job submit` to the same instance. Yields the dashboard address."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=_free_port(),
            log_to_driver=False,
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    from ray._private.worker import global_worker

    if global_worker.node.node_ip_address != "127.0.0.1":  # Ray was imported before the setting above
        pytest.exit(f"the test Ray instance is on {global_worker.node.node_ip_address}, not loopback", 2)

    yield "http://" + global_worker.node.address_info["webui_url"]
