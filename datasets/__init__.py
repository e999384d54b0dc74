"""Dataset registry. Each module registers builders ``fn(domain_cfg, split) -> ImageDomain``."""
import engine  # noqa: F401  (CPU runtime settings before MindSpore loads)
from datasets import cityscapes, digitscenes, mnist, mnistm, office, optdigits, pacs, segmentation, svhn, usps  # noqa: F401
from datasets import cifar, optdigits_dg  # noqa: F401  (issue #17: CIFAR-10(-C), optdigits-DG, optdigits-C)
from datasets.base import ArrayDomain, BatchStream, DatasetMissingError, ImageDomain  # noqa: F401
from datasets.segmentation import SegArrayDomain, SegFileDomain  # noqa: F401
