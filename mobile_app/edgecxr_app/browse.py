"""What the app's file chooser lists, without Kivy: folders first, then the files it can open.

Kivy's FileChooserListView stats and sorts every entry on the UI thread and builds one widget per
file, so a folder of 2,000 films froze the window for seconds. The app's chooser instead calls
``list_folder`` in a worker thread (one ``os.scandir`` pass) and shows the result in a
RecycleView, which builds widgets only for the rows on screen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Listing:
    folder: str
    folders: list[str]  # names, sorted case-insensitively
    files: list[str]  # names of the files that match the suffixes
    error: str = ""  # why the folder could not be read (empty when it could)


def list_folder(folder: str | Path, suffixes) -> Listing:
    """Sub-folders and matching files of ``folder`` (hidden ones left out; suffixes ignore case)."""
    wanted = tuple(s.lower() for s in suffixes)
    folders, files = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    continue
                if is_dir:
                    folders.append(entry.name)
                elif entry.name.lower().endswith(wanted):
                    files.append(entry.name)
    except OSError as exc:
        return Listing(str(folder), [], [], f"cannot open {folder}: {exc.strerror or exc}")
    key = str.casefold
    return Listing(str(folder), sorted(folders, key=key), sorted(files, key=key))


def resolve(text: str, current: str) -> tuple[str, str]:
    """What a path typed into the chooser's field means: ``("folder", path)``, ``("file", path)``
    or ``("missing", path)``. Relative paths are taken from the folder shown; ``~`` is home."""
    path = Path(os.path.expanduser(text.strip() or current))
    if not path.is_absolute():
        path = Path(current) / path
    path = Path(os.path.normpath(path))
    if path.is_dir():
        return "folder", str(path)
    if path.is_file():
        return "file", str(path)
    return "missing", str(path)


def start_folder(remembered: str) -> str:
    """Where the chooser opens: the last folder an image came from, else the working directory
    (where ``edgecxr app`` was started), else the home folder."""
    try:
        here = os.getcwd()
    except OSError:  # the working directory was deleted
        here = ""
    for candidate in (remembered, here, str(Path.home())):
        if candidate and Path(candidate).is_dir():
            return str(candidate)
    return os.sep
