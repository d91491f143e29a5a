"""Which teacher layers to distil: their knowledge quality ``Q`` (:mod:`.quality`) and the automatic
choice of the best ones for ``teacher_layers: auto`` (:mod:`.selection`). The table and the plot of ``Q``
are drawn by :mod:`hf_pcoh.plots` (re-exported here)."""

from ..citations import KNOWLEDGE_QUALITY as KNOWLEDGE_QUALITY_CITATION
from ..plots import format_quality_table, plot_qualities
from .quality import KnowledgeQuality, knowledge_quality, layer_qualities
from .selection import LayerChoice, choose_teacher_layers, map_layers_one_to_one, select_layers, stratified_rows

__all__ = [
    "KNOWLEDGE_QUALITY_CITATION",
    "KnowledgeQuality",
    "LayerChoice",
    "choose_teacher_layers",
    "format_quality_table",
    "knowledge_quality",
    "layer_qualities",
    "map_layers_one_to_one",
    "plot_qualities",
    "select_layers",
    "stratified_rows",
]
