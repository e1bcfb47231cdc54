"""VisionEncoder: shapes for both stems, the local window really is local, bad input is refused."""

from __future__ import annotations

import pytest
import torch

from maemi.model import VisionConfig, VisionEncoder


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_paper_sized_input_gives_49_patch_tokens_and_a_cls_embedding(stem):
    torch.manual_seed(0)
    encoder = VisionEncoder(VisionConfig(stem=stem)).eval()  # 224x224, patch 32, dim 64
    patches, cls = encoder(torch.rand(2, 3, 224, 224) * 2 - 1)
    assert patches.shape == (2, 49, 64) and cls.shape == (2, 64)
    assert torch.isfinite(patches).all() and torch.isfinite(cls).all()


def test_conv_stem_stages_can_hold_extra_stride_1_convs():
    config = VisionConfig(image_size=128, patch_size=16, stem="conv", stem_layers=4, stem_stage_convs=2, dim=32)
    encoder = VisionEncoder(config).eval()
    convs = [m for m in encoder.patch_embed if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 1, 2, 1, 2, 1, 2, 1, 1]  # 4 stages of 2, then the 1x1 projection
    patches, cls = encoder(torch.rand(2, 3, 128, 128) * 2 - 1)
    assert patches.shape == (2, 64, 32) and cls.shape == (2, 32)


def changed_tokens(config: VisionConfig) -> tuple[set[tuple[int, int]], bool]:
    """Perturb the pixels of patch (0, 0) only; return which patch tokens changed and whether cls changed."""
    torch.manual_seed(0)
    encoder = VisionEncoder(config).eval()
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    perturbed = images.clone()
    perturbed[..., :8, :8] = -perturbed[..., :8, :8]
    with torch.no_grad():
        (patches, cls), (patches2, cls2) = encoder(images), encoder(perturbed)
    grid = config.grid_size
    changed = (patches - patches2).abs().amax(-1) > 1e-6  # [1, N]
    return {divmod(i, grid) for i in changed[0].nonzero().flatten().tolist()}, not torch.allclose(cls, cls2)


def test_local_blocks_only_mix_neighbouring_patches():
    # 4x4 grid, one local block with window 1, no global block: patch (0, 0) reaches only its 3x3 neighbourhood.
    config = VisionConfig(image_size=32, patch_size=8, dim=16, heads=2, local_depth=1, global_depth=0, local_window=1)
    changed, cls_changed = changed_tokens(config)
    assert changed == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert not cls_changed  # the cls token only joins in the global blocks


def test_global_blocks_then_mix_everything():
    config = VisionConfig(image_size=32, patch_size=8, dim=16, heads=2, local_depth=1, global_depth=1, local_window=1)
    changed, cls_changed = changed_tokens(config)
    assert len(changed) == 16 and cls_changed


def test_wrong_image_shape_is_refused_with_the_expected_shape():
    encoder = VisionEncoder(VisionConfig(image_size=32, patch_size=8, dim=16, heads=2))
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\].*\[1, 3, 64, 64\]"):
        encoder(torch.zeros(1, 3, 64, 64))


def test_inconsistent_config_is_refused():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        VisionConfig(image_size=224, patch_size=30)
    with pytest.raises(ValueError, match="conv stem"):
        VisionConfig(patch_size=32, stem="conv", stem_layers=6)
    with pytest.raises(ValueError, match="stem_stage_convs"):
        VisionConfig(stem="conv", stem_stage_convs=0)
