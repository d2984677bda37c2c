"""Referring-segmentation data: RefCOCO/+/g in their official files, and a plain JSONL format for custom data."""

from .jsonl import JsonlDataset, load_jsonl, write_jsonl
from .masks import decode_segmentation, encode_mask, read_mask_image
from .refcoco import REFCOCO_SPLITS, RefCocoDataset, load_refcoco
from .types import ImageEntry, Referent, ReferringDataset

__all__ = [
    "REFCOCO_SPLITS",
    "ImageEntry",
    "JsonlDataset",
    "RefCocoDataset",
    "Referent",
    "ReferringDataset",
    "decode_segmentation",
    "encode_mask",
    "load_jsonl",
    "load_refcoco",
    "read_mask_image",
    "write_jsonl",
]
