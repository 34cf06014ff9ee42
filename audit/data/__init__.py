"""Evidence: artwork manifests, image validation/preprocessing and synthetic artists.

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
from audit.data.synthetic import ARTISTS, make_artwork_folder, render_artwork

__all__ = [
    "ARTISTS",
    "DEFAULT_MAX_PIXELS",
    "MANIFEST_COLUMNS",
    "SUPPORTED_FORMATS",
    "ImageRejected",
    "load_evidence",
    "make_artwork_folder",
    "read_manifest",
    "render_artwork",
    "scan_folder",
    "sha256_file",
    "validate_and_load",
    "write_manifest",
]
