"""Analysis helpers behind ``tools/analysis``: FLOP counting with a rule for
Pola attention (``flops``), attention maps and entropies
(``attention_maps``), timing and peak memory (``measure``), model building
and fake inputs (``models``) and the released core as a reference
(``reference``). See docs/analysis.md.
"""
from .attention_maps import attention_weights, row_entropy
from .flops import (PolaFlopAnalyzer, analyze, pola_attention_flops,
                    pola_core_flops)
from .measure import peak_memory, time_call

__all__ = [
    'PolaFlopAnalyzer', 'analyze', 'pola_attention_flops', 'pola_core_flops',
    'attention_weights', 'row_entropy', 'peak_memory', 'time_call'
]
