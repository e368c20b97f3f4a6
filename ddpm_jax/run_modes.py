"""`--mode sample` and `--mode eval`: work on a trained workdir's checkpoint."""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from ddpm_jax import train
from ddpm_jax import visualize


def sample(config, workdir: str, *, step: int | None = None) -> dict:
  """Writes exactly `sample.num_samples` samples (uint8 .npz and a PNG grid) from a checkpoint."""
  exp, state = train.restore_for_inference(config, workdir, step=step)
  s = config.sample
  params = state.ema_params if s.use_ema else state.params
  images = train.generate_samples(exp.sample_fn(), params, key=jax.random.PRNGKey(config.seed + 1),
                                  num_samples=s.num_samples, batch_size=s.batch_size, mesh=exp.mesh,
                                  desc="sampling")
  ckpt_step = int(state.step)
  steps = s.steps or config.diffusion.num_timesteps
  tag = f"step{ckpt_step}_{s.sampler}{steps}" + (f"_eta{s.eta:g}" if s.sampler == "ddim" else "")
  out_dir = os.path.join(workdir, "samples")
  result = {"checkpoint_step": ckpt_step, "num_samples": int(len(images)), "sampler": s.sampler,
            "sampling_steps": steps, "params": "ema" if s.use_ema else "raw"}
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    npz = os.path.join(out_dir, f"{tag}.npz")
    np.savez_compressed(npz, images=visualize.to_uint8(images))
    grid = visualize.save_grid(os.path.join(out_dir, f"{tag}.png"), images[:min(len(images), 100)])
    result.update(npz=npz, grid=grid)
  return result


def evaluate(config, workdir: str, *, step: int | None = None) -> dict:
  """Bits/dim on `data.eval_split` (the full bound unless eval.full_bound=False), as JSON in the workdir."""
  exp, state = train.restore_for_inference(config, workdir, step=step)
  params = state.ema_params if config.eval.use_ema else state.params
  res = train.evaluate_bpd(config, exp.bpd_fn(full_bound=config.eval.full_bound), params, exp.mesh,
                           key=jax.random.PRNGKey(config.seed + 2), num_examples=config.eval.num_examples,
                           desc="bits/dim")
  res.update(checkpoint_step=int(state.step), split=config.data.eval_split,
             params="ema" if config.eval.use_ema else "raw",
             method=train.bpd_method(config))
  if jax.process_index() == 0:
    path = os.path.join(workdir, f"eval_step{int(state.step)}.json")
    with open(path, "w", encoding="utf-8") as f:
      json.dump(res, f, indent=2)
    res["json"] = path
  return res
