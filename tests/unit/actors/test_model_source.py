"""Remote model prefixes, downloaded from a real S3-compatible server on loopback (moto): the node cache
is private, keyed by the objects' fingerprint, and a key that would land outside the model directory fails
the load with one line and writes nothing."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from actors import model_source
from actors.model_source import ModelSourceError, materialize
from tests.media_files import s3_server

BUCKET = "model-store"


@pytest.fixture(scope="module")
def s3():
    """(boto3 client, endpoint) of a loopback S3 server, with AWS_ENDPOINT_URL pointing the workers'
    clients at it."""
    import boto3

    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in [*env, "AWS_ENDPOINT_URL"]}
    os.environ.update(env)
    with s3_server() as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        yield client
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def put(client, prefix: str, files: dict[str, bytes]) -> str:
    for name, body in files.items():
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=body)
    return f"s3://{BUCKET}/{prefix}"


def test_a_prefix_is_downloaded_once_into_a_private_cache_keyed_by_its_fingerprint(s3, tmp_path):
    model = put(s3, "models/good", {"config.json": b'{"a": 1}', "sub/weights.bin": b"\1" * 1000})
    cache = tmp_path / "cache"
    local = materialize(model, str(cache))
    assert sorted(p.relative_to(local).as_posix() for p in _files(local)) == [
        ".complete",
        "config.json",
        "sub/weights.bin",
    ]
    assert (Path(local) / "sub" / "weights.bin").read_bytes() == b"\1" * 1000
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    marker = json.loads((Path(local) / ".complete").read_text())
    assert marker["model"] == model and os.path.basename(local) == marker["fingerprint"][:32]

    assert materialize(model, str(cache)) == local  # unchanged objects: the same directory, not refetched

    s3.put_object(Bucket=BUCKET, Key="models/good/config.json", Body=b'{"a": 2}')  # the model changes
    changed = materialize(model, str(cache))
    assert changed != local and (Path(changed) / "config.json").read_bytes() == b'{"a": 2}'
    assert json.loads((Path(changed) / ".complete").read_text())["fingerprint"] != marker["fingerprint"]


def test_a_marker_that_does_not_record_the_fingerprint_is_not_trusted(s3, tmp_path):
    model = put(s3, "models/marked", {"config.json": b"{}"})
    local = Path(materialize(model, str(tmp_path)))
    (local / "config.json").write_bytes(b"planted")
    (local / ".complete").write_text("{}")  # what the old cache layout wrote: an empty marker
    assert materialize(model, str(tmp_path)) == str(local)
    assert (local / "config.json").read_bytes() == b"{}"  # downloaded again


@pytest.mark.parametrize(
    ("key", "shown"),
    [("../../escape.txt", "models/evil/../../escape.txt"), ("/abs.txt", "models/evil//abs.txt")],
)
def test_a_key_that_would_land_outside_the_model_directory_fails_with_one_line(s3, tmp_path, key, shown):
    model = put(s3, "models/evil", {"config.json": b"{}", key: b"owned"})
    cache = tmp_path / "a" / "b" / "cache"
    with pytest.raises(ModelSourceError) as info:
        materialize(model, str(cache))
    message = str(info.value)
    assert message == (
        f"model {model!r}: object key '{BUCKET}/{shown}' would be written outside the model directory "
        "(a '..', '.' or empty path segment); refusing to download the model"
    )
    assert "\n" not in message
    assert not [p for p in _files(tmp_path) if p.name in ("escape.txt", "abs.txt", "config.json")]
    for k in ("models/evil/config.json", f"models/evil/{key}"):
        s3.delete_object(Bucket=BUCKET, Key=k)


def test_a_cache_root_of_another_user_is_refused_and_a_loose_one_of_ours_made_private(
    s3, tmp_path, monkeypatch
):
    model = put(s3, "models/small", {"config.json": b"{}"})
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    materialize(model, str(loose))
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o700
    # Another user's directory: simulated by changing who we are (chown to a stranger needs privileges
    # this test may not have).
    monkeypatch.setattr(model_source.os, "getuid", lambda: os.stat(loose).st_uid + 1)
    with pytest.raises(ModelSourceError, match=r"belongs to another user .*set RERANK_MODEL_CACHE"):
        materialize(model, str(loose))


def _files(root) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file()]


def test_an_actor_that_loaded_other_bytes_than_the_driver_fingerprinted_is_stopped(tmp_path):
    from actors.model_source import ModelChanged, check_loaded, model_changed_in, source_fingerprint

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"weights")
    driver = source_fingerprint(str(tmp_path / "m"))
    assert driver.startswith("sha256:") and source_fingerprint("org/name") is None  # a hub id is pinned
    check_loaded(str(tmp_path / "m"), driver, driver)
    check_loaded("org/name", None, "hub:abc")  # nothing to compare in the actor
    (tmp_path / "m" / "model.safetensors").write_bytes(b"weightz")
    actor = source_fingerprint(str(tmp_path / "m"))
    with pytest.raises(ModelChanged) as changed:
        check_loaded(str(tmp_path / "m"), actor, driver)
    assert f"the driver fingerprinted {driver}" in str(changed.value) and actor in str(changed.value)

    # As the driver receives it from Ray Data: only the text of the actor's traceback.
    wrapped = RuntimeError(f"Traceback ...\nactors.model_source.ModelChanged: {changed.value}\n\nmore")
    assert model_changed_in(RuntimeError("outer").with_traceback(None)) is None
    outer = RuntimeError("outer")
    outer.__cause__ = wrapped
    assert model_changed_in(outer) == str(changed.value)
