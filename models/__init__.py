"""Backbones, heads, discriminators and segmenters, registered by name."""
import engine  # noqa: F401  (CPU runtime settings before MindSpore loads)
from models import deeplab, dtn, lenet, modules, resnet, slimmable  # noqa: F401
from models import wideresnet  # noqa: F401  (issue #17: WRN-28-10, WRN-40-2)
from models.classifier import Classifier, create_model  # noqa: F401
