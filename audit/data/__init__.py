"""Evidence: artwork manifests, image validation and preprocessing.

The synthetic artists used by demos and tests live in :mod:`audit.groundtruth.synthetic`.

Every file is hashed (SHA-256 = ``image_id``), decoded and preprocessed in one place
(:func:`validate_and_load`); files that cannot be used are rejected with a reason that is kept for the
report, never silently dropped.
"""
from audit.data.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_FORMATS,
    ImageRejected,
    sha256_file,
    validate_and_load,
)
from audit.data.manifest import (
    MANIFEST_COLUMNS,
    load_evidence,
    read_manifest,
    scan_folder,
    write_manifest,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MANIFEST_COLUMNS",
    "SUPPORTED_FORMATS",
    "ImageRejected",
    "load_evidence",
    "read_manifest",
    "scan_folder",
    "sha256_file",
    "validate_and_load",
    "write_manifest",
]
