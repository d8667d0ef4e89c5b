"""Adaptors between a model, a generative process and the trainer (see methods/base.py)."""
