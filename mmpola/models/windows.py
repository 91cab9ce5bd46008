"""(Shifted) window partitioning for maps of any size.

Maps are padded to window multiples; padded tokens are labelled so that they
never contribute to the attention of real tokens (softmax windows: masked as
other shift regions are; Pola windows: left out of the key sums).
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
    labels = torch.zeros(Hp, Wp, dtype=torch.long, device=device)
    if shift:
        cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
        region = 0
        for hs in cuts:
            for wsl in cuts:
                labels[hs, wsl] = region
                region += 1
    pad = torch.zeros(Hp, Wp, dtype=torch.bool, device=device)
    pad[H:, :] = True
    pad[:, W:] = True
    pad = torch.roll(pad, (-shift, -shift), (0, 1))
    labels[pad] = PAD_LABEL
    return window_partition(labels.view(1, Hp, Wp, 1), ws).squeeze(-1)


def shifted_window_attention(x: torch.Tensor, hw_shape: Tuple[int, int],
                             ws: int, shift: int, attend):
    """Run ``attend(windows, labels)`` on shifted windows of a token map.

    Args:
        x (Tensor): (B, H * W, C).
        hw_shape: (H, W).
        ws (int): window size; the map is padded to multiples of it.
        shift (int): cyclic shift (0 for none).
        attend (callable): ``(windows (B*nW, ws*ws, C), labels (nW, ws*ws)
            or None) -> (B*nW, ws*ws, C)``.

    Returns:
        Tensor: (B, H * W, C).
    """
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


def shifted_window_bands(x: torch.Tensor, hw_shape: Tuple[int, int],
                         ws: int, shift: int, attend, norm, epilogue,
                         band_elements: int,
                         out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Inference of ``epilogue(x, shifted_window_attention(norm(x), ...))``
    in bands of whole window rows (of the shifted, padded map).

    Windows never cross bands, so each band's tokens are gathered, attended
    and finished on their own; every buffer is band-sized (on the CPU large
    fresh buffers cost page faults, small ones stay in cache).

    Args:
        x (Tensor): (B, H * W, C).
        hw_shape, ws, shift, attend: as in :func:`shifted_window_attention`.
        norm (callable): row-wise, applied to x before the attention.
        epilogue (callable): ``(x rows (B, T, C), their attention (B, T, C),
            may be modified in place) -> (B, T, C)``, row-wise.
        band_elements (int): window rows per band are chosen so that
            ``4 * C`` channels of a band's tokens are about this many
            elements.
        out (Tensor, optional): (B, H * W, C) for the result; may be x.

    Returns:
        Tensor: (B, H * W, C).
    """
    B, N, C = x.shape
    H, W = hw_shape
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    labels = window_labels((H, W), ws, shift, x.device)
    per_band = Wp // ws  # windows
    step = max(1, band_elements // (4 * B * C * ws * Wp))
    out = torch.empty_like(x) if out is None else out
    x_map, out_map = x.view(B, H, W, C), out.view(B, H, W, C)
    for j0 in range(0, Hp // ws, step):
        j1 = min(j0 + step, Hp // ws)
        # rows of the padded map in the order of the shifted one
        rows = (torch.arange(j0 * ws, j1 * ws, device=x.device) + shift) % Hp
        real = rows < H
        src = rows[real]
        # x's rows of the band: a view unless they wrap around (every read
        # of them comes before the band's result is written to out)
        r0 = int(src[0])
        x_rows = (x_map[:, r0:r0 + len(src)] if bool(
            (src == torch.arange(r0, r0 + len(src), device=src.device)).all())
            else x_map.index_select(1, src))
        band = x.new_zeros(B, len(rows), Wp, C)
        band[:, real, :W] = norm(x_rows)
        if shift:
            band = torch.roll(band, -shift, 2)
        band_labels = (None if labels is None else
                       labels[j0 * per_band:j1 * per_band])
        a = window_reverse(attend(window_partition(band, ws), band_labels),
                           ws, len(rows), Wp)
        if shift:
            a = torch.roll(a, shift, 2)
        a = (a[:, :, :W] if bool(real.all()) else a[:, real, :W]).reshape(
            B, -1, C)
        out_map.index_copy_(1, src, epilogue(
            x_rows.view(B, -1, C), a).view(B, -1, W, C))
    return out
