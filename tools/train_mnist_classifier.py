#!/usr/bin/env python
r"""Trains the MNIST classifier behind `mnist_fd` / `mnist_is` and writes its shipped weights.

Training data: the 4,500-digit `train` split of the bundled MNIST subset (`ddpm_jax.data.load_bundled_mnist`)
only; the 500 `test` digits are used once, after the last epoch, to measure the held-out accuracy recorded
in the provenance JSON (no model selection on them). Recipe: `MnistClassifier` (3 conv + 2 dense layers),
inputs x/127.5 − 1, light augmentation by random integer shifts of up to ±2 pixels (zero padding is the
background value −1), softmax cross-entropy, Adam with a cosine-decayed learning rate, fixed seed, fixed
epoch count. One CPU run takes a few minutes.

Outputs (in `--output_dir`, by default the package's `ddpm_jax/evaluation/assets/`):

  mnist_classifier.npz   the parameters flattened to {'Conv_0/kernel': float32 array, ...}, written with
                         fixed zip timestamps, so identical weights give identical bytes
  mnist_classifier.json  provenance: recipe, seed, epochs, held-out accuracy, date, library versions and
                         the sha256 of the `.npz`

Usage:

  python tools/train_mnist_classifier.py                        # retrain and overwrite the shipped asset
  python tools/train_mnist_classifier.py --output_dir /tmp/clf  # retrain elsewhere (compare the sha256)
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddpm_jax.data import load_bundled_mnist
from ddpm_jax.evaluation import mnist_classifier

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_bundled_mnist import npz_bytes  # pylint: disable=g-import-not-at-top,wrong-import-position

SEED = 20200619
EPOCHS = 15
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
MAX_SHIFT = 2
EVAL_BATCH_SIZE = 500


def to_model_range(images_uint8):
  """uint8 0..255 → float32 in [-1, 1], the classifier's input convention."""
  return images_uint8.astype(np.float32) / 127.5 - 1.0


def random_shift(rng, images, *, max_shift):
  """Shifts each image by an independent integer offset in [-max_shift, max_shift]² (background fill −1).

  Small translations are label-preserving for digits and are the classic cheap MNIST augmentation.
  """
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)),
                  constant_values=-1.0)
  offsets = rng.integers(0, 2 * max_shift + 1, size=(n, 2))
  out = np.empty_like(images)
  for i, (dy, dx) in enumerate(offsets):
    out[i] = padded[i, dy:dy + h, dx:dx + w]
  return out


def make_train_step(model, optimizer):
  """Returns a jitted (params, opt_state, images, labels) → (params, opt_state, loss) Adam step."""

  def loss_fn(params, images, labels):
    _, logits = model.apply({"params": params}, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def train_step(params, opt_state, images, labels):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step


def accuracy(model, params, images, labels):
  """Fraction of `images` (float, [-1, 1]) whose arg-max prediction equals `labels`."""
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x)[1])
  predictions = np.concatenate([
      np.asarray(jnp.argmax(apply(params, images[i:i + EVAL_BATCH_SIZE]), axis=-1))
      for i in range(0, images.shape[0], EVAL_BATCH_SIZE)])
  return float(np.mean(predictions == labels))


def train(*, seed=SEED, epochs=EPOCHS, log=print):
  """Trains `MnistClassifier` on the bundled train split; returns (params, history, test_accuracy)."""
  data = load_bundled_mnist()
  train_x = to_model_range(data["images"][data["train_indices"]])
  train_y = data["labels"][data["train_indices"]].astype(np.int32)
  test_x = to_model_range(data["images"][data["test_indices"]])
  test_y = data["labels"][data["test_indices"]].astype(np.int32)

  model = mnist_classifier.MnistClassifier()
  params = model.init(jax.random.key(seed), train_x[:1])["params"]
  steps_per_epoch = train_x.shape[0] // BATCH_SIZE  # the remainder of each shuffled epoch is dropped
  schedule = optax.cosine_decay_schedule(LEARNING_RATE, decay_steps=epochs * steps_per_epoch)
  optimizer = optax.adam(schedule)
  opt_state = optimizer.init(params)
  train_step = make_train_step(model, optimizer)
  rng = np.random.default_rng(seed)

  history = []
  for epoch in range(epochs):
    start = time.time()
    order = rng.permutation(train_x.shape[0])
    losses = []
    for step in range(steps_per_epoch):
      idx = order[step * BATCH_SIZE:(step + 1) * BATCH_SIZE]
      images = random_shift(rng, train_x[idx], max_shift=MAX_SHIFT)
      params, opt_state, loss = train_step(params, opt_state, images, train_y[idx])
      losses.append(loss)
    mean_loss = float(np.mean(jax.device_get(losses)))
    train_acc = accuracy(model, params, train_x, train_y)
    history.append({"epoch": epoch + 1, "loss": mean_loss, "train_accuracy": train_acc})
    log(f"epoch {epoch + 1}/{epochs}: loss {mean_loss:.4f}, train accuracy {train_acc:.4f} "
        f"({time.time() - start:.1f} s)")
  test_acc = accuracy(model, params, test_x, test_y)
  log(f"held-out test accuracy (500 digits): {test_acc:.4f}")
  return params, history, test_acc


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output_dir", default=mnist_classifier.ASSET_DIR)
  parser.add_argument("--seed", type=int, default=SEED)
  parser.add_argument("--epochs", type=int, default=EPOCHS)
  args = parser.parse_args(argv)

  start = time.time()
  params, history, test_acc = train(seed=args.seed, epochs=args.epochs)
  weights = npz_bytes(mnist_classifier.flatten_params(params))
  os.makedirs(args.output_dir, exist_ok=True)
  weights_path = os.path.join(args.output_dir, mnist_classifier.WEIGHTS_FILE)
  with open(weights_path, "wb") as f:
    f.write(weights)
  data = load_bundled_mnist()
  info = {
      "description": ("MnistClassifier weights for the offline MNIST-FD / MNIST-IS proxies of ddpm-jax; "
                      "not comparable with FID/IS."),
      "architecture": "conv3x3(32)-pool-conv3x3(64)-pool-conv3x3(64)-pool-dense(128, features)-dense(10)",
      "num_parameters": int(sum(v.size for v in mnist_classifier.flatten_params(params).values())),
      "training_data": (f"ddpm_jax bundled mnist_5k.npz, train split ({len(data['train_indices'])} "
                        f"digits, split seed {int(data['split_seed'])}); test split unused in training"),
      "input_range": "[-1, 1] (uint8 / 127.5 - 1)",
      "seed": args.seed,
      "epochs": args.epochs,
      "batch_size": BATCH_SIZE,
      "optimizer": f"adam, cosine-decayed learning rate from {LEARNING_RATE}",
      "augmentation": f"random integer shifts of up to ±{MAX_SHIFT} pixels",
      "test_accuracy": test_acc,
      "test_n": int(len(data["test_indices"])),
      "final_train_loss": history[-1]["loss"],
      "final_train_accuracy": history[-1]["train_accuracy"],
      "train_seconds": round(time.time() - start, 1),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "versions": {"python": platform.python_version(), "jax": jax.__version__,
                   "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__},
      "jax_backend": jax.default_backend(),
      "weights_file": mnist_classifier.WEIGHTS_FILE,
      "weights_sha256": hashlib.sha256(weights).hexdigest(),
      "command": "python tools/train_mnist_classifier.py " + " ".join(sys.argv[1:] if argv is None
                                                                      else argv),
  }
  with open(os.path.join(args.output_dir, mnist_classifier.INFO_FILE), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2, ensure_ascii=False)
    f.write("\n")
  print(f"wrote {weights_path} ({len(weights)} bytes, sha256 {info['weights_sha256']})")


if __name__ == "__main__":
  main()
