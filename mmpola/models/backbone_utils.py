"""What Pola-PVT and Pola-Swin share as dense-prediction backbones."""
import copy
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, PatchEmbed
from mmengine.model import BaseModule
from mmengine.model.weight_init import constant_init, trunc_normal_init
from mmengine.registry import MODELS

from .pola_attention import (PolaAttention, Workspace, block_slices,
                             cpu_inference_in_parts, linear_into,
                             token_grid_rows)


class _TrainingFFN(torch.autograd.Function):
    """``fc2(gelu(fc1(u)))`` keeping only u and h = fc1(u) for backward.

    Autograd would keep h (for the GELU) and gelu(h) (for fc2): the FFN's
    widest map twice. Both passes run in token blocks (on the CPU): the
    forward writes h block by block, the backward recomputes gelu(h) and
    takes the hidden-width gradient from fc2 to fc1's input one block at a
    time, so no other map of h's size is allocated and the products see
    blocks that stay in cache.
    """

    @staticmethod
    def forward(ctx, u, w1, b1, w2, b2):
        u2 = u.reshape(-1, u.shape[-1])                  # (M, C)
        h = u2.new_empty(u2.shape[0], w1.shape[0])       # (M, hidden)
        y = u2.new_empty(u2.shape[0], w2.shape[0])
        for s in _ffn_blocks(*h.shape, h.device):
            linear_into(h[s], u2[s], w1, b1)
            linear_into(y[s], F.gelu(h[s]), w2, b2)
        ctx.save_for_backward(u2, h, w1, w2)
        ctx.has_bias = b1 is not None, b2 is not None
        return y.view(*u.shape[:-1], -1)

    @staticmethod
    def backward(ctx, dy):
        u2, h, w1, w2 = ctx.saved_tensors
        need_u, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        need_b1 = need_b1 and ctx.has_bias[0]
        dy2 = dy.reshape(-1, dy.shape[-1])               # (M, C)
        # frozen parameters: their gradients are skipped
        du = torch.empty_like(u2) if need_u else None
        dw1 = torch.zeros_like(w1) if need_w1 else None
        db1 = w1.new_zeros(w1.shape[0]) if need_b1 else None
        dw2 = torch.zeros_like(w2) if need_w2 else None
        for s in _ffn_blocks(*h.shape, h.device):
            hb, dyb = h[s], dy2[s]
            if need_w2:
                dw2.addmm_(dyb.t(), F.gelu(hb))
            if need_u or need_w1 or need_b1:
                dhb = torch.ops.aten.gelu_backward(dyb @ w2, hb)
                if need_w1:
                    dw1.addmm_(dhb.t(), u2[s])
                if need_b1:
                    db1.add_(dhb.sum(0))
                if need_u:
                    torch.mm(dhb, w1, out=du[s])
        db2 = dy2.sum(0) if need_b2 and ctx.has_bias[1] else None
        du = None if du is None else du.view(*dy.shape[:-1], -1)
        return du, dw1, db1, dw2, db2


def _ffn_blocks(M, hidden, device):
    """Token slices of an (M, hidden) map for :class:`_TrainingFFN`: blocks
    of about ``PreNormBlock.CPU_FFN_BLOCK`` elements on the CPU."""
    step = (max(1, PreNormBlock.CPU_FFN_BLOCK // hidden)
            if device.type == 'cpu' else M)
    return block_slices(M, step)


class PreNormBlock(BaseModule):
    """``x + drop_path(attention(norm1(x)))``, then the same with the FFN.

    Subclasses add ``self.attn`` and may override ``_attention`` (e.g. to
    run it in shifted windows; then also ``_is_global``). ``with_cp``
    checkpoints the whole block. CPU inference of a global Pola block runs
    in blocks of image rows (``PolaAttention.forward_in_row_blocks``);
    training keeps the FFN's hidden map once (:class:`_TrainingFFN`).

    Shapes:
        forward(x (B, H*W, C), hw_shape=(H, W)) -> (B, H*W, C).
    """

    def __init__(self, embed_dims, mlp_ratio, drop_rate=0.,
                 drop_path_rate=0., with_cp=False, norm_cfg=dict(type='LN'),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.drop_path = (nn.Identity() if drop_path_rate == 0 else
                          MODELS.build(dict(type='DropPath',
                                            drop_prob=drop_path_rate)))
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = FFN(embed_dims, int(embed_dims * mlp_ratio), num_fcs=2,
                       ffn_drop=drop_rate,
                       dropout_layer=dict(type='DropPath',
                                          drop_prob=drop_path_rate),
                       act_cfg=dict(type='GELU'), add_identity=True)

    # CPU inference: a hidden map (B, N, mlp_ratio * C) larger than
    # CPU_FFN_WHOLE elements is computed in even parts of at least
    # CPU_FFN_TOKENS tokens (:meth:`_ffn_in_parts`) instead of being
    # allocated whole: a part's hidden map stays in the core's cache between
    # fc1, GELU and fc2 (fresh large buffers cost page faults). Row-wise, so
    # the numbers are the same. Training: token blocks of about
    # CPU_FFN_BLOCK elements (:class:`_TrainingFFN`).
    CPU_FFN_WHOLE = 1 << 23
    CPU_FFN_TOKENS = 1024
    CPU_FFN_BLOCK = 1 << 20

    def _attention(self, x, hw_shape):
        return self.attn(x, hw_shape)

    def _ffn_is_plain(self):
        """Whether the FFN is ``fc2(gelu(fc1(u)))``: exact GELU, no
        dropout, no layer scale."""
        ffn = self.ffn
        if ffn.num_fcs != 2 or not isinstance(ffn.gamma2, nn.Identity):
            return False
        (_, act, drop1), _, drop2 = ffn.layers
        return (isinstance(act, nn.GELU) and act.approximate == 'none'
                and drop1.p == 0 and drop2.p == 0)

    def _ffn_saves_hidden_once(self, x):
        """Whether the training FFN can use :class:`_TrainingFFN`: a plain
        FFN, no autocast."""
        return (self._ffn_is_plain()
                and not torch.is_autocast_enabled(x.device.type))

    def _norm_ffn(self, x):
        """x + FFN(norm2(x)): (B, N, C) -> (B, N, C)."""
        B, N, C = x.shape
        if torch.is_grad_enabled() and self._ffn_saves_hidden_once(x):
            (fc1, _, _), fc2, _ = self.ffn.layers
            return x + self.ffn.dropout_layer(_TrainingFFN.apply(
                self.norm2(x), fc1.weight, fc1.bias, fc2.weight, fc2.bias))
        if (torch.is_grad_enabled() or x.device.type != 'cpu'
                or N * B * self.ffn.feedforward_channels <= self.CPU_FFN_WHOLE
                or not self._ffn_is_plain()):
            return self.ffn(self.norm2(x), identity=x)
        return self._ffn_in_parts(x, Workspace(x))

    def _ffn_in_parts(self, x, ws):
        """Inference of x + FFN(norm2(x)) for a plain FFN, (B, T, C) ->
        (B, T, C), over even parts of the B * T rows; the hidden map and the
        result are buffers of :class:`Workspace` ``ws`` (the result is valid
        until ws is used again)."""
        (fc1, _, _), fc2, _ = self.ffn.layers
        u = self.norm2(x).reshape(-1, x.shape[-1])
        y = ws('ffn_y', *u.shape)
        M = u.shape[0]
        step = -(-M // max(1, M // self.CPU_FFN_TOKENS))
        for s in block_slices(M, step):
            h = linear_into(ws('ffn_h', s.stop - s.start, fc1.out_features),
                            u[s], fc1.weight, fc1.bias)
            torch.ops.aten.gelu_(h)
            linear_into(y[s], h, fc2.weight, fc2.bias)
        return y.add_(x.reshape(u.shape)).view(x.shape)

    def _is_global(self, hw_shape):
        """Whether ``self.attn`` sees the whole map (not windows of it)."""
        return True

    def _residual_ffn(self, x, a, ws=None):
        """Inference tail of the block on rows: x + a, then the FFN half.

        With a :class:`Workspace` ``ws`` (reused across the row blocks of
        one call) a plain FFN runs in parts (:meth:`_ffn_in_parts`), so the
        result is only valid until the next call with the same ws.
        """
        x = a.add_(x)
        if ws is None or not self._ffn_is_plain():
            return self.ffn(self.norm2(x), identity=x)
        return self._ffn_in_parts(x, ws)

    def _residual_ffn_rows(self, x):
        """:meth:`_residual_ffn` as the epilogue of one row-wise pass over
        x, with a workspace of its own."""
        return functools.partial(self._residual_ffn, ws=Workspace(x))

    def forward(self, x, hw_shape, inplace=False, maps=None):
        """``inplace``: x may be overwritten with the output; ``maps``: a
        :class:`Workspace` for whole-map buffers shared with the other
        blocks of a stage (both used by CPU inference, see
        :func:`run_blocks`)."""
        if (not self.training and isinstance(self.attn, PolaAttention)
                and self.attn.row_blocks_apply(x)
                and self._is_global(hw_shape)):
            # the whole block in blocks of rows (same numbers, no large
            # intermediate buffers)
            return self.attn.forward_in_row_blocks(
                x, hw_shape, self.norm1, self._residual_ffn_rows(x),
                out=x if inplace else None, maps=maps)

        def _inner(x):
            a = self.drop_path(self._attention(self.norm1(x), hw_shape))
            # inference: the residual sum in place of the attention output
            # (a fresh tensor: no new (B, N, C) buffer); x is the caller's
            return self._norm_ffn(x + a if torch.is_grad_enabled() else
                                  a.add_(x))

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(_inner, x, use_reentrant=False)
        return _inner(x)


def unobserved(*modules):
    """Whether none of the modules has a forward (pre-)hook, nor has any
    module a global one: no hook can hold their inputs or outputs."""
    # hooks registered for every module (unknown: assume some)
    if getattr(nn.modules.module, '_global_forward_hooks', True):
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def run_blocks(blocks, x, hw_shape, own_input=False):
    """x (B, H*W, C) through ``blocks`` (:class:`PreNormBlock`) in turn.

    A block may write its output over its input when that input is the
    previous block's output, or x with ``own_input`` (the caller made x and
    holds no other reference to it), and no hook can see it
    (:func:`unobserved`). The blocks share one :class:`Workspace` for
    whole-map buffers (on the CPU every fresh one above 32 MB costs page
    faults).
    """
    maps = Workspace(x)
    for i, block in enumerate(blocks):
        owned = own_input if i == 0 else unobserved(blocks[i - 1])
        x = block(x, hw_shape, inplace=owned and unobserved(block),
                  maps=maps)
    return x


# CPU inference: whole-map passes outside the blocks (output maps, patch
# embedding norms, position embeddings) run in token blocks of about this
# many elements, each done while in cache
CPU_MAP_BLOCK_ELEMENTS = 1 << 17


def _map_blocks(n, width):
    """Slices of n tokens (or rows) of ``width`` elements each, in blocks
    of about ``CPU_MAP_BLOCK_ELEMENTS`` elements."""
    return block_slices(n, max(1, CPU_MAP_BLOCK_ELEMENTS // width))


def norm_tokens_in_place(tokens, norm):
    """``norm(tokens)`` for (B, N, C) tokens the caller owns; CPU
    inference writes it over them in token blocks (no second whole map:
    on the CPU a fresh map above 32 MB costs page faults at every call)."""
    if not cpu_inference_in_parts(tokens, norm):
        return norm(tokens)
    B, N, C = tokens.shape
    for s in _map_blocks(N, B * C):
        tokens[:, s] = norm(tokens[:, s])
    return tokens


def add_resized_grid_(x, grid, src_hw, hw_shape, mode):
    """``x += grid`` resized to x's map, in place, by blocks of rows resized
    on demand (:func:`token_grid_rows`): no whole-map temporaries.

    Args:
        x (Tensor): (B, H*W, C) tokens of an (H, W) map.
        grid (Tensor): (1, Hs*Ws, C) tokens of an (Hs, Ws) grid.
        src_hw, hw_shape: (Hs, Ws) and (H, W).
        mode (str): 'bilinear' or 'bicubic'.
    """
    rows = token_grid_rows(grid, src_hw, hw_shape, mode)
    B, _, C = x.shape
    H, W = hw_shape
    x_rows = x.view(B, H, W * C)
    for s in _map_blocks(H, B * W * C):
        x_rows[:, s] += rows(s).view(1, -1, W * C)
    return x


def tokens_to_map(tokens, hw_shape, norm=None):
    """(B, H*W, C) tokens -> contiguous (B, C, H, W), through the row-wise
    ``norm`` (a module) if given.

    CPU inference goes in blocks of tokens, each normed and transposed
    while in cache: the same numbers, and a whole-map transposing copy is
    3-5x slower on the CPU (4.6 vs 28 ms for 66,800 x 64 tokens here).
    """
    B, N, C = tokens.shape
    if not cpu_inference_in_parts(tokens, norm):
        if norm is not None:
            tokens = norm(tokens)
        return tokens.transpose(1, 2).reshape(B, C, *hw_shape).contiguous()
    out = tokens.new_empty(B, C, N)
    for s in _map_blocks(N, B * C):
        out[:, :, s] = (tokens[:, s] if norm is None else
                        norm(tokens[:, s])).transpose(1, 2)
    return out.view(B, C, *hw_shape)


class ChannelsLastPatchEmbed(PatchEmbed):
    """mmcv's ``PatchEmbed`` (same parameters; the same numbers up to float
    rounding) that in CPU inference stays in the channels-last layout.

    A token map passed as a channels-last (B, C, H, W) view (Pola-PVT's
    stages 2-4) is padded as (B, H, W, C), and the convolution gets a
    channels-last kernel, so its output is channels-last and its tokens
    (B, H'*W', C') come out without a transposing copy. mmcv's forward pads
    such a view into a channels-first copy and transposes the conv output
    for the norm: 3.6x slower for Pola-PVT-T's stage-2 embedding at
    800x1333, 1.3x for a 3-channel image.

    Shapes:
        forward(x (B, C, H, W)) -> ((B, H'*W', C'), (H', W')).
    """

    def forward(self, x):
        conv = self.projection
        if not (cpu_inference_in_parts(x, self)
                and type(conv) is nn.Conv2d):
            return super().forward(x)
        if self.adaptive_padding:
            pad_h, pad_w = self.adaptive_padding.get_pad_shape(x.shape[-2:])
            if self.adaptive_padding.padding == 'same':
                pads = (pad_w // 2, pad_w - pad_w // 2,
                        pad_h // 2, pad_h - pad_h // 2)
            else:  # 'corner'
                pads = (0, pad_w, 0, pad_h)
            if any(pads) and x.is_contiguous(
                    memory_format=torch.channels_last):
                x = F.pad(x.permute(0, 2, 3, 1),
                          (0, 0) + pads).permute(0, 3, 1, 2)
            elif any(pads):
                x = F.pad(x, pads)
        x = conv._conv_forward(
            x, conv.weight.contiguous(memory_format=torch.channels_last),
            conv.bias)
        out_size = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # contiguous
        if self.norm is not None:
            x = norm_tokens_in_place(x, self.norm)
        return x, out_size


class DenseBackboneMixin:
    """arch presets, output norms, freezing and initialisation.

    A backbone using it defines ``arch_zoo``, ``family`` ('pvt' / 'swin'),
    ``num_stages``, ``num_features`` and ``_stage_modules(i)`` /
    ``_stem_modules()`` (the modules frozen with stage i / with the stem).
    """

    def parse_arch(self, arch, essential_keys):
        if isinstance(arch, str):
            arch = arch.lower()
            assert arch in self.arch_zoo, (
                f'Unknown arch {arch!r}; choose from '
                f'{sorted(set(self.arch_zoo))} or pass a dict')
            return copy.deepcopy(self.arch_zoo[arch])
        assert isinstance(arch, dict) and essential_keys <= set(arch), (
            f'A custom arch needs the keys {sorted(essential_keys)}, '
            f'got {arch!r}')
        return dict(arch)

    def check_out_indices(self, out_indices):
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        for i in out_indices:
            assert -self.num_stages <= i < self.num_stages, (
                f'out_indices {out_indices} out of range for '
                f'{self.num_stages} stages')
        return tuple(sorted(i % self.num_stages for i in out_indices))

    def add_out_norms(self, out_norms, norm_cfg):
        """Add LayerNorm ``norm{i}`` for each output stage i if requested."""
        self.out_norms = out_norms
        if out_norms:
            for i in self.out_indices:
                self.add_module(f'norm{i}', build_norm_layer(
                    norm_cfg, self.num_features[i])[1])

    def format_output(self, i, tokens, hw_shape):
        """Stage i's (B, H*W, C) tokens -> (B, C, H, W), through ``norm{i}``."""
        return tokens_to_map(tokens, hw_shape, getattr(self, f'norm{i}')
                             if self.out_norms else None)

    def _frozen_modules(self):
        if self.frozen_stages < 0:
            return []
        modules = list(self._stem_modules())
        for i in range(min(self.frozen_stages, self.num_stages)):
            modules += self._stage_modules(i)
            if self.out_norms and i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
        return modules

    def _freeze_stages(self):
        for m in self._frozen_modules():
            if isinstance(m, nn.Parameter):
                m.requires_grad = False
                continue
            m.eval()
            for param in m.parameters():
                param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        return self

    def init_weights(self):
        if self.init_cfg is not None and self.init_cfg.get(
                'type') == 'Pretrained':
            from ..checkpoint import load_pretrained
            load_pretrained(self, self.init_cfg['checkpoint'])
            self._is_init = True
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_init(m, std=.02, bias=0.)
            elif isinstance(m, nn.LayerNorm):
                constant_init(m, val=1.0, bias=0.)
        super().init_weights()
