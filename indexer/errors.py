"""Errors of the indexer: each names what went wrong and what a person can do about it."""

from __future__ import annotations


class IndexerError(Exception):
    """Base class: the CLI prints the message and exits with status 2."""


class NoImagesError(IndexerError):
    """The input holds no usable image (empty folder, no image extension, or all undecodable)."""


class ManifestMismatchError(IndexerError):
    """An index and an extractor (or an `add` request) disagree on a setting the vectors depend on."""

    def __init__(self, setting: str, index_value: object, other_value: object, index_dir: str = "") -> None:
        where = f" {index_dir}" if index_dir else ""
        super().__init__(
            f"index{where} was built with {setting}={index_value!r} but the extractor uses "
            f"{setting}={other_value!r}; use the index's setting or build a new index"
        )
        self.setting = setting
        self.index_value = index_value
        self.other_value = other_value


class IndexWriteError(IndexerError):
    """Writing the index failed (disk full, read-only folder, ...); the previous index is untouched."""


class IndexExistsError(IndexerError):
    """`build --out DIR` where DIR already holds something."""


class IndexFormatError(IndexerError):
    """A folder that is not an index directory, or one written by an unknown format version."""


class FaissTrainingError(IndexerError):
    """The FAISS factory needs more training vectors than the collection has."""
