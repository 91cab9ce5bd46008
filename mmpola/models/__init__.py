from ..layers import PolaAttention
from .pola_pvt import PolaPVT
from .pola_swin import PolaSwin

__all__ = ['PolaAttention', 'PolaPVT', 'PolaSwin']
