"""Shared test helpers: the real STEM micrographs of ../shared/data, read the way the benchmarks read them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

STEM_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "stem-particles" / "dataset" / "images"


@pytest.fixture
def stem_greys():
    """names -> [(name, grey float32 in [0, 1])]; skips the test when ../shared/data/stem-particles is not here."""

    def load(*names: str) -> list[tuple[str, np.ndarray]]:
        paths = [STEM_IMAGES / name for name in names]
        if not all(p.exists() for p in paths):
            pytest.skip("../shared/data/stem-particles is not here")
        return [(p.name, np.asarray(Image.open(p).convert("L"), np.float32) / 255) for p in paths]

    return load
