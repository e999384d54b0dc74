"""Methods and regularizers, registered by name (the file name is the registry key)."""
import engine  # noqa: F401  (CPU runtime settings before MindSpore loads)
from losses import (adaptsegnet, adda, cdan, dann, iimt, mcc, ocr, seg_source_only, slimda, source_only,  # noqa: F401
                    symnets)
from losses.base import Method, Phase, Regularizer  # noqa: F401
