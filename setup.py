"""ddpm-jax: a JAX/Flax reimplementation of DDPM (Ho, Jain, Abbeel 2020) with the μ-parameterization."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "numpy>=1.26",
    "jax>=0.10,<0.11",
    "flax>=0.12,<0.13",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.12,<0.13",
    "tensorflow-datasets>=4.9.9,<5",
    "ml-collections>=1.0",
    "chex>=0.1.90",
    "grain>=0.2.18,<0.3",
    "importlib_resources",
    "tqdm",
    "pillow",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-xdist>=3.5"],
    "tpu": ["jax[tpu]>=0.10,<0.11", "gcsfs"],  # gcsfs: gs:// workdirs and tfds data dirs
    "cuda": ["jax[cuda12]>=0.10,<0.11"],
    # Only for importing the original TF checkpoints (ddpm_jax.models.convert); never needed at run time.
    "convert": ["tensorflow-cpu>=2.16"],
    # Only for benchmarks/compare_torch.py (the PyTorch speed reference); never needed at run or test time.
    "bench": ["torch>=2.4"],
}

setup(
    name="ddpm-jax",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["ddpm_jax", "ddpm_jax.*"]),
    include_package_data=True,
    # The configs are modules of ddpm_jax.configs (found above); the bundled digits with their licence
    # note, and the MNIST classifier weights, are data files.
    package_data={"ddpm_jax": ["data/assets/*", "evaluation/assets/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["ddpm-jax=ddpm_jax.main:run"]},
    license="Apache-2.0",
    license_files=["LICENSE"],
)
