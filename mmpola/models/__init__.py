from ..ops import pola_linear_attention
from .pola_attention import PolaAttention
from .pola_pvt import PolaPVT
from .pola_swin import PolaSwin

__all__ = ['PolaAttention', 'pola_linear_attention', 'PolaPVT', 'PolaSwin']
