"""ddpm-jax: Denoising Diffusion Probabilistic Models in JAX/Flax, μ-parameterization first."""

import os as _os

__version__ = "0.1.0"

# XLA:CPU options this package runs best with, added to $XLA_FLAGS unless the user set the same flag
# (or DDPM_JAX_XLA_CPU_DEFAULTS=0). They must be in the environment before JAX compiles anything, which is
# why they live here. Only the CPU backend reads them.
#   --xla_cpu_experimental_ynn_fusion_type=individual_dot: YNNPACK only for matrix products; convolutions
#     go to XLA's own (Eigen) kernels, 1.5-2× faster for this U-Net's 3×3 convolutions forward and
#     backward on x86 (benchmarks/RESULTS.md, "Where the CPU time goes").
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",)


def _add_default_xla_flags() -> None:
  if _os.environ.get("DDPM_JAX_XLA_CPU_DEFAULTS", "1") == "0":
    return
  flags = _os.environ.get("XLA_FLAGS", "")
  for flag in CPU_XLA_FLAGS:
    if flag.split("=")[0] not in flags:
      flags = (flags + " " + flag).strip()
  _os.environ["XLA_FLAGS"] = flags


_add_default_xla_flags()
