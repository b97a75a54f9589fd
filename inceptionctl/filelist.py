"""Listing class folders of images, and a cache of the listing in a run folder.

A class folder's images are its files (in sub-folders too, symlinked folders not followed)
whose names end in one of torchvision's ImageFolder extensions, in the order their paths sort.
Listing the 1.28M files of ILSVRC-2012 takes long on a network file system, so a run keeps
the listing of each data folder it reads in ``RUN/filelist-<hash>.json``: it is reused while
the modification times of the class folders (and their sub-folders) are unchanged, and a class
folder whose time changed (a file added, removed or renamed there) is listed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from .files import write_text_atomic

FORMAT = 1
# a folder modified this recently may still change within the same timestamp: never trusted
_SETTLE_NS = 2_000_000_000


def is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _is_file(entry: os.DirEntry) -> bool:
    """Whether ``entry`` is a file or a link to one; a link that leads nowhere (dangling, or
    a loop of links) is not."""
    try:
        return entry.is_file()
    except OSError:  # ELOOP: is_file() answers False for a dangling link, raises for a loop
        return False


def scan_class(folder: str) -> tuple[list[str], dict[str, int | None]]:
    """(the images of ``folder`` as paths relative to it, sorted; the modification times of
    the folder and of every sub-folder listed, keyed by relative path, "" for the folder)."""
    files: list[str] = []
    dirs: dict[str, int | None] = {}
    pending = [""]
    now = time.time_ns()
    while pending:
        rel = pending.pop()
        path = os.path.join(folder, rel) if rel else folder
        mtime = os.stat(path).st_mtime_ns
        dirs[rel] = mtime if now - mtime > _SETTLE_NS else None
        with os.scandir(path) as entries:
            for e in entries:
                name = os.path.join(rel, e.name) if rel else e.name
                if e.is_dir(follow_symlinks=False):
                    pending.append(name)
                elif is_image(e.name) and _is_file(e):
                    files.append(name)
    files.sort()  # as the full paths sort: they share the folder's path
    return files, dirs


def _unchanged(folder: str, dirs: dict[str, int | None]) -> bool:
    for rel, mtime in dirs.items():
        if mtime is None:
            return False
        try:
            if os.stat(os.path.join(folder, rel) if rel else folder).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


class FileLists:
    """The images of class folders, listed once per run folder.

    ``folder`` is where the listings are kept (a run folder; None: not kept). Listings made
    are written by :meth:`save`, once the run folder exists.
    """

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self._dirty: dict[Path, dict] = {}
        self.reused: list[str] = []  # class folders whose listing came from the cache (tests)

    def cache_path(self, root: Path) -> Path | None:
        if self.folder is None:
            return None
        key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
        return self.folder / f"filelist-{key}.json"

    def _load(self, root: Path) -> dict:
        path = self.cache_path(root)
        if path is None or not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if data.get("format") != FORMAT or data.get("root") != str(root.resolve()):
            return {}
        return data.get("classes", {})

    def class_files(self, root: Path, classes: list[str]) -> list[list[str]]:
        """The image paths of each class folder ``root/<class>``, in ``classes`` order."""
        cached = self._load(root)
        listing, changed = {}, False
        for name in classes:
            folder = os.path.join(root, name)
            entry = cached.get(name)
            if entry is not None and _unchanged(folder, entry["dirs"]):
                self.reused.append(name)
            else:
                files, dirs = scan_class(folder)
                entry, changed = {"dirs": dirs, "files": files}, True
            listing[name] = entry
        if changed or set(cached) != set(classes):
            self._dirty[root] = {"format": FORMAT, "root": str(root.resolve()),
                                 "classes": listing}
        return [[os.path.join(root, name, f) for f in listing[name]["files"]]
                for name in classes]

    def save(self) -> None:
        """Write the listings made since the last save (atomically) into the run folder."""
        for root, data in list(self._dirty.items()):
            path = self.cache_path(root)
            if path is not None and path.parent.is_dir():
                write_text_atomic(path, json.dumps(data, separators=(",", ":")))
            del self._dirty[root]
