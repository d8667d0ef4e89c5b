"""Configs, the trainer, checkpoints and distributed set-up. Knows no diffusion mathematics."""
