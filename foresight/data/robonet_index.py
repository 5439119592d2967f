"""Metadata index over a folder of RoboNet files, and the filename-list test split.

The index holds one row per readable file (robot, adim, sdim, cameras, frames, encoding, sha256, ...; see
`read_file_metadata`). It is cached as JSON beside the files and refreshed per file: a row is re-read when the
file's size or modification time changed (and, with ``verify_hash=True``, when its SHA-256 changed), rows of
deleted files are dropped, new files are added. Files that cannot be read are skipped with a warning that names
them; they are never cached, so a repaired file is picked up on the next build.
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from tqdm import tqdm

from foresight.checkpoint import atomic_write_text
from foresight.data.robonet_io import RoboNetFileError, read_file_metadata, read_trajectory, sha256_file

INDEX_FILENAME = ".robonet_index.json"
INDEX_VERSION = 1


def _as_set(v: Any) -> set | None:
    if v is None:
        return None
    return {v} if isinstance(v, (str, int)) else set(v)


class RoboNetIndex:
    """Rows of file metadata, keyed by file name, over one folder.

    Build with `RoboNetIndex.build(folder)`; narrow with `filter(...)` / `where(fn)` / `select(names)`;
    iterate for rows (dicts with 'file' and 'path' added); `paths` lists the files.
    """

    def __init__(self, folder: str | os.PathLike, rows: dict[str, dict[str, Any]],
                 skipped: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.rows = dict(rows)  # insertion order is the file order (sorted by `build`, list order by `select`)
        self.skipped = dict(skipped or {})  # file name -> reason it was not indexed

    # -- building ---------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        folder: str | os.PathLike,
        *,
        pattern: str = "*.hdf5",
        cache: bool = True,
        verify_hash: bool = False,
        verify_streams: bool = False,
        num_workers: int = 1,
        progress: bool = True,
    ) -> "RoboNetIndex":
        """Index every file matching ``pattern`` in ``folder`` (not recursive), reusing the cache if valid.

        ``verify_hash`` re-hashes every file to catch content changes that keep size and mtime (slow on the
        full 160k-file dataset). ``verify_streams`` also decodes every frame of every camera of each new or
        changed file, so files whose video bytes are corrupt (the header alone looks fine) are skipped too; it
        costs a full decode per file, once. ``num_workers`` > 1 reads files in threads (hashing and decoding
        release the GIL for most of the work).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"RoboNet folder {folder} does not exist")
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        cached = cls._load_cache(folder) if cache else {}

        rows: dict[str, dict[str, Any]] = {}
        todo: list[Path] = []
        for p in files:
            st = p.stat()
            row = cached.get(p.name)
            fresh = row is not None and row.get("size") == st.st_size and row.get("mtime_ns") == st.st_mtime_ns
            if fresh and verify_hash and row.get("sha256") != sha256_file(p):
                fresh = False
            if fresh:
                rows[p.name] = row
            else:
                todo.append(p)

        skipped: dict[str, str] = {}

        def read(p: Path) -> tuple[Path, dict[str, Any] | None, str | None]:
            try:
                st = p.stat()
                meta = read_file_metadata(p)
                if verify_streams and meta["steps"] > 0:
                    read_trajectory(p, cameras=None, metadata=meta)
                meta.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
                return p, meta, None
            except RoboNetFileError as e:
                return p, None, e.reason
            except OSError as e:
                return p, None, f"{type(e).__name__}: {e}"

        if todo:
            bar = tqdm(total=len(todo), desc=f"indexing {folder.name}", disable=not progress, leave=False)
            with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
                for p, meta, err in pool.map(read, todo):
                    bar.update(1)
                    if meta is not None:
                        rows[p.name] = meta
                    else:
                        skipped[p.name] = err or "unreadable"
                        warnings.warn(f"RoboNet index: skipping {p}: {err}", stacklevel=2)
            bar.close()

        index = cls(folder, dict(sorted(rows.items())), skipped)
        if cache and (todo or set(cached) != set(rows)):
            index.save_cache()
        return index

    @staticmethod
    def _load_cache(folder: Path) -> dict[str, dict[str, Any]]:
        path = folder / INDEX_FILENAME
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            if data.get("version") != INDEX_VERSION:
                return {}
            return dict(data["rows"])
        except (OSError, ValueError, KeyError, TypeError):
            warnings.warn(f"RoboNet index: ignoring unreadable cache {path}", stacklevel=3)
            return {}

    def save_cache(self) -> Path:
        """Write the index as JSON into its folder, atomically."""
        path = self.folder / INDEX_FILENAME
        atomic_write_text(path, json.dumps({"version": INDEX_VERSION, "rows": self.rows}))
        return path

    # -- access -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for name, row in self.rows.items():
            yield {**row, "file": name, "path": str(self.folder / name)}

    def __contains__(self, name: str) -> bool:
        return Path(name).name in self.rows

    def __getitem__(self, name: str) -> dict[str, Any]:
        row = self.rows[Path(name).name]
        return {**row, "file": Path(name).name, "path": str(self.folder / Path(name).name)}

    @property
    def files(self) -> list[str]:
        return list(self.rows)

    @property
    def paths(self) -> list[Path]:
        return [self.folder / n for n in self.rows]

    def _subset(self, names: Iterable[str]) -> "RoboNetIndex":
        return RoboNetIndex(self.folder, {n: self.rows[n] for n in names}, self.skipped)

    def where(self, predicate: Callable[[dict[str, Any]], bool]) -> "RoboNetIndex":
        """Rows for which ``predicate(row)`` is true."""
        return self._subset(r["file"] for r in self if predicate(r))

    def filter(
        self,
        *,
        robot: str | Iterable[str] | None = None,
        adim: int | Iterable[int] | None = None,
        action_space: str | Iterable[str] | None = None,
        primitives: str | Iterable[str] | None = None,
        camera_configuration: str | Iterable[str] | None = None,
        camera: int | None = None,
        encoding: str | None = None,
        min_steps: int | None = None,
        frame_dim: tuple[int, int] | None = None,
    ) -> "RoboNetIndex":
        """Rows matching every given criterion (a value or a collection of accepted values).

        ``camera`` = i keeps files that have camera stream i (n_cams > i); ``camera_configuration`` matches
        RoboNet's rig name metadata (e.g. 'sudri0'); ``min_steps`` keeps trajectories with at least that many
        usable steps (12 for the standard clip).
        """
        robots, adims, spaces = _as_set(robot), _as_set(adim), _as_set(action_space)
        prims, rigs = _as_set(primitives), _as_set(camera_configuration)

        def keep(r: dict[str, Any]) -> bool:
            return ((robots is None or r.get("robot") in robots)
                    and (adims is None or r.get("adim") in adims)
                    and (spaces is None or r.get("action_space") in spaces)
                    and (prims is None or r.get("primitives") in prims)
                    and (rigs is None or r.get("camera_configuration") in rigs)
                    and (camera is None or r.get("ncam", 0) > camera)
                    and (encoding is None or r.get("img_encoding") == encoding)
                    and (min_steps is None or r.get("steps", 0) >= min_steps)
                    and (frame_dim is None or list(r.get("frame_dim") or []) == list(frame_dim)))

        return self.where(keep)

    def select(self, names: Sequence[str], *, strict: bool = True) -> "RoboNetIndex":
        """Rows for the given file names (basenames; order of the list kept). Missing names raise with
        ``strict`` (listing up to 10 of them), else are warned about and dropped."""
        names = [Path(n).name for n in names]
        missing = [n for n in names if n not in self.rows]
        if missing:
            # A listed file that exists but could not be read is a different problem (a damaged download) from
            # one that is absent (a wrong folder or list): say which, and why the file was skipped.
            unreadable = [n for n in missing if n in self.skipped]
            absent = [n for n in missing if n not in self.skipped]
            parts = []
            if unreadable:
                reasons = "; ".join(f"{n}: {self.skipped[n]}" for n in unreadable[:10])
                parts.append(f"{len(unreadable)} are in {self.folder} but unreadable, so the index skipped them "
                             f"({reasons}{' ...' if len(unreadable) > 10 else ''})")
            if absent:
                parts.append(f"{len(absent)} are not in the index of {self.folder}: "
                             f"{absent[:10]}{' ...' if len(absent) > 10 else ''}")
            msg = f"{len(missing)} of {len(names)} requested files cannot be used: " + "; ".join(parts)
            if strict:
                raise FileNotFoundError(msg)
            warnings.warn(msg, stacklevel=2)
        return self._subset(n for n in names if n in self.rows)  # keep the list's order

    def exclude(self, names: Iterable[str]) -> "RoboNetIndex":
        """All rows except the given file names (e.g. the training set = everything but the test list)."""
        drop = {Path(n).name for n in names}
        return self._subset(n for n in self.rows if n not in drop)

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts of files per robot, adim, encoding and camera count."""
        out: dict[str, dict[str, int]] = {"robot": {}, "adim": {}, "img_encoding": {}, "ncam": {}}
        for r in self.rows.values():
            for k in out:
                key = str(r.get(k))
                out[k][key] = out[k].get(key, 0) + 1
        return out

    def __repr__(self) -> str:
        return f"RoboNetIndex({str(self.folder)!r}, files={len(self)}, skipped={len(self.skipped)})"


def read_split_file(path: str | os.PathLike) -> list[str]:
    """File names from a split list: one per line, blank lines and '#' comments ignored, directories
    stripped (lists in the wild hold bare names like 'berkeley_sawyer_traj973.hdf5' or full paths)."""
    names = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(Path(line).name)
    if not names:
        raise ValueError(f"split file {path} lists no files")
    if len(set(names)) != len(names):
        raise ValueError(f"split file {path} lists a file name more than once")
    return names


def write_split_file(path: str | os.PathLike, names: Iterable[str]) -> Path:
    """Write a split list (one basename per line)."""
    path = Path(path)
    path.write_text("".join(Path(n).name + "\n" for n in names))
    return path
