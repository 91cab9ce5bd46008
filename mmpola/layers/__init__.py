"""Layers that need torch alone (no MMEngine, no mmcv)."""
from .pola_attention import PolaAttention, resize_grid_tokens

__all__ = ['PolaAttention', 'resize_grid_tokens']
