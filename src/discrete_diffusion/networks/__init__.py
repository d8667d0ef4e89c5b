"""Neural networks: denoisers f(x_t, t) -> logits of p~(x_0 | x_t), and the causal baseline."""
