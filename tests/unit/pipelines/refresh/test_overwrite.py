"""`--mode overwrite` of a refresh run: the new attempt is built beside the run (`runs/<id>.overwrite/`) and
moved over it only once complete, its manifest's paths pointed at the run's place; a driver that died
between removing the old run and moving the attempt leaves the move to the next start. On a local disk and on
a real S3-compatible server on loopback (moto)."""

from __future__ import annotations

import uuid

import pytest

from pipelines.refresh.publish import RunLayout, finish_replacing, replace_run
from pipelines.storage import uris
from tests import media_files


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "root")
        return
    with media_files.s3_bucket(f"overwrite-{uuid.uuid4().hex[:8]}") as bucket:  # moto keeps buckets
        yield f"{bucket}/root"


def complete_run(layout: RunLayout, text: str) -> None:
    uris.write_json(
        layout.manifest,
        {"run_id": layout.run_id, "text": text, "outputs": {"ranked": uris.join(layout.run_dir, "ranked")}},
    )
    uris.write_json(uris.join(layout.run_dir, "ranked", "part-0.json"), {"text": text})


def test_the_attempt_replaces_the_run_only_when_moved(root):
    run = RunLayout(root, "night")
    complete_run(run, "old")
    attempt = run.overwrite_attempt()
    assert attempt.run_dir == uris.join(root, "runs", "night.overwrite") and attempt.run_id == "night"
    complete_run(attempt, "new")
    assert uris.read_json(run.manifest)["text"] == "old"  # untouched while the attempt runs

    final = replace_run(attempt)
    assert final == run and not uris.exists(attempt.run_dir)
    manifest = uris.read_json(run.manifest)
    assert manifest["text"] == "new"
    assert manifest["outputs"]["ranked"] == uris.join(run.run_dir, "ranked")
    assert uris.read_json(uris.join(run.run_dir, "ranked", "part-0.json")) == {"text": "new"}
    assert uris.list_names(uris.join(root, "runs")) == ["night"]


def test_a_move_cut_short_is_finished_by_the_next_start(root):
    run = RunLayout(root, "night")
    complete_run(run.overwrite_attempt(), "new")
    assert finish_replacing(run) is True  # the old run is gone, the attempt is complete: move it
    assert uris.read_json(run.manifest)["text"] == "new"
    assert finish_replacing(run) is False  # nothing left to do

    unfinished = RunLayout(root, "other")
    uris.write_json(uris.join(unfinished.overwrite_attempt().run_dir, "_started.json"), {"started_at": 1})
    assert finish_replacing(unfinished) is False  # an attempt without its manifest is never moved
    assert not uris.exists(unfinished.run_dir)
