from setuptools import find_packages, setup

setup(
    name="mll-jax",
    version="0.1.0",
    description="JAX-accelerated Model Label Learning: zero-shot classification from a hub of expert classifiers.",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["mll_jax", "mll_jax.*", "mll_lab", "mll_lab.*"]),
    package_data={"mll_jax.vlm": ["clip_hub.json"]},
    install_requires=[
        "jax>=0.4.31",
        "jaxlib>=0.4.31",
        "flax>=0.8",
        "optax>=0.2",
        "transformers>=4.57,<5",
        "nltk>=3.8",
        "numpy>=1.26",
        "orbax-checkpoint>=0.5",
        "absl-py>=2.0",
        "tqdm>=4.60",
        "h5py>=3.8",
        "pillow>=10",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3", "cvxpy>=1.5", "clarabel>=0.7", "scipy>=1.11", "hypothesis>=6"],
    },
    entry_points={"console_scripts": ["mll-jax=mll_jax.cli:entry_point"]},
)
