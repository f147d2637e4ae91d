"""Model parts: norms, Canon, residual styles, mixers, blocks and the LM; ``config.py`` is their config.

Importing the package registers the built-in mixers, so ``ModelConfig`` (default mixer: attention) can
always be validated.
"""

from archlab.model import mixers  # noqa: F401
