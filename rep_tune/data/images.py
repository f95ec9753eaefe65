"""Image stores that turn stored images into model-ready batches (resize, channels, normalise).

Images stay at their stored resolution (uint8 0..255 or float 0..1) and are prepared per batch,
so CIFAR-100 at 224 px does not need 30 GB of RAM. Small stores are prepared once and kept.
Preparation is deterministic (no augmentation): the same sample id always gives the same tensor,
which is what makes the per-sample query cache valid.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MATERIALISE_BYTES = 256 * 2 ** 20   # prepare a whole store up front when it fits in this


@dataclass(frozen=True)
class Rendering:
    """How stored images become model input: square size, channels, per-channel mean/std."""

    img_size: int
    in_chans: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, C, H, W) in [0, 1] -> (B, in_chans, img_size, img_size) normalised."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            down = x.shape[-1] > self.img_size or x.shape[-2] > self.img_size
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                              align_corners=False, antialias=down)
        if x.shape[1] != self.in_chans:
            if x.shape[1] != 1:
                raise ValueError(f"cannot map {x.shape[1]} image channels to {self.in_chans}")
            x = x.expand(-1, self.in_chans, -1, -1)
        mean = torch.tensor(self._per_channel(self.mean), dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self._per_channel(self.std), dtype=x.dtype).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()

    def _per_channel(self, v: Sequence[float]) -> list[float]:
        v = list(v)
        return v * self.in_chans if len(v) == 1 else v[: self.in_chans]

    def key(self) -> str:
        return f"{self.img_size}px-{self.in_chans}ch-mean{tuple(self.mean)}-std{tuple(self.std)}"


class ImageStore(Protocol):
    """What the learner needs from a split's images."""

    def __len__(self) -> int: ...
    def batch(self, index: torch.Tensor) -> torch.Tensor: ...
    def subset(self, index: np.ndarray) -> "ImageStore": ...


@dataclass
class TensorImages:
    """Images in memory: uint8 (N, C, H, W) in 0..255 or float in [0, 1]."""

    data: torch.Tensor
    rendering: Rendering
    _ready: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def _to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Prepared float batch for the given positions."""
        r = self.rendering
        if self._ready is None and len(self) * r.in_chans * r.img_size ** 2 * 4 <= MATERIALISE_BYTES:
            self._ready = torch.cat([r.apply(self._to_unit(self.data[i:i + 512]))
                                     for i in range(0, len(self), 512)]) if len(self) else \
                torch.empty(0, r.in_chans, r.img_size, r.img_size)
        if self._ready is not None:
            return self._ready[index]
        return r.apply(self._to_unit(self.data[index]))

    def subset(self, index: np.ndarray) -> "TensorImages":
        return TensorImages(self.data[torch.as_tensor(index, dtype=torch.long)], self.rendering)


def _open_regular(path: str):
    """``path`` opened for reading if it is a regular file (checked on the open descriptor, so a FIFO
    swapped in after listing cannot block: O_NONBLOCK); else ValueError naming it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: not a regular image file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass
class FileImages:
    """Images on disk (any format PIL reads), decoded per batch as RGB."""

    paths: list[str]
    rendering: Rendering

    def __len__(self) -> int:
        return len(self.paths)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        from PIL import Image
        size = self.rendering.img_size
        out = []
        for i in index.tolist():
            path = self.paths[i]
            try:
                with _open_regular(path) as f, Image.open(f) as im:
                    im = im.convert("RGB").resize((size, size), Image.BILINEAR)
                    out.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                # PIL names the descriptor, not the file; a truncated/corrupt image, a decompression bomb
                raise ValueError(f"{path}: cannot read this image ({type(e).__name__}: "
                                 f"{str(e).split(' <_io')[0][:160]})") from None
        x = torch.stack(out).float().div_(255.0) if out else torch.empty(0, 3, size, size)
        return self.rendering.apply(x)

    def subset(self, index: np.ndarray) -> "FileImages":
        return FileImages([self.paths[int(i)] for i in index], self.rendering)
