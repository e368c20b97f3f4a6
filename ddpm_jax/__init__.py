"""ddpm-jax: Denoising Diffusion Probabilistic Models in JAX/Flax, μ-parameterization first."""

__version__ = "0.1.0"
