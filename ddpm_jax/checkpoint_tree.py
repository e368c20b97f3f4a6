"""Pytrees of a checkpoint, without Orbax: leaf paths ('params/Dense_0/kernel'), the shape and dtype a
restore template expects of each leaf, host copies of the arrays, and the CRC-32 integrity records that
`checkpointing` stores with every save and checks on every restore."""

import numbers
import zlib

import jax
import numpy as np


def host_values(leaves):
  """One host (numpy) copy of each leaf, fetched in one batch; None where this process cannot see the whole
  array (a leaf sharded over other hosts) or the leaf is a Python scalar (stored as such, not checked)."""
  picked, where = [], []
  for i, leaf in enumerate(leaves):
    if isinstance(leaf, jax.Array):
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
      if leaf.is_fully_replicated:
        picked.append(leaf.addressable_shards[0].data)
      elif leaf.is_fully_addressable:
        picked.append(leaf)
      else:
        continue
      where.append(i)
    elif isinstance(leaf, (np.ndarray, np.generic)):
      picked.append(np.asarray(leaf))
      where.append(i)
  values = [None] * len(leaves)
  for i, value in zip(where, jax.device_get(picked)):
    values[i] = np.asarray(value)
  return values


def crc32(value):
  return zlib.crc32(np.ascontiguousarray(value).view(np.uint8).reshape(-1)) & 0xFFFFFFFF


def is_float(dtype):
  return jax.dtypes.issubdtype(dtype, np.floating) or jax.dtypes.issubdtype(dtype, np.complexfloating)


def integrity_records(tree):
  """({path: [crc32, dtype, shape]}, [paths of float arrays holding NaN or ±inf]) of a state pytree."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  values = host_values([leaf for _, leaf in flat])
  records, nonfinite = {}, []
  for (key_path, _), value in zip(flat, values):
    if value is None:
      continue
    path = path_str(key_path)
    records[path] = [crc32(value), value.dtype.name, list(value.shape)]
    if is_float(value.dtype) and not np.isfinite(value).all():
      nonfinite.append(path)
  return records, nonfinite


def path_str(key_path):
  """'params/Dense_0/kernel' for a pytree key path, the same for dicts, dataclass fields and sequences."""
  parts = []
  for entry in key_path:
    if isinstance(entry, jax.tree_util.DictKey):
      parts.append(str(entry.key))
    elif isinstance(entry, jax.tree_util.GetAttrKey):
      parts.append(entry.name)
    elif isinstance(entry, jax.tree_util.SequenceKey):
      parts.append(str(entry.idx))
    elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
      parts.append(str(entry.key))
    else:
      parts.append(str(entry))
  return "/".join(parts) or "<root>"


def describe(shape, dtype):
  return f"{np.dtype(dtype).name if dtype is not None else '?'}{list(shape) if shape is not None else '[?]'}"


def expected_leaf(leaf):
  """(shape, dtype) the saved metadata must show for a template leaf; dtype None = any (Python scalars).

  Orbax stores a typed PRNG key array as its raw key data (uint32, trailing key dimension), so a typed-key
  template leaf expects the shape and dtype of `jax.random.key_data` of it.
  """
  if isinstance(leaf, (bool, numbers.Number)):
    return (), None
  shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
  if shape is None or dtype is None:
    return None, None
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    raw = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype))
    return tuple(raw.shape), np.dtype(raw.dtype)
  return tuple(shape), np.dtype(dtype)


def abstract_leaf(leaf):
  """The restore target of one template leaf: jax.Arrays become ShapeDtypeStructs that keep their sharding."""
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return leaf  # ShapeDtypeStruct (kept with its sharding), numpy arrays and Python scalars restore as such
