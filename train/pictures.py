"""PNG image grids (samples, reconstructions, interpolations) written with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Tile images [N, H, W, C] with values in [0, 1] into one uint8 picture, row by row."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    count, height, width, channels = images.shape
    rows = -(-count // columns)
    grid = np.ones(
        (rows * (height + pad) + pad, columns * (width + pad) + pad, channels), np.float32
    )
    for index, image in enumerate(images):
        top = pad + (index // columns) * (height + pad)
        left = pad + (index % columns) * (width + pad)
        grid[top : top + height, left : left + width] = image
    return (grid * 255).round().astype(np.uint8)


def save_grid(images: np.ndarray, path: Path, columns: int, scale: int = 2) -> Path:
    """Write a grid PNG, each pixel enlarged `scale` times so small images stay visible."""
    grid = image_grid(images, columns)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
