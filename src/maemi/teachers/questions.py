"""Question sets ("profiles") that a teacher answers about each image, and the teacher's reply.

The SEM profile is the paper's ten question families with every sub-question (Srinivas et al. 2024, "Foundational
Model for Electron Micrograph Analysis", instruction data; summarised in ../shared/notes/paper.md), plus a caption
prompt and a classification prompt. NEU (steel surface defects), KTH-TIPS (textures) and CMI (corrosion panels, ASTM
D1654 ratings) use the paper's dataset-specific questions; `generic` suits any other image set.

All question text lives in the tables below, not in code branches: a teacher looks questions up by `key`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS = ("caption", "vqa", "classify", "compare")
LENGTHS = ("short", "long")


@dataclass(frozen=True)
class Question:
    key: str  # unique within a profile, "<family>.<aspect>", e.g. "basics.material"
    family: str  # "basics", "morphology", ..., "caption", "classify", "compare.inter_class", ...
    text: str
    task: str  # one of TASKS


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    questions: tuple[Question, ...]  # per-image questions, including the caption and the classify prompt
    compare_questions: dict[str, Question] = field(default_factory=dict)  # "inter_class", "intra_class", "spatial"

    def question(self, key: str) -> Question:
        for q in self.questions + tuple(self.compare_questions.values()):
            if q.key == key:
                return q
        raise KeyError(f"profile {self.name!r} has no question {key!r}")

    @property
    def classify_question(self) -> Question:
        return self.question("classify.category")


@dataclass
class TeacherReply:
    answers: dict[str, dict[str, str]]  # question key -> {"short": ..., "long": ...}
    usage: dict[str, int] = field(default_factory=dict)  # e.g. {"prompt_tokens": .., "completion_tokens": ..}
    cached: bool = False
    # The answers with a {slot} (maemi.measure.slots) wherever a measured value stands, the values they were filled
    # from, and the measurement in words (the student's prompt carries it). Empty for a teacher that measures nothing.
    templates: dict[str, dict[str, str]] = field(default_factory=dict)
    slots: dict[str, str] = field(default_factory=dict)
    measured: str = ""


class TeacherReplyError(ValueError):
    """A teacher's reply that does not answer what was asked (missing key, empty answer, not the schema)."""


def check_reply(reply: TeacherReply, questions: list[Question] | tuple[Question, ...]) -> None:
    """Every question answered, short and long, with non-empty text; raises TeacherReplyError naming what is missing."""
    for q in questions:
        pair = reply.answers.get(q.key)
        if not isinstance(pair, dict):
            raise TeacherReplyError(f"no answer for question {q.key!r}")
        for length in LENGTHS:
            text = pair.get(length)
            if not isinstance(text, str) or not text.strip():
                raise TeacherReplyError(f"question {q.key!r}: the {length} answer is missing or empty")


# The paper's zero-shot chain-of-thought instruction (Kojima et al. 2022, "Let's think step by step"), as the teacher's
# system prompt: read the scale first, then look, then answer each question at two lengths.
COT_INSTRUCTION = (
    "You are an expert in materials science, nanomaterials and electron microscopy. You will see one or more "
    "micrographs and a list of questions about them. Let's think step by step: first read the scale bar, "
    "magnification and any text in the instrument's information bar; then look at the objects, their shape, size, "
    "number and arrangement; then at the surface, the contrast and the background; only then answer. Answer every "
    "question twice: a short answer (one sentence) and a long answer (three to five sentences that explain what in "
    "the image supports it). Give sizes in nanometres or micrometres when the scale is readable, and say when it is "
    "not. Do not invent details you cannot see; say so when the image does not show something."
)


def _q(key: str, text: str, task: str = "vqa") -> Question:
    return Question(key=key, family=key.split(".")[0], text=text, task=task)


_CAPTION_TEXT = "Describe this {what} in a few sentences: what it shows, the shapes, sizes and arrangement."

# The paper's ten families, every sub-question.
_SEM_QUESTIONS = (
    _q("basics.material", "What type of nanomaterial is depicted in this image?"),
    _q("basics.scale", "What is the scale of the image? What does one unit of the scale bar represent?"),
    _q("morphology.shape", "What is the general shape or morphology of the nanomaterials in the image?"),
    _q("morphology.phases", "Are there distinct layers, phases or domains visible?"),
    _q("morphology.uniformity", "Do the nanomaterials appear uniform in size and shape, or are they varied?"),
    _q("size_distribution.size", "What is the approximate size or size range of the individual nanostructures?"),
    # Not in the paper's list, but what a microscopist asks first (answered from the measurement).
    _q("size_distribution.count", "How many nanostructures are there, and what is their mean size?"),
    _q("size_distribution.spatial",
       "How are the nanomaterials distributed throughout the image (evenly spaced, clustered, random)?"),
    _q("size_distribution.aggregation", "Is there any evidence of aggregation or bundling?"),
    _q("surface.texture", "Does the surface of the nanomaterial appear smooth, rough, or have a specific texture?"),
    _q("surface.defects", "Are there any visible defects, pores or impurities on the surface?"),
    _q("composition.contrast",
       "Is there evidence of compositional variation, as indicated by differences in brightness or contrast?"),
    _q("composition.markers", "Are there any labels or markers indicating specific elements or compounds?"),
    _q("interactions.contact",
       "How do the individual nanostructures interact with one another: are they touching, fused or separate?"),
    _q("interactions.boundaries", "Are there clear boundaries between different structures or phases?"),
    _q("environment.matrix",
       "Is there evidence of the nanomaterial interacting with a surrounding environment or matrix "
       "(a solvent, a polymer or another material)?"),
    _q("environment.foreign_objects",
       "Are there other objects or structures in the image that are not nanomaterials? If so, what are they?"),
    _q("technique.modality", "What imaging technique was used to capture this image (for example SEM or TEM)?"),
    _q("technique.post_processing",
       "Were there any post-processing steps or modifications made to the image (false colour, 3D rendering)?"),
    _q("functional.active_sites",
       "Are there any visible functional features, like active sites or regions with distinct properties?"),
    _q("functional.dynamics",
       "Are there any signs of a dynamic process captured in the image, or is it a static representation?"),
    _q("application.use", "What is the potential application or use of the nanomaterial shown?"),
    _q("application.origin", "Is this an image of a real experimental sample or of a simulation or rendering?"),
    _q("caption.describe", _CAPTION_TEXT.format(what="electron micrograph"), "caption"),
    _q("classify.category", "What category of nanomaterial does this image show?", "classify"),
)

# NEU surface defect database: the paper's questions for steel-strip defects.
_NEU_QUESTIONS = (
    _q("defect.central_feature", "Describe the central feature of this steel surface image."),
    _q("defect.contrast",
       "How would you describe the contrast between the defect (such as a scratch) and the surrounding texture?"),
    _q("defect.orientation", "What is the orientation of the scratch or of the dominant linear features?"),
    _q("defect.dispersion", "Are the patches or marks centralised or dispersed?"),
    _q("defect.boundaries", "Do the defects have well-defined boundaries?"),
    _q("defect.brightness", "Is the image bright, dark or neutral overall?"),
    _q("caption.describe", _CAPTION_TEXT.format(what="steel surface image"), "caption"),
    _q("classify.category", "What category of steel surface defect does this texture belong to?", "classify"),
)

# KTH-TIPS: material, colour, pattern, uniformity, lighting.
_KTH_QUESTIONS = (
    _q("texture.material", "What material does this texture appear to be?"),
    _q("texture.colour", "What is the colour or tone of the surface?"),
    _q("texture.pattern", "What pattern does the texture show?"),
    _q("texture.uniformity", "Is the texture uniform across the image, or does it vary?"),
    _q("texture.lighting", "How is the surface lit: bright, dark or even, with or without strong shadows?"),
    _q("caption.describe", _CAPTION_TEXT.format(what="texture image"), "caption"),
    _q("classify.category", "What category of material texture does this image show?", "classify"),
)

# CMI corrosion panels: dominant feature, how severity shows, the pattern around the scribe, what the rating means.
_CMI_QUESTIONS = (
    _q("corrosion.dominant_feature", "What is the dominant feature of this corrosion panel?"),
    _q("corrosion.severity", "How does the severity of corrosion show in the image?"),
    _q("corrosion.scribe_pattern", "What pattern does the corrosion form around the scribe?"),
    _q("corrosion.rating_meaning", "What does the ASTM D1654 rating of this panel mean?"),
    _q("caption.describe", _CAPTION_TEXT.format(what="corrosion panel image"), "caption"),
    _q("classify.category", "What ASTM D1654 rating (5 to 9) does this corrosion panel have?", "classify"),
)

_GENERIC_QUESTIONS = (
    _q("appearance.objects", "What objects or structures are visible, and how many are there?"),
    _q("appearance.size", "How large are the objects, and how much do their sizes vary?"),
    _q("appearance.arrangement", "How are the objects arranged: evenly, clustered or at random?"),
    _q("appearance.texture", "How would you describe the texture of the image?"),
    _q("appearance.brightness", "Is the image bright, dark or neutral overall, and how strong is its contrast?"),
    _q("caption.describe", _CAPTION_TEXT.format(what="image"), "caption"),
    _q("classify.category", "What category does this image belong to?", "classify"),
)


def _compare_questions(what: str) -> dict[str, Question]:
    # Paper appendix A.6: multi-image questions built from similarity sampling.
    return {
        "inter_class": Question(
            "compare.inter_class", "compare.inter_class",
            f"These {what}s look alike but belong to different categories. What tells them apart?", "compare"),
        "intra_class": Question(
            "compare.intra_class", "compare.intra_class",
            f"These {what}s belong to the same category but look different. What do they have in common?", "compare"),
        "spatial": Question(
            "compare.spatial", "compare.spatial",
            f"These {what}s have uneven size distributions. How do the sizes vary across each image, and which "
            "image is the most heterogeneous?", "compare"),
    }


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("sem", "Electron micrographs of nanomaterials: the paper's ten question families.",
                _SEM_QUESTIONS, _compare_questions("micrograph")),
        Profile("neu", "Hot-rolled steel strip surface defects (NEU-SDD / NEU-DET).",
                _NEU_QUESTIONS, _compare_questions("steel surface image")),
        Profile("kth", "Material textures under varied scale, pose and illumination (KTH-TIPS).",
                _KTH_QUESTIONS, _compare_questions("texture image")),
        Profile("cmi", "Corrosion panels rated by ASTM D1654 creepage from the scribe (CMI).",
                _CMI_QUESTIONS, _compare_questions("corrosion panel image")),
        Profile("generic", "Any labelled image set: objects, sizes, arrangement, texture, brightness.",
                _GENERIC_QUESTIONS, _compare_questions("image")),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}") from None
