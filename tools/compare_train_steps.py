"""Three train steps of a config on fixed synthetic batches, from the code in a given checkout: saves the
losses, gradient norms and final (EMA) parameters, so two checkouts can be compared on the same inputs.

  git worktree add /tmp/before <commit>
  python tools/compare_train_steps.py /tmp/before /tmp/before.npz mnist_mu.py   # each checkout's own config
  python tools/compare_train_steps.py $PWD /tmp/after.npz mnist_mu.py
  python -c "import numpy as np; a, b = np.load('/tmp/before.npz'), np.load('/tmp/after.npz'); \
      print(abs(a['losses'] - b['losses']).max(), abs(a['params'] - b['params']).max())"

Arguments: the checkout's root, the output .npz, a config path (absolute, or relative to the checkout's
configs/).
"""
import sys, numpy as np
root, out, cfg = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, root)
import jax
from benchmarks import common
from ddpm_jax import train
import argparse
p = argparse.ArgumentParser(); common.add_common_args(p)
config, _ = common.build_config(p.parse_args(["--config", (cfg if cfg.startswith("/") else f"{root}/configs/{cfg}")]), **{"train.batch_size": 32})
exp = common.build_experiment(config)
if hasattr(common, "init_state"):  # checkouts before ddpm_jax/experiment.py (5 Dec 2026)
  state = common.init_state(exp)
  step = train.compile_train_step(config, exp.model, exp.diffusion, exp.tx, exp.sampler, exp.mesh, state)
else:
  state = train.create_train_state(exp)
  step = train.compile_train_step(exp, state)
losses = []
for i in range(3):
  b = common.synthetic_batch(exp, 32, leading=(1,), seed=i)
  state, m = step(state, b)
  losses.append((float(m["loss"][0]), float(m["grad_norm"][0])))
flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)])
np.savez(out, losses=np.array(losses), params=flat, ema=np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.ema_params)]))
print(losses)
