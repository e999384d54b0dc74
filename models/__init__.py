"""Backbones, heads and discriminators, registered by name."""
import engine  # noqa: F401  (CPU runtime settings before MindSpore loads)
from models import dtn, lenet, modules, resnet  # noqa: F401
from models.classifier import Classifier, create_model  # noqa: F401
