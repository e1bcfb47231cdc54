"""Vision encoder: a ViT with hierarchical attention, local among neighbouring patches, then global with a cls token.

References:
- Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (ViT): patch embedding, learned position embeddings, cls.
- Liu et al. 2021, "Swin Transformer" / Ramachandran et al. 2019, "Stand-Alone Self-Attention in Vision Models":
  attention restricted to a local window. Here it is a fixed neighbourhood mask over the 7x7 patch grid.
- Xiao et al. 2021, "Early Convolutions Help Transformers See Better": the optional convolutional stem.
- nanoVLM models/vision_transformer.py (layout).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from maemi.model.config import VisionConfig


def local_window_mask(grid_size: int, window: int) -> torch.Tensor:
    """[N, N] bool, N = grid_size**2, True where patch i may attend to patch j: at most `window` rows and `window`
    columns apart on the patch grid (patches numbered row by row)."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()  # [N]
    return ((rows[:, None] - rows[None]).abs() <= window) & ((cols[:, None] - cols[None]).abs() <= window)


def conv_stem(config: VisionConfig) -> nn.Sequential:
    """stem_layers stages, each a stride-2 3x3 conv (+ stem_stage_convs - 1 stride-1 ones) with BatchNorm and ReLU,
    widening towards dim, then a strided conv to the patch grid."""
    layers: list[nn.Module] = []
    channels = config.channels
    for i in range(config.stem_layers):
        width = max(config.dim // 2 ** (config.stem_layers - 1 - i), 8)  # e.g. 16, 32, 64 for dim 64
        for j in range(config.stem_stage_convs):
            layers += [nn.Conv2d(channels, width, 3, stride=2 if j == 0 else 1, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
    kernel = config.patch_size // 2**config.stem_layers  # what is left of the patch after the stride-2 convs
    layers.append(nn.Conv2d(channels, config.dim, kernel, stride=kernel))
    return nn.Sequential(*layers)


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        if config.stem == "conv":
            self.patch_embed = conv_stem(config)
        else:
            self.patch_embed = nn.Conv2d(config.channels, config.dim, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.num_patches, config.dim))  # index 0: the cls token
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

        def block() -> nn.TransformerEncoderLayer:  # pre-norm ViT block
            return nn.TransformerEncoderLayer(config.dim, config.heads, int(config.dim * config.mlp_ratio),
                                              config.dropout, activation="gelu", batch_first=True, norm_first=True)

        self.local_blocks = nn.ModuleList(block() for _ in range(config.local_depth))
        self.global_blocks = nn.ModuleList(block() for _ in range(config.global_depth))
        self.norm = nn.LayerNorm(config.dim)
        # PyTorch's attention masks mark with True what may NOT be attended to.
        self.register_buffer("local_block_mask", ~local_window_mask(config.grid_size, config.local_window),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, C, S, S] in [-1, 1] -> (patch tokens [B, N, D], cls embedding [B, D])."""
        c, s = self.config.channels, self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"VisionEncoder expects images of shape [B, {c}, {s}, {s}], got {list(images.shape)}")
        x = self.patch_embed(images)  # [B, D, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D], patches row by row
        x = x + self.pos_embed[:, 1:]
        for block in self.local_blocks:
            x = block(x, src_mask=self.local_block_mask)
        cls = self.cls_token.expand(x.shape[0], -1, -1) + self.pos_embed[:, :1]  # [B, 1, D]
        x = torch.cat([cls, x], dim=1)  # [B, 1 + N, D]
        for block in self.global_blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 1:], x[:, 0]
