"""MAEMI's own endpoints: multipart image upload, JSON answer.

POST /v1/ask (image(s) + question [+ context]), /v1/caption, /v1/classify (top-k with probabilities, zero- or
few-shot), /v1/measure (the measure teacher's numbers) and /v1/preview (a PNG the browser can show, for TIFFs).
All but /v1/ask take exactly one image: several are refused (400), not silently cut to the first.
Uploads are decoded in the bounded decoding pool (decoding.py); only model calls go through the batcher.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import BaseModel, Field

from maemi.data.images import ImageReadError, load_image
from maemi.measure.figures import overlay_image
from maemi.measure.field_notes import field_notes
from maemi.serve.openai_compat import MAX_IMAGES
from maemi.serve.request_guard import GuardedRoute
from maemi.serve.uploads import UploadError, UploadLimits, upload_as_file, upload_cost, upload_name
from maemi.teachers.measure import ImageFacts, measure_segmented
from maemi.teachers.remote import image_data_url, png_data_url

router = APIRouter(prefix="/v1", tags=["MAEMI"], route_class=GuardedRoute)

PREVIEW_MAX_SIDE = 1024


class NumberSource(BaseModel):
    slot: str = Field(description="The measured value (maemi.measure.slots), e.g. object_count, diameter_mean, or the "
                                  "word that describes one, e.g. uniformity; '#2' for the second image of a comparison")
    value: str = Field(description="As written in the answer, with its unit")


class Provenance(BaseModel):
    template: str | None = Field(None, description="The answer as the model wrote it, {slot} where a measured value "
                                                   "goes")
    numbers: list[NumberSource] = Field([], description="Which measured value each number (and each descriptive "
                                                        "word such as 'widely varied in size') of the answer is")
    unknown: list[str] = Field([], description="Slots no measurement could fill: the answer says 'unknown' there")
    measurements: list[dict] = Field([], description="Per image: the measured values and the scale, or the error")
    warning: str | None = Field(None, description="Set when an image is unlike the run's training images (the answer "
                                                  "starts with it)")


class AskResponse(Provenance):
    answer: str
    question: str
    context: str | None = None


class CaptionResponse(Provenance):
    caption: str


class Prediction(BaseModel):
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    shots: int
    views: int
    predictions: list[Prediction] = Field(description="Most likely first")
    ood_score: float | None = Field(None, description="How far the image lies from the training images "
                                                      "(`maemi calibrate`); None for a run not calibrated")
    flag: str = Field("ok", description="ok, low_confidence (calibrated top-1 below 0.5) or unfamiliar (unlike the "
                                        "training images: the classes mean little)")


class ScaleResponse(BaseModel):
    nm_per_pixel: float | None = Field(description="None when no source gives a trustworthy scale")
    source: str | None = Field(description="explicit (the request's nm_per_pixel), instrument (the file's metadata), "
                                           "scale_bar (the info bar read by OCR), or None")
    detail: str = Field(description="Where exactly: the metadata field, or the bar's length and label")
    magnification: float | None = None
    notes: list[str] = Field(description="Why the scale is unknown, or which sources disagree")


class MeasureResponse(BaseModel):
    info_bar_px: int = Field(description="Rows of instrument info bar found at the bottom and left out")
    left_out: list[list[int]] = Field(description="Boxes (left, top, right, bottom, px) of scale bars and labels "
                                                  "drawn on the image, left out of the objects")
    scale: ScaleResponse
    measurements: dict[str, bool | float | int | str | None] = Field(
        description="maemi.measure.measurements.Measurements: sizes (*_px) in pixels; times nm_per_pixel (when "
                    "known) in nm")
    values: dict[str, str] = Field(description="The same measurements as answers quote them (unit and rounding), by "
                                               "slot name, with the words that describe them (shape, uniformity, ...): an answer's "
                                               "numbers (/v1/ask 'numbers') are these")
    overlay: str = Field(description=f"PNG data URL (longer side at most {PREVIEW_MAX_SIDE} px): the image with the "
                                     "outline of each object that was counted")
    notes: list[str] = Field(description="What the reader must be told about the field: how much of it was left out "
                                         "(vacuum beyond a support film, the dark beyond the illumination's edge), "
                                         "is black but measured, or is clipped (maemi.measure.field_notes)")


class PreviewResponse(BaseModel):
    data_url: str = Field(description=f"PNG, longer side at most {PREVIEW_MAX_SIDE} px")


async def one_upload(request: Request) -> UploadFile:
    """The request's one `image`; UploadError 400 when the form repeats it (the endpoint would answer about one)."""
    form = await request.form()  # parsed already by FastAPI for the endpoint's fields: this reads its cache
    images = form.getlist("image")
    if len(images) != 1:
        raise UploadError(400, f"{request.url.path} takes one image, got {len(images)} 'image' fields; send one "
                               "request per image (only /v1/ask takes several, to ask about them together)")
    return images[0]


async def _tensors(request: Request, uploads: list[UploadFile], measure: bool = False) -> list:
    """The uploads as model input; measured too for an answer whose numbers are filled from the measurement."""
    state = request.app.state.maemi
    if not 1 <= len(uploads) <= MAX_IMAGES:
        raise UploadError(400, f"send 1 to {MAX_IMAGES} images, got {len(uploads)}")
    tensors = []
    for upload in uploads:
        data, limits = await upload.read(), state.config.limits
        tensors.append(await state.decodes.run(upload_cost(data, upload.filename, limits), state.model.image, data,
                                               upload.filename, limits, measure))
    return tensors


@router.post("/ask", response_model=AskResponse, summary="Answer a question about one image (or several together)")
async def ask(request: Request,
              image: list[UploadFile] = File(..., description=f"1 to {MAX_IMAGES} micrographs; several are asked "
                                                                "about together (a comparison)"),
              question: str = Form(..., min_length=1),
              context: str | None = Form(None, description="Your description: sample notes, instrument settings"),
              detail: bool = Form(False, description="The long answer (default: one sentence)")):
    request.app.state.maemi.model.prompt(len(image), question, context, detail)  # refused before any decoding
    images = await _tensors(request, image, measure=True)
    answer = await request.app.state.maemi.model.ask(images, question, context, detail=detail)
    return AskResponse(answer=answer.text, question=question, context=context, **answer.provenance)


@router.post("/caption", response_model=CaptionResponse, summary="Caption a micrograph")
async def caption(request: Request, image: UploadFile = File(...),
                  detail: bool = Form(False, description="The long caption (default: one sentence)")):
    (tensor,) = await _tensors(request, [await one_upload(request)], measure=True)
    answer = await request.app.state.maemi.model.caption(tensor, detail=detail)
    return CaptionResponse(caption=answer.text, **answer.provenance)


@router.post("/classify", response_model=ClassifyResponse, summary="Top-k classes with probabilities")
async def classify(request: Request, image: UploadFile = File(...),
                   top_k: int = Form(5, ge=1, le=100),
                   shots: int | None = Form(None, ge=0, description="0: zero-shot; K: K demonstrations from the "
                                                                    "support set; default: the server's --shots"),
                   views: int = Form(1, ge=1, le=8, description="Test-time augmentation: the class probabilities "
                                                                "averaged over this many flips and quarter turns")):
    (tensor,) = await _tensors(request, [await one_upload(request)])
    model = request.app.state.maemi.model
    shots = model.shots if shots is None else shots
    ranked = await model.classify(tensor, shots, top_k, views)
    ood_score, flag = model.flag(tensor, ranked[0][1])
    return ClassifyResponse(shots=shots, views=views, ood_score=ood_score, flag=flag,
                            predictions=[Prediction(label=c, probability=p) for c, p in ranked])


def _measure(data: bytes, name: str | None, limits: UploadLimits, nm_per_pixel: float | None,
             segmenter: str) -> MeasureResponse:
    with upload_as_file(data, name, limits) as path:  # a file: TIFF tags carry the instrument's scale
        try:
            measured, seg, whole = measure_segmented(load_image(path), path, nm_per_pixel=nm_per_pixel,
                                                     segmenter=segmenter)
        except ImageReadError as e:
            raise UploadError(422, f"upload {upload_name(name)}: {e.reason}") from None
        except ValueError as e:  # too small, or no finite pixels
            raise UploadError(422, f"upload {upload_name(name)}: {e}") from None
    scale = measured.scale
    overlay = overlay_image(whole, seg.labels, numbers=False, left_out=measured.left_out, empty=seg.empty)
    return MeasureResponse(info_bar_px=measured.info_bar_px, left_out=[list(box) for box in measured.left_out],
                           scale=ScaleResponse(nm_per_pixel=scale.nm_per_pixel, source=scale.source,
                                               detail=scale.detail, magnification=scale.magnification,
                                               notes=list(scale.notes)),
                           measurements=dataclasses.asdict(measured.m),
                           values=ImageFacts.unlabelled(measured).values,
                           overlay=png_data_url(overlay, PREVIEW_MAX_SIDE),
                           notes=field_notes(vars(measured.m)))


@router.post("/measure", response_model=MeasureResponse, summary="What the measure teacher measures on the image")
async def measure_image(request: Request, image: UploadFile = File(...),
                        nm_per_pixel: float | None = Form(None, gt=0, description="The scale, if you know it "
                                                                                  "better than the file does"),
                        segmenter: Literal["auto", "classical", "learned", "spots"] = Form(
                            "auto", description="What finds the objects: auto (threshold + watershed, or spots where "
                                                "one threshold cannot separate the image), threshold + watershed, the "
                                                "learned U-Net, or compact particles on a support "
                                                "(docs/measurement.md)")):
    state, image = request.app.state.maemi, await one_upload(request)
    data, limits = await image.read(), state.config.limits
    return await state.decodes.run(upload_cost(data, image.filename, limits), _measure, data, image.filename, limits,
                                   nm_per_pixel, segmenter)


def _preview(data: bytes, name: str | None, limits: UploadLimits) -> PreviewResponse:
    with upload_as_file(data, name, limits) as path:
        try:
            return PreviewResponse(data_url=image_data_url(path, PREVIEW_MAX_SIDE))
        except ImageReadError as e:
            raise UploadError(422, f"upload {upload_name(name)}: {e.reason}") from None


@router.post("/preview", response_model=PreviewResponse, summary="A PNG of the image for display (TIFF, 16-bit)")
async def preview(request: Request, image: UploadFile = File(...)):
    state, image = request.app.state.maemi, await one_upload(request)
    data, limits = await image.read(), state.config.limits
    return await state.decodes.run(upload_cost(data, image.filename, limits), _preview, data, image.filename, limits)
