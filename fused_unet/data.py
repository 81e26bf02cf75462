"""A seeded synthetic segmentation set: discs, squares and triangles on a noisy background."""
import numpy as np
import torch

CLASS_NAMES = ("background", "disc", "square", "triangle")
# Each class has a typical colour; the network still has to find the outline of the shape in the noise.
_CLASS_COLOURS = np.array([[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.25, 0.35, 0.95]], dtype=np.float32)


def _shape_mask(kind, yy, xx, cy, cx, r):
    if kind == 1:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == 2:
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    # Upward triangle: apex at (cy - r, cx), base at row cy + r.
    return (yy <= cy + r) & (np.abs(xx - cx) <= (yy - (cy - r)) * 0.5)


def make_shapes_dataset(num_images, size=48, seed=0, max_shapes=3):
    """(images [N, 3, size, size] float32 in ~[0, 1], masks [N, size, size] int64 with ids 0..3)."""
    if num_images < 1 or size < 8:
        raise ValueError(f"need num_images >= 1 and size >= 8, got {num_images} and {size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((num_images, 3, size, size), dtype=np.float32)
    masks = np.zeros((num_images, size, size), dtype=np.int64)
    for i in range(num_images):
        image = rng.uniform(0.3, 0.6, size=(3, 1, 1)).astype(np.float32) * np.ones((3, size, size), np.float32)
        for _ in range(rng.integers(1, max_shapes + 1)):
            kind = int(rng.integers(1, 4))
            r = rng.uniform(size * 0.08, size * 0.2)
            cy, cx = rng.uniform(r, size - r, size=2)
            inside = _shape_mask(kind, yy, xx, cy, cx, r)
            colour = _CLASS_COLOURS[kind - 1] + rng.normal(0, 0.08, size=3).astype(np.float32)
            image[:, inside] = colour[:, None]
            masks[i][inside] = kind
        images[i] = image + rng.normal(0, 0.12, size=image.shape).astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(masks)
