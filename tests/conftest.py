"""Test-session set-up shared by every test module.

Runs before JAX is imported anywhere: it gives the CPU backend 8 virtual devices (so the sharded code paths
are exercised on one machine), turns on float64 support only where a test asks for it (never globally, so
the code under test runs in the float32 it runs in for real), and enables the persistent compilation cache
so that repeated shapes across test files and pytest-xdist workers compile once.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "ddpm_jax", "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# TensorFlow must never be needed at run time; tests that need it (checkpoint conversion) run it in a
# subprocess of their own.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402  (must come after the environment above)

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


# --- fixtures shared by the tests that train ----------------------------------------------------------------

import pytest  # noqa: E402
from tiny import tiny_config  # noqa: E402


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
  """Where the tiny runs prepare the bundled digits (once per test session)."""
  return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def straight_run(data_root, tmp_path_factory):
  """6 uninterrupted steps of the tiny config: (config, workdir, summary), shared by the run-mode tests."""
  from ddpm_jax import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("straight"))
  config = tiny_config(data_root, num_steps=6)
  return config, workdir, train.train_and_evaluate(config, workdir)


# --- fixtures shared by the FID Inception tests -------------------------------------------------------------


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory):
  """A random full-size FID-Inception state dict as `.pth` and `.npz`: (state dict, pth, npz, params),
  shared by tests/test_inception_weights.py (conversion, folding) and tests/test_inception.py (the network)."""
  import torch_files  # pylint: disable=g-import-not-at-top
  return torch_files.write_random_weights(tmp_path_factory.mktemp("weights"))
