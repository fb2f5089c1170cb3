"""The example's model: a TorchScript classifier of 8x8 digit images, built by the project itself.

No weights are downloaded or trained: the ten classes are the glyphs of a small bitmap font below. The model
centres and normalises an image and each glyph and scores the image against every glyph (a cosine similarity,
as a linear layer whose weights are the normalised glyphs), so a noisy or shifted glyph still lands on its
digit. `build(path)` scripts and saves it (with a `.labels` file beside it for vAccel-style classification);
`ensure()` builds it once per content version under the data directory.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import warnings
from pathlib import Path

from mapemesh.settings import current

GLYPHS = {
    "0": ["..####..", ".##..##.", ".##..##.", ".##..##.", ".##..##.", ".##..##.", "..####..", "........"],
    "1": ["...##...", "..###...", "...##...", "...##...", "...##...", "...##...", ".######.", "........"],
    "2": ["..####..", ".##..##.", ".....##.", "....##..", "...##...", "..##....", ".######.", "........"],
    "3": ["..####..", ".##..##.", ".....##.", "...###..", ".....##.", ".##..##.", "..####..", "........"],
    "4": [".....##.", "....###.", "...####.", "..##.##.", ".######.", ".....##.", ".....##.", "........"],
    "5": [".######.", ".##.....", ".#####..", ".....##.", ".....##.", ".##..##.", "..####..", "........"],
    "6": ["..####..", ".##.....", ".##.....", ".#####..", ".##..##.", ".##..##.", "..####..", "........"],
    "7": [".######.", ".....##.", "....##..", "...##...", "..##....", "..##....", "..##....", "........"],
    "8": ["..####..", ".##..##.", ".##..##.", "..####..", ".##..##.", ".##..##.", "..####..", "........"],
    "9": ["..####..", ".##..##.", ".##..##.", "..#####.", ".....##.", ".....##.", "..####..", "........"],
}
LABELS = sorted(GLYPHS)
VERSION = hashlib.sha256(repr(sorted(GLYPHS.items())).encode()).hexdigest()[:12]
"""Changes when the glyphs do: a new model file."""


def pixels(digit: str) -> list[float]:
    """The glyph of `digit` as 64 values in [0, 1]."""
    return [1.0 if c == "#" else 0.0 for row in GLYPHS[digit] for c in row]


def render(digit: str, noise: float = 0.0, seed: int = 0) -> list[list[float]]:
    """An 8x8 image of `digit` with uniform noise added (clipped to [0, 1]): a test input."""
    rng = random.Random(seed)
    flat = [min(1.0, max(0.0, p + rng.uniform(-noise, noise))) for p in pixels(digit)]
    return [flat[r * 8:(r + 1) * 8] for r in range(8)]


def build(path: Path) -> Path:
    """Script the classifier and save it at `path` (and its labels at `path.with_suffix('.labels')`)."""
    import torch

    class Digits(torch.nn.Module):
        def __init__(self, templates: torch.Tensor):
            super().__init__()
            self.register_buffer("templates", templates)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.reshape(images.shape[0], 64).to(torch.float32)
            x = x - x.mean(dim=1, keepdim=True)
            x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + 1e-6)
            return x @ self.templates.t()  # cosine similarity to each glyph, [N, 10]

    t = torch.tensor([pixels(d) for d in LABELS], dtype=torch.float32)
    t = t - t.mean(dim=1, keepdim=True)
    t = t / t.norm(dim=1, keepdim=True)
    with warnings.catch_warnings():  # TorchScript is what vAccel's torch plugin loads, deprecated or not
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(Digits(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        scripted.save(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    path.with_suffix(".labels").write_text("\n".join(LABELS) + "\n")
    return path


def ensure(folder: Path | None = None) -> Path:
    """The model file for this version of the glyphs, built once (under DATA_DIR/models by default)."""
    base = folder or current().data / "models"
    path = base / f"digits-{VERSION}.pt"
    if not path.exists() or not path.with_suffix(".labels").exists():
        build(path)
    return path
