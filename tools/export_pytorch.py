r"""Exports a ViTok or DiT checkpoint to PyTorch: the same job as
`vitok-export` and `python -m vitok_jax.export` (vitok_jax/export.py, whose
--help says more).

  python tools/export_pytorch.py --workdir=/runs/s2 [--step=N] [--ema] \
      --out=s_b16.safetensors [--verify]
"""
from vitok_jax import export

main = export.main
read_run = export.read_run

if __name__ == "__main__":
  export.run()
