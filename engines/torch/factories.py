"""Module factories for the torch backend, reached only through factory strings (``engines.load.MODELS``).

They import ``training`` when called, so the runtime never does unless asked for
the PyTorch reference or backend.
"""
from __future__ import annotations


def rigan_generator(state_dict: dict | None = None):
    """RI-GAN's generator with all three outputs of the shipped graph (``dehazed``, ``transmission``,
    ``airlight``), sized from the state_dict so the light model loads through the same entry."""
    from training.models.rigan import RIGeneratorPorts, generator_shape

    if state_dict is None:
        return RIGeneratorPorts()
    width, blocks = generator_shape(state_dict)
    return RIGeneratorPorts(width=width, blocks=blocks)
