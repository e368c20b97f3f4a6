"""Pictures: images in [-1, 1] to uint8, sample grids as PNG, the bound plot; local or gs:// paths."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from ddpm_jax import fileio


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats → uint8 as the original code did: clip((x + 1) · 127.5, 0, 255), truncated."""
  x = np.asarray(images, np.float32)
  return np.clip((x + 1.0) * 127.5, 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, *, ncol: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """Tiles uint8 images [N, H, W, C] into one [rows·(H+pad)+pad, ncol·(W+pad)+pad, C] image."""
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"make_grid expects uint8 images [N, H, W, C], got {images.dtype}{images.shape}.")
  n, h, w, c = images.shape
  ncol = ncol or max(1, int(math.ceil(math.sqrt(n))))
  nrow = int(math.ceil(n / ncol))
  grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, np.uint8)
  for i in range(n):
    r, q = divmod(i, ncol)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
  return grid


def save_image(path: str, image: np.ndarray, *, scale: int = 1) -> str:
  """Writes a uint8 [H, W, C] image (C = 1 or 3) as PNG, optionally enlarged `scale`× (nearest)."""
  image = np.asarray(image)
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  if scale > 1:
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
  buffer = io.BytesIO()
  pil.save(buffer, format="PNG")
  return fileio.write_bytes(path, buffer.getvalue())


def save_grid(path: str, images, *, ncol: int | None = None) -> str:
  """Saves samples in [-1, 1] (or uint8) [N, H, W, C] as one PNG grid; small images are enlarged."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = to_uint8(images)
  scale = max(1, 64 // images.shape[1])
  return save_image(path, make_grid(images, ncol=ncol), scale=min(scale, 4))


def plot_bound(path: str, report: dict) -> str:
  """The `--mode bpd` report as a PNG: per-timestep bound terms, and DDPM §4.3's rate and distortion.

  Left: L_t in bits/dim against t (log scale). Middle: rate (bits/dim) and distortion (RMSE on [0, 255])
  against reverse-process steps T − t. Right: distortion against rate, ending at the lossless total.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  terms = np.asarray(report["terms_bpd"])
  rate = np.asarray(report["rate_bpd"])
  dist = np.asarray(report["distortion_rmse"])
  t = np.arange(len(terms))
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  ax = axes[0]
  ax.semilogy(t, np.maximum(terms, 1e-12), lw=1.2)
  ax.set_xlabel("timestep t")
  ax.set_ylabel("L_t (bits/dim)")
  ax.set_title(f"bound terms: total {report['total_bpd']:.4f} ± {report['total_bpd_stderr']:.4f} bits/dim\n"
               f"prior L_T {report['prior_bpd']:.2e}, decoder L_0 {report['decoder_nll_bpd']:.3f}", fontsize=9)
  ax.grid(alpha=0.3, which="both")
  ax = axes[1]
  steps = len(terms) - t
  ax.plot(steps, rate, color="C0", label="rate (bits/dim)")
  ax.set_xlabel("reverse steps T − t")
  ax.set_ylabel("rate (bits/dim)", color="C0")
  twin = ax.twinx()
  twin.plot(steps, dist, color="C3", label="distortion (RMSE, [0, 255])")
  twin.set_ylabel("distortion (RMSE, [0, 255])", color="C3")
  ax.set_title("rate and distortion along the reverse process", fontsize=9)
  ax.grid(alpha=0.3)
  ax = axes[2]
  # From t = T-1 (prior only) down to t = 0, then the lossless end point (all bits, no distortion).
  ax.plot(np.append(rate[::-1], report["total_bpd"]), np.append(dist[::-1], 0.0), marker=".", ms=3, lw=1)
  ax.set_xlabel("rate (bits/dim)")
  ax.set_ylabel("distortion (RMSE, [0, 255])")
  ax.set_title("rate–distortion (DDPM §4.3)", fontsize=9)
  ax.grid(alpha=0.3)
  fig.suptitle(f"{report.get('split', '')} split, {report['num_examples']} images, step "
               f"{report.get('checkpoint_step', '?')}, {report.get('params', '')} params", fontsize=10)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  return fileio.write_bytes(path, buffer.getvalue())


def plot_guidance(path: str, rows: list[dict]) -> str:
  """Classifier-free guidance's trade-off as a PNG: the classifier's agreement with the requested labels
  (fidelity) and MNIST-FD / FID (distance to the data, lower is better) against the guidance scale w."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  w = [r["guidance_scale"] for r in rows]
  fd_key = next((k for k in rows[0] if k.startswith(("mnist_fd@", "fid@"))), None)
  fig, ax = plt.subplots(figsize=(6, 4))
  if "mnist_label_accuracy" in rows[0]:
    ax.plot(w, [100 * r["mnist_label_accuracy"] for r in rows], "o-", color="tab:blue")
    ax.set_ylabel("classifier agrees with the label (%)", color="tab:blue")
  ax.set_xlabel("guidance scale w (0: unconditional, 1: conditional)")
  if fd_key:
    ax2 = ax.twinx()
    ax2.plot(w, [r[fd_key] for r in rows], "s--", color="tab:red")
    ax2.set_ylabel(fd_key.replace("_", "-").upper() + " (lower is better)", color="tab:red")
  ax.set_title("Classifier-free guidance: fidelity against diversity")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  return fileio.write_bytes(path, buffer.getvalue())
