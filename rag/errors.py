"""The platform's error tree (defined in ``stores.errors``, the bottom layer)."""

from stores.errors import (
    Conflict,
    DimensionMismatch,
    GenerationError,
    InvalidInput,
    MissingDependency,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    RagError,
    StoreUnavailable,
    UnsupportedFileType,
)

__all__ = [
    "Conflict",
    "DimensionMismatch",
    "GenerationError",
    "InvalidInput",
    "MissingDependency",
    "ModelUnavailable",
    "NotFound",
    "PayloadTooLarge",
    "RagError",
    "StoreUnavailable",
    "UnsupportedFileType",
]
