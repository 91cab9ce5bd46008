"""Pola-Swin: Swin Transformer v1 with Pola attention in stages 1-2."""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks.transformer import PatchMerging
from mmengine.model import BaseModule, ModuleList
from mmengine.registry import MODELS
from mmengine.utils import to_2tuple
from mmpretrain.models.utils import WindowMSA

from .backbone_utils import (ChannelsLastPatchEmbed, DenseBackboneMixin,
                             PreNormBlock, run_blocks, unobserved)
from .pola_attention import (PolaAttention, Workspace,
                             cpu_inference_in_parts, linear_into)
from .windows import (PAD_LABEL, shifted_window_attention,
                      shifted_window_bands)


class SplitQKVWindowMSA(WindowMSA):
    """mmpretrain's ``WindowMSA`` (same parameters and arithmetic) with q, k
    and v split off the qkv projection by ``unbind``: in backward their
    gradients are written once into the projection's layout (``qkv[i]``
    zero-fills three full-size buffers and then copies their sum).
    Without gradients the attention is PyTorch's fused
    ``scaled_dot_product_attention`` with the bias and the mask as one
    additive mask (the same numbers up to float rounding, about 2.5x
    faster on the CPU; with gradients the CPU one would fall back to its
    slow reference kernel, as the bias needs a gradient).

    Shapes:
        forward(x (B*nW, ws*ws, C), mask (nW, ws*ws, ws*ws) or None)
        -> (B*nW, ws*ws, C).
    """

    def attention_bias(self, mask=None):
        """Relative position bias plus ``mask`` (nW, N, N), as one additive
        mask: (nW or 1, h, N, N), contiguous."""
        N = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[
            self.relative_position_index.view(-1)].view(N, N, -1)
        bias = bias.permute(2, 0, 1).unsqueeze(0)             # (1, h, N, N)
        if mask is not None:
            bias = bias + mask.unsqueeze(1)
        return bias.contiguous()

    def forward(self, x, mask=None, attn_bias=None, ws=None):
        """``attn_bias`` (:meth:`attention_bias`) and ``ws`` (a
        :class:`Workspace` for the projections' outputs; the result is then
        valid until its next use) are for inference only."""
        B_, N, C = x.shape
        h = self.num_heads
        grad = torch.is_grad_enabled()
        assert not grad or (attn_bias is None and ws is None)
        if ws is None:
            qkv = self.qkv(x)
        else:
            qkv = linear_into(ws('qkv', B_ * N, 3 * C), x.reshape(-1, C),
                              self.qkv.weight, self.qkv.bias)
        q, k, v = (t.transpose(1, 2) for t in  # (B_, h, N, d) views
                   qkv.view(B_, N, 3, h, C // h).unbind(2))
        if not grad:
            if attn_bias is None:
                attn_bias = self.attention_bias(mask)
            nW = attn_bias.shape[0]
            if nW not in (1, B_):  # (B_ // nW, nW, h, N, N)
                attn_bias = attn_bias.expand(
                    B_ // nW, -1, -1, -1, -1).reshape(B_, h, N, N)
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_bias.to(q.dtype), scale=self.scale,
                dropout_p=self.attn_drop.p if self.training else 0.)
        else:
            bias = self.attention_bias()
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = attn + bias
            if mask is not None:
                nW = mask.shape[0]
                attn = (attn.view(B_ // nW, nW, h, N, N) +
                        mask.unsqueeze(1).unsqueeze(0)).view(-1, h, N, N)
            x = self.attn_drop(self.softmax(attn)) @ v
        x = x.transpose(1, 2).reshape(B_, N, C)
        if ws is not None:
            x = linear_into(ws('proj', B_ * N, C), x.view(-1, C),
                            self.proj.weight, self.proj.bias).view(B_, N, C)
        else:
            x = self.proj(x)
        return self.proj_drop(x)


class PolaSwinBlock(PreNormBlock):
    """Pre-norm Swin block with softmax window or Pola attention.

    Args:
        embed_dims (int): C.
        num_heads (int): attention heads.
        attn_type (str): 'softmax' (shifted windows, relative position
            bias) or 'pola'.
        window_size (int): softmax window, or the Pola window in
            ``pola_attn_mode='window'``.
        shift (bool): shift by ``window_size // 2`` (odd blocks), dropped when
            the map is not larger than the window, as the released code does.
        pretrain_hw (tuple): Pola positional-encoding grid.
        pola_attn_mode (str): 'global' or 'window' (see ``PolaSwin``).

    Shapes:
        forward(x (B, H*W, C), hw_shape=(H, W)) -> (B, H*W, C).
    """

    def __init__(self, embed_dims, num_heads, attn_type, window_size, shift,
                 pretrain_hw=None, pola_attn_mode='global', mlp_ratio=4.,
                 drop_rate=0., drop_path_rate=0., with_cp=False,
                 norm_cfg=dict(type='LN'), init_cfg=None):
        super().__init__(embed_dims, mlp_ratio, drop_rate, drop_path_rate,
                         with_cp, norm_cfg, init_cfg)
        assert attn_type in ('softmax', 'pola'), attn_type
        assert pola_attn_mode in ('global', 'window'), pola_attn_mode
        self.attn_type = attn_type
        self.pola_attn_mode = pola_attn_mode
        self.window_size = window_size
        self.shift = shift
        if attn_type == 'softmax':
            self.attn = SplitQKVWindowMSA(
                embed_dims, to_2tuple(window_size), num_heads,
                proj_drop=drop_rate)
            # rebuilt from the window size, never loaded from a checkpoint
            index = self.attn.relative_position_index
            del self.attn.relative_position_index
            self.attn.register_buffer(
                'relative_position_index', index, persistent=False)
        else:
            self.attn = PolaAttention(
                embed_dims, num_heads, pretrain_hw, fused_qkvg=True,
                proj_drop=drop_rate)

    def _is_global(self, hw_shape):
        return self.attn_type == 'pola' and (
            self.pola_attn_mode == 'global'
            or max(hw_shape) <= self.window_size)

    # CPU inference of window blocks: bands of window rows whose (tokens,
    # 4C) maps have about this many elements
    CPU_BAND_ELEMENTS = 1 << 21

    def _shift(self, hw_shape):
        ws = self.window_size
        return ws // 2 if self.shift and min(hw_shape) > ws else 0

    def _window_attend(self, ws=None):
        """``attend(windows (B*nW, w*w, C), labels (nW, w*w) or None)``
        for :func:`shifted_window_attention`. With a :class:`Workspace`
        (inference in bands) softmax windows project into it and build the
        attention bias once per label pattern."""
        window = self.window_size
        if self.attn_type == 'softmax':
            biases = []  # (labels, attention bias) of the patterns seen

            def mask_of(labels, dtype):
                if labels is None:
                    return None
                return ((labels[:, :, None] != labels[:, None, :])
                        * -100.).to(dtype)

            def bias_of(labels, dtype):
                for seen, bias in biases:
                    if (seen is labels is None or (
                            seen is not None and labels is not None
                            and seen.shape == labels.shape
                            and torch.equal(seen, labels))):
                        return bias
                biases.append((labels, self.attn.attention_bias(
                    mask_of(labels, dtype))))
                return biases[-1][1]

            def attend(windows, labels):
                if ws is None:
                    return self.attn(windows,
                                     mask=mask_of(labels, windows.dtype))
                return self.attn(windows, ws=ws,
                                 attn_bias=bias_of(labels, windows.dtype))
        else:
            def attend(windows, labels):
                # Released Pola windows ignore the shift mask; only
                # padding is kept out of the sums.
                key_mask = None
                if labels is not None:
                    key_mask = (labels != PAD_LABEL).repeat(
                        windows.shape[0] // labels.shape[0], 1)
                return self.attn(windows, (window, window), key_mask)
        return attend

    def _attention(self, x, hw_shape):
        if self._is_global(hw_shape):
            return self.attn(x, hw_shape)
        return shifted_window_attention(x, hw_shape, self.window_size,
                                        self._shift(hw_shape),
                                        self._window_attend())

    def forward(self, x, hw_shape, inplace=False, maps=None):
        if (not self.training and not self._is_global(hw_shape)
                and cpu_inference_in_parts(x, self.attn)):
            # window blocks in bands of window rows (same numbers, no
            # large intermediate buffers)
            return shifted_window_bands(
                x, hw_shape, self.window_size, self._shift(hw_shape),
                self._window_attend(Workspace(x)), self.norm1,
                self._residual_ffn_rows(x),
                self.CPU_BAND_ELEMENTS, out=x if inplace else None)
        return super().forward(x, hw_shape, inplace, maps)


class TokenPatchMerging(PatchMerging):
    """mmcv's ``PatchMerging`` (same parameters and numbers) that gathers
    2x2 neighbourhoods from the token layout with one copy, instead of a
    channels-first map and ``nn.Unfold``; its norm and reduction weights
    are permuted to that channel order (mmcv's is (C, 2, 2), this one
    (2, 2, C)). Other settings than 2x2 / stride 2 / corner padding /
    LayerNorm run mmcv's forward.

    Shapes:
        forward(x (B, H*W, C), (H, W)) ->
        ((B, ceil(H/2) * ceil(W/2), C_out), (ceil(H/2), ceil(W/2))).
    """

    def _is_2x2(self):
        s = self.sampler
        pad = self.adaptive_padding
        return (s.kernel_size == (2, 2) and s.stride == (2, 2)
                and s.dilation == (1, 1) and s.padding == (0, 0)
                and (pad is None or pad.padding == 'corner')
                and (self.norm is None or type(self.norm) is nn.LayerNorm))

    def forward(self, x, input_size):
        if not self._is_2x2():
            return super().forward(x, input_size)
        B, L, C = x.shape
        H, W = input_size
        assert L == H * W, f'{L} tokens do not form a {H}x{W} map'
        x = x.view(B, H, W, C)
        if (H % 2 or W % 2) and self.adaptive_padding is not None:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        h, w = x.shape[1] // 2, x.shape[2] // 2
        x = x[:, :2 * h, :2 * w].reshape(B, h, 2, w, 2, C).permute(
            0, 1, 3, 2, 4, 5).reshape(B, h * w, 4 * C)

        def to_token_order(t):  # (..., C * 4) -> (..., 4 * C)
            return t.unflatten(-1, (C, 4)).transpose(-1, -2).flatten(-2)

        if self.norm is not None:
            x = F.layer_norm(x, (4 * C, ), to_token_order(self.norm.weight),
                             to_token_order(self.norm.bias), self.norm.eps)
        x = F.linear(x, to_token_order(self.reduction.weight),
                     self.reduction.bias)
        return x, (h, w)


class PolaSwinStage(BaseModule):
    """``depth`` blocks (odd ones shifted), then optional PatchMerging.

    Shapes:
        forward(x (B, H*W, C), hw_shape, own_input=False) ->
        (x_out, out_hw, x_stage (B, H*W, C), hw_shape): the downsampled tokens
        and the stage output before downsampling. ``own_input``: x is the
        caller's to overwrite (:func:`run_blocks`).
    """

    def __init__(self, embed_dims, depth, num_heads, attn_type, window_size,
                 drop_path_rates, downsample, pretrain_hw=None,
                 pola_attn_mode='global', mlp_ratio=4., drop_rate=0.,
                 with_cp=False, norm_cfg=dict(type='LN'), init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.blocks = ModuleList([
            PolaSwinBlock(embed_dims, num_heads, attn_type, window_size,
                          shift=i % 2 == 1, pretrain_hw=pretrain_hw,
                          pola_attn_mode=pola_attn_mode, mlp_ratio=mlp_ratio,
                          drop_rate=drop_rate,
                          drop_path_rate=drop_path_rates[i],
                          with_cp=with_cp, norm_cfg=norm_cfg)
            for i in range(depth)
        ])
        self.downsample = TokenPatchMerging(
            embed_dims, 2 * embed_dims,
            norm_cfg=norm_cfg) if downsample else None

    def forward(self, x, hw_shape, own_input=False):
        x = run_blocks(self.blocks, x, hw_shape, own_input)
        if self.downsample is None:
            return x, hw_shape, x, hw_shape
        x_down, down_hw = self.downsample(x, hw_shape)
        return x_down, down_hw, x, hw_shape


@MODELS.register_module()
class PolaSwin(DenseBackboneMixin, BaseModule):
    """Pola-Swin backbone (PolaFormer, ICLR 2025) for any input size.

    Swin v1 layout; stages with ``attn_types == 'pola'`` (1 and 2 in every
    released model) use polarity-aware linear attention, the others shifted
    softmax windows. Loads the released ImageNet checkpoints
    (``init_cfg=dict(type='Pretrained', checkpoint=PATH)``).

    Args:
        arch (str | dict): 'tiny', 'small', 'base' or a dict with keys
            ``embed_dims`` (int), ``depths``, ``num_heads``.
        pretrain_img_size (int): image size of the released weights (224 or
            384); sets the grid of the Pola positional encodings.
        in_channels (int): input channels.
        patch_size (int): patch embedding stride.
        window_size (int): softmax window (7; 12 for the 384 model).
        pola_window_size (int): the released Pola "window" (56; 96 at 384).
            At 224 it covers the whole stage-1 map, so the released model is
            global there.
        pola_attn_mode (str): how Pola stages run on larger maps.
            'global' (default): one window over the whole map, positional
            encodings resized to it; every token sees the whole image at
            linear cost and the regime equals the one the weights were
            trained in (each Pola stage was one global window at 224).
            'window': fixed windows of the trained grid (56 in stage 1 and
            28 in stage 2 at 224), odd blocks shifted by half a window, no
            shift mask, positional encodings at their trained size: what
            the released code does on maps larger than its window.
        attn_types (sequence[str]): 'pola' / 'softmax' per stage.
        mlp_ratio (float): FFN ratio.
        out_indices (sequence[int]): stages whose outputs are returned.
        out_norms (bool): LayerNorm ``norm{i}`` on each output (new layers,
            except ``norm3``, which takes the released final ``norm``).
        drop_rate (float): dropout rate.
        drop_path_rate (float): stochastic depth, linear over blocks.
        frozen_stages (int): -1 none, 0 the patch embedding, i>0 also
            stages 1..i (with their output norms).
        with_cp (bool): gradient checkpointing per block.
        norm_cfg (dict): norm layers (LayerNorm eps 1e-5 as released).
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=...)``.

    Shapes:
        input (B, in_channels, H, W), any H, W ->
        tuple of (B, C_i, ceil(H / (4 * 2^i)), ceil(W / (4 * 2^i))),
        C_i = embed_dims * 2^i.

    Example:
        >>> import torch, mmpola
        >>> model = PolaSwin(arch='tiny', out_indices=(0, 1, 2, 3))
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 97, 131))]
        [(1, 96, 25, 33), (1, 192, 13, 17), (1, 384, 7, 9), (1, 768, 4, 5)]
    """
    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], dict(
            embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24])),
        **dict.fromkeys(['s', 'small'], dict(
            embed_dims=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24])),
        **dict.fromkeys(['b', 'base'], dict(
            embed_dims=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32])),
    }
    family = 'swin'

    def __init__(self,
                 arch='tiny',
                 pretrain_img_size=224,
                 in_channels=3,
                 patch_size=4,
                 window_size=7,
                 pola_window_size=56,
                 pola_attn_mode='global',
                 attn_types: Sequence[str] = ('pola', 'pola', 'softmax',
                                              'softmax'),
                 mlp_ratio=4.,
                 out_indices=(0, 1, 2, 3),
                 out_norms=True,
                 drop_rate=0.,
                 drop_path_rate=0.2,
                 frozen_stages=-1,
                 with_cp=False,
                 norm_cfg=dict(type='LN'),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self.parse_arch(
            arch, {'embed_dims', 'depths', 'num_heads'})
        embed_dims = self.arch_settings['embed_dims']
        depths = self.arch_settings['depths']
        num_heads = self.arch_settings['num_heads']
        assert len(depths) == len(num_heads) == len(attn_types)
        self.num_stages = len(depths)
        self.out_indices = self.check_out_indices(out_indices)
        self.frozen_stages = frozen_stages
        self.pretrain_img_size = pretrain_img_size
        self.pola_attn_mode = pola_attn_mode

        self.patch_embed = ChannelsLastPatchEmbed(
            in_channels, embed_dims, kernel_size=patch_size, stride=patch_size,
            norm_cfg=norm_cfg)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = ModuleList()
        self.num_features = []
        grid = pretrain_img_size // patch_size
        for i, depth in enumerate(depths):
            dims = embed_dims * 2**i
            # a Pola window is its positional-encoding grid: the released
            # code clamps pola_window_size to the map (56, 28 at 224)
            pola_ws = min(grid, pola_window_size)
            pola = attn_types[i] == 'pola'
            self.layers.append(PolaSwinStage(
                dims, depth, num_heads[i], attn_types[i],
                pola_ws if pola else window_size,
                drop_path_rates=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i < self.num_stages - 1,
                pretrain_hw=(pola_ws, pola_ws),
                pola_attn_mode=pola_attn_mode, mlp_ratio=mlp_ratio,
                drop_rate=drop_rate, with_cp=with_cp, norm_cfg=norm_cfg))
            self.num_features.append(dims)
            grid //= 2
        self.add_out_norms(out_norms, norm_cfg)
        self._freeze_stages()

    def _stage_modules(self, i):
        return [self.layers[i]]

    def _stem_modules(self):
        return [self.patch_embed]

    def forward(self, x):
        x, hw = self.patch_embed(x)
        # x, the patch embedding's or the last downsampling's output, is
        # the next stage's to overwrite unless a hook can see it
        own = unobserved(self.patch_embed)
        outs = []
        for i, stage in enumerate(self.layers):
            x, hw_next, x_stage, hw = stage(
                x, hw, own_input=own and unobserved(stage))
            if i in self.out_indices:
                outs.append(self.format_output(i, x_stage, hw))
            hw = hw_next
            own = unobserved(stage) and (stage.downsample is None
                                         or unobserved(stage.downsample))
        return tuple(outs)
