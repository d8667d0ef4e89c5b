"""Likelihood bounds with standard errors, FID, Inception Score and sample timing."""
