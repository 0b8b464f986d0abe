"""Generated inputs for driver tests: real files written through OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt


def numbered_image(index: int, width: int = 160, height: int = 120) -> npt.NDArray[np.uint8]:
    """A BGR picture whose mean brightness encodes `index` (survives JPEG)."""
    base = np.full((height, width, 3), 20 + (index * 23) % 200, np.int16)
    noise = np.random.default_rng(index).integers(-12, 13, base.shape, dtype=np.int16)
    image = np.clip(base + noise, 0, 255).astype(np.uint8)
    cv2.rectangle(image, (10, 10), (60, 50), (0, 0, 255), -1)
    return image


def write_mjpeg(
    path: Path, frames: int, fps: float = 30.0, size: tuple[int, int] = (160, 120)
) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    assert writer.isOpened(), "OpenCV cannot write MJPG AVI"
    for i in range(frames):
        writer.write(numbered_image(i, *size))
    writer.release()
    return path


def write_image(path: Path, index: int = 0, width: int = 160, height: int = 120) -> Path:
    assert cv2.imwrite(str(path), numbered_image(index, width, height))
    return path
