"""Input normalisation as in seed 000: per-pixel mean, one global standard deviation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Normalization"]


@dataclass(frozen=True, eq=False)
class Normalization:
    """``x = (pixels / 255 - mean) / std`` with ``mean`` of shape ``[h, w, c]``."""

    mean: np.ndarray
    std: float

    @classmethod
    def fit(cls, pixels: np.ndarray, batch: int = 4096) -> "Normalization":
        """Statistics of a uint8 ``[n, h, w, c]`` sample, computed in float64 batches."""
        n = len(pixels)
        if n == 0:
            raise ValueError("cannot fit normalisation on an empty sample")
        total = np.zeros(pixels.shape[1:], np.float64)
        total_sq = 0.0
        for start in range(0, n, batch):
            x = pixels[start : start + batch].astype(np.float64) / 255.0
            total += x.sum(axis=0)
            total_sq += float(np.square(x).sum())
        mean = total / n
        # seed 000 divides by X.std(): the standard deviation of all pixel values together
        var = total_sq / (n * mean.size) - float(mean.mean()) ** 2
        std = float(np.sqrt(max(var, 1e-12)))
        return cls(mean.astype(np.float32), std)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``[n, h, w, c]`` -> float32 normalised input."""
        x = pixels.astype(np.float32) * np.float32(1 / 255)
        x -= self.mean
        x *= np.float32(1 / self.std)
        return x

    def to_json(self) -> dict:
        return {"mean": self.mean.astype(np.float32).tolist(), "std": float(self.std)}

    @classmethod
    def from_json(cls, d: dict, shape: tuple[int, ...]) -> "Normalization":
        mean = np.asarray(d["mean"], dtype=np.float32)
        if mean.shape != tuple(shape):
            raise ValueError(f"normalization mean has shape {mean.shape}, expected {tuple(shape)}")
        std = float(d["std"])
        if not np.isfinite(std) or std <= 0 or not np.isfinite(mean).all():
            raise ValueError("normalization statistics must be finite with a positive std")
        return cls(mean, std)
