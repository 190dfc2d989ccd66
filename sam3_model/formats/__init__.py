"""Dataset formats, on the floor so every layer shares them: JSON reading and format detection, the checked
phrase, RLE and category readers (one error type, `FormatProblem`), and the SA-Co and COCO writers."""

from .categories import (
    BACKGROUND_NAMES,
    CategoryChoice,
    CategoryRules,
    choose_categories,
    placeholder_reason,
    read_categories,
)
from .json_files import detect_format, gc_paused, read_json, require_keys
from .phrases import check_phrase
from .problem import FormatProblem
from .rle import RLE, RleBatch, check_rle, compressed_runs, first_corrupt, str_counts
from .writers import coco_json, saco_annotation, saco_json, write_json_dataset

__all__ = [
    "BACKGROUND_NAMES", "CategoryChoice", "CategoryRules", "FormatProblem", "RLE", "RleBatch", "check_phrase",
    "check_rle", "choose_categories", "coco_json", "compressed_runs", "detect_format", "first_corrupt",
    "gc_paused", "placeholder_reason", "read_categories", "read_json", "require_keys", "saco_annotation", "saco_json",
    "str_counts", "write_json_dataset",
]
