"""Data layer: readers of every layout in shared/docs/protocols.md, splits, transforms."""
from . import arrays, files  # noqa: F401  (registers the readers)
from .config import DataConfig, SplitConfig
from .dataset import HashingDataset, create_dataset, list_datasets
from .splits import Split, list_splits, load_split, make_split
from .transforms import build_transform

__all__ = [
    "DataConfig", "SplitConfig", "HashingDataset", "create_dataset", "list_datasets",
    "make_split", "load_split", "Split", "list_splits", "build_transform",
]
