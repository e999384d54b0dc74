"""Methods and regularizers, registered by name (the file name is the registry key)."""
import engine  # noqa: F401  (CPU runtime settings before MindSpore loads)
from losses import adda, cdan, dann, iimt, mcc, ocr, source_only  # noqa: F401
from losses.base import Method, Phase, Regularizer  # noqa: F401
