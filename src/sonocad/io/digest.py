"""The SHA-256 of a file, read in blocks: provenance records, compare's content join and the
wheel weights' check all hash the same way."""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of the file's bytes (OSError where it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
