"""The manifests under infra/ agree with the code and the image they run.

Every YAML parses; every entrypoint names a job module that exists and passes only flags its `--help`
lists (and all the flags it requires); every image is the tag the Dockerfile documents; GPU worker groups
ask for GPUs; the Ray version and torch pins match pyproject.toml. Never starts Ray.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
DOCKERFILE = INFRA / "Dockerfile"
YAML_FILES = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))
EXPECTED = {
    "runtime_env.yaml",
    "cluster.yaml",
    "kuberay/raycluster.yaml",
    "kuberay/rayjob-rerank.yaml",
    "kuberay/raycronjob-refresh.yaml",
}
# Jobs the manifests may name before their module lands in jobs/; any other missing module is an error.
ANNOUNCED_JOBS = {"rerank", "refresh", "evaluate", "build_demo"}


def _rel(path: Path) -> str:
    return path.relative_to(INFRA).as_posix()


def _docs(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _walk(node, key: str | None = None):
    """Every (key, value) pair in a parsed YAML tree, depth first; list items inherit their list's key."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v, k)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


@functools.cache
def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pin(package: str) -> str:
    for dep in _pyproject()["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==(\S+)", dep.strip())
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml pins no {package}==<version>")


def _label(name: str) -> str:
    match = re.search(rf'{re.escape(name)}="([^"]+)"', DOCKERFILE.read_text())
    assert match, f'infra/Dockerfile has no LABEL {name}="..."'
    return match.group(1)


@functools.cache
def image_tag() -> str:
    """The image every manifest must run: <title>:<version> from the Dockerfile's OCI labels."""
    return f"{_label('org.opencontainers.image.title')}:{_label('org.opencontainers.image.version')}"


def _entrypoints() -> list[tuple[str, str]]:
    """(manifest, command line) for every job command a manifest runs: `entrypoint:` values, and any other
    string or argv list that runs `python -m jobs.<name>` (container commands, launcher commands)."""
    found = []
    for path in YAML_FILES:
        for doc in _docs(path):
            for key, value in _walk(doc):
                if isinstance(value, list) and all(isinstance(v, str) for v in value) and "-m" in value:
                    value = shlex.join(value)
                if isinstance(value, str) and (key == "entrypoint" or re.search(r"-m\s+jobs\.", value)):
                    found.append((_rel(path), value))
    return found


def _parse_command(command: str) -> tuple[str, list[str]]:
    tokens = shlex.split(command)
    assert "-m" in tokens, f"{command!r}: expected `python -m jobs.<name> ...`"
    at = tokens.index("-m")
    module = tokens[at + 1]
    flags = [t.split("=", 1)[0] for t in tokens[at + 2 :] if t.startswith("--")]
    return module, flags


@functools.cache
def _help(module: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, (
        f"`python -m {module} --help` exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    )
    return proc.stdout


def _required_flags(help_text: str) -> set[str]:
    """Flags argparse lists outside [brackets] in the usage block: the ones a command must pass."""
    usage = help_text.split("\n\n", 1)[0]
    while re.search(r"\[[^\[\]]*\]", usage):
        usage = re.sub(r"\[[^\[\]]*\]", "", usage)
    return set(re.findall(r"--[a-z0-9][a-z0-9-]*", usage))


def _ray_cluster_specs() -> list[tuple[str, dict]]:
    """(where, RayCluster spec) of every KubeRay manifest: RayCluster, RayJob and RayCronJob."""
    specs = []
    for path in YAML_FILES:
        for doc in _docs(path):
            kind, spec = doc.get("kind"), doc.get("spec") or {}
            if kind == "RayCluster":
                specs.append((f"{_rel(path)} RayCluster", spec))
            elif kind == "RayJob":
                specs.append((f"{_rel(path)} RayJob", spec["rayClusterSpec"]))
            elif kind == "RayCronJob":
                specs.append((f"{_rel(path)} RayCronJob", spec["jobTemplate"]["rayClusterSpec"]))
    return specs


def _job_specs() -> list[tuple[str, dict]]:
    """(where, RayJob spec) of every RayJob and RayCronJob job template."""
    specs = []
    for path in YAML_FILES:
        for doc in _docs(path):
            if doc.get("kind") == "RayJob":
                specs.append((f"{_rel(path)} RayJob", doc["spec"]))
            elif doc.get("kind") == "RayCronJob":
                specs.append((f"{_rel(path)} RayCronJob", doc["spec"]["jobTemplate"]))
    return specs


def test_expected_manifests_exist():
    present = {_rel(p) for p in YAML_FILES}
    assert present >= EXPECTED, f"missing under infra/: {sorted(EXPECTED - present)}"
    assert DOCKERFILE.is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_parses(path):
    docs = _docs(path)
    assert docs, f"{_rel(path)} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{_rel(path)}: every document must be a mapping"


def test_manifests_run_jobs():
    commands = _entrypoints()
    manifests = {m for m, _ in commands}
    for name in ("kuberay/rayjob-rerank.yaml", "kuberay/raycronjob-refresh.yaml"):
        assert name in manifests, f"{name} runs no `python -m jobs.<name>` entrypoint"
    assert {_parse_command(c)[0] for _, c in commands} >= {"jobs.rerank", "jobs.refresh"}


@pytest.mark.parametrize(
    ("manifest", "command"), _entrypoints(), ids=lambda v: v if v.endswith("yaml") else ""
)
def test_entrypoint_names_a_real_job_and_known_flags(manifest, command):
    module, flags = _parse_command(command)
    match = re.fullmatch(r"jobs\.([a-z_][a-z0-9_]*)", module)
    assert match, f"{manifest}: entrypoint runs {module!r}; expected a `jobs.<name>` module"
    name = match.group(1)
    if not (REPO / "jobs" / f"{name}.py").is_file():
        assert name in ANNOUNCED_JOBS, f"{manifest}: runs {module} but jobs/{name}.py does not exist"
        pytest.skip(
            f"jobs/{name}.py does not exist yet; the flags of {manifest} are unchecked until it lands"
        )
    help_text = _help(module)
    known = set(re.findall(r"--[a-z0-9][a-z0-9-]*", help_text))
    unknown = [f for f in flags if f not in known]
    assert not unknown, f"{manifest}: {module} has no flag(s) {unknown}; its --help lists {sorted(known)}"
    missing = _required_flags(help_text) - set(flags)
    assert not missing, f"{manifest}: {module} requires {sorted(missing)}, absent from the entrypoint"


def test_dockerfile_matches_pyproject():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M), "the image must be based on python:3.11-slim"
    assert _label("org.opencontainers.image.version") == _pyproject()["project"]["version"]
    for arg, package in (("TORCH_VERSION", "torch"), ("TORCHVISION_VERSION", "torchvision")):
        match = re.search(rf"^ARG {arg}=(\S+)", text, re.M)
        assert match, f"infra/Dockerfile has no ARG {arg}"
        assert match.group(1) == _pin(package), (
            f"ARG {arg}={match.group(1)} but pyproject pins {_pin(package)}"
        )
    assert "ffmpeg" in text, "torchcodec needs FFmpeg's libraries in the image"


def test_every_image_is_the_dockerfile_tag():
    tag = image_tag()
    for path in YAML_FILES:
        if path.name == "runtime_env.yaml":
            continue
        images = [
            v
            for doc in _docs(path)
            for k, v in _walk(doc)
            if k in ("image", "head_image", "worker_image") and isinstance(v, str)
        ]
        assert images, f"{_rel(path)} names no image"
        wrong = [i for i in images if i != tag and not i.endswith(f"/{tag}")]
        assert not wrong, f"{_rel(path)}: images {wrong} differ from the Dockerfile's {tag}"


def test_ray_version_matches_the_pin():
    pin = _pin("ray")
    specs = _ray_cluster_specs()
    assert len(specs) >= 3
    for where, spec in specs:
        assert str(spec.get("rayVersion")) == pin, (
            f"{where}: rayVersion {spec.get('rayVersion')} != ray {pin}"
        )


def test_kuberay_gpu_worker_groups_request_gpus():
    for where, spec in _ray_cluster_specs():
        groups = spec.get("workerGroupSpecs") or []
        gpu_groups = [g for g in groups if "gpu" in g["groupName"]]
        assert gpu_groups, f"{where}: no GPU worker group (a groupName containing 'gpu')"
        for group in gpu_groups:
            for container in group["template"]["spec"]["containers"]:
                limits = (container.get("resources") or {}).get("limits") or {}
                assert int(limits.get("nvidia.com/gpu", 0)) >= 1, (
                    f"{where}: worker group {group['groupName']!r} container {container['name']!r} "
                    f"has no nvidia.com/gpu limit"
                )


def test_launcher_gpu_worker_type_has_gpus():
    (config,) = _docs(INFRA / "cluster.yaml")
    types = config["available_node_types"]
    gpu_types = {name: t for name, t in types.items() if "gpu" in name}
    assert gpu_types, "cluster.yaml defines no GPU worker type"
    for name, node_type in gpu_types.items():
        assert node_type["resources"].get("GPU", 0) >= 1, f"cluster.yaml: {name} declares no GPU resource"
    assert config["head_node_type"] in types


def test_jobs_clean_up_and_have_deadlines():
    specs = _job_specs()
    assert len(specs) >= 2
    for where, spec in specs:
        assert spec.get("shutdownAfterJobFinishes") is True, f"{where}: set shutdownAfterJobFinishes: true"
        assert int(spec.get("activeDeadlineSeconds", 0)) > 0, f"{where}: set activeDeadlineSeconds"


def test_runtime_envs_agree():
    (base,) = _docs(INFRA / "runtime_env.yaml")
    env = base["env_vars"]
    assert env.get("HF_HUB_OFFLINE") == "1"
    assert all(isinstance(v, str) for v in env.values()), "Ray requires string env_vars values"
    for where, spec in _job_specs():
        inline = yaml.safe_load(spec["runtimeEnvYAML"])
        assert inline["env_vars"] == env, (
            f"{where}: runtimeEnvYAML env_vars differ from infra/runtime_env.yaml"
        )
