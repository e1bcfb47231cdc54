"""What a reader of a measurement must be told about the field it was made on: how much of it was left out (the
vacuum beyond a support film, the dark beyond the edge of the illumination: maemi.measure.empty_space), how much is
black but was measured, and how much is clipped. One wording for `maemi measure` and the web page's measured panel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Clipped pixels are worth a note from this share of the image up: 100 images of the built-in corpus, the 31 nanowire
# tiles and 20 of the 33 real STEM images have under 1% (a particle's brightest pixel, a pore's darkest); the other
# STEM images, dark field with the vacuum set to black most of them, 1-24%.
CLIPPED_NOTE = 0.01


def field_notes(m: Mapping[str, Any]) -> list[str]:
    """The notes on a measurement (Measurements' fields by name), in sentences without a final full stop; none for
    a whole, unclipped field."""
    notes = []
    if m["empty_fraction"]:
        notes.append(f"{m['empty_fraction']:.0%} of the field is vacuum beyond the support film (its holes or the gaps "
                     "of a lace), left out: the objects are what lies on the film, and the area fraction is of the "
                     "rest")
    if m["unlit_fraction"]:
        notes.append(f"{m['unlit_fraction']:.0%} of the field is dark beyond the edge of the illumination (a TEM beam "
                     "that does not fill the camera, or black padding), left out: the objects are what lies in the lit "
                     "field, and the area fraction is of it")
    if m["black_fraction"]:
        notes.append(f"{m['black_fraction']:.0%} of the field is black at its edge and was measured as field: if it "
                     "is vacuum beyond the support (dark-field STEM), the area fraction, number density and "
                     "Clark-Evans ratio are of the whole field, not of the support")
    if m["clipped_fraction"] >= CLIPPED_NOTE:
        notes.append(f"{m['clipped_fraction']:.0%} of the pixels sit at the image's darkest or brightest level "
                     "(clipped or saturated): nothing there can be seen or measured")
    return notes
