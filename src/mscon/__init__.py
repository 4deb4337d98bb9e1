"""mscon: contrastive representation learning when "similar" has more than one meaning.

The losses live in :mod:`mscon.losses`; a trained encoder is loaded with
:func:`mscon.load_encoder` and applied with :func:`mscon.embed`.
"""

__version__ = "0.1.0"

__all__ = ["embed", "load_encoder"]


def __getattr__(name: str):  # lazy, so `import mscon` stays cheap
    if name in __all__:
        from mscon import api

        return getattr(api, name)
    raise AttributeError(f"module 'mscon' has no attribute {name!r}")
