"""Dataset registry. Each module registers builders ``fn(domain_cfg, split) -> ImageDomain``."""
import engine  # noqa: F401  (CPU runtime settings before MindSpore loads)
from datasets import mnist, mnistm, office, optdigits, svhn, usps  # noqa: F401
from datasets.base import ArrayDomain, BatchStream, DatasetMissingError, ImageDomain  # noqa: F401
