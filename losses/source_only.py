"""Source-only baseline: cross-entropy on labelled source images (plus any regularizers)."""
from dataclasses import dataclass

from engine.config import MethodParams
from engine.registry import METHODS
from losses.base import Method


@dataclass
class SourceOnlyParams(MethodParams):
    name: str = "source_only"


@METHODS.register("source_only", params=SourceOnlyParams)
class SourceOnly(Method):
    pass
