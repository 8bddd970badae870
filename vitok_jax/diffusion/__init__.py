"""Generation in a tokenizer's latent space.

  ddpm     Gaussian diffusion (the paper's DiT recipe): schedule, loss, DDIM
  flow     rectified flow matching: velocity loss, Euler/Heun ODE
  sampler  labels -> images: guided sampling, then the frozen tokenizer decodes
  codec    a trained ViTok as the DiT sees it, and the tokenizer pin
"""
