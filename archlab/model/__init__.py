"""Model parts: norms, Canon, residual styles, mixers, blocks and the LM."""
