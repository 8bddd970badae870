"""The paper's experiments as sweeps over one config's arguments.

  python tools/sweep.py --sweep=fig2 --root=/runs/fig2          # commands, one per line
  python tools/sweep.py --sweep=mini_e --root=workdirs/mini_e --run

Each sweep: the config file, the grid (argument -> values; runs are the
cross product) or an explicit list of runs, and fixed arguments. Values are
strings, as they appear after the config's colon. `{root}` in a value is the
sweep's root folder (Fig. 5's DiTs read Fig. 2's tokenizers).
"""

SWEEPS = {
    # Fig. 2/17: 256p S-B, p x c; E = (256/p)^2 x c.
    "fig2": dict(config="configs/vitok/s_b16_256.py",
                 grid={"variant": ["S-B/8", "S-B/16", "S-B/32"],
                       "c": ["4", "8", "16", "32", "64"]}),
    # Table 2: float32 vs bfloat16 (matmuls).
    "table2": dict(config="configs/vitok/s_b16_256.py",
                   grid={"dtype": ["float32", "bfloat16"]}),
    # Fig. 4: 512p S-B, p in {8, 16, 32}, c = 16.
    "fig4": dict(config="configs/vitok/s_b16_256.py",
                 grid={"variant": ["S-B/8", "S-B/16", "S-B/32"]},
                 fixed={"res": "512"}),
    # Fig. 5: a DiT-L on each Fig. 2 tokenizer (CFG 1.5 and 3.0 evaluators).
    "fig5": dict(config="configs/dit/dit_l_vitok_s_b16_256.py",
                 runs=[dict(tokenizer=f"{{root}}/../fig2/variant=S-B-{p}_c={c}",
                            tokens=str((256 // p) ** 2), c=str(c))
                       for p in (8, 16, 32) for c in (4, 8, 16, 32, 64)]),
    # Fig. 6-9: encoder/decoder sizes at p = 16, c = 16.
    "fig6": dict(config="configs/vitok/s_b16_256.py",
                 grid={"variant": ["S-S/16", "B-S/16", "S-B/16", "B-B/16",
                                   "S-L/16", "B-L/16", "L-L/16"]}),
    # Fig. 10: LPIPS weight x reconstruction loss (stage 1).
    "fig10": dict(config="configs/vitok/s_b16_256.py",
                  grid={"lpips": ["0", "0.5", "1.0"], "rec": ["l1", "l2"]}),
    # Fig. 11/12: 16 x 256^2 video at 8 fps, p x q, c = 16.
    "fig11": dict(config="configs/vitok/video_s_b4x8_128.py",
                  grid={"variant": [f"S-B/{q}x{p}" for p in (8, 16, 32)
                                    for q in (1, 2, 4, 8)]},
                  fixed={"res": "256", "protocol": "fps8"}),
    # Fig. 13: S-B/4x16 on T in {16, 32, 64} frames (8 fps, §3.5).
    "fig13": dict(config="configs/vitok/video_s_b4x16_128.py",
                  grid={"frames": ["16", "32", "64"]},
                  fixed={"protocol": "fps8"}),
    # Fig. 18: stage 2, discriminator lr x GAN weight (init from a stage 1).
    "fig18": dict(config="configs/vitok/s_b16_256_stage2.py",
                  grid={"dlr": ["1e-5", "2e-5", "4e-5"],
                        "gan": ["0.05", "0.1"]},
                  fixed={"init_from": "{root}/stage1"}),
    # Fig. 19/20: Latent ViTok lengths; Masked ViTok evaluated at l_eval.
    "fig19": dict(config="configs/vitok/s_b16_256.py",
                  grid={"latent": ["64", "128", "256", "512"]}),
    "fig20": dict(config="configs/vitok/s_b16_256.py",
                  grid={"l_eval": ["32", "64", "128", "256"]},
                  fixed={"mask": "32/64/128/256"}),
    # Tables 3-5: the headline tokenizers.
    "tables3_5": dict(config="configs/vitok/s_b16_256.py",
                      grid={"variant": ["S-B/16", "S-L/16"]}),
    # The miniature of Fig. 2 that runs on a 2-core CPU (README).
    "mini_e": dict(config="configs/vitok/mini_e_sweep.py",
                   grid={"p": ["4", "8", "16"], "c": ["4", "8", "16"]}),
}
