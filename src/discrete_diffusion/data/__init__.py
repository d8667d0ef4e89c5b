"""Data sources (text8, LM1B, token arrays, images, digits, swiss roll) and their codecs."""
