"""Tests of the TF-checkpoint name mapping, checked against an independent float64 NumPy U-Net.

The NumPy network below is written from the original TF code's description (`diffusion_tf/models/
unet.py`, `nn.py`): it reads every parameter by its ORIGINAL variable name from a dict. Running it once
with a random generator creates exactly the variables the original would have; converting that dict
with `params_from_named_arrays` and running the Flax UNet must give the same output. A wrong name, a
wrong layer order, padding or normalisation in either would make them differ.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.models import convert
from ddpm_jax.models.unet import UNet

EMA = '/ExponentialMovingAverage'


class NumpyUNet:
  """Float64 forward pass of the original DDPM U-Net (+ Improved-DDPM options) over named arrays.

  If `rng` is given, a variable that is not in `named` yet is created (random, nonzero, so that the
  near-zero-initialised layers also matter) and stored under its name.
  """

  def __init__(self, named, *, suffix='', rng=None):
    self.named, self.suffix, self.rng = named, suffix, rng

  def var(self, name, shape, kind):
    key = name + self.suffix
    if key not in self.named:
      assert self.rng is not None, f'missing {key}'
      r = self.rng
      if kind == 'W':
        fan_in = int(np.prod(shape[:-1]))
        value = r.normal(size=shape) / math.sqrt(fan_in)
      elif kind == 'gamma':
        value = 1.0 + 0.2 * r.normal(size=shape)
      else:
        value = 0.2 * r.normal(size=shape)
      self.named[key] = value.astype(np.float32)
    value = np.asarray(self.named[key], np.float64)
    assert value.shape == tuple(shape), (key, value.shape, shape)
    return value

  # --- layers (nn.py) ---
  def conv(self, x, name, cout, stride=1):
    b, h, w, cin = x.shape
    kernel = self.var(name + '/W', (3, 3, cin, cout), 'W')
    bias = self.var(name + '/b', (cout,), 'b')
    # TF "SAME": stride 1 pads one each side; stride 2 on an even size pads 0 before, 1 after.
    lo, hi = (1, 1) if stride == 1 else (0, 1)
    xp = np.pad(x, [(0, 0), (lo, hi), (lo, hi), (0, 0)])
    ho, wo = -(-h // stride), -(-w // stride)
    out = np.zeros((b, ho, wo, cout))
    for di in range(3):
      for dj in range(3):
        patch = xp[:, di:di + stride * ho:stride, dj:dj + stride * wo:stride, :]
        out += patch @ kernel[di, dj]
    return out + bias

  def nin(self, x, name, cout):
    return x @ self.var(name + '/W', (x.shape[-1], cout), 'W') + self.var(name + '/b', (cout,), 'b')

  def norm(self, x, name):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, 32, c // 32)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    g = ((g - mean) / np.sqrt(var + 1e-6)).reshape(b, h, w, c)
    return g * self.var(name + '/gamma', (c,), 'gamma') + self.var(name + '/beta', (c,), 'beta')

  @staticmethod
  def swish(x):
    return x / (1.0 + np.exp(-x))

  @staticmethod
  def timestep_embedding(t, dim):
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / (half - 1))
    args = np.asarray(t, np.float64)[:, None] * freqs[None]
    return np.concatenate([np.sin(args), np.cos(args)], axis=1)

  # --- blocks (models/unet.py) ---
  def resblock(self, x, temb, name, out_ch, sss):
    h = self.conv(self.swish(self.norm(x, name + '/norm1')), name + '/conv1', out_ch)
    proj = self.nin(self.swish(temb), name + '/temb_proj', 2 * out_ch if sss else out_ch)
    proj = proj[:, None, None, :]
    if sss:
      scale, shift = proj[..., :out_ch], proj[..., out_ch:]
      h = self.swish(self.norm(h, name + '/norm2') * (1 + scale) + shift)
    else:
      h = self.swish(self.norm(h + proj, name + '/norm2'))
    h = self.conv(h, name + '/conv2', out_ch)
    if x.shape[-1] != out_ch:
      x = self.nin(x, name + '/nin_shortcut', out_ch)
    return x + h

  def attn(self, x, name, head_ch):
    b, h, w, c = x.shape
    heads = c // head_ch
    n = self.norm(x, name + '/norm')
    q, k, v = (self.nin(n, f'{name}/{s}', c).reshape(b, h * w, heads, head_ch) for s in 'qkv')
    out = np.zeros((b, h * w, heads, head_ch))
    for i in range(heads):
      logits = q[:, :, i] @ k[:, :, i].transpose(0, 2, 1) / math.sqrt(head_ch)
      wts = np.exp(logits - logits.max(-1, keepdims=True))
      wts /= wts.sum(-1, keepdims=True)
      out[:, :, i] = wts @ v[:, :, i]
    return x + self.nin(out.reshape(b, h, w, c), name + '/proj_out', c)

  def __call__(self, x, t, y=None, *, ch, ch_mult, num_res_blocks, attn_resolutions, out_ch,
               sss=False, head_ch=None, num_classes=None):
    x = np.asarray(x, np.float64)
    head = lambda c: c if head_ch is None else head_ch
    temb = self.timestep_embedding(t, ch)
    temb = self.nin(temb, 'model/temb/dense0', 4 * ch)
    temb = self.nin(self.swish(temb), 'model/temb/dense1', 4 * ch)
    if num_classes is not None:
      temb = temb + self.var('model/label_emb/embedding', (num_classes, 4 * ch), 'b')[y]
    hs = [self.conv(x, 'model/conv_in', ch)]
    for lvl, mult in enumerate(ch_mult):
      for blk in range(num_res_blocks):
        h = self.resblock(hs[-1], temb, f'model/down_{lvl}/block_{blk}', ch * mult, sss)
        if h.shape[1] in attn_resolutions:
          h = self.attn(h, f'model/down_{lvl}/attn_{blk}', head(h.shape[-1]))
        hs.append(h)
      if lvl != len(ch_mult) - 1:
        hs.append(self.conv(hs[-1], f'model/down_{lvl}/downsample/conv', hs[-1].shape[-1], 2))
    h = hs[-1]
    c = h.shape[-1]
    h = self.resblock(h, temb, 'model/mid/block_1', c, sss)
    h = self.attn(h, 'model/mid/attn_1', head(c))
    h = self.resblock(h, temb, 'model/mid/block_2', c, sss)
    for lvl in reversed(range(len(ch_mult))):
      for blk in range(num_res_blocks + 1):
        h = self.resblock(np.concatenate([h, hs.pop()], -1), temb, f'model/up_{lvl}/block_{blk}',
                          ch * ch_mult[lvl], sss)
        if h.shape[1] in attn_resolutions:
          h = self.attn(h, f'model/up_{lvl}/attn_{blk}', head(h.shape[-1]))
      if lvl != 0:
        h = h.repeat(2, axis=1).repeat(2, axis=2)
        h = self.conv(h, f'model/up_{lvl}/upsample/conv', h.shape[-1])
    assert not hs
    h = self.swish(self.norm(h, 'model/norm_out'))
    return self.conv(h, 'model/conv_out', out_ch)


ORIGINAL = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), out_ch=6)
IMPROVED = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8, 4), out_ch=3)


def _checkpoint_dict(arch, x, t, y=None, **ref_kw):
  """Raw variables created by the reference, EMA shadows that differ, and non-model extras."""
  rng = np.random.default_rng(0)
  named = {}
  NumpyUNet(named, rng=rng)(x, t, y, **arch, **ref_kw)
  for name in list(named):
    named[name + EMA] = (named[name] + 0.1 * rng.normal(size=named[name].shape)).astype(np.float32)
    named[name + '/Adam'] = np.zeros_like(named[name])  # optimizer slots are ignored
  named['global_step'] = np.array(800000)
  named['beta1_power'] = np.array(0.9, np.float32)
  return named


@pytest.fixture(scope='module')
def original_case():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  t = np.array([0, 999], np.int32)
  return x, t, _checkpoint_dict(ORIGINAL, x, t)


def _flax_apply(model, params, x, t, y=None):
  return np.asarray(jax.jit(model.apply)({'params': params}, jnp.asarray(x), jnp.asarray(t), y))


def test_original_architecture_matches_numpy_reference_ema_and_raw(original_case):
  x, t, named = original_case
  model = UNet(**ORIGINAL, dropout=0.1)
  # 8x8 input: attention where the feature map is 4x4 (level 1 and the middle).
  outs = {}
  for ema, suffix in ((True, EMA), (False, '')):
    params = convert.params_from_named_arrays(named, model=model, ema=ema)
    assert params['down_1']['attn_0']['q']['kernel'].shape == (64, 64)
    assert 'attn_0' not in params['down_0']
    np.testing.assert_array_equal(params['norm_out']['scale'], named['model/norm_out/gamma' + suffix])
    want = NumpyUNet(named, suffix=suffix)(x, t, **ORIGINAL)
    got = _flax_apply(model, params, x, t)
    assert got.shape == (2, 8, 8, 6)
    assert np.abs(want).max() > 0.1  # a meaningful comparison, not of near-zero outputs
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max(), rtol=0)
    outs[ema] = got
  assert np.abs(outs[True] - outs[False]).max() > 1e-2  # EMA and raw were really different


def test_improved_options_match_numpy_reference():
  """Scale-shift norm, 16-channel heads and class conditioning, against the same reference."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  t = np.array([5, 500], np.int32)
  y = np.array([2, 0], np.int32)
  ref_kw = dict(sss=True, head_ch=16, num_classes=3)
  named = _checkpoint_dict(IMPROVED, x, t, y, **ref_kw)
  model = UNet(**IMPROVED, num_classes=3, num_head_channels=16, use_scale_shift_norm=True)
  params = convert.params_from_named_arrays(named, model=model, ema=False, image_size=8)
  assert params['down_0']['block_0']['temb_proj']['kernel'].shape == (128, 64)
  want = NumpyUNet(named)(x, t, y, **IMPROVED, **ref_kw)
  got = np.asarray(jax.jit(model.apply)({'params': params}, x, t, y))
  np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max(), rtol=0)


def test_every_mismatch_is_reported_by_name(original_case):
  _, _, named = original_case
  named = dict(named)
  del named['model/down_0/block_0/conv1/W' + EMA]
  del named['model/mid/attn_1/q/b' + EMA]
  named['model/down_0/block_0/extra/W' + EMA] = np.zeros(3, np.float32)
  named['model/conv_out/W' + EMA] = np.zeros((3, 3, 32, 3), np.float32)
  with pytest.raises(convert.CheckpointMismatchError) as err:
    convert.params_from_named_arrays(named, model=UNet(**ORIGINAL), ema=True)
  msg = str(err.value)
  for fragment in ('missing (2)', 'model/down_0/block_0/conv1/W/ExponentialMovingAverage',
                   'model/mid/attn_1/q/b/ExponentialMovingAverage', 'unexpected (1)',
                   'model/down_0/block_0/extra/W/ExponentialMovingAverage', 'wrong shape (1)',
                   'model/conv_out/W/ExponentialMovingAverage: checkpoint (3, 3, 32, 3), '
                   'model (3, 3, 32, 6)'):
    assert fragment in msg, (fragment, msg)


def test_checkpoint_without_ema_is_explained(original_case):
  _, _, named = original_case
  raw_only = {k: v for k, v in named.items() if not k.endswith(EMA)}
  with pytest.raises(convert.CheckpointMismatchError, match='--raw'):
    convert.params_from_named_arrays(raw_only, model=UNet(**ORIGINAL), ema=True)


def test_model_config_mismatch_is_reported(original_case):
  # A model with two res blocks per level misses every block_1 / up block_2 of the checkpoint.
  _, _, named = original_case
  with pytest.raises(convert.CheckpointMismatchError) as err:
    convert.params_from_named_arrays(named, model=UNet(**{**ORIGINAL, 'num_res_blocks': 2}),
                                     ema=True)
  assert 'model/down_0/block_1/conv1/W/ExponentialMovingAverage' in str(err.value)
  assert 'model/up_0/block_2/norm1/gamma/ExponentialMovingAverage' in str(err.value)


def test_cifar10_names_are_the_original_ones():
  """A few names and shapes of the released CIFAR-10 checkpoint (model.ckpt-790000)."""
  model = UNet(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), out_ch=3)
  names = convert.tf_names(convert.param_shapes(model, image_size=32))
  assert len(names) == 328
  for name in ('model/temb/dense0/W', 'model/temb/dense1/b', 'model/conv_in/W',
               'model/down_0/block_0/norm1/gamma', 'model/down_0/block_0/norm1/beta',
               'model/down_0/block_0/temb_proj/W', 'model/down_1/block_0/nin_shortcut/W',
               'model/down_1/attn_1/proj_out/b', 'model/down_2/downsample/conv/W',
               'model/mid/block_1/conv2/W', 'model/mid/attn_1/k/W', 'model/up_1/block_2/conv1/b',
               'model/up_1/attn_2/v/W', 'model/up_3/upsample/conv/W', 'model/norm_out/gamma',
               'model/conv_out/W'):
    assert name in names, name
  assert not any(n.startswith('model/down_0/attn') or n.startswith('model/down_2/attn')
                 for n in names)


def _run(args, env, timeout=600):
  """Runs a CLI in a subprocess; on failure the assertion shows its stderr."""
  proc = subprocess.run([sys.executable] + args, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _cli_env(tmp_path):
  # An empty data dir: sampling from converted parameters must not need (or prepare) any dataset.
  data_dir = tmp_path / 'no_datasets'
  data_dir.mkdir()
  return dict(os.environ, JAX_PLATFORMS='cpu', TFDS_DATA_DIR=str(data_dir)), data_dir


# Two shipped configs with their laptop variant (U-Net ch 32, ch_mult (1, 2), one block per level) and a
# 20-step chain: an ε-model with learned Σ on CIFAR-10 shapes and the μ main job on the bundled digits.
_CLI_CASES = {
    'cifar10_eps_vlb_learned': dict(shape=(1, 32, 32, 3), attn=(16,), out_ch=6),
    'mnist_mu': dict(shape=(1, 28, 28, 1), attn=(7,), out_ch=1),
}


@pytest.mark.parametrize('name', sorted(_CLI_CASES))
def test_convert_cli_then_sample_from_params_without_a_dataset(name, tmp_path):
  case = _CLI_CASES[name]
  rng = np.random.default_rng(2)
  x = rng.normal(size=case['shape']).astype(np.float32)
  arch = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=case['attn'], out_ch=case['out_ch'])
  named = _checkpoint_dict(arch, x, np.array([7], np.int32))
  named['global_step'] = np.array(790000)
  src = tmp_path / 'ckpt_vars.npz'
  np.savez(src, **named)
  env, data_dir = _cli_env(tmp_path)
  config = [f'--config={name}:runlocal', '--config.diffusion.num_timesteps=20']
  out = tmp_path / 'params'
  proc = _run(['-m', 'ddpm_jax.models.convert', '--tf_checkpoint', str(src), *config, '--out', str(out)], env)
  assert 'Wrote ema parameters' in proc.stdout and 'global step 790000' in proc.stdout
  info = json.loads((out / 'params.json').read_text())
  assert info['step'] == 790000 and info['params'] == 'ema' and info['image_shape'] == list(case['shape'][1:])
  assert info['config']['diffusion']['num_timesteps'] == 20 and info['source'] == str(src)
  with np.load(out / 'params.npz') as data:  # the EMA shadows, by Flax path
    np.testing.assert_array_equal(data['conv_out/kernel'], named['model/conv_out/W' + EMA])
  # Converting into the same directory again is refused, nothing is overwritten.
  again = subprocess.run([sys.executable, '-m', 'ddpm_jax.models.convert', '--tf_checkpoint', str(src),
                          *config, '--out', str(out)], env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode != 0 and 'already holds converted parameters' in again.stderr

  workdir = tmp_path / 'samples_out'
  proc = _run(['-m', 'ddpm_jax.main', *config, '--params', str(out), '--workdir', str(workdir),
               '--mode', 'sample', '--config.sample.num_samples=3', '--config.sample.steps=4'], env)
  result = json.loads(proc.stdout[proc.stdout.index('{'):])
  images = np.load(result['npz'])['images']
  assert images.shape == (3,) + case['shape'][1:] and images.dtype == np.uint8
  assert os.path.exists(result['grid']) and result['checkpoint_step'] == 790000
  assert result['params'] == 'ema' and result['params_dir'] == str(out)
  assert not any(data_dir.iterdir())  # no dataset was prepared or read


def test_bpd_from_params_and_mismatched_or_incomplete_params_dirs(tmp_path, data_root):
  from ddpm_jax import experiment, params_dir, run_modes  # pylint: disable=g-import-not-at-top
  from ddpm_jax.configs import mnist_mu  # pylint: disable=g-import-not-at-top
  config = mnist_mu.get_config('runlocal')
  config.diffusion.num_timesteps = 20
  config.data.data_dir = str(data_root / 'tfds')
  config.eval.num_examples = 8
  config.eval.batch_size = 8
  rng = np.random.default_rng(3)
  arch = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(7,), out_ch=1)
  named = _checkpoint_dict(arch, rng.normal(size=(1, 28, 28, 1)).astype(np.float32), np.array([3], np.int32))
  src = tmp_path / 'vars.npz'
  np.savez(src, **named)
  out = str(tmp_path / 'params')
  convert.convert_to_params_dir(config, str(src), out)
  result = run_modes.bpd(config, str(tmp_path / 'bpd_out'), params_dir=out)
  assert result['num_examples'] == 8 and np.isfinite(result['total_bpd']) and result['checkpoint_step'] == 800000
  # Another config's command: a one-line error naming the field and both values.
  other = config.copy_and_resolve_references()
  other.diffusion.var_type = 'fixedlarge'
  with pytest.raises(params_dir.ParamsDirError,
                     match=r"converted with config.diffusion.var_type='fixedsmall', but .* has "
                           r"config.diffusion.var_type='fixedlarge'"):
    experiment.Experiment(other).load_params(out)
  wider = config.copy_and_resolve_references()
  wider.model.ch = 64
  with pytest.raises(params_dir.ParamsDirError, match=r"config.model.ch=32, but .* config.model.ch=64"):
    experiment.Experiment(wider).load_params(out)
  # An interrupted conversion (no params.json) never looks complete; a truncated params.npz is named.
  os.remove(os.path.join(out, 'params.json'))
  with pytest.raises(params_dir.ParamsDirError, match=r"has no params.json \(an interrupted conversion"):
    experiment.Experiment(config).load_params(out)
  # A checkpoint of 3-channel images does not fit the digits' config: named before anything is written.
  rgb = _checkpoint_dict(arch, rng.normal(size=(1, 28, 28, 3)).astype(np.float32), np.array([3], np.int32))
  np.savez(tmp_path / 'rgb.npz', **rgb)
  with pytest.raises(convert.CheckpointMismatchError, match=r"takes 3-channel images.*gives 1 channels"):
    convert.convert_to_params_dir(config, str(tmp_path / 'rgb.npz'), str(tmp_path / 'rgb_params'))
  assert not os.path.exists(tmp_path / 'rgb_params')


def test_reading_tf_checkpoint_without_tensorflow_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow', None)  # makes `import tensorflow` fail
  with pytest.raises(ImportError, match=r"pip install 'ddpm-jax\[convert\]'"):
    convert.params_from_tf_checkpoint('/nonexistent/model.ckpt-1', model=UNet(**ORIGINAL))


# The real-checkpoint test needs TensorFlow, which the project itself never imports: it runs under the
# interpreter named by $DDPM_JAX_TF_PYTHON (CI makes one, layered over the test venv), else under this
# one if TensorFlow happens to be importable here.
_TF_PYTHON = os.environ.get('DDPM_JAX_TF_PYTHON') or (
    sys.executable if importlib.util.find_spec('tensorflow') is not None else None)

_WRITE_AND_CONVERT = textwrap.dedent('''
    import sys
    import numpy as np
    import tensorflow as tf
    tf.compat.v1.disable_eager_execution()
    src, prefix, out = sys.argv[1:4]
    named = dict(np.load(src))
    graph = tf.Graph()
    with graph.as_default():
      variables = {k: tf.compat.v1.Variable(v, name=k.replace('/', '_')) for k, v in named.items()}
      saver = tf.compat.v1.train.Saver(var_list=variables)
      with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        saver.save(sess, prefix)
    from ddpm_jax.models import convert
    from ddpm_jax.models.unet import UNet
    model = UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), out_ch=6)
    flat = {}
    for ema in (True, False):
      params = convert.params_from_tf_checkpoint(prefix, ema=ema, model=model, image_size=8)
      for name, path in convert.tf_names(params).items():
        flat[f'{int(ema)}:{name}'] = convert._get(params, path)
    # Without a model: renamed as found, no validation.
    unchecked = convert.params_from_tf_checkpoint(prefix, ema=True)
    for name, path in convert.tf_names(unchecked).items():
      flat[f'unchecked:{name}'] = convert._get(unchecked, path)
    np.savez(out, **flat)
''')


@pytest.mark.skipif(_TF_PYTHON is None, reason="no TensorFlow: set DDPM_JAX_TF_PYTHON to a Python with "
                    "tensorflow-cpu and ddpm-jax importable (pip install 'ddpm-jax[convert]')")
def test_real_tf_checkpoint_ema_and_raw(original_case, tmp_path):
  """Writes a TF1 Saver checkpoint with the original names and converts it, in a subprocess."""
  _, _, named = original_case
  src = tmp_path / 'named.npz'
  np.savez(src, **named)
  script = tmp_path / 'write_and_convert.py'
  script.write_text(_WRITE_AND_CONVERT)
  prefix, out = str(tmp_path / 'ckpt' / 'model.ckpt-1'), str(tmp_path / 'converted.npz')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=os.getcwd())
  subprocess.run([_TF_PYTHON, str(script), str(src), prefix, out], check=True, env=env,
                 timeout=300)
  converted = np.load(out)
  base = [k for k in named if k.startswith('model/') and not k.endswith((EMA, '/Adam'))]
  assert len(converted.files) == 3 * len(base)
  for name in base:
    np.testing.assert_array_equal(converted[f'1:{name}'], named[name + EMA])
    np.testing.assert_array_equal(converted[f'unchecked:{name}'], named[name + EMA])
    np.testing.assert_array_equal(converted[f'0:{name}'], named[name])

  # The command line on the same TF checkpoint: a shipped config shrunk to this network, a parameter directory.
  env = dict(env, TFDS_DATA_DIR=str(tmp_path / 'no_datasets'))
  subprocess.run([_TF_PYTHON, '-m', 'ddpm_jax.models.convert', '--tf_checkpoint', prefix,
                  '--config=cifar10_eps_vlb_learned:runlocal', '--config.data.image_size=8',
                  '--config.model.attn_resolutions=(4,)', '--out', str(tmp_path / 'params'), '--raw'],
                 check=True, env=env, timeout=300)
  with np.load(tmp_path / 'params' / 'params.npz') as data:
    np.testing.assert_array_equal(data['mid/attn_1/q/kernel'], named['model/mid/attn_1/q/W'])
  info = json.loads((tmp_path / 'params' / 'params.json').read_text())
  assert info['params'] == 'raw' and info['image_shape'] == [8, 8, 3]
