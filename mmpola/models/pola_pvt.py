"""Pola-PVT: PVT v1 with Pola attention in every stage."""
import torch
import torch.nn as nn
from mmcv.cnn.bricks.transformer import PatchEmbed
from mmengine.model import BaseModule, ModuleList
from mmengine.registry import MODELS

from ..layers import PolaAttention, resize_grid_tokens
from .backbone_utils import (DenseBackboneMixin, PreNormBlock, check_int,
                             static_hw)


@MODELS.register_module()
class PolaPVT(DenseBackboneMixin, BaseModule):
    """Pola-PVT backbone (PolaFormer, ICLR 2025) for any input size.

    PVT v1 layout without spatial reduction; every block uses global
    polarity-aware linear attention. Released checkpoints load through
    every route (:mod:`mmpola.checkpoint`).

    Args:
        arch (str | dict): 'tiny', 'small', 'medium', 'large' (or 't', 's',
            'm', 'l') or a dict with exactly the keys ``embed_dims``,
            ``depths``, ``num_heads``, ``mlp_ratios`` (one value per stage).
        pretrain_img_size (int): image size of the released weights; sets
            the grid of ``pos_embed{i}`` and the Pola positional encodings,
            both resized to the actual maps (bilinear / bicubic).
        in_channels (int): input channels.
        patch_sizes (sequence[int]): patch-embedding stride per stage.
        out_indices (int | sequence[int]): stages whose outputs are
            returned (negative: from the end; distinct).
        out_norms (bool): new LayerNorm ``norm{i}`` on each output (the
            released classifier applies no final norm; set False for it).
        drop_rate (float): dropout rate.
        drop_path_rate (float): stochastic depth, linear over blocks.
        frozen_stages (int): -1 none, 0 stage 1's patch and position
            embeddings, i > 0 stages 1..i.
        with_cp (bool): gradient checkpointing per block.
        norm_cfg (dict): block norms (patch embeddings: LayerNorm eps 1e-5).
        init_cfg (dict | list[dict], optional): MMEngine initialisers
            (None: the released from-scratch values), e.g.
            ``dict(type='Pretrained', checkpoint=PATH)``.

    Shapes:
        (B, in_channels, H, W), B >= 1, any H, W -> tuple of
        (B, embed_dims[i], ceil(H / (4 * 2^i)), ceil(W / (4 * 2^i))).

    Example:
        >>> import torch, mmpola
        >>> model = PolaPVT(arch='tiny')
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 97, 131))]
        [(1, 64, 25, 33), (1, 128, 13, 17), (1, 320, 7, 9), (1, 512, 4, 5)]
    """
    _dims = dict(embed_dims=[64, 128, 320, 512], num_heads=[1, 2, 5, 8],
                 mlp_ratios=[8, 8, 4, 4])
    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], dict(_dims, depths=[2, 2, 2, 2])),
        **dict.fromkeys(['s', 'small'], dict(_dims, depths=[3, 4, 6, 3])),
        **dict.fromkeys(['m', 'medium'], dict(_dims, depths=[3, 4, 18, 3])),
        **dict.fromkeys(['l', 'large'], dict(_dims, depths=[3, 8, 27, 3])),
    }
    family = 'pvt'
    _arch_keys = ('embed_dims', 'depths', 'num_heads', 'mlp_ratios')

    def __init__(self,
                 arch='tiny',
                 pretrain_img_size=224,
                 in_channels=3,
                 patch_sizes=(4, 2, 2, 2),
                 out_indices=(0, 1, 2, 3),
                 out_norms=True,
                 drop_rate=0.,
                 drop_path_rate=0.1,
                 frozen_stages=-1,
                 with_cp=False,
                 norm_cfg=dict(type='LN', eps=1e-6),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self.parse_arch(arch, self._arch_keys,
                                             self._arch_keys)
        dims = self.arch_settings['embed_dims']
        depths = self.arch_settings['depths']
        num_heads = self.arch_settings['num_heads']
        mlp_ratios = self.arch_settings['mlp_ratios']
        self.num_stages = len(depths)
        if len(patch_sizes) != self.num_stages:
            raise ValueError(f'patch_sizes {tuple(patch_sizes)} needs one '
                             f'entry per stage ({self.num_stages})')
        for size in patch_sizes:
            check_int('patch_sizes[i]', size, 1)
        check_int('pretrain_img_size', pretrain_img_size, 1)
        self.in_channels = check_int('in_channels', in_channels, 1)
        self.num_features = list(dims)
        self.check_common_args(out_indices, out_norms, frozen_stages,
                               init_cfg)
        self.pretrain_img_size = pretrain_img_size

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        grid = pretrain_img_size
        self.pretrain_grids = []
        for i in range(self.num_stages):
            grid //= patch_sizes[i]
            self.pretrain_grids.append((grid, grid))
            self.add_module(f'patch_embed{i + 1}', PatchEmbed(
                in_channels if i == 0 else dims[i - 1], dims[i],
                kernel_size=patch_sizes[i], stride=patch_sizes[i],
                norm_cfg=dict(type='LN', eps=1e-5)))
            self.register_parameter(f'pos_embed{i + 1}', nn.Parameter(
                torch.zeros(1, grid * grid, dims[i])))
            self.add_module(f'block{i + 1}', ModuleList([
                PreNormBlock(dims[i], mlp_ratios[i], drop_rate,
                             dpr[sum(depths[:i]) + j], with_cp, norm_cfg,
                             attn=PolaAttention(dims[i], num_heads[i],
                                                (grid, grid),
                                                proj_drop=drop_rate))
                for j in range(depths[i])
            ]))
        self.pos_drop = nn.Dropout(drop_rate)
        self.add_out_norms(out_norms, norm_cfg)

    def _stem_modules(self):
        return [self.patch_embed1, self.pos_embed1]

    def _stage_modules(self, i):
        return [getattr(self, f'patch_embed{i + 1}'),
                getattr(self, f'pos_embed{i + 1}'),
                getattr(self, f'block{i + 1}')]

    def forward(self, x):
        self.check_input(x)
        outs = []
        for i in range(self.num_stages):
            x, hw = getattr(self, f'patch_embed{i + 1}')(x)
            hw = static_hw(hw)
            pos = resize_grid_tokens(getattr(self, f'pos_embed{i + 1}'),
                                     self.pretrain_grids[i], hw, 'bilinear')
            x = self.pos_drop(x + pos)
            for block in getattr(self, f'block{i + 1}'):
                x = block(x, hw)
            if i in self.out_indices:
                outs.append(self.format_output(i, x, hw))
            if i < self.num_stages - 1:
                # (B, C, H, W) for the next patch embedding: a channels-last
                # view of the tokens, which the conv takes without a copy
                x = x.reshape(x.shape[0], *hw, x.shape[-1]).permute(
                    0, 3, 1, 2)
        return tuple(outs)
