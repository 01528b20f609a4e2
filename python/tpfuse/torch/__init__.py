"""tpfuse's PyTorch pass: FX graph -> tpfuse IR -> C++ compiler -> FX graph (docs/pytorch.md)."""

from .fusion_pass import FusionPass, FusionReport, GraphReport, compile
from .translate import Translation, TranslationError, translate

__all__ = ["FusionPass", "FusionReport", "GraphReport", "Translation", "TranslationError",
           "compile", "translate"]
