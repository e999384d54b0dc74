"""Methods and regularizers, registered by name (the file name is the registry key)."""
import engine  # noqa: F401  (CPU runtime settings before MindSpore loads)
from losses import (adaptsegnet, adda, cdan, dann, iimt, mcc, ocr, seg_source_only, slimda, source_only,  # noqa: F401
                    symnets)
from losses import mme, pac  # noqa: F401  (semi-supervised DA, issue #15)
from losses import dance  # noqa: F401  (universal DA: open-set / partial / open-partial, issue #15)
from losses import cycada  # noqa: F401  (pixel-level + feature-level DA, issue #16)
from losses.base import Method, Phase, Regularizer  # noqa: F401
