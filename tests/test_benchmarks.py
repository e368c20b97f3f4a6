"""Smoke tests of benchmarks/: each script's main() runs in-process on a tiny shape and returns a record with
the documented keys and types. No timing is asserted (the figures depend on the machine and its load)."""

import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bpd_throughput  # noqa: E402
from benchmarks import profile_step  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks import compare_torch  # noqa: E402  (imports without torch; only running it needs torch)
from benchmarks import sampling  # noqa: E402
from benchmarks import summarize  # noqa: E402
from benchmarks import torch_reference  # noqa: E402
from benchmarks import train_throughput  # noqa: E402

# 8x8x3 images, a one-level U-Net (ch 32 is the least GroupNorm's 32 groups allow), no attention, T = 10
# (not less: runlocal's sample.steps is 10), one device: one small compile per script.
TINY = ["--image_size", "8", "--num_devices", "1",
        "--set", "model.ch_mult=(1,)", "--set", "model.attn_resolutions=()", "--set", "model.num_res_blocks=1",
        "--set", "diffusion.num_timesteps=10"]

ENV_KEYS = {"date", "python", "jax", "jaxlib", "flax", "backend", "device_kind", "devices_used", "device_count",
            "process_count", "host_cpu", "host_cpu_count", "git_commit", "host_memory"}


def _is_pos(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_common(record, out_path, name):
  assert record["benchmark"] == name
  assert ENV_KEYS <= set(record["env"]) and record["env"]["devices_used"] == 1
  assert set(record["env"]["host_memory"]) == {"glibc_tunables", "thp_mode", "thp_defrag", "reexecuted"}
  assert record["config"]["image_shape"] == [8, 8, 3] and record["config"]["diffusion"]["num_timesteps"] == 10
  assert isinstance(record["config"]["num_params"], int) and record["config"]["num_params"] > 0
  assert isinstance(record["peak_memory_bytes"], int) and record["peak_memory_bytes"] > 0
  assert isinstance(record["peak_memory_kind"], str)
  assert isinstance(record["notes"], list)
  with open(out_path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert json.loads(lines[-1]) == json.loads(json.dumps(record))  # --out appends the same record
  table = summarize.markdown([json.loads(lines[-1])]).splitlines()  # the RESULTS.md row renders
  assert table[0] == f"### {name}" and len(table) == 5 and table[4].startswith("| ")


def test_train_throughput_record(tmp_path, capsys):
  out = tmp_path / "results.jsonl"
  record = train_throughput.main(TINY + ["--batch_size", "2", "--steps_per_call", "1", "--warmup_calls", "1",
                                         "--timed_calls", "2", "--sync_each_call", "--out", str(out)])
  _check_common(record, out, "train_throughput")
  for key in ("images_per_sec", "step_time_mean_s", "step_time_std_s", "step_time_min_s", "compile_s",
              "flops_per_image", "flops_per_image_compiled", "flops_per_image_unoptimized",
              "achieved_flops_per_sec"):
    assert _is_pos(record[key]) or (key == "step_time_std_s" and record[key] == 0.0), (key, record[key])
  assert record["batch_size"] == 2 and record["timed_steps"] == 2 and record["warmup_steps"] == 1
  assert _is_pos(record["flops_per_image_matmul"])
  assert record["flops_source"] == "matmul" and record["flops_per_image"] == record["flops_per_image_matmul"]
  # XLA's CPU count adds the elementwise work to the same convolutions: a little more, never less.
  assert 1.0 <= record["flops_per_image_compiled"] / record["flops_per_image_matmul"] < 1.2
  assert record["loss_finite"] is True
  # CPU: no peak FLOP/s is known, so no MFU, and memory is the host's RSS.
  assert record["mfu"] is None and record["peak_flops_per_sec"] is None
  assert record["peak_memory_kind"].startswith("host RSS")
  captured = capsys.readouterr()
  assert json.loads(captured.out.strip().splitlines()[-1])["benchmark"] == "train_throughput"
  assert "images/s" in captured.err and "MFU" in captured.err


def test_sampling_record(tmp_path):
  out = tmp_path / "results.jsonl"
  record = sampling.main(TINY + ["--num_images", "3", "--batch_size", "2", "--ddim_steps", "4",
                                 "--out", str(out)])
  _check_common(record, out, "sampling")
  assert record["num_images"] == 3 and record["batch_size"] == 2 and record["num_batches"] == 2
  assert [(r["sampler"], r["chain_steps"]) for r in record["runs"]] == [("ancestral", 10), ("ddim", 4)]
  for run in record["runs"]:
    for key in ("compile_s", "wall_s", "images_per_sec", "step_time_s"):
      assert _is_pos(run[key]), (key, run[key])
    assert run["images_finite"] is True and run["output_shape"] == [3, 8, 8, 3]


def test_bpd_throughput_record(tmp_path):
  out = tmp_path / "results.jsonl"
  record = bpd_throughput.main(TINY + ["--batch_size", "2", "--num_batches", "1", "--out", str(out)])
  _check_common(record, out, "bpd_throughput")
  assert record["terms_per_image"] == 10 and record["bound"].startswith("full bound")
  for key in ("images_per_sec", "batch_time_s", "compile_s", "wall_s"):
    assert _is_pos(record[key]), (key, record[key])
  assert record["bpd_finite"] is True


@pytest.mark.parametrize("kind, dtype, entry, peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", "NVIDIA H100 SXM", 989.4e12),
    ("NVIDIA H100 PCIe", "bfloat16", "NVIDIA H100 PCIe", 756.5e12),
    ("NVIDIA H200", "float32", "NVIDIA H200 SXM", 494.7e12),  # float32 → TF32 tensor cores
    ("NVIDIA A100-SXM4-80GB", "bfloat16", "NVIDIA A100", 312e12),
    ("TPU v3", "bfloat16", "TPU v3 (per core)", 61.5e12),
    ("TPU v5 lite", "bfloat16", "TPU v5e", 197e12),
    ("TPU v5", "bfloat16", "TPU v5p", 459e12),
    ("TPU v6 lite", "float32", "TPU v6e", None),  # no published fp32 peak
    ("cpu", "float32", None, None),
])
def test_peak_flops_table(kind, dtype, entry, peak):
  assert common.peak_table_entry(kind) == entry
  value, basis = common.peak_flops_per_device(kind, dtype)
  assert value == (pytest.approx(peak) if peak else None) and isinstance(basis, str)


def _conv(x, w, stride, padding, lhs_dilation=1, rhs_dilation=1, groups=1):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, lhs_dilation=(lhs_dilation,) * 2,
                                      rhs_dilation=(rhs_dilation,) * 2, feature_group_count=groups,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _taps_1d(n_in, kernel, stride, pad_lo, pad_hi, lhs_dil=1, rhs_dil=1):
  """Brute force: (output, tap) pairs of one spatial dim that read a real input element."""
  padded = [None] * pad_lo + sum(([i] + [None] * (lhs_dil - 1) for i in range(n_in)), [])[:(n_in - 1) * lhs_dil + 1]
  padded += [None] * pad_hi
  span = (kernel - 1) * rhs_dil + 1
  return sum(padded[o + k * rhs_dil] is not None for o in range(0, len(padded) - span + 1, stride)
             for k in range(kernel))


@pytest.mark.parametrize("stride, pads, lhs_dil, rhs_dil, groups", [
    (1, (0, 0), 1, 1, 1),  # VALID: 2·N·Ho·Wo·Cout·Cin·K²
    (1, (1, 1), 1, 1, 1),  # SAME: border taps on padding are not work
    (2, (0, 1), 1, 1, 1),  # the U-Net's downsampling (TF SAME on even sizes)
    (1, (1, 1), 2, 1, 1),  # a strided conv's input gradient (lhs dilation)
    (1, (2, 2), 1, 2, 1),  # atrous
    (1, (1, 1), 1, 1, 2),  # grouped
])
def test_matmul_flops_counts_each_convolution_tap_on_real_input(stride, pads, lhs_dil, rhs_dil, groups):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n, h, cin, cout, k = 2, 9, 4, 6, 3
  x, w = jnp.ones((n, h, h, cin)), jnp.ones((k, k, cin // groups, cout))
  fn = lambda x, w: _conv(x, w, stride, (pads, pads), lhs_dil, rhs_dil, groups)
  got, notes = common.matmul_flops(fn, x, w)
  taps = _taps_1d(h, k, stride, *pads, lhs_dil, rhs_dil)
  assert got == 2 * n * cout * (cin // groups) * taps ** 2 and notes == []
  # The same count from XLA running the convolution: with all-ones operands each output element is the
  # number of multiply-adds that produced it, so the outputs sum to the real multiply-adds.
  assert float(jnp.sum(fn(x, w))) == pytest.approx(got / 2)


def test_matmul_flops_of_a_gradient_is_three_forwards_and_follows_scan_and_cond():
  """Each forward multiply-add has one partner in dx and one in dw: fwd + bwd = 3 × fwd, any stride."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 8))
  for stride, pads in ((1, ((1, 1), (1, 1))), (2, ((0, 1), (0, 1)))):
    fwd = lambda x, w: _conv(x, w, stride, pads)
    f1, _ = common.matmul_flops(fwd, x, w)
    f3, _ = common.matmul_flops(jax.grad(lambda x, w: jnp.sum(fwd(x, w) ** 2), argnums=(0, 1)), x, w)
    assert f3 == 3 * f1
  a, b = jnp.ones((5, 6, 7)), jnp.ones((5, 7, 3))
  assert common.matmul_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), a, b)[0] == 2 * 5 * 6 * 7 * 3
  m = jnp.ones((7, 7))
  scan = lambda c: jax.lax.scan(lambda c, _: (c @ m, None), c, None, length=4)[0]
  assert common.matmul_flops(scan, a[0])[0] == 4 * 2 * 6 * 7 * 7
  cond = lambda p, c: jax.lax.cond(p, lambda c: (c @ m) @ m, lambda c: c @ m, c)
  assert common.matmul_flops(cond, True, a[0])[0] == 2 * (2 * 6 * 7 * 7)  # the dearer branch
  loop = lambda c, n: jax.lax.while_loop(lambda s: s[1] < n, lambda s: (s[0] @ m, s[1] + 1), (c, 0))[0]
  flops, notes = common.matmul_flops(loop, a[0], 3)  # trip count unknown when traced: counted once, and said
  assert flops == 2 * 6 * 7 * 7 and len(notes) == 1 and "while loop" in notes[0]


def test_matmul_flops_of_the_main_job_step_matches_xla_on_cpu():
  """The jaxpr count of the real train step against XLA's CPU cost analysis of the same program, which
  counts the same convolutions and products plus the elementwise work (≈ 1% here)."""
  import argparse  # pylint: disable=g-import-not-at-top
  from ddpm_jax import train  # pylint: disable=g-import-not-at-top
  args = argparse.Namespace(config=os.path.join(common.CONFIGS_DIR, "mnist_mu.py"), preset=None, dtype=None,
                            image_size=None, overrides=[])
  config, _ = common.build_config(args, **{"train.batch_size": 2, "train.steps_per_call": 1})
  exp = common.build_experiment(config, num_devices=1)
  state = train.create_train_state(exp)
  batches = common.synthetic_batch(exp, 2, leading=(1,), seed=0)
  step = train.compile_train_step(exp, state)
  ours, notes = common.matmul_flops(step, state, batches)
  xla = common.cost_flops(common.safe_cost_analysis(step.lower(state, batches)))
  assert notes == [] and 0.95 * xla <= ours <= xla


def test_cost_flops_reads_dict_and_list_forms():
  assert common.cost_flops({"flops": 10.0, "bytes accessed": 3.0}) == 10.0
  assert common.cost_flops([{"flops": 4.0}, {"flops": 6.0}]) == 10.0  # older jax: a list per module
  assert common.cost_flops(None) is None and common.cost_flops({"flops": -1.0}) is None


def test_bad_override_names_the_field():
  with pytest.raises(ValueError, match=r"config field 'model.chanels' does not exist"):
    train_throughput.main(["--set", "model.chanels=64"])
  with pytest.raises(ValueError, match=r"--num_devices=99 is invalid"):
    train_throughput.main(["--num_devices", "99"])


def test_ablation_runs_a_row_and_writes_its_table(data_root, tmp_path):
  """One row of benchmarks/ablation.py end to end with tiny shapes (train → eval → table); a rerun reuses it."""
  from benchmarks import ablation  # pylint: disable=g-import-not-at-top
  out = tmp_path / "abl"
  argv = ["--out", str(out), "--rows", "eps_simple", "--num_steps", "2", "--batch_size", "8",
          "--num_samples", "4", "--set", f"data.data_dir={data_root / 'tfds'}", "--set", "model.ch_mult=(1,)",
          "--set", "model.attn_resolutions=()", "--set", "diffusion.num_timesteps=10",
          "--set", "train.num_grid_samples=4", "--set", "train.checkpoint_every=2",
          "--set", "eval.num_examples=8", "--set", "eval.batch_size=8", "--set", "sample.batch_size=8"]
  (entry,) = ablation.main(argv)
  assert entry["status"] == "stable", entry
  assert entry["bpd"] > 0 and entry["mnist_fd"] > 0 and 1.0 <= entry["mnist_is"] <= 10.0
  assert (out / "eps_simple.png").exists()
  table = (out / "ablation.md").read_text().splitlines()
  assert table[0].startswith("| row | test bits/dim") and "L_simple" in table[2] and "eps_simple.png" in table[2]
  assert ablation.main(argv)[0] == entry  # done rows are not rerun


def test_ablation_rejects_unknown_rows(capsys):
  from benchmarks import ablation  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit):
    ablation.parse_args(["--out", "/tmp/x", "--rows", "mu_vlb_fixed,nope"])
  assert "unknown row(s) ['nope']" in capsys.readouterr().err


def test_mu_study_runs_a_strict_mu_row_and_writes_its_table(data_root, tmp_path):
  """One row of benchmarks/mu_study.py end to end with tiny shapes: its fields reach the run, the table
  has every column the study reports."""
  from benchmarks import mu_study  # pylint: disable=g-import-not-at-top
  out = tmp_path / "study"
  argv = ["--out", str(out), "--rows", "mu_res_eps", "--steps", "2", "--num_samples", "4",
          "--set", f"data.data_dir={data_root / 'tfds'}", "--set", "model.ch_mult=(1,)",
          "--set", "model.attn_resolutions=()", "--set", "diffusion.num_timesteps=10", "--set", "sample.steps=5",
          "--set", "train.batch_size=8", "--set", "train.num_grid_samples=4", "--set", "train.checkpoint_every=2",
          "--set", "eval.num_examples=8", "--set", "eval.batch_size=8", "--set", "sample.batch_size=8"]
  (entry,) = mu_study.main(argv)
  assert entry["status"] == "stable", entry
  assert entry["mu"] and entry["bpd"] > 0 and entry["mnist_fd"] > 0 and 0.0 <= entry["mnist_confident"] <= 1.0
  assert "unbiased estimate" in entry["bpd_method"]
  with open(out / "mu_res_eps" / "config.json", encoding="utf-8") as f:
    config = json.load(f)
  assert config["diffusion"]["mean_type"] == "xprev" and config["diffusion"]["mse_weight"] == "eps"
  assert config["model"]["output_residual"] == "identity" and config["model"]["output_scale"] == 0.01
  table = (out / "mu_study.md").read_text().splitlines()
  assert table[0].startswith("| row | strict μ | MNIST-FD@4") and "confident" in table[0]
  assert "| yes |" in table[2] and "mu_res_eps.png" in table[2]
  with pytest.raises(SystemExit):
    mu_study.parse_args(["--out", str(out), "--rows", "mu_res_eps,nope"])


def test_torch_comparison_imports_without_torch_and_asks_for_it(monkeypatch, capsys):
  """compare_torch.py / torch_reference.py import without torch; running them prints the install command."""
  assert list(compare_torch.ROWS) == ["train_mnist", "train_cifar10", "sample_mnist", "sample_cifar10"]
  assert compare_torch.parse_args([]).rows == list(compare_torch.ROWS)
  assert compare_torch.parse_args(["--rows", "sample_mnist,train_mnist"]).rows == ["sample_mnist", "train_mnist"]
  with pytest.raises(SystemExit):
    compare_torch.parse_args(["--rows", "train_mnist,nope"])
  assert "unknown row(s) ['nope']" in capsys.readouterr().err
  args = compare_torch.parse_args(["--platform", "gpu", "--dtypes", "float32,bfloat16", "--batch_size", "128"])
  assert (args.platform, args.dtypes, args.batch_size) == ("gpu", ["float32", "bfloat16"], 128)
  assert compare_torch.parse_args([]).dtypes == ["float32"] and compare_torch.parse_args([]).platform == "cpu"
  for bad, message in ((["--dtypes", "float16"], "--dtypes='float16' is invalid"),
                       (["--batch_size", "0"], "--batch_size=0 is invalid"),
                       (["--peak_tflops", "-1"], "--peak_tflops=-1.0 is invalid"),
                       (["--conv_split", "--platform", "gpu"], "--conv_split is for --platform cpu"),
                       (["--conv_split", "--dtypes", "float32,bfloat16"], "--conv_split is for --platform cpu")):
    with pytest.raises(SystemExit):
      compare_torch.parse_args(bad)
    assert message in capsys.readouterr().err
  assert compare_torch.parse_args(["--conv_split"]).conv_split and not compare_torch.parse_args([]).conv_split
  # Step = convolutions + rest: 32 images at 80 img/s is a 400 ms step, at 128 img/s 250 ms; the convolutions
  # take the median of their rounds (210 and 175 ms: not the mean, first, last, min or max of those rounds);
  # the ratios are torch time / JAX time, as for the steps.
  split = compare_torch.conv_split_summary(32, 80.0, 128.0, [250.0, 210.0, 200.0, 290.0, 205.0],
                                           [160.0, 175.0, 230.0, 170.0, 190.0])
  assert split["jax_step_ms"] == pytest.approx(400.0) and split["torch_step_ms"] == pytest.approx(250.0)
  assert (split["jax_conv_ms"], split["torch_conv_ms"]) == (210.0, 175.0)
  assert split["jax_rest_ms"] == pytest.approx(190.0) and split["torch_rest_ms"] == pytest.approx(75.0)
  assert split["conv_ratio_jax_over_torch"] == pytest.approx(175 / 210)
  assert split["rest_ratio_jax_over_torch"] == pytest.approx(75 / 190)
  assert compare_torch.conv_split_summary(32, 80.0, 128.0, [420.0], [175.0])["rest_ratio_jax_over_torch"] is None
  # MFU denominators: the project's dense peak table (float32 → TF32 on NVIDIA), none on a CPU.
  assert compare_torch.peak_tflops("NVIDIA H200", "bfloat16")[0] == pytest.approx(989.4)
  assert compare_torch.peak_tflops("NVIDIA H200", "float32")[0] == pytest.approx(494.7)
  assert compare_torch.peak_tflops("cpu", "float32")[0] is None
  assert compare_torch.peak_tflops("cpu", "float32", 100.0) == (100.0, "--peak_tflops")
  assert torch_reference.KNOWN_PARAM_COUNTS == {"configs/mnist_mu.py": 1_112_801,
                                                "configs/cifar10_mu_vlb_fixed.py": 35_746_307}
  monkeypatch.setattr(torch_reference, "torch", None)
  with pytest.raises(SystemExit, match=r'pip install -e "\.\[bench\]"'):
    torch_reference.require_torch()

  # The script itself, in a fresh interpreter where `import torch` fails (None in sys.modules hides torch
  # whether or not this venv has it): it must stop before any work, with the message and a non-zero status.
  script = os.path.join(common.REPO_ROOT, "benchmarks", "compare_torch.py")
  code = ("import runpy, sys; sys.modules['torch'] = None; "
          f"sys.argv = [{script!r}, '--rows', 'train_mnist']; runpy.run_path({script!r}, run_name='__main__')")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        cwd=common.REPO_ROOT, check=False)
  assert proc.returncode != 0
  assert 'pip install -e ".[bench]"' in proc.stderr, proc.stderr[-2000:]
  assert "train_mnist" not in proc.stderr  # no row was started


def test_profile_step_rebuilds_each_convolution_of_the_optimized_hlo():
  """The convolutions the conv floor times are the step's: for a program with a stride-2 TF-padded conv and
  its gradients (a dilated-input and a 14×14-window weight-gradient convolution), every rebuilt convolution
  has the output shape XLA gave it."""
  import jax
  import jax.numpy as jnp

  def loss(w, x):
    y = jax.lax.conv_general_dilated(x, w, (2, 2), ((0, 1), (0, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jax.lax.conv_general_dilated(y, w[..., :3, :], (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)

  w, x = jnp.ones((3, 3, 3, 3)), jnp.ones((2, 28, 28, 3))
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(w, x).compile().as_text()
  convs = profile_step.step_convolutions(hlo)
  assert len(convs) == hlo.count(" convolution(") >= 5
  assert any(kw["lhs_dilation"] != [1, 1] for *_, kw, _ in convs)
  for name, lhs, rhs, kw, out in convs:
    got = jax.eval_shape(lambda a, b, kw=kw: jax.lax.conv_general_dilated(a, b, **kw),
                         jax.ShapeDtypeStruct(lhs, jnp.float32), jax.ShapeDtypeStruct(rhs, jnp.float32))
    assert got.shape == out, (name, kw)


def test_profile_step_groups_the_traced_ops_by_kind(capsys):
  record = profile_step.main(TINY + ["--batch_size", "2", "--steps", "1", "--top", "5", "--conv_floor"])
  assert record["benchmark"] == "profile_step" and record["step_ms"] > 0
  # One-level net: conv_in, the block's two convolutions, conv_out, each forward and both gradients.
  assert record["conv_floor"]["convolutions"] >= 12 and record["conv_floor"]["ms"] > 0
  assert set(record["ms_by_kind"]) <= set(profile_step.KINDS) and sum(record["ms_by_kind"].values()) > 0
  assert 1 <= len(record["top_ops"]) <= 5 and all(op["kind"] in profile_step.KINDS for op in record["top_ops"])
  # A convolution layer's HLO is classified as one, whatever fusion it sits in.
  inst = {"c.1": "f32[1,4,4,8]{3,2,1,0} convolution(%a, %b), window={size=3x3}"}
  assert profile_step.classify("c.1", inst, {}) == "convolution"
  assert "ms / step" in capsys.readouterr().err


def test_conv_split_matches_the_torch_nets_convolutions_to_the_jax_steps():
  """`compare_torch --conv_split` on a two-level net (a stride-2 downsample with TF padding and an upsample):
  torch's 3×3 layers give as many convolutions as the JAX step's HLO (forward, weight gradient each, input
  gradient all but the first), each runner runs, and collecting them leaves the torch model and random state
  as they were. Needs torch (the [bench] extra); skipped without it."""
  torch = pytest.importorskip("torch")
  import jax
  from ddpm_jax import train
  parser = argparse.ArgumentParser()
  common.add_common_args(parser)
  config, _ = common.build_config(parser.parse_args(
      ["--preset", "small", "--image_size", "8", "--set", "model.ch=32", "--set", "model.ch_mult=(1,2)",
       "--set", "model.attn_resolutions=()", "--set", "model.num_res_blocks=1",
       "--set", "diffusion.num_timesteps=10"]), **{"train.batch_size": 2, "train.steps_per_call": 1})
  exp = common.build_experiment(config, num_devices=1)
  state = train.create_train_state(exp)
  batches = common.synthetic_batch(exp, 2, leading=(1,), seed=0)
  hlo = train.compile_train_step(exp, state).lower(state, batches).compile().as_text()
  model = torch_reference.build_model(config, exp.image_shape)
  torch_reference.load_flax_params(model, jax.device_get(state.params))
  before = {k: v.clone() for k, v in model.state_dict().items()}
  x = torch_reference.to_torch_images(np.asarray(jax.device_get(batches["image"]))[0])
  rng_before = torch.get_rng_state()
  convs = compare_torch._setup_convs(hlo, model, x, config)
  assert torch.equal(torch.get_rng_state(), rng_before)
  n_layers = sum(isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) != (1, 1) for m in model.modules())
  assert convs["torch_conv2d_layers"] == n_layers and convs["torch_input_gradients"] == n_layers - 1
  assert convs["jax_convolutions"] == 3 * n_layers - 1 == hlo.count(" convolution(")
  assert all(not m._forward_pre_hooks for m in model.modules())  # pylint: disable=protected-access
  assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
  assert model.training and all(p.grad is None for p in model.parameters())
  convs["run_jax"](1)
  convs["run_torch"](1)
  # A net whose torch side lacks a layer must not pass as the same work.
  with pytest.raises(AssertionError, match="the two nets differ"):
    compare_torch._setup_convs(hlo.replace(" convolution(", " convolutionX(", 1), model, x, config)
