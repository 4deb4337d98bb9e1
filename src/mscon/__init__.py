"""mscon: contrastive representation learning when "similar" has more than one meaning.

The losses live in :mod:`mscon.losses`; a trained encoder is loaded with
:func:`mscon.load_encoder` and applied with :func:`mscon.embed`.
"""

__version__ = "0.1.0"
