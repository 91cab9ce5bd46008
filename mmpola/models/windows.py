"""(Shifted) window partitioning for maps of any size.

Maps are padded to window multiples; padded tokens are labelled so that they
never contribute to the attention of real tokens (softmax windows: masked as
other shift regions are; Pola windows: left out of the key sums).
Everything here depends only on the (Python int) sizes, so it traces and
exports to fixed graphs.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

PAD_LABEL = -1


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ws -> (B * nW, ws * ws, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).transpose(2, 3)
    return x.reshape(-1, ws * ws, C)


def window_reverse(windows: torch.Tensor, ws: int, H: int,
                   W: int) -> torch.Tensor:
    """(B * nW, ws * ws, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).transpose(2, 3)
    return x.reshape(-1, H, W, C)


def window_labels(hw: Tuple[int, int], ws: int, shift: int,
                  device) -> Optional[torch.Tensor]:
    """Region label of every token, per window: (nW, ws * ws) or None.

    Tokens may attend to each other only when their labels are equal: the
    nine regions of a cyclic shift get labels 0..8 and padding gets
    ``PAD_LABEL``. Returns None when there is neither shift nor padding.
    Labels are given in the shifted (rolled) frame.
    """
    H, W = hw
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    if shift == 0 and (Hp, Wp) == (H, W):
        return None

    def region(n):  # per row (column) of the rolled map: 0, 1 or 2
        i = torch.arange(n, device=device)
        if not shift:
            return torch.zeros_like(i)
        return (i >= n - ws).long() + (i >= n - shift).long()

    labels = region(Hp)[:, None] * 3 + region(Wp)[None, :]
    rows = torch.arange(Hp, device=device)[:, None]
    cols = torch.arange(Wp, device=device)[None, :]
    # padding, rolled by -shift as the map is
    pad = ((rows + shift) % Hp >= H) | ((cols + shift) % Wp >= W)
    labels = torch.where(pad, torch.full_like(labels, PAD_LABEL), labels)
    return window_partition(labels.view(1, Hp, Wp, 1), ws).squeeze(-1)


def shifted_window_attention(x: torch.Tensor, hw_shape: Tuple[int, int],
                             ws: int, shift: int, attend):
    """``attend(windows (B*nW, ws*ws, C), labels (nW, ws*ws) or None) ->
    (B*nW, ws*ws, C)`` run on the windows of x (B, H*W, C), an (H, W) map
    padded to multiples of ``ws`` and cyclically shifted by ``shift``;
    returns (B, H*W, C)."""
    B, N, C = x.shape
    H, W = hw_shape
    x = x.view(B, H, W, C)
    pad_b, pad_r = (-H) % ws, (-W) % ws
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    Hp, Wp = H + pad_b, W + pad_r
    if shift:
        x = torch.roll(x, (-shift, -shift), (1, 2))
    labels = window_labels((H, W), ws, shift, x.device)
    x = window_reverse(attend(window_partition(x, ws), labels), ws, Hp, Wp)
    if shift:
        x = torch.roll(x, (shift, shift), (1, 2))
    return x[:, :H, :W, :].reshape(B, N, C)
