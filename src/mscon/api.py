"""Using a trained model: the encoder is what users take away.

Example:
    >>> import mscon, torch  # doctest: +SKIP
    >>> encoder = mscon.load_encoder("runs/demo/mscon")  # doctest: +SKIP
    >>> images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)  # doctest: +SKIP
    >>> features = mscon.embed("runs/demo/mscon", images)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mscon.data.augment import to_float
from mscon.evaluate import extract_features
from mscon.runs import encoder_from_checkpoint, load_run_config


def load_encoder(run_dir: str | Path, checkpoint: str = "last") -> nn.Module:
    """The trained encoder of a run folder, frozen and in eval mode.

    Args:
        run_dir: a run folder written by ``mscon train``.
        checkpoint: a checkpoint name in ``checkpoints/`` (``last``) or a ``.pt`` path.

    Returns:
        A module mapping normalised float images (n, 3, S, S) to features (n, D),
        S = the run's ``data.image_size``; :func:`embed` does the preprocessing.
    """
    return encoder_from_checkpoint(run_dir, checkpoint)


def embed(
    run_dir: str | Path,
    images: torch.Tensor,
    checkpoint: str = "last",
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Encoder features of uint8 images (n, 3, H, W) -> float32 (n, D).

    Images of another size than the run's ``data.image_size`` are resized
    (bilinear, antialiased) first; no augmentation is applied.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images: expected a uint8 tensor of shape (n, 3, H, W), "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    size = load_run_config(run_dir).data.image_size
    encoder = load_encoder(run_dir, checkpoint)

    def preprocess(batch: torch.Tensor) -> torch.Tensor:
        x = to_float(batch)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return x

    return extract_features(encoder, images, preprocess, batch_size=batch_size, device=device)
