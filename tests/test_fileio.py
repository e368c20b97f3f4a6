"""Workdir files behind a URL: ddpm_jax.fileio and the writers that use it, on fsspec's in-memory filesystem
(memory://), which stands in for gs:// here (no network). Orbax on gs:// is not exercised."""

import json
import uuid

import fsspec
import numpy as np
import pytest

from ddpm_jax import fileio
from ddpm_jax import metrics_writer
from ddpm_jax import visualize


@pytest.fixture
def url():
  return f"memory://ddpm_jax_test/{uuid.uuid4().hex}"


def _remote(path):
  fs = fsspec.filesystem("memory")
  return fs.cat(path.split("://", 1)[1])


def test_paths_resolve_and_join(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert fileio.resolve("runs/a") == str(tmp_path / "runs" / "a")
  assert fileio.resolve("gs://bucket/run/") == "gs://bucket/run"
  assert fileio.join("gs://bucket/run", "samples", "x.png") == "gs://bucket/run/samples/x.png"
  assert fileio.join("/tmp/run", "samples", "x.png") == "/tmp/run/samples/x.png"


def test_write_read_append_copy_on_a_url(url):
  path = fileio.join(url, "a", "b.txt")
  fileio.write_text(path, "hello\n")
  fileio.append_text(path, "world\n")
  assert fileio.read_text(path) == "hello\nworld\n" and fileio.exists(path)
  fileio.copy(path, fileio.join(url, "c.txt"))
  assert _remote(fileio.join(url, "c.txt")) == b"hello\nworld\n"
  assert not fileio.exists(fileio.join(url, "missing"))


def test_unknown_scheme_names_the_url():
  with pytest.raises(ValueError, match=r"cannot open 'nosuchfs://x/y': no filesystem for nosuchfs://"):
    fileio.write_text("nosuchfs://x/y", "z")


def test_local_writes_are_atomic_and_make_folders(tmp_path):
  path = tmp_path / "deep" / "er" / "f.bin"
  fileio.write_bytes(str(path), b"123")
  assert path.read_bytes() == b"123" and not (tmp_path / "deep" / "er" / "f.bin.tmp").exists()


def test_metric_writer_on_a_url_uploads_and_resumes(url):
  writer = metrics_writer.MetricWriter(url, sync_seconds=0.0)
  writer.scalars(1, {"loss": 0.5})
  assert json.loads(_remote(fileio.join(url, "metrics.jsonl")))["loss"] == 0.5  # synced at once
  writer.image(1, "samples", np.zeros((8, 8, 1), np.uint8))
  writer.scalars(2, {"loss": 0.25})
  writer.close()
  fs = fsspec.filesystem("memory")
  events = fs.glob(fileio.join(url, "tensorboard", "*").split("://", 1)[1])
  assert len(events) == 1 and fs.size(events[0]) > 100
  # A resumed run's writer continues the remote log instead of replacing it.
  writer = metrics_writer.MetricWriter(url, sync_seconds=1e9)
  writer.scalars(3, {"loss": 0.125})
  writer.close()  # close uploads whatever the interval held back
  lines = _remote(fileio.join(url, "metrics.jsonl")).decode().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_pictures_go_to_a_url(url):
  grid = visualize.save_grid(fileio.join(url, "samples", "g.png"), np.zeros((4, 8, 8, 1), np.float32))
  assert _remote(grid)[:8] == b"\x89PNG\r\n\x1a\n"


def test_tfds_data_dir_urls_are_kept():
  from ddpm_jax.data import sources  # pylint: disable=g-import-not-at-top
  assert sources.resolve_data_dir("gs://bucket/tensorflow_datasets/") == "gs://bucket/tensorflow_datasets"
