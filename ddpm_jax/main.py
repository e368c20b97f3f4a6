r"""ddpm-jax command line: train, sample or evaluate one experiment config in one workdir.

  python -m ddpm_jax.main --config configs/mnist_mu.py --workdir runs/mnist_mu            # train (default)
  python -m ddpm_jax.main --config configs/mnist_mu.py --workdir runs/mnist_mu --mode sample
  python -m ddpm_jax.main --config configs/mnist_mu.py --workdir runs/mnist_mu --mode eval
  python -m ddpm_jax.main --config configs/mnist_mu.py --workdir runs/mnist_mu --mode bpd
  python -m ddpm_jax.main --config configs/mnist_mu.py --workdir runs/mnist_mu --mode sweep --fast
  python -m ddpm_jax.main --config configs/cifar10_mu_vlb_fixed.py:runlocal --workdir /tmp/x  # laptop check
  ddpm-jax --config mnist_mu:runlocal --workdir /tmp/x   # a shipped config by name, from any folder

Any config field can be overridden: --config.train.num_steps=2000 --config.sample.steps=100.
Installed as the `ddpm-jax` command too.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ddpm_jax import configs

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config: a file (configs/mnist_mu.py) or a shipped "
                                "config's bare name (mnist_mu), then an optional :variant (:runlocal).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and summaries.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "bpd", "sweep"],
                  "train: train (resuming if possible), then sample and evaluate; sample: "
                  "config.sample.num_samples samples (.npz + PNG) and the x̂_0 strip; eval: bits/dim and "
                  "sample metrics (MNIST-FD or FID/IS); bpd: the full bound, term by term, with rate/"
                  "distortion (JSON + PNG); sweep: eval over a range of checkpoints (--steps, --fast).")
flags.DEFINE_integer("step", None, "Checkpoint step for --mode sample/eval/bpd (default: the latest).")
flags.DEFINE_string("params", None, "--mode sample/eval/bpd: a parameter directory (e.g. a converted TF "
                    "checkpoint, `python -m ddpm_jax.models.convert`) instead of the workdir's checkpoints; "
                    "outputs still go to --workdir.")
flags.DEFINE_string("steps", "all", "--mode sweep: 'all', 'A:B' (kept steps in [A, B]) or 'A,B,C'.")
flags.DEFINE_bool("fast", False, "--mode sweep: eval.fast_num_samples samples and eval.fast_num_examples "
                  "test images per checkpoint.")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process runs outside TPU VMs / SLURM: host:port of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed():
  """Joins a multi-process JAX run when asked: $DDPM_JAX_DISTRIBUTED=1 (TPU pods and SLURM detect the rest
  themselves) or an explicit --coordinator_address/--num_processes/--process_id."""
  explicit = FLAGS.coordinator_address is not None
  if not explicit and os.environ.get("DDPM_JAX_DISTRIBUTED", "0") != "1":
    return
  import jax  # pylint: disable=g-import-not-at-top
  if explicit and (FLAGS.num_processes is None or FLAGS.process_id is None):
    raise app.UsageError("--coordinator_address needs --num_processes and --process_id too.")
  jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                             num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Imported here so that --help stays fast and JAX starts after flags are parsed.
  from ddpm_jax import run_modes  # pylint: disable=g-import-not-at-top
  # Orbax and grain log every save at INFO; people get one-line summaries and a progress bar instead
  # (--verbosity=0 brings the details back).
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  initialize_distributed()
  config = FLAGS.config
  # Local paths are made absolute (Orbax needs that); URLs such as gs://bucket/run are kept as they are.
  workdir = FLAGS.workdir if "://" in FLAGS.workdir else os.path.abspath(FLAGS.workdir)
  if FLAGS.params and FLAGS.mode not in ("sample", "eval", "bpd"):
    raise app.UsageError(f"--params applies to --mode sample, eval and bpd, not --mode {FLAGS.mode}.")
  if FLAGS.mode == "train":
    from ddpm_jax import train  # pylint: disable=g-import-not-at-top
    result = train.train_and_evaluate(config, workdir)
  elif FLAGS.mode == "sample":
    result = run_modes.sample(config, workdir, step=FLAGS.step, params_dir=FLAGS.params)
  elif FLAGS.mode == "bpd":
    result = run_modes.bpd(config, workdir, step=FLAGS.step, params_dir=FLAGS.params)
  elif FLAGS.mode == "sweep":
    result = run_modes.sweep(config, workdir, steps=FLAGS.steps, fast=FLAGS.fast)
  else:
    result = run_modes.evaluate(config, workdir, step=FLAGS.step, params_dir=FLAGS.params)
  print(json.dumps(result, indent=2, default=str))


def run(argv=None):
  """Console-script and `python -m ddpm_jax.main` entry point (`ddpm-jax`)."""
  argv = sys.argv if argv is None else argv
  try:
    argv = configs.resolve_argv(argv)
  except FileNotFoundError as e:
    print(f"ddpm-jax: error: {e}", file=sys.stderr)
    sys.exit(2)
  app.run(main, argv=argv)


if __name__ == "__main__":
  run()
