"""The offline teacher: answers every question of a profile from what scikit-image measures on the image.

It stands in for the paper's GPT-4V teacher when no endpoint may be used (Srinivas et al. 2024, "teaching via data"):
the numbers come from `measurements.measure` (segmentation, region properties, nearest neighbours, GLCM texture), the
words from thresholds on those numbers, kept in the one table THRESHOLDS, so that a word never contradicts a number.
Sizes are in nm when the metadata gives the pixel size, otherwise in pixels, and the answer says which.
Phrasing varies between images (choices seeded by the image's SHA-256) but a given image always gets the same text.
"""

from __future__ import annotations

import functools
import json
import random
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from skimage.color import rgb2gray

from maemi.cpu import map_in_processes, worker_count
from maemi.data.datasets import file_sha256
from maemi.data.images import ImageReadError, find_info_bar, load_image
from maemi.measure.annotations import find_annotations, without_annotations
from maemi.measure.scale import Scale, read_scale
from maemi.measure.slots import fill, indexed, slot
from maemi.measure.measurements import (DEFAULT_SEGMENTER, FIBRE_ASPECT, Measurements, Segmentation,
                                        measure_segmentation, segment)
from maemi.teachers.questions import Profile, Question, TeacherReply, get_profile

# Every adjective the teacher uses comes from one of these cut-offs.
THRESHOLDS = {
    "countable_min": 1,  # fewer segmented objects: describe a continuous surface, not objects
    "uniform_cv": 0.25,  # diameter CV (std / mean) below: "uniform in size"
    "varied_cv": 0.5,  # above: "widely varied"
    "clustered_r": 0.8,  # Clark-Evans R below: clustered (R = 1 for a random Poisson pattern)
    "ordered_r": 1.3,  # above: evenly spaced
    "round_circularity": 0.8,  # 4*pi*area/perimeter^2 at or above (with a low aspect ratio): round
    "irregular_circularity": 0.5,  # below: irregular outline
    # mean major/minor axis at or above: elongated (wire-, fibre-like); measurements.rod_like then gives their width
    "elongated_aspect": FIBRE_ASPECT,
    "oblong_aspect": 1.5,  # at or above: oblong
    "touching_nn_ratio": 1.15,  # nearest-neighbour distance / mean diameter below: touching or fused
    "separated_nn_ratio": 2.0,  # above: well separated
    "aligned_coherence": 0.5,  # orientation coherence at or above: a preferred direction
    "dense_fraction": 0.4,  # area fraction at or above: densely covered
    "sparse_fraction": 0.1,  # below: sparse
    "bright_mean": 0.6,  # mean grey level (0-1) at or above: bright
    "dark_mean": 0.35,  # below: dark
    "high_contrast_std": 0.2,  # grey-level standard deviation at or above: high contrast
    "low_contrast_std": 0.08,  # below: low contrast
    "rough_glcm_contrast": 5.0,  # grey-level co-occurrence contrast (32 levels) at or above: rough
    "smooth_glcm_contrast": 2.5,  # below: smooth
    "outlier_size_ratio": 2.5,  # largest / mean diameter above: some objects stand out (defects, debris)
    "colour_saturation": 0.05,  # mean channel spread (0-1) above: false colour
}

# What the paper's SEM classes are, as nouns, and what they are used for.
LABEL_NOUNS = {
    "biological": "biological structures",
    "fibres": "fibres",
    "films_coated_surface": "features of a coated film",
    "mems_devices_and_electrodes": "MEMS device and electrode structures",
    "nanowires": "nanowires",
    "particles": "nanoparticles",
    "patterned_surface": "features of a patterned surface",
    "porous_sponge": "pores of a sponge-like material",
    "powder": "powder grains",
    "tips": "tip structures",
}
LABEL_USES = {
    "biological": "biomedical research, such as the study of cells and tissues",
    "fibres": "filtration membranes, composites and textiles",
    "films_coated_surface": "protective, optical or electronic coatings",
    "mems_devices_and_electrodes": "sensors, actuators and microelectronic devices",
    "nanowires": "nanoelectronics, sensors and battery electrodes",
    "particles": "catalysis, drug delivery and inks",
    "patterned_surface": "lithography, photonics and microfabrication",
    "porous_sponge": "filtration, catalysis supports and energy storage",
    "powder": "additive manufacturing, sintering and pigments",
    "tips": "scanning probe microscopy and field emission",
}
INSTRUMENT_FIELDS = {"eht_kv": "EHT {} kV", "wd_mm": "working distance {} mm", "detector": "{} detector"}
# ASTM D1654, Table 1: rating of failure at the scribe by mean creepage from the scribe (mm).
ASTM_D1654_CREEPAGE_MM = {
    "10": "0", "9": "0 to 0.5", "8": "0.5 to 1.0", "7": "1.0 to 2.0", "6": "2.0 to 3.0", "5": "3.0 to 5.0",
    "4": "5.0 to 7.0", "3": "7.0 to 10.0", "2": "10.0 to 13.0", "1": "13.0 to 16.0", "0": "more than 16",
}


def fmt_number(v: float) -> str:
    """Three significant figures, with thousands separators: 1,234 / 245 / 24.5 / 2.45 / 0.526."""
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if a >= 1 or a == 0 else f"{v:.3g}"


def _objects_phrase(n: int) -> str:
    return "1 object" if n == 1 else f"{n} objects"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


# The slot values that come from the segmented objects (their count, sizes, coverage and arrangement), as opposed to
# the field, the scale and the image's texture: what Measurements.objects_uncertain puts in doubt.
OBJECT_SLOTS = frozenset({
    "object_count", "objects", "diameter_mean", "diameter_std", "diameter_min", "diameter_max", "width_mean",
    "length_mean", "area_fraction", "background_fraction", "circularity_mean", "aspect_ratio_mean",
    "size_heterogeneity", "size_cv", "outlier_ratio", "nn_distance_mean", "clark_evans_r", "nn_ratio", "fibre_count",
    "fibre_diameter", "nanowire_count", "parasitic_count", "wire_yield", "shape", "arrangement", "contact",
    "uniformity", "coverage"})
# The words that describe the measured numbers (ImageFacts properties, from THRESHOLDS): slots like the numbers, so
# that an answer's "widely varied in size" is the measurement's word and not the decoder's guess.
DESCRIPTORS = ("shape", "arrangement", "contact", "uniformity", "coverage", "roughness", "brightness", "contrast")


@dataclass
class ImageFacts:
    """One image's measurements plus what the dataset says about it; renders lengths and words from the numbers."""

    m: Measurements
    label: str | None
    metadata: dict
    info_bar_px: int
    colourful: bool
    profile: str
    scale: Scale | None = None  # where m.nm_per_pixel came from

    index: int | None = None  # place (from 1) among the images of a multi-image answer: its slots read {name#i}

    @classmethod
    def unlabelled(cls, measured: MeasuredImage, metadata: dict | None = None) -> ImageFacts:
        """The facts of an image measured at inference, where no label is known (the slot values need none)."""
        return cls(measured.m, None, dict(metadata or {}), measured.info_bar_px, measured.colourful, "generic",
                   measured.scale)

    # ---------------------------------------------------------------- numbers as slots
    @property
    def unit(self) -> str:
        return "nm" if self.m.nm_per_pixel else "px"

    def s(self, name: str) -> str:
        """The slot for measured value `name`: answers are written as templates and filled from `values` (a length's
        value carries its unit: nm, or px when the scale is unknown)."""
        return slot(name, self.index)

    @property
    def scale_note(self) -> str:
        return self.s("scale_note")

    @functools.cached_property
    def values(self) -> dict[str, str]:
        """Every measured value an answer may quote, as the answer writes it (unit and rounding included). Only what
        was measured is here: a slot without a value is filled with "unknown"."""
        m, md = self.m, self.metadata

        def length(px: float) -> str:
            return f"{fmt_number(m.to_nm(px) if m.nm_per_pixel else px)} {self.unit}"

        v = {
            "object_count": str(m.object_count), "objects": _objects_phrase(m.object_count),
            "width_px": str(m.width_px), "height_px": str(m.height_px),
            "field_width": length(m.width_px), "field_height": length(m.height_px),
            "diameter_mean": length(m.diameter_mean_px), "diameter_std": length(m.diameter_std_px),
            "diameter_min": length(m.diameter_min_px), "diameter_max": length(m.diameter_max_px),
            "area_fraction": _pct(m.area_fraction), "background_fraction": _pct(1 - m.area_fraction),
            "circularity_mean": f"{m.circularity_mean:.2f}", "aspect_ratio_mean": f"{m.aspect_ratio_mean:.2f}",
            "glcm_contrast": f"{m.glcm_contrast:.2f}", "glcm_homogeneity": f"{m.glcm_homogeneity:.2f}",
            "edge_density": f"{m.edge_density:.3f}", "edge_density_pct": _pct(m.edge_density),
            "brightness_mean": f"{m.brightness_mean:.2f}", "brightness_std": f"{m.brightness_std:.2f}",
            "orientation_coherence": f"{m.orientation_coherence:.2f}", "anisotropy": f"{m.anisotropy:.2f}",
            "size_heterogeneity": f"{m.size_heterogeneity:.2f}", "size_cv": f"{self.cv:.2f}",
            "outlier_ratio": f"{self.outlier_ratio:.1f}", "info_bar_px": str(self.info_bar_px),
            "scale_note": (f"(at {fmt_number(m.nm_per_pixel)} nm per pixel)" if m.nm_per_pixel
                           else "(in pixels: the image's scale is not known)"),
        }
        if m.width_mean_px is not None:  # wires, fibres and rods only
            v["width_mean"], v["length_mean"] = length(m.width_mean_px), length(m.length_mean_px)
        if m.fibre_count is not None:
            v["fibre_count"] = str(m.fibre_count)
        if m.fibre_diameter_mean_px is not None:
            v["fibre_diameter"] = length(m.fibre_diameter_mean_px)
        if m.nanowire_count is not None:
            v["nanowire_count"], v["parasitic_count"] = str(m.nanowire_count), str(m.parasitic_count)
            v["wire_yield"] = _pct(m.nanowire_count / max(m.nanowire_count + m.parasitic_count, 1))
        if m.nn_distance_mean_px is not None:
            v["nn_distance_mean"] = length(m.nn_distance_mean_px)
        if self.pattern_known:
            v["clark_evans_r"] = f"{m.clark_evans_r:.2f}"
            v["nn_ratio"] = f"{self.nn_ratio:.2f}"
        if m.orientation_deg is not None:
            v["orientation_deg"] = f"{m.orientation_deg:.0f}"
        if m.nm_per_pixel:
            v["nm_per_pixel"] = fmt_number(m.nm_per_pixel)
        mag = md.get("magnification") or (self.scale.magnification if self.scale else None)
        if mag:
            v["magnification"] = fmt_number(float(mag))
        if md.get("scale_bar_nm"):
            v["scale_bar_nm"] = fmt_number(float(md["scale_bar_nm"]))
        if self.scale is not None and self.scale.detail:
            v["scale_detail"] = self.scale.detail
        for key in INSTRUMENT_FIELDS:
            if md.get(key) is not None:
                v[key] = str(md[key])
        v.update({name: getattr(self, name) for name in DESCRIPTORS})
        return v

    # ---------------------------------------------------------------- words from thresholds
    @property
    def countable(self) -> bool:
        return self.m.object_count >= THRESHOLDS["countable_min"]

    @property
    def cv(self) -> float:
        return self.m.diameter_std_px / self.m.diameter_mean_px if self.m.diameter_mean_px > 0 else 0.0

    @property
    def uniformity(self) -> str:
        if self.cv < THRESHOLDS["uniform_cv"]:
            return "uniform in size"
        return "widely varied in size" if self.cv > THRESHOLDS["varied_cv"] else "moderately varied in size"

    @property
    def pattern_known(self) -> bool:
        return self.m.clark_evans_r is not None and self.m.nn_distance_mean_px is not None  # 3 objects or more

    @property
    def arrangement(self) -> str:
        r = self.m.clark_evans_r
        if r is None:
            return "isolated"
        if r < THRESHOLDS["clustered_r"]:
            return "clustered"
        return "evenly spaced" if r > THRESHOLDS["ordered_r"] else "randomly scattered"

    @property
    def shape(self) -> str:
        ar, c = self.m.aspect_ratio_mean, self.m.circularity_mean
        if ar >= THRESHOLDS["elongated_aspect"]:
            return "elongated"
        if ar >= THRESHOLDS["oblong_aspect"]:
            return "oblong"
        if c >= THRESHOLDS["round_circularity"]:
            return "round"
        return "irregular" if c < THRESHOLDS["irregular_circularity"] else "roughly rounded"

    @property
    def nn_ratio(self) -> float:
        nn = self.m.nn_distance_mean_px
        return nn / self.m.diameter_mean_px if nn is not None and self.m.diameter_mean_px > 0 else float("inf")

    @property
    def contact(self) -> str:
        if not self.pattern_known:
            return "isolated"
        if self.nn_ratio < THRESHOLDS["touching_nn_ratio"]:
            return "touching or fused"
        return "well separated" if self.nn_ratio > THRESHOLDS["separated_nn_ratio"] else "close but mostly separate"

    @property
    def aligned(self) -> bool:
        return self.m.orientation_deg is not None and self.m.orientation_coherence >= THRESHOLDS["aligned_coherence"]

    @property
    def coverage(self) -> str:
        af = self.m.area_fraction
        if af >= THRESHOLDS["dense_fraction"]:
            return "densely covered"
        return "sparsely covered" if af < THRESHOLDS["sparse_fraction"] else "moderately covered"

    @property
    def brightness(self) -> str:
        b = self.m.brightness_mean
        return "bright" if b >= THRESHOLDS["bright_mean"] else "dark" if b < THRESHOLDS["dark_mean"] else "neutral"

    @property
    def contrast(self) -> str:
        s = self.m.brightness_std
        if s >= THRESHOLDS["high_contrast_std"]:
            return "high"
        return "low" if s < THRESHOLDS["low_contrast_std"] else "moderate"

    @property
    def roughness(self) -> str:
        c = self.m.glcm_contrast
        if c >= THRESHOLDS["rough_glcm_contrast"]:
            return "rough"
        return "smooth" if c < THRESHOLDS["smooth_glcm_contrast"] else "finely textured"

    @property
    def outlier_ratio(self) -> float:
        return self.m.diameter_max_px / self.m.diameter_mean_px if self.m.diameter_mean_px > 0 else 0.0

    @property
    def has_outliers(self) -> bool:
        return self.countable and self.outlier_ratio > THRESHOLDS["outlier_size_ratio"]

    @property
    def noun(self) -> str:
        if self.label and self.label.lower() in LABEL_NOUNS:
            return LABEL_NOUNS[self.label.lower()]
        if self.profile == "sem":
            return {"elongated": "elongated nanostructures", "round": "nanoparticles"}.get(self.shape, "nanostructures")
        return "features"

    @property
    def label_text(self) -> str:
        return (self.label or "").replace("_", " ").lower()

    @property
    def magnification(self) -> str:
        return f"magnified {self.s('magnification')} times" if "magnification" in self.values else ""

    # ---------------------------------------------------------------- reusable sentences
    def size_sentence(self) -> str:
        return (f"mean equivalent diameter {self.s('diameter_mean')} (standard deviation "
                f"{self.s('diameter_std')}, range {self.s('diameter_min')} to "
                f"{self.s('diameter_max')})")

    def count_sentence(self) -> str:
        return f"{self.s('object_count')} {self.noun}" if self.countable else "no separate objects"

    def expert_count_sentence(self) -> str:
        """How an expert would count elongated objects (with a leading space), or nothing for round ones."""
        if self.m.nanowire_count is not None:
            return (f" As a nanowire array: {self.s('nanowire_count')} upright nanowires and "
                    f"{self.s('parasitic_count')} parasitic objects, a yield of {self.s('wire_yield')}.")
        if self.m.fibre_count is not None and self.m.fibre_diameter_mean_px is not None:
            return (f" Traced through their crossings, there are {self.s('fibre_count')} fibres, "
                    f"{self.s('fibre_diameter')} in diameter.")
        return ""

    def orientation_sentence(self) -> str:
        if self.aligned:
            return (f"they are aligned, about {self.s('orientation_deg')} degrees from the horizontal "
                    f"(orientation coherence {self.s('orientation_coherence')})")
        return f"there is no preferred direction (orientation coherence {self.s('orientation_coherence')})"


def _fact_words(f: ImageFacts, brief: bool) -> str:
    """What the measurement says about one image, in words: the branches an answer takes (objects or a continuous
    surface, sizes in nm or px, magnification known, ...) and the adjectives, so that the decoder reads them rather
    than guessing them from pixels."""
    if not f.countable:
        words = ["no separate objects"]
    elif not f.pattern_known:
        words = ["one or two objects", f.shape]
    else:
        words = ["many objects", f.shape, f.arrangement, f.contact, f.uniformity]
    words += [f"sizes in {'nanometres' if f.m.nm_per_pixel else 'pixels'}", f"{f.roughness} surface", f.brightness]
    if brief:
        return ", ".join(words)
    source = f.scale.source if f.scale and f.m.nm_per_pixel else "none"
    words += [f"scale from {source.replace('_', ' ')}",
              "magnification known" if "magnification" in f.values else "magnification unknown",
              "information bar" if f.info_bar_px else "no information bar",
              f"{f.contrast} contrast", f.coverage, "aligned" if f.aligned else "no preferred direction",
              "some much larger objects" if f.has_outliers else "no size outliers"]
    return ", ".join(words)


def measured_context(facts: list[ImageFacts]) -> str:
    """The measurement in words, as the student's prompt carries it (teachers.records.with_measured)."""
    if len(facts) == 1:
        return _fact_words(facts[0], brief=False)
    return "; ".join(f"image {i + 1}: {_fact_words(f, brief=True)}" for i, f in enumerate(facts))


Answerer = Callable[[ImageFacts, Callable[[list[str]], str]], tuple[str, str]]


# ------------------------------------------------------------------------------------------ one answerer per aspect
def _material(f: ImageFacts, pick) -> tuple[str, str]:
    if f.label and f.profile != "sem":
        short = pick([f"The material is {f.label_text}.", f"It is {f.label_text}."])
    elif f.label:
        short = pick([f"It shows {f.noun}, labelled {f.label_text}.", f"The image shows {f.noun} ({f.label_text})."])
    else:
        short = f"Judging by shape alone (no label is given), it shows {f.noun}."
    if f.countable:
        detail = (f"The segmentation finds {f.s('objects')}, {f.s('shape')} (mean circularity "
                  f"{f.s('circularity_mean')}, aspect ratio {f.s('aspect_ratio_mean')}), with {f.size_sentence()} "
                  f"{f.scale_note}.")
    else:
        detail = (f"No separate objects can be counted; it is a continuous {f.s('roughness')} surface "
                  f"(co-occurrence contrast {f.s('glcm_contrast')}).")
    return short, f"{short} {detail}"


def _scale(f: ImageFacts, pick) -> tuple[str, str]:
    m, md = f.m, f.metadata
    if not m.nm_per_pixel:
        short = "The scale is not given, so sizes here are in pixels."
        why = ("no instrument metadata and no readable scale bar" if f.info_bar_px
               else "no instrument metadata and no information bar with a scale bar")
        return short, f"{short} The field of view is {f.s('width_px')} x {f.s('height_px')} pixels; there is {why}."
    fov = f"{f.s('field_width')} x {f.s('field_height')}"
    source = f.scale.source if f.scale else "metadata"
    if source == "scale_bar" and f.scale.readings:
        bar = f", read from the scale bar ({f.s('scale_detail')})"
    elif source == "instrument":
        bar = ", from the instrument's metadata in the file"
    else:
        bar = (f"; the scale bar represents {f.s('scale_bar_nm')} nm" if md.get("scale_bar_nm")
               else "")
    short = f"One pixel is {f.s('nm_per_pixel')} nm{bar}."
    long = (f"{short} The {f.s('width_px')} x {f.s('height_px')}-pixel field of view spans {fov}"
            + (f", {f.magnification}" if f.magnification else "") + ". All sizes below are in nanometres.")
    return short, long


def _shape(f: ImageFacts, pick) -> tuple[str, str]:
    if not f.countable:
        short = f"There are no distinct objects; the surface is continuous and {f.s('roughness')}."
        return short, f"{short} Co-occurrence contrast {f.s('glcm_contrast')}, edge density {f.s('edge_density')}."
    short = pick([f"The {f.noun} are mostly {f.s('shape')}.", f"Mostly {f.s('shape')} {f.noun}."])
    long = (f"{short} Their mean circularity is {f.s('circularity_mean')} (1 is a perfect circle) and their mean "
            f"aspect ratio {f.s('aspect_ratio_mean')}; {f.orientation_sentence()}.")
    return short, long


def _phases(f: ImageFacts, pick) -> tuple[str, str]:
    if f.countable:
        short = (f"Two phases are distinguishable by grey level: the objects ({f.s('area_fraction')} of the area) "
                 "and the background.")
    else:
        short = "No distinct layers or phases stand out; the grey levels vary continuously."
    return short, (f"{short} The brightness has mean {f.s('brightness_mean')} and standard deviation "
                   f"{f.s('brightness_std')} on a 0-1 scale, a {f.s('contrast')} contrast.")


def _uniformity(f: ImageFacts, pick) -> tuple[str, str]:
    if not f.countable:
        short = "There are no separate objects to compare; the texture itself is the structure."
        return short, f"{short} Size heterogeneity {f.s('size_heterogeneity')}."
    short = (f"They are {f.s('uniformity')} (coefficient of variation {f.s('size_cv')}) and mostly {f.s('shape')} "
             "in shape.")
    return short, (f"{short} Sizes {f.scale_note}: {f.size_sentence()}; mean circularity "
                   f"{f.s('circularity_mean')}, aspect ratio {f.s('aspect_ratio_mean')}.")


def _size(f: ImageFacts, pick) -> tuple[str, str]:
    if not f.countable:
        short = "No separate objects can be measured; the structure is continuous."
        return short, f"{short} The field of view is {f.s('field_width')} x {f.s('field_height')}."
    width = ""
    if f.shape == "elongated":  # for wires and fibres the width is the size that matters
        short = pick([f"About {f.s('width_mean')} wide and {f.s('length_mean')} long on average.",
                      f"Typically about {f.s('width_mean')} wide, {f.s('length_mean')} long."])
        width = f" The mean equivalent diameter is {f.s('diameter_mean')}."
    else:
        short = pick([f"About {f.s('diameter_mean')} across on average.",
                      f"Typically about {f.s('diameter_mean')} in equivalent diameter."])
    return short, (f"{short} Over {f.s('objects')} {f.scale_note}: {f.size_sentence()}; "
                   f"they are {f.s('uniformity')}.{width}")


def _count(f: ImageFacts, pick) -> tuple[str, str]:
    if not f.countable:
        short = "None can be counted: the structure is continuous, with no separate objects."
        return short, f"{short} The field of view is {f.s('field_width')} x {f.s('field_height')}."
    short = pick([f"There are {f.count_sentence()}, {f.s('diameter_mean')} across on average.",
                  f"The image holds {f.count_sentence()}, with a mean equivalent diameter of {f.s('diameter_mean')}."])
    return short, (f"{short} Sizes {f.scale_note}: {f.size_sentence()}; they cover {f.s('area_fraction')} of the "
                   f"image.{f.expert_count_sentence()}")


def _spatial(f: ImageFacts, pick) -> tuple[str, str]:
    if not f.countable:
        short = "There are no separate objects to be distributed; the structure covers the image."
        return short, f"{short} The area fraction of the segmented phase is {f.s('area_fraction')}."
    if not f.pattern_known:
        short = f"There are only {f.s('object_count')}, too few to tell how they are distributed."
        return short, f"{short} They cover {f.s('area_fraction')} of the area."
    short = f"The {f.noun} are {f.s('arrangement')} across the image."
    return short, (f"{short} The Clark-Evans ratio is {f.s('clark_evans_r')} (1 for a random pattern, lower when "
                   f"clustered, higher when evenly spaced); the mean nearest-neighbour distance is "
                   f"{f.s('nn_distance_mean')} and the objects cover {f.s('area_fraction')} of the area.")


def _aggregation(f: ImageFacts, pick) -> tuple[str, str]:
    if not f.countable:
        short = "No: there are no separate objects that could aggregate."
        return short, short
    if not f.pattern_known:
        short = f"No: with {f.s('object_count')} object(s) there is nothing to aggregate."
        return short, short
    clustered = f.arrangement == "clustered"
    bundled = f.shape == "elongated" and f.aligned
    if clustered or f.contact == "touching or fused" or bundled:
        what = "bundling of aligned objects" if bundled else "aggregation into clusters" if clustered else "contact"
        short = f"Yes, there is {what}."
    else:
        short = f"No clear aggregation: the objects are {f.s('contact')} and {f.s('arrangement')}."
    return short, (f"{short} Clark-Evans ratio {f.s('clark_evans_r')}; nearest-neighbour distance "
                   f"{f.s('nn_distance_mean')} for a mean diameter of {f.s('diameter_mean')} "
                   f"(ratio {f.s('nn_ratio')}); orientation coherence {f.s('orientation_coherence')}.")


def _texture(f: ImageFacts, pick) -> tuple[str, str]:
    short = pick([f"The surface looks {f.s('roughness')}.", f"A {f.s('roughness')} surface."])
    direction = "a directional" if f.aligned else "an isotropic"
    return short, (f"{short} The grey-level co-occurrence contrast is {f.s('glcm_contrast')} and homogeneity "
                   f"{f.s('glcm_homogeneity')}; edges cover {f.s('edge_density_pct')} of the pixels, with {direction} "
                   f"texture (orientation coherence {f.s('orientation_coherence')}).")


def _defects(f: ImageFacts, pick) -> tuple[str, str]:
    if f.has_outliers:
        short = "A few objects stand out, much larger than the rest: possible defects, impurities or agglomerates."
    else:
        short = "No obvious defects or impurities: no object stands out from the size distribution."
    return short, (f"{short} The largest object is {f.s('diameter_max')} across, {f.s('outlier_ratio')} "
                   f"times the mean of {f.s('diameter_mean')}; the surface is {f.s('roughness')} "
                   f"(co-occurrence contrast {f.s('glcm_contrast')}).")


def _composition(f: ImageFacts, pick) -> tuple[str, str]:
    varied = f.contrast != "low"
    short = ("Yes, brightness varies, which may reflect composition or topography." if varied
             else "Little: the brightness is nearly even, with no clear compositional contrast.")
    return short, (f"{short} The grey levels have a {f.s('contrast')} spread (standard deviation "
                   f"{f.s('brightness_std')} around a mean of {f.s('brightness_mean')}); in SEM, brightness also "
                   "depends on edges and topography, so contrast alone does not prove a change of composition.")


def _markers(f: ImageFacts, pick) -> tuple[str, str]:
    bar = (f"an instrument information bar of {f.s('info_bar_px')} pixels at the bottom" if f.info_bar_px
           else "no instrument information bar")
    short = "No element labels or markers are visible."
    return short, f"{short} The image has {bar}; no overlay maps or labels elements."


def _contact(f: ImageFacts, pick) -> tuple[str, str]:
    if not f.countable:
        short = "The structure is continuous, so there are no separate objects to touch."
        return short, short
    if not f.pattern_known:
        short = f"There are only {f.s('object_count')}, isolated from one another."
        return short, short
    short = f"The {f.noun} are {f.s('contact')}."
    return short, (f"{short} Neighbours are {f.s('nn_distance_mean')} apart centre to centre, "
                   f"{f.s('nn_ratio')} times their mean diameter of {f.s('diameter_mean')}.")


def _boundaries(f: ImageFacts, pick) -> tuple[str, str]:
    clear = f.contrast != "low"
    short = ("Yes, boundaries are clear against the background." if clear
             else "Boundaries are faint: the objects differ little from the background.")
    return short, (f"{short} The grey-level standard deviation is {f.s('brightness_std')} ({f.s('contrast')} contrast) "
                   f"and edges cover {f.s('edge_density_pct')} of the image.")


def _matrix(f: ImageFacts, pick) -> tuple[str, str]:
    if not f.countable:
        short = "No separate matrix is visible; the material fills the field of view."
        return short, f"{short} Brightness {f.s('brightness_mean')}, {f.s('roughness')} texture."
    short = f"The {f.noun} sit on a background that fills {f.s('background_fraction')} of the area."
    return short, (f"{short} The image is {f.s('coverage')} ({f.s('area_fraction')} covered); nothing in the grey "
                   "levels points to a solvent or polymer matrix, which a single micrograph cannot identify.")


def _foreign(f: ImageFacts, pick) -> tuple[str, str]:
    short = ("Possibly: a few objects are much larger than the rest." if f.has_outliers
             else "No: every segmented object falls within the main size distribution.")
    bar = " Apart from the instrument information bar, nothing else is present." if f.info_bar_px else ""
    return short, (f"{short} The largest object is {f.s('outlier_ratio')} times the mean size "
                   f"({f.s('diameter_max')} against {f.s('diameter_mean')}).{bar}")


def _modality(f: ImageFacts, pick) -> tuple[str, str]:
    technique = f.metadata.get("technique") or ("SEM" if f.profile == "sem" else "an image of unknown modality")
    short = f"It is {'an ' if technique[0] in 'AEIOUS' else ''}{technique} image."
    extra = [form.format(f.s(k)) for k, form in INSTRUMENT_FIELDS.items() if f.metadata.get(k) is not None]
    long = (f"{short} The grey-scale, topographic look with an information bar is typical of scanning electron "
            "microscopy" + (f"; the metadata gives {', '.join(extra)}" if extra else "") + ".")
    return short, long


def _post_processing(f: ImageFacts, pick) -> tuple[str, str]:
    if f.colourful:
        short = "Yes: the image is in colour, which in electron microscopy means false colouring."
    else:
        short = "No sign of post-processing: it is a plain grey-scale image without false colour or 3D rendering."
    return short, f"{short} Its mean brightness is {f.s('brightness_mean')} with {f.s('contrast')} contrast."


def _active_sites(f: ImageFacts, pick) -> tuple[str, str]:
    if f.countable:
        short = f"The {f.noun} themselves are the regions with distinct properties, about {f.s('area_fraction')} of the area."
    else:
        short = "No regions stand out as distinct; the surface looks alike throughout."
    return short, (f"{short} A micrograph shows structure, not function: which sites are active would need "
                   f"spectroscopy or tests. The contrast here is {f.s('contrast')} (standard deviation "
                   f"{f.s('brightness_std')}).")


def _dynamics(f: ImageFacts, pick) -> tuple[str, str]:
    short = "It is a static image."
    return short, (f"{short} A single frame records one moment; any process (growth, sintering, corrosion) can only "
                   "be inferred from the structure it left behind.")


def _use(f: ImageFacts, pick) -> tuple[str, str]:
    key = (f.label or "").lower()
    if key in LABEL_USES:
        short = f"Likely uses: {LABEL_USES[key]}."
    else:
        short = f"The application cannot be told from the image alone; {f.noun} of this kind have many uses."
    return short, f"{short} The guess rests on the category ({f.label_text or 'unknown'}) and the measured morphology " \
                  f"({f.s('shape')}, {f.s('uniformity') if f.countable else 'continuous'})."


def _origin(f: ImageFacts, pick) -> tuple[str, str]:
    # `maemi synth` records its generator seed next to the ground truth; other datasets say "synthetic": true.
    if f.metadata.get("synthetic") or ("seed" in f.metadata and "object_count" in f.metadata):
        short = "It is a simulated image: the dataset marks it as generated, not recorded on an instrument."
    else:
        short = "It appears to be an experimental micrograph of a real sample."
    return short, f"{short} It has {'an' if f.info_bar_px else 'no'} instrument information bar."


def _caption(f: ImageFacts, pick) -> tuple[str, str]:
    m = f.m
    kind = {"sem": "SEM image", "neu": "steel surface image", "kth": "texture image", "cmi": "corrosion panel image"}
    what = kind.get(f.profile, "image")
    mag = f", {f.magnification}" if f.magnification else ""
    if f.countable:
        # "isolated" alone when there are too few objects for a pattern (arrangement and contact both say it)
        layout = f"{f.s('arrangement')} and {f.s('contact')}" if f.pattern_known else f.s("arrangement")
        short = pick([f"This {what} shows {f.s('shape')} {f.noun}, {layout}{mag}.",
                      f"The {what} shows {f.s('shape')} {f.noun}, {layout}{mag}."])
        many = f"There are {f.s('object_count')} of them" if m.object_count > 1 else "There is one"
        long = (f"{short} {many}, {f.s('uniformity')}, with a {f.size_sentence()} "
                f"{f.scale_note}, covering {f.s('area_fraction')} of the field. The surface is {f.s('roughness')} and "
                f"the image {f.s('brightness')} with {f.s('contrast')} contrast.")
    else:
        short = pick([f"This {what} shows a continuous, {f.s('roughness')} surface{mag}.",
                      f"The {what} shows a {f.s('roughness')}, continuous surface{mag}."])
        long = (f"{short} The texture is {'directional' if f.aligned else 'isotropic'} (orientation coherence "
                f"{f.s('orientation_coherence')}) and the image {f.s('brightness')} with {f.s('contrast')} contrast.")
    if f.label:
        long += f" It belongs to the category {f.label_text}."
    return short, long


def _classify(f: ImageFacts, pick) -> tuple[str, str]:
    if not f.label:
        short = f"Unlabelled; by its measurements it shows {f.noun}."
        return short, short
    short = f.label
    return short, f"This image belongs to the category {f.label_text}: it shows {f.count_sentence()}, " \
                  f"{f.s('roughness')} and {f.s('brightness')} overall."


# Steel surface defects (NEU), textures (KTH), corrosion panels (CMI), generic images.
def _central_feature(f: ImageFacts, pick) -> tuple[str, str]:
    what = {"neu": f"{f.label_text} defect", "cmi": f"panel rated {f.label_text}"}.get(f.profile, f.label_text)
    what = what if f.label else "surface"
    if f.countable:
        short = f"The {what} shows {f.s('object_count')} {f.s('shape')} marks, {f.s('arrangement')}."
    else:
        short = f"The {what} is a continuous, {f.s('roughness')} texture."
    return short, f"{short} {f.orientation_sentence().capitalize()}; the marks cover {f.s('area_fraction')} " \
                  f"of the image."


def _contrast(f: ImageFacts, pick) -> tuple[str, str]:
    short = f"The contrast between the defect and the surrounding texture is {f.s('contrast')}."
    return short, (f"{short} The grey-level standard deviation is {f.s('brightness_std')} and the co-occurrence "
                   f"contrast {f.s('glcm_contrast')}, with homogeneity {f.s('glcm_homogeneity')}.")


def _orientation(f: ImageFacts, pick) -> tuple[str, str]:
    if f.aligned:
        short = f"The linear features run about {f.s('orientation_deg')} degrees from the horizontal."
    else:
        short = "There is no dominant orientation."
    return short, f"{short} The orientation coherence is {f.s('orientation_coherence')} and the texture " \
                  f"anisotropy {f.s('anisotropy')}."


def _dispersion(f: ImageFacts, pick) -> tuple[str, str]:
    if not f.countable:
        short = "Neither: the pattern covers the whole image."
        return short, f"{short} No separate marks are segmented; the texture contrast is {f.s('glcm_contrast')}."
    if not f.pattern_known:
        short = f"There are only {f.s('object_count')} isolated marks."
        return short, f"{short} They cover {f.s('area_fraction')} of the image."
    if f.arrangement == "clustered":
        short = "They are centralised: the marks gather in clusters."
    else:
        short = f"They are dispersed: the marks are {f.s('arrangement')} over the image."
    return short, f"{short} Clark-Evans ratio {f.s('clark_evans_r')} over {f.s('object_count')} segmented marks " \
                  f"covering {f.s('area_fraction')}."


def _overall_brightness(f: ImageFacts, pick) -> tuple[str, str]:
    short = f"The image is {f.s('brightness')} overall."
    return short, f"{short} Its mean grey level is {f.s('brightness_mean')} on a 0-1 scale, with a {f.s('contrast')} " \
                  f"contrast (standard deviation {f.s('brightness_std')})."


def _colour(f: ImageFacts, pick) -> tuple[str, str]:
    tone = "in colour" if f.colourful else "grey"
    short = f"The surface appears {tone}, {f.s('brightness')} in tone."
    return short, f"{short} Mean grey level {f.s('brightness_mean')}, contrast {f.s('contrast')}."


def _pattern(f: ImageFacts, pick) -> tuple[str, str]:
    kind = "a directional, striated pattern" if f.aligned else "an isotropic pattern"
    short = f"It shows {kind}, {f.s('roughness')} in grain."
    return short, f"{short} Co-occurrence contrast {f.s('glcm_contrast')}, edge density {f.s('edge_density')}; " \
                  f"{f.orientation_sentence()}."


def _texture_uniformity(f: ImageFacts, pick) -> tuple[str, str]:
    even = f.cv < THRESHOLDS["uniform_cv"] or not f.countable
    short = "The texture is uniform across the image." if even else "The texture varies across the image."
    return short, f"{short} Size heterogeneity {f.s('size_heterogeneity')}, co-occurrence homogeneity " \
                  f"{f.s('glcm_homogeneity')}."


def _severity(f: ImageFacts, pick) -> tuple[str, str]:
    short = f"Corrosion marks cover {f.s('area_fraction')} of the panel."
    rating = f" The panel is rated {f.label}." if f.label else ""
    where = f" They are {f.s('arrangement')} and {f.s('contact')}." if f.pattern_known else ""
    return short, f"{short}{where} The contrast is {f.s('contrast')}.{rating}"


def _scribe_pattern(f: ImageFacts, pick) -> tuple[str, str]:
    if f.aligned:
        short = f"The corrosion follows a line about {f.s('orientation_deg')} degrees from the horizontal, along the scribe."
    else:
        short = f"The corrosion has no dominant direction: {f.s('arrangement')} marks around the scribe."
    return short, f"{short} Orientation coherence {f.s('orientation_coherence')}; the marks cover " \
                  f"{f.s('area_fraction')} of the panel, {f.s('contact')}."


def _rating_meaning(f: ImageFacts, pick) -> tuple[str, str]:
    if not f.label or f.label not in ASTM_D1654_CREEPAGE_MM:
        short = "The rating is not known for this panel."
        return short, f"{short} ASTM D1654 rates panels 0-10 by the mean creepage from the scribe."
    short = f"Rating {f.label}: a mean creepage from the scribe of {ASTM_D1654_CREEPAGE_MM[f.label]} mm."
    return short, f"{short} ASTM D1654 rates scribed panels from 10 (no creepage) down to 0 (more than 16 mm); " \
                  "higher ratings mean better corrosion resistance."


def _objects(f: ImageFacts, pick) -> tuple[str, str]:
    short = f"There are {f.count_sentence()}." if f.countable else "No separate objects: a continuous structure."
    return short, f"{short} They cover {f.s('area_fraction')} of the image and are mostly {f.s('shape')}."


ANSWERERS: dict[str, Answerer] = {
    "basics.material": _material, "basics.scale": _scale,
    "morphology.shape": _shape, "morphology.phases": _phases, "morphology.uniformity": _uniformity,
    "size_distribution.size": _size, "size_distribution.count": _count, "size_distribution.spatial": _spatial,
    "size_distribution.aggregation": _aggregation,
    "surface.texture": _texture, "surface.defects": _defects,
    "composition.contrast": _composition, "composition.markers": _markers,
    "interactions.contact": _contact, "interactions.boundaries": _boundaries,
    "environment.matrix": _matrix, "environment.foreign_objects": _foreign,
    "technique.modality": _modality, "technique.post_processing": _post_processing,
    "functional.active_sites": _active_sites, "functional.dynamics": _dynamics,
    "application.use": _use, "application.origin": _origin,
    "caption.describe": _caption, "classify.category": _classify,
    "defect.central_feature": _central_feature, "defect.contrast": _contrast, "defect.orientation": _orientation,
    "defect.dispersion": _dispersion, "defect.boundaries": _boundaries, "defect.brightness": _overall_brightness,
    "texture.material": _material, "texture.colour": _colour, "texture.pattern": _pattern,
    "texture.uniformity": _texture_uniformity, "texture.lighting": _overall_brightness,
    "corrosion.dominant_feature": _central_feature, "corrosion.severity": _severity,
    "corrosion.scribe_pattern": _scribe_pattern, "corrosion.rating_meaning": _rating_meaning,
    "appearance.objects": _objects, "appearance.size": _size, "appearance.arrangement": _spatial,
    "appearance.texture": _texture, "appearance.brightness": _overall_brightness,
}


# ------------------------------------------------------------------------------------------ multi-image comparisons
def _name(i: int, f: ImageFacts) -> str:
    return f"image {i + 1}" + (f" ({f.label_text})" if f.label else "")


def _compare_table(facts: list[ImageFacts]) -> str:
    return "; ".join(
        f"{_name(i, f)}: {f.s('object_count')} objects, mean size {f.s('diameter_mean')}, "
        f"area fraction {f.s('area_fraction')}, brightness {f.s('brightness_mean')}"
        for i, f in enumerate(facts)
    )


def _differences(facts: list[ImageFacts]) -> list[tuple[float, str]]:
    """(relative spread, sentence) per measured property, most different first. The sentences name the images by
    place only ("image 2"): they are slot values, measured again at inference, where no label is known."""
    unit = facts[0].unit
    props = {  # name: (value, as text, what the larger value means)
        "object count": (lambda f: float(f.m.object_count), lambda v: f"{v:.0f}", "more objects"),
        "mean size": (lambda f: f.m.to_nm(f.m.diameter_mean_px) if f.m.nm_per_pixel else f.m.diameter_mean_px,
                      lambda v: f"{fmt_number(v)} {unit}", "larger objects"),
        "area fraction": (lambda f: f.m.area_fraction, _pct, "denser coverage"),
        "brightness": (lambda f: f.m.brightness_mean, lambda v: f"{v:.2f}", "the brighter surface"),
        "texture contrast": (lambda f: f.m.glcm_contrast, lambda v: f"{v:.2f}", "the rougher surface"),
    }
    if len({f.unit for f in facts}) > 1:  # sizes in nm and in px cannot be compared
        del props["mean size"]
    out = []
    for name, (get, text, more) in props.items():
        values = [get(f) for f in facts]
        hi, lo = max(values), min(values)
        spread = (hi - lo) / max(abs(hi), 1e-9)
        if text(hi) == text(lo):  # equal as far as the answer can tell
            out.append((0.0, f"they have the same {name} ({text(hi)})"))
            continue
        winner = values.index(hi)  # first of equals: deterministic
        out.append((spread, f"image {winner + 1} has {more} ({name} {text(hi)} against {text(lo)})"))
    return sorted(out, key=lambda t: -t[0])


def compare_values(facts: list[ImageFacts]) -> dict[str, str]:
    """The slot values of a multi-image answer: each image's as {name#i}, and what the comparison measures."""
    values: dict[str, str] = {}
    for i, f in enumerate(facts):
        values.update(indexed(f.values, i + 1))
    diffs = _differences(facts)
    values["difference_1"], values["difference_2"] = diffs[0][1], diffs[1][1]
    het = [f.m.size_heterogeneity for f in facts]
    most = int(np.argmax(het))
    values["most_heterogeneous"], values["heterogeneity_max"] = f"Image {most + 1}", f"{het[most]:.2f}"
    return values


def _inter_class(facts: list[ImageFacts], pick) -> tuple[str, str]:
    differ = _differences(facts)[0][0] > 0
    short = ("They differ most in that {difference_1}." if differ
             else "Their measurements do not tell them apart; only their categories differ.")
    return short, f"{short} Also, {{difference_2}}. Measured: {_compare_table(facts)}."


def _intra_class(facts: list[ImageFacts], pick) -> tuple[str, str]:
    shared = [w for w in ("shape", "arrangement", "roughness", "brightness") if len({getattr(f, w) for f in facts}) == 1]
    words = {"shape": f"{facts[0].s('shape')} objects", "arrangement": f"an arrangement ({facts[0].s('arrangement')})",
             "roughness": f"a {facts[0].s('roughness')} surface", "brightness": f"a tone ({facts[0].s('brightness')})"}
    label = f"the category {facts[0].label_text}" if facts[0].label else "one category"
    common = ", ".join(words[w] for w in shared) if shared else "no single measured trait, only their category"
    short = f"They belong to {label} and share {common}."
    why = "They look different because {difference_1}." if _differences(facts)[0][0] > 0 else "Their measurements agree."
    return short, f"{short} {why} Measured: {_compare_table(facts)}."


def _spatial_heterogeneity(facts: list[ImageFacts], pick) -> tuple[str, str]:
    short = "{most_heterogeneous} is the most heterogeneous (size heterogeneity {heterogeneity_max})."
    per = "; ".join(f"{_name(i, f)}: heterogeneity {f.s('size_heterogeneity')}, sizes {f.s('diameter_min')}"
                    f" to {f.s('diameter_max')}, {f.s('uniformity')}" for i, f in enumerate(facts))
    return short, f"{short} {per[0].upper()}{per[1:]}."


COMPARE_ANSWERERS = {
    "compare.inter_class": _inter_class, "compare.intra_class": _intra_class, "compare.spatial": _spatial_heterogeneity,
}


# ------------------------------------------------------------------------------------------ the teacher
def split_for_measuring(image: np.ndarray, info_bar_height_px: int | None = None
                        ) -> tuple[np.ndarray, int, bool, np.ndarray]:
    """(grey image above the info bar, info bar height in px, whether the image is in false colour, the whole grey
    image with its bar) of a decoded image: (H, W) grey or (H, W, 3) colour, floats in [0, 1]. The bar's height comes
    from the metadata when given (the synthetic corpus knows it), else it is detected."""
    colourful = image.ndim == 3 and float((image.max(axis=2) - image.min(axis=2)).mean()) > THRESHOLDS["colour_saturation"]
    grey = rgb2gray(image).astype(np.float32) if image.ndim == 3 else image
    height = grey.shape[0]
    if info_bar_height_px is not None:
        top = height - int(info_bar_height_px)
    else:
        top = find_info_bar(grey)
        top = height if top is None else top
    return grey[:top], height - top, colourful, grey


@dataclass(frozen=True)
class MeasuredImage:
    m: Measurements  # sizes in px; times m.nm_per_pixel (the scale's) in nm
    scale: Scale
    info_bar_px: int
    colourful: bool
    # boxes (left, top, right, bottom) of scale bars and labels drawn on the image, left out of the objects
    left_out: tuple[tuple[int, int, int, int], ...] = ()


def measure_file(path: Path, metadata: dict | None = None, nm_per_pixel: float | None = None,
                 segmenter: str = DEFAULT_SEGMENTER) -> MeasuredImage:
    """Measure one image above its info bar, with its scale from maemi.measure.scale (the explicit `nm_per_pixel`,
    metadata.jsonl, the instrument's metadata, else the scale bar), its objects found by `segmenter` (as
    maemi.measure.measurements.segment takes it). Raises ImageReadError, or ValueError for an image too small to
    measure."""
    return measure_pixels(load_image(path), path, metadata, nm_per_pixel, segmenter)


def measure_pixels(image: np.ndarray, path: Path | None = None, metadata: dict | None = None,
                   nm_per_pixel: float | None = None, segmenter: str = DEFAULT_SEGMENTER) -> MeasuredImage:
    """measure_file for an image already decoded (`path`, when known, for the instrument's metadata in the file)."""
    return measure_segmented(image, path, metadata, nm_per_pixel, segmenter)[0]


def measure_segmented(image: np.ndarray, path: Path | None = None, metadata: dict | None = None,
                      nm_per_pixel: float | None = None, segmenter: str = DEFAULT_SEGMENTER
                      ) -> tuple[MeasuredImage, Segmentation, np.ndarray]:
    """measure_pixels, with the segmentation the measurements come from and the whole grey image (info bar
    included): what the object table and the overlay are drawn from. `segmenter` as maemi.measure.measurements.segment
    takes it."""
    metadata = metadata or {}
    grey, bar, colourful, whole = split_for_measuring(image, metadata.get("info_bar_height_px"))
    annotations = find_annotations(grey)  # a scale bar drawn on the micrograph: read, then left out of the objects
    scale = read_scale(path, whole, explicit_nm_per_pixel=nm_per_pixel, metadata=metadata,
                       info_bar_top=whole.shape[0] - bar, annotations=annotations)
    seg = segment(without_annotations(grey, annotations), segmenter)
    return (MeasuredImage(measure_segmentation(seg, scale.nm_per_pixel), scale, bar, colourful,
                          tuple(a.box for a in annotations)), seg, whole)


def _measure_file(path: Path, metadata: dict | None, segmenter: str = DEFAULT_SEGMENTER
                  ) -> tuple[MeasuredImage, str]:
    return measure_file(path, metadata, segmenter=segmenter), file_sha256(path)


# The files this process has measured, by (path, inode, modification time, size, metadata, segmenter), the latest
# MEASURED_KEPT of them (about 2 KB each). Measuring is pure and takes 0.3-2 s an image, and one process often
# measures a file twice: `maemi demo` teaches its test images and then evaluates the assistant on them.
MEASURED_KEPT = 16384
_measured: OrderedDict[tuple, tuple[MeasuredImage, str]] = OrderedDict()
_measured_lock = threading.Lock()


def _file_key(path: Path, metadata: dict | None, segmenter: str) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    # the inode too: a file replaced by another (an atomic write) within one tick of the file system's clock
    return (str(path.absolute()), stat.st_ino, stat.st_mtime_ns, stat.st_size,
            json.dumps(metadata or {}, sort_keys=True, default=str), segmenter)


def _recall(key: tuple | None) -> tuple[MeasuredImage, str] | None:
    if key is None:
        return None
    with _measured_lock:
        return _measured.get(key)


def _remember(key: tuple | None, result: tuple[MeasuredImage, str]) -> None:
    if key is None:
        return
    with _measured_lock:
        _measured[key] = result
        _measured.move_to_end(key)
        while len(_measured) > MEASURED_KEPT:
            _measured.popitem(last=False)


def measured_file(path: Path, metadata: dict | None = None, segmenter: str = DEFAULT_SEGMENTER
                  ) -> tuple[MeasuredImage, str]:
    """(measure_file's measured image, the file's sha256), measured once per process while the file is unchanged.
    Raises as measure_file does."""
    path = Path(path)
    key = _file_key(path, metadata, segmenter)
    result = _recall(key)
    if result is None:
        result = _measure_file(path, metadata, segmenter)
        _remember(key, result)
    return result


def _measure_or_none(item: tuple[Path, dict | None, str]) -> tuple[MeasuredImage, str] | None:
    try:
        return _measure_file(*item)
    except (ImageReadError, ValueError):  # left for the caller to measure again and report
        return None


def measure_in_parallel(items: list[tuple[Path, dict | None]], workers: int | None = None,
                        segmenter: str = DEFAULT_SEGMENTER) -> Iterator[tuple[Path, tuple[MeasuredImage, str] | None]]:
    """(path, (the measured image, its sha256) or None) for each (path, metadata), in order, measured in `workers`
    processes (default: maemi.cpu.worker_count's, one per core where there are enough images to pay for starting
    them): measuring is pure per image. Files this process measured before (measured_file) are not measured again.
    None: the file could not be measured, or one worker would do and this process had not measured it before; either
    way the caller measures it as it goes (and reports why it could not)."""
    keys = [_file_key(Path(path), metadata, segmenter) for path, metadata in items]
    known = {i: result for i, result in enumerate(map(_recall, keys)) if result is not None}
    todo = [(Path(path), metadata, segmenter) for i, (path, metadata) in enumerate(items) if i not in known]
    workers = worker_count(len(todo), workers)
    if workers <= 1:  # what this process measured before; None: the caller measures it as it goes
        yield from ((Path(path), known.get(i)) for i, (path, _) in enumerate(items))
        return
    measured = map_in_processes(_measure_or_none, todo, workers, chunksize=4)
    for i, (path, _) in enumerate(items):
        if i in known:
            yield Path(path), known[i]
            continue
        result = next(measured)
        if result is not None:
            _remember(keys[i], result)
        yield Path(path), result


class MeasureTeacher:
    """Answers from measurements. Same interface as OpenAITeacher; deterministic; thread-safe."""

    name = "measure"

    def __init__(self, profile: Profile | str = "sem") -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self._cache: dict[str, tuple[MeasuredImage, str]] = {}
        self._lock = threading.Lock()

    def measure_image(self, path: Path, metadata: dict | None = None) -> tuple[MeasuredImage, str]:
        """(the measured image, its sha256), cached by path."""
        key = str(path)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        result = measured_file(path, metadata)
        with self._lock:
            self._cache[key] = result
        return result

    def measure_all(self, items: list[tuple[Path, dict | None]], workers: int | None = None) -> None:
        """Measure many images ahead of answering, in `workers` processes (default: maemi.cpu.worker_count's):
        measuring is the teacher's whole cost and is pure per image. Unreadable images are left for answer() to
        report."""
        todo = [(Path(path), metadata) for path, metadata in items if str(path) not in self._cache]
        for path, result in measure_in_parallel(todo, workers):
            if result is not None:
                with self._lock:
                    self._cache[str(path)] = result

    def facts(self, path: Path, label: str | None, metadata: dict | None) -> tuple[ImageFacts, str]:
        measured, sha = self.measure_image(Path(path), metadata)
        return ImageFacts(measured.m, label, dict(metadata or {}), measured.info_bar_px, measured.colourful,
                          self.profile.name, measured.scale), sha

    def answer(
        self,
        images: list[Path],
        questions: list[Question],
        *,
        label: str | None = None,
        metadata: dict | None = None,
        instruction: str = "",  # accepted for interface parity; the measured answers need no prompt
    ) -> TeacherReply:
        """One image: answer each question. Several images (compare questions): `metadata` holds per-image lists,
        {"labels": [...], "nm_per_pixel": [...], ...}, as the pipeline sends them to any teacher."""
        if not images:
            raise ValueError("answer() needs at least one image")
        if len(images) == 1:
            facts, sha = self.facts(images[0], label, metadata)
            templates = {}
            for q in questions:
                if q.key not in ANSWERERS:
                    raise KeyError(f"the measure teacher has no answer for question {q.key!r}")
                templates[q.key] = self._both_lengths(lambda pick: ANSWERERS[q.key](facts, pick), sha, q.key)
            return _filled_reply(templates, facts.values, measured_context([facts]))
        per_image = _split_metadata(metadata or {}, len(images))
        pairs = [self.facts(p, md.get("label"), md) for p, md in zip(images, per_image)]
        facts_list = [f for f, _ in pairs]
        for i, f in enumerate(facts_list):
            f.index = i + 1
        seed = "+".join(sha for _, sha in pairs)
        templates = {}
        for q in questions:
            if q.key not in COMPARE_ANSWERERS:
                raise KeyError(f"the measure teacher has no multi-image answer for question {q.key!r}")
            templates[q.key] = self._both_lengths(lambda pick: COMPARE_ANSWERERS[q.key](facts_list, pick), seed, q.key)
        return _filled_reply(templates, compare_values(facts_list), measured_context(facts_list))

    @staticmethod
    def _both_lengths(render: Callable, seed: str, key: str) -> dict[str, str]:
        # The long answer restates the short one, so both must come from the same phrasing choices.
        rng = random.Random(f"{seed}:{key}")
        short, long = render(lambda options: options[rng.randrange(len(options))])
        return {"short": short, "long": long}


def _filled_reply(templates: dict[str, dict[str, str]], values: dict[str, str], measured: str) -> TeacherReply:
    answers = {key: {length: fill(t, values).text for length, t in pair.items()} for key, pair in templates.items()}
    return TeacherReply(answers=answers, templates=templates, slots=values, measured=measured)


def _split_metadata(metadata: dict, n: int) -> list[dict]:
    """{"labels": [a, b], "nm_per_pixel": [x, y]} -> [{"label": a, "nm_per_pixel": x}, {"label": b, ...}]."""
    out: list[dict] = [{} for _ in range(n)]
    for key, values in metadata.items():
        if not isinstance(values, list) or len(values) != n:
            raise ValueError(f"multi-image metadata {key!r} must be a list of {n} values, got {values!r:.80}")
        for i, v in enumerate(values):
            out[i]["label" if key == "labels" else key] = v
    return out
