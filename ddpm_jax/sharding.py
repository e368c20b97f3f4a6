"""Device meshes and array placement: the only module (with checkpointing.py) that knows about devices.

The original pmapped its train step over the 8 cores of a TPU v3-8. The same program today is `jax.jit`
over a `Mesh` with one `'data'` axis spanning every device of every host: the batch is sharded along it,
parameters / EMA / optimizer state are replicated. Each host feeds its own slice of the global batch
(`global_batch`), so the same code runs on one CPU, one GPU, a TPU VM or a pod.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ddpm_jax import errors

DATA_AXIS = "data"


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: every device of every process)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, *, leading_axes: int = 0) -> NamedSharding:
  """Shards axis `leading_axes` (the batch axis) over 'data'; earlier axes (e.g. k stacked steps) are not."""
  return NamedSharding(mesh, P(*([None] * leading_axes), DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, *, field: str = "train.batch_size") -> None:
  """Raises ConfigError unless `batch_size` splits evenly over the mesh's devices and the processes."""
  n = mesh.devices.size
  if batch_size % n or batch_size % jax.process_count():
    raise errors.ConfigError(f"config.{field}={batch_size} is invalid: it must be divisible by the number of "
                             f"devices ({n}) and of processes ({jax.process_count()}), as the batch is split "
                             "over them.")


def global_batch(local: Any, mesh: Mesh, *, leading_axes: int = 0) -> Any:
  """Assembles each process's slice of the batch into global arrays sharded over 'data'.

  `local` is a pytree of host arrays whose batch axis (axis `leading_axes`) holds this process's examples;
  the global batch is their concatenation over processes in process order.
  """
  sharding = batch_sharding(mesh, leading_axes=leading_axes)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree of (host or device) arrays replicated on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))
