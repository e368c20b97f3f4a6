"""The command line's modes on a trained tiny workdir: sample (skip types, progressive strip), bpd (the full
bound term by term, rate/distortion), eval (bits/dim + MNIST-FD) and sweep (metrics across checkpoints)."""

import json
import os

import numpy as np
import pytest

from ddpm_jax import diffusion as diffusion_lib
from ddpm_jax import experiment
from ddpm_jax import run_modes


# --- step placement (no model) ------------------------------------------------------------------------------


def test_sampling_timesteps_follow_the_ddim_paper():
  # uniform: τ_i = i·⌊T/S⌋ below T (more than S steps when S does not divide T).
  assert diffusion_lib.sampling_timesteps(1000, 50, "uniform") == list(range(0, 1000, 20))
  assert len(diffusion_lib.sampling_timesteps(1000, 30, "uniform")) == 31
  # quadratic: ⌊(i·√(0.8T)/(S-1))²⌋ = ⌊800 i² / 81⌋ for T = 1000, S = 10.
  assert diffusion_lib.sampling_timesteps(1000, 10, "quadratic") == [800 * i * i // 81 for i in range(10)]
  quad = diffusion_lib.sampling_timesteps(1000, 100, "quadratic")
  assert len(quad) < 100 and quad == sorted(set(quad)) and quad[-1] == 800
  # even: both ends, exactly S steps.
  even = diffusion_lib.sampling_timesteps(100, 7, "even")
  assert len(even) == 7 and even[0] == 0 and even[-1] == 99
  with pytest.raises(ValueError, match=r"skip_type='log'.*'quadratic'"):
    diffusion_lib.sampling_timesteps(100, 10, "log")
  with pytest.raises(ValueError, match=r"steps=0 must lie in \[1, num_timesteps=100\]"):
    diffusion_lib.sampling_timesteps(100, 0, "uniform")


def test_parse_steps():
  kept = [2, 4, 6]
  assert run_modes.parse_steps("all", kept) == kept
  assert run_modes.parse_steps("3:", kept) == [4, 6]
  assert run_modes.parse_steps(":4", kept) == [2, 4]
  assert run_modes.parse_steps("6,2", kept) == [2, 6]
  with pytest.raises(ValueError, match=r"--steps='5'.*kept steps: \[2, 4, 6\]"):
    run_modes.parse_steps("5", kept)
  with pytest.raises(ValueError, match=r"--steps='x:y' is invalid"):
    run_modes.parse_steps("x:y", kept)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    run_modes.parse_steps("all", [])


# --- on a trained workdir -----------------------------------------------------------------------------------


def test_bpd_mode_writes_every_term_and_the_rate_distortion_curve(straight_run):
  config, workdir, _ = straight_run
  config = config.copy_and_resolve_references()
  config.eval.num_examples = 10  # not a multiple of the batch of 8: the second batch is cut to 2
  result = run_modes.bpd(config, workdir)
  with open(result["json"], encoding="utf-8") as f:
    report = json.load(f)
  T = config.diffusion.num_timesteps
  assert report["num_examples"] == 10 and report["params"] == "ema" and report["checkpoint_step"] == 6
  assert len(report["terms_bpd"]) == len(report["rate_bpd"]) == len(report["distortion_rmse"]) == T
  assert report["total_bpd"] == pytest.approx(report["prior_bpd"] + sum(report["terms_bpd"]), rel=1e-5)
  assert report["rate_bpd"][-1] == pytest.approx(report["prior_bpd"])
  assert report["rate_bpd"][0] == pytest.approx(report["total_bpd"] - report["decoder_nll_bpd"], rel=1e-5)
  assert np.all(np.diff(report["rate_bpd"]) <= 1e-9)  # KL terms are non-negative
  assert all(0 <= d <= 255 * 2 for d in report["distortion_rmse"])
  assert os.path.getsize(result["png"]) > 10_000


def test_sample_modes_skip_types_and_progressive_strip(straight_run):
  config, workdir, _ = straight_run
  config = config.copy_and_resolve_references()
  config.sample.progressive_rows = 3
  config.sample.steps = 10
  config.sample.skip_type = "quadratic"
  result = run_modes.sample(config, workdir)
  assert result["sampling_steps"] == len(diffusion_lib.sampling_timesteps(50, 10, "quadratic"))
  assert "quadratic" in result["grid"] and np.load(result["npz"])["images"].shape == (5, 28, 28, 1)
  # One row per chain: x̂_0 at every kept timestep (the quadratic skip keeps 9 distinct steps of 50, so the
  # recording stride is 1), from noisy to clean, then the sample.
  kept = diffusion_lib.sampling_timesteps(50, 10, "quadratic")
  assert len(kept) == 9 and result["progressive_timesteps"] == kept[::-1]
  from PIL import Image  # pylint: disable=g-import-not-at-top
  strip = Image.open(result["progressive_png"])
  scale = 2  # save_grid enlarges 28² images 2×
  assert strip.size == (scale * (10 * 30 + 2), scale * (3 * 30 + 2))
  config.sample.sampler = "ddim"
  config.sample.skip_type = "uniform"
  result = run_modes.sample(config, workdir)
  assert result["sampling_steps"] == 10 and "ddim10_uniform_eta0" in result["grid"]
  assert "skipped" in result["progressive"]


def test_eval_and_sweep_write_metrics_history_and_table(straight_run):
  config, workdir, _ = straight_run
  config = config.copy_and_resolve_references()
  config.eval.num_samples = 16
  config.eval.fast_num_samples = 8
  config.eval.fast_num_examples = 8
  res = run_modes.evaluate(config, workdir)
  assert np.isfinite(res["bpd"]) and res["num_examples"] == 8
  assert res["mnist_fd@16"] > 0 and 1.0 <= res["mnist_is"] <= 10.0
  assert res["mnist_fd_reference"].startswith("mnist5k/test")
  steps = experiment.checkpoint_steps(config, workdir)
  sweep = run_modes.sweep(config, workdir, steps="all", fast=True)
  assert [r["checkpoint_step"] for r in sweep["rows"]] == steps
  assert all("mnist_fd@8" in r for r in sweep["rows"])
  with open(sweep["table"], encoding="utf-8") as f:
    table = f.read().strip().splitlines()
  assert table[0].startswith("| step | bits/dim") and "mnist_fd@8" in table[0]
  assert len(table) == 2 + len(steps)
  with open(os.path.join(workdir, "eval_history.jsonl"), encoding="utf-8") as f:
    history = [json.loads(line) for line in f]
  assert [h["checkpoint_step"] for h in history] == [6] + steps


def test_eval_adds_fid_and_is_when_inception_weights_are_given(straight_run, tmp_path, monkeypatch):
  """The eval plumbing (weights → cached reference statistics of the train split → FID@N, IS@N) with the
  Inception network replaced by a cheap fixed random map (tests/test_inception*.py test the network)."""
  from ddpm_jax.evaluation import inception as inc  # pylint: disable=g-import-not-at-top
  from ddpm_jax.evaluation import inception_net  # pylint: disable=g-import-not-at-top
  from ddpm_jax.evaluation import inception_weights  # pylint: disable=g-import-not-at-top
  config, workdir, _ = straight_run
  config = config.copy_and_resolve_references()
  weights = tmp_path / "weights.npz"
  weights.write_bytes(b"stand-in weights")
  seen = []

  def fake(params, images, **kwargs):
    del params, kwargs
    seen.append(images.shape)
    x = images.reshape(images.shape[0], -1).astype(np.float64)
    rng = np.random.default_rng(0)
    return (np.tanh(x @ rng.normal(size=(x.shape[1], 16)) / 300.0).astype(np.float32),
            (x @ rng.normal(size=(x.shape[1], 1008)) / 3000.0).astype(np.float32))
  monkeypatch.setattr(inc, "inception_features_and_logits", fake)
  monkeypatch.setattr(inception_net, "FEATURE_DIM", 16)
  monkeypatch.setattr(inception_weights, "load_inception_params", lambda path: {"params": str(path)})
  monkeypatch.setattr(run_modes, "_INCEPTION_PARAMS", {})
  config.eval.inception_weights = str(weights)
  config.eval.fid_reference_num_examples = 40
  config.eval.num_samples = 12
  res = run_modes.evaluate(config, workdir)
  assert res["fid@12"] > 0 and 1.0 <= res["inception_score"] <= 1008.0 and res["is_label"] == "IS@12"
  assert res["fid_reference"].startswith("mnist5k/train (n=40") and res["mnist_fd@12"] > 0
  assert seen == [(40, 28, 28, 1), (12, 28, 28, 1)]  # the reference split, then the samples
  cache = tmp_path / "fid_stats_mnist5k_native_train_40.npz"
  assert cache.exists()
  run_modes.evaluate(config, workdir)  # a second eval reuses the cached statistics
  assert seen[2:] == [(12, 28, 28, 1)]


# --- a class-conditional model with a null class ------------------------------------------------------------


@pytest.fixture(scope="module")
def cond_run(data_root, tmp_path_factory):
  """4 steps of the tiny config made class-conditional (10 digits + the null class), guidance w = 2."""
  from tiny import tiny_config  # pylint: disable=g-import-not-at-top
  from ddpm_jax import train  # pylint: disable=g-import-not-at-top
  config = tiny_config(data_root, num_steps=4, num_grid_samples=10)
  config.model.num_classes = 10
  config.model.label_dropout = 0.1
  config.sample.guidance_scale = 2.0
  config.eval.num_samples = 20
  config.eval.fast_num_samples = 10
  config.eval.fast_num_examples = 8
  config.eval.guidance_scales = (0.0, 2.0)
  workdir = str(tmp_path_factory.mktemp("cond"))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_conditional_sampling_stores_labels_and_lays_out_one_row_per_class(cond_run):
  config, workdir = cond_run
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # The training-end grid (10 samples, digits 0-9) has the same layout: one row per digit.
  assert Image.open(os.path.join(workdir, "samples.png")).size == (2 * (1 * 30 + 2), 2 * (10 * 30 + 2))
  config = config.copy_and_resolve_references()
  config.sample.progressive_rows = 0
  config.sample.num_samples = 20
  result = run_modes.sample(config, workdir)  # every digit in turn
  data = np.load(result["npz"])
  np.testing.assert_array_equal(data["labels"], np.arange(20) % 10)
  assert data["images"].shape == (20, 28, 28, 1) and result["guidance_scale"] == 2.0
  width, height = Image.open(result["grid"]).size
  assert (width, height) == (2 * (2 * 30 + 2), 2 * (10 * 30 + 2))  # 10 rows (digits) × 2 columns, enlarged 2×
  config.sample.labels = (3,)
  config.sample.num_samples = 5
  config.sample.progressive_rows = 2  # the x̂0 strip of guided chains for the digit 3
  result = run_modes.sample(config, workdir)
  assert "_w2_y3" in result["npz"] and os.path.exists(result["progressive_png"])
  np.testing.assert_array_equal(np.load(result["npz"])["labels"], [3] * 5)


def test_conditional_eval_reports_label_accuracy_per_guidance_scale_and_sweep_compiles_once(cond_run):
  config, workdir = cond_run
  res = run_modes.evaluate(config, workdir)
  assert [r["guidance_scale"] for r in res["guidance"]] == [0.0, 2.0]
  for row in res["guidance"]:
    assert 0.0 <= row["mnist_label_accuracy"] <= 1.0 and row["mnist_fd@20"] > 0
  assert 0.0 <= res["mnist_label_accuracy"] <= 1.0  # at the config's own scale
  with open(res["guidance_table"], encoding="utf-8") as f:
    table = f.read().splitlines()
  assert table[0].startswith("| guidance w | mnist_fd@20 | mnist_label_accuracy") and len(table) == 4
  assert os.path.getsize(res["guidance_png"]) > 5_000
  sweep = run_modes.sweep(config, workdir, steps="all", fast=True)
  assert [r["checkpoint_step"] for r in sweep["rows"]] == [2, 4]
  assert sweep["compilations"] == {"bpd": 1, "sample": 1}  # compiled once, fed both checkpoints
