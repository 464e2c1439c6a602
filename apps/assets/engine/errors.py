"""What can go wrong in the store and its backups; each message names the file, blob or member."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the store engine raises on purpose."""


class SourceChangedError(StoreError):
    """A source file changed (size, mtime, inode or length read) while it was being ingested."""


class StoreFullError(StoreError):
    """The disk ran out of space (ENOSPC) while writing; the temp file is gone, the store intact."""


class BlobMissingError(StoreError):
    """A blob the caller needs is not in the store."""


class BlobCorruptError(StoreError):
    """A blob's content does not hash to its name (or has the wrong size)."""


class UnsafeArchiveError(StoreError):
    """An archive member that restore refuses: absolute path, `..`, link, device, fifo, odd name."""


class BackupCorruptError(StoreError):
    """A backup archive whose content does not match its own manifest."""


class UnsafePathError(StoreError):
    """A path that would leave its folder: absolute, `..`, a dotfile, or a symlink pointing out."""


class InPlaceChangedError(StoreError):
    """A file of a version referenced in place no longer matches what the scan recorded."""
