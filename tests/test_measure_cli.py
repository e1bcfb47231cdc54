"""`maemi measure`: each image's scale with its source, and the measurements in nm when the scale is known."""

from __future__ import annotations

import csv
import json

import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from maemi.cli import app
from maemi.data.synth import make_micrograph
from maemi.measure.objects import FIBRE_COLUMNS

from conftest import STEM_IMAGES

ZEISS_TAG = b"0\r\nAP_PIXEL_SIZE\r\nPixel Size = 9.0 nm\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 4.5 nm\r\n"


def _images(tmp_path):
    image, record = make_micrograph("Particles", 0, 2, width=512, height=384)
    micrograph = image[: -record["info_bar_height_px"]]  # no info bar: the scale can only come from the tags
    tifffile.imwrite(tmp_path / "zeiss.tif", micrograph, extratags=[(34118, 2, len(ZEISS_TAG), ZEISS_TAG, True)])
    Image.fromarray(micrograph).save(tmp_path / "plain.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    return [tmp_path / "zeiss.tif", tmp_path / "plain.png", tmp_path / "broken.png"]


def test_measure_json_gives_scale_source_and_sizes_in_nm(tmp_path):
    zeiss, plain, broken = _images(tmp_path)
    result = CliRunner().invoke(app, ["measure", str(zeiss), str(plain), str(broken), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["path"]: r for r in json.loads(result.stdout)}
    z = rows[str(zeiss)]
    assert (z["nm_per_pixel"], z["scale_source"]) == (4.5, "instrument") and "Image Pixel Size" in z["scale_detail"]
    assert z["measurements"]["nm_per_pixel"] == 4.5 and z["measurements"]["object_count"] > 0
    p = rows[str(plain)]
    assert p["nm_per_pixel"] is None and p["scale_source"] is None
    assert any("no instrument info bar" in note for note in p["scale_notes"])
    assert p["measurements"]["nm_per_pixel"] is None and p["measurements"]["object_count"] > 0
    assert rows[str(broken)]["error"] and "broken.png" in rows[str(broken)]["error"]


def test_measure_explicit_scale_wins_and_the_table_is_written(tmp_path):
    zeiss, plain, _ = _images(tmp_path)
    out = tmp_path / "table.csv"
    result = CliRunner().invoke(app, ["measure", str(zeiss), str(plain), "--nm-per-pixel", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["scale_source"] for r in rows] == ["explicit", "explicit"]
    assert float(rows[0]["measurements.nm_per_pixel"]) == 6.0
    assert "the instrument's metadata says 4.5 nm per pixel" in rows[0]["scale_notes"]  # reported, not used
    assert CliRunner().invoke(app, ["measure", str(zeiss), "--out", str(out)]).exit_code == 1  # never overwritten
    assert CliRunner().invoke(app, ["measure", str(tmp_path / "broken.png")]).exit_code == 1  # nothing measured
    assert "scale: unknown" in CliRunner().invoke(app, ["measure", str(plain)]).stdout


def test_measure_segmenter_choice_is_run_and_reported(tmp_path):
    _, plain, _ = _images(tmp_path)
    found = {}
    for method in ("classical", "learned", "spots"):
        result = CliRunner().invoke(app, ["measure", str(plain), "--segmenter", method, "--json"])
        assert result.exit_code == 0, result.output
        m = json.loads(result.stdout)[0]["measurements"]
        assert m["segmenter"] == method
        found[method] = m["object_count"]
    assert found["learned"] > 0
    result = CliRunner().invoke(app, ["measure", str(plain), "--segmenter", "magic"])
    assert result.exit_code != 0 and "--segmenter must be one of auto, classical, learned" in result.output


def test_measure_says_when_the_objects_do_not_stand_apart(tmp_path):
    """A coated film: one threshold cuts its texture into pieces; the printout says counts and sizes are uncertain,
    the JSON says why (phase_separation) and which segmenter auto chose. Separated particles get no such note."""
    image, record = make_micrograph("Films_Coated_Surface", 0, 0, width=512, height=384)
    Image.fromarray(image[: -record["info_bar_height_px"]]).save(tmp_path / "film.png")
    _, plain, _ = _images(tmp_path)
    printed = CliRunner().invoke(app, ["measure", str(tmp_path / "film.png"), str(plain)])
    assert printed.exit_code == 0, printed.output
    film_part, particles_part = printed.stdout.split(str(plain))
    assert "note: one threshold does not separate the objects" in film_part
    assert "note: one threshold" not in particles_part
    rows = json.loads(CliRunner().invoke(app, ["measure", str(tmp_path / "film.png"), str(plain), "--json"]).stdout)
    film, particles = (r["measurements"] for r in rows)
    assert film["objects_uncertain"] and film["phase_separation"] < 4.5
    assert not particles["objects_uncertain"] and particles["segmenter"] == "classical"


def test_particles_on_a_holey_film_say_the_vacuum_was_left_out(tmp_path):
    import numpy as np
    from scipy import ndimage

    from test_measurements import _film_with_vacuum

    image, shown, vacuum = _film_with_vacuum(3, dark_field=False, lacey=False)
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "holey.png")
    _, plain, _ = _images(tmp_path)
    printed = CliRunner().invoke(app, ["measure", str(tmp_path / "holey.png"), str(plain)])
    assert printed.exit_code == 0, printed.output
    holey_part, particles_part = printed.stdout.split(str(plain))
    assert f"object count: {shown}" in holey_part
    assert f"note: {vacuum:.0%} of the field is vacuum beyond the support film" in holey_part
    assert "vacuum" not in particles_part
    result = CliRunner().invoke(app, ["measure", str(tmp_path / "holey.png"), "--overlay", str(tmp_path / "ov")])
    assert result.exit_code == 0, result.output
    overlay = np.asarray(Image.open(tmp_path / "ov" / "holey.overlay.png").convert("L"), float) / 255
    far = ndimage.binary_erosion(image > 0.75, iterations=5)  # inside the holes: dimmed, not measured
    assert overlay[far].mean() == pytest.approx(0.5 * image[far].mean(), abs=0.03)


def test_particles_in_a_tem_beam_that_does_not_fill_the_camera_say_the_dark_was_left_out(tmp_path):
    import numpy as np

    from test_measurements import _beyond_a_beam

    image, shown, dark, _ = _beyond_a_beam(1, 0.42, 4, 0.0)
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "beam.png")
    printed = CliRunner().invoke(app, ["measure", str(tmp_path / "beam.png")])
    assert printed.exit_code == 0, printed.output
    assert f"object count: {shown}" in printed.stdout
    assert f"note: {dark:.0%} of the field is dark beyond the edge of the illumination" in printed.stdout
    assert "vacuum" not in printed.stdout


@pytest.mark.skipif(not STEM_IMAGES.is_dir(), reason="needs ../shared/data/stem-particles")
def test_a_dark_field_image_with_black_vacuum_at_its_edge_says_what_it_means_for_the_area_fraction():
    printed = CliRunner().invoke(app, ["measure", str(STEM_IMAGES / "Ru4.jpg")])
    assert printed.exit_code == 0, printed.output
    assert "note: 27% of the field is black at its edge and was measured as field: if it is vacuum" in printed.stdout


def test_an_image_clipped_at_black_says_how_much_of_it_is(tmp_path):
    """Half the field of a dark-field image whose black level sits at the vacuum's mean is 0: nothing can be seen
    there, and `maemi measure` says how much; an image with its whole range in use says nothing."""
    import numpy as np

    from test_spots import _on_clipped_black

    pixels = (_on_clipped_black(0, 25) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "clipped.png")
    _, plain, _ = _images(tmp_path)
    printed = CliRunner().invoke(app, ["measure", str(tmp_path / "clipped.png"), str(plain), "--json"])
    assert printed.exit_code == 0, printed.output
    rows = {r["path"]: r["measurements"] for r in json.loads(printed.stdout)}
    share = float(np.mean((pixels == pixels.min()) | (pixels == pixels.max())))
    assert rows[str(tmp_path / "clipped.png")]["clipped_fraction"] == pytest.approx(share) and share > 0.4
    assert rows[str(plain)]["clipped_fraction"] < 0.01
    printed = CliRunner().invoke(app, ["measure", str(tmp_path / "clipped.png"), str(plain)])
    clipped_part, plain_part = printed.stdout.split(str(plain))
    assert f"note: {share:.0%} of the pixels sit at the image's darkest or brightest level" in clipped_part
    assert "darkest or brightest" not in plain_part


def test_a_fibre_mat_counts_its_fibres_and_says_what_the_table_lists(tmp_path):
    import numpy as np

    from test_measurements import _draw_rod

    image = np.full((240, 320), 0.2, np.float32)
    for r0, c0, r1, c1 in [(0, 20, 239, 300), (0, 300, 239, 10), (120, 0, 120, 319)]:  # three crossing fibres
        _draw_rod(image, r0, c0, r1, c1, 9)
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "mat.png")
    result = CliRunner().invoke(app, ["measure", str(tmp_path / "mat.png"), "--objects", str(tmp_path / "o.csv")])
    assert result.exit_code == 0, result.output
    assert "object count: 3" in result.stdout and "region count: 1" in result.stdout
    assert "its 3 objects are the fibres traced through their crossings, from 1 segmented region(s)" in result.stdout
    with open(tmp_path / "o.csv") as f:
        assert len(list(csv.DictReader(f))) == 1  # the table lists the regions


def test_a_fibre_mat_gets_a_table_and_histogram_of_its_fibres(tmp_path):
    import numpy as np

    from test_measurements import _draw_rod

    image = np.full((240, 320), 0.2, np.float32)
    rods = [(0, 20, 239, 300), (0, 300, 239, 10), (120, 0, 120, 319)]  # three crossing fibres, 9 px wide
    for rod in rods:
        _draw_rod(image, *rod, 9)
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "mat.png")
    result = CliRunner().invoke(app, ["measure", str(tmp_path / "mat.png"), "--nm-per-pixel", "2", "--fibres",
                                      str(tmp_path / "f.csv"), "--histogram", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    assert "f.csv: 3 fibres from 1 fibre mat(s) of 1 images" in result.stderr
    with open(tmp_path / "f.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["fibre_id"] for r in rows] == ["1", "2", "3"]
    lengths = sorted(float(r["length_px"]) for r in rows)
    truth = sorted(float(np.hypot(r1 - r0, c1 - c0)) for r0, c0, r1, c1 in rods)
    assert lengths == pytest.approx(truth, rel=0.1)  # traced straight through the crossings
    for r in rows:
        assert float(r["diameter_px"]) == pytest.approx(9, rel=0.15)
        assert float(r["diameter_nm"]) == pytest.approx(2 * float(r["diameter_px"]))
    assert (tmp_path / "h" / "mat.histogram.png").stat().st_size > 0


def test_particles_have_no_fibres_and_their_histogram_is_of_objects(tmp_path):
    _, plain, _ = _images(tmp_path)
    result = CliRunner().invoke(app, ["measure", str(plain), "--fibres", str(tmp_path / "f.csv"), "--objects",
                                      str(tmp_path / "o.csv"), "--histogram", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    assert "f.csv: 0 fibres from 0 fibre mat(s) of 1 images" in result.stderr
    assert (tmp_path / "f.csv").read_text().splitlines() == [",".join(FIBRE_COLUMNS)]
    assert (tmp_path / "h" / "plain.histogram.png").stat().st_size > 0
    same = CliRunner().invoke(app, ["measure", str(plain), "--fibres", str(tmp_path / "x.csv"), "--objects",
                                    str(tmp_path / "x.csv")])
    assert same.exit_code != 0 and "must be different files" in same.output
