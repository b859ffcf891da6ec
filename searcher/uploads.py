"""Uploaded images of the server: files under INDEX_DIR/uploads/ and their caller keys.

Uploads are named by content (`<sha256>.<ext>`), so one file belongs to exactly one catalog entry.
Keys given at AddImages time live in `uploads/keys.json` (file name -> key), replaced atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from descriptors.atomic_files import atomic_write_text

UPLOADS_DIR = "uploads"
KEYS_FILE = "keys.json"


class UploadKeys:
    """The key of each uploaded file; readers see one dict, writers replace it whole."""

    def __init__(self, index_dir: Path) -> None:
        self.folder = Path(index_dir) / UPLOADS_DIR
        self._path = self.folder / KEYS_FILE
        self._keys: dict[str, str] = {}
        if self._path.exists():
            self._keys = {str(k): str(v) for k, v in json.loads(self._path.read_text()).items()}

    def name(self, path: str | Path) -> str | None:
        """The name under uploads/ of an uploaded file; None for any other file."""
        try:
            name = Path(path).resolve().relative_to(self.folder.resolve()).as_posix()
        except ValueError:
            return None
        return None if name == KEYS_FILE else name

    def key_for(self, path: str | None) -> str:
        if not path or not self._keys:
            return ""
        name = self.name(path)
        return self._keys.get(name, "") if name else ""

    def update(self, set_keys: dict[str, str] | None = None, drop: list[str] | None = None) -> None:
        """Set keys by file path and drop files' keys; persisted before it becomes visible."""
        keys = dict(self._keys)
        for path, key in (set_keys or {}).items():
            name = self.name(path)
            if name and key:
                keys[name] = key
        for path in drop or []:
            name = self.name(path)
            if name:
                keys.pop(name, None)
        self.folder.mkdir(exist_ok=True)
        atomic_write_text(self._path, json.dumps(keys, indent=1, sort_keys=True))
        self._keys = keys
