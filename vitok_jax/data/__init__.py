"""Data: where examples come from and how they become batches.

  input_pipeline  the grain train and eval pipelines, bad-record handling
  sources         real data sets: image folders, TFDS (images and videos)
  demo_sources    the demos' data: embedded and held-out photos, sample
                  videos, pans over photos
  video           video decoding, clip timing and the clip crop
  preprocess      per-example ops (crops, flips, value range)
  latent_shards   precomputed DiT latents on disk
"""
