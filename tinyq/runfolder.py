"""The run folder: one object every stage reads or writes, and atomic file writes.

``RUN/config.json`` (what was asked, the input contract, the plan), ``float.h5``,
``model.h5`` (the QAT model), ``history.json``, ``metrics.json``, ``model.tflite``.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tinyq.errors import TinyqError

FORMAT_VERSION = 1


def cache_root() -> Path:
    """tinyq's cache: ``$TINYQ_CACHE``, else ``$XDG_CACHE_HOME/tinyq`` or ``~/.cache/tinyq``."""
    return Path(os.environ.get("TINYQ_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "tinyq")


def require_folder_out(path: str | Path, what: str = "--out") -> None:
    """A one-line error unless ``path`` can be a folder to write into: no file in its place or above it."""
    path = Path(path)
    taken = next((p for p in (path, *path.parents) if p.exists()), None)
    if taken is not None and not taken.is_dir() and not taken.is_symlink():  # a symlink: require_writable says so
        raise TinyqError(f"{what} {str(path)!r}: {str(taken)!r} is a file, not a folder; choose a folder to "
                         "export into")
    require_writable(path, what)


def require_writable(path: str | Path, what: str = "--out") -> None:
    """A one-line error unless ``path`` can become a regular file (or a folder, for a run): tinyq never
    replaces a device, a symlink or a folder with a file, and says so before any work when the
    nearest existing folder above it is not writable."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not (path.is_file() or path.is_dir())):
        kind = "a symlink" if path.is_symlink() else "a device or special file"
        raise TinyqError(f"{what} {str(path)!r} is {kind}; tinyq writes regular files only: choose another path")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise TinyqError(f"{what} {str(path)!r}: {str(parent)!r} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TinyqError(f"{what} {str(path)!r}: {str(parent.resolve())!r} is not writable; choose a writable {what}")


def _made_folders(path: Path) -> list[Path]:
    """The folders ``path.parent`` needs that do not exist yet, deepest first."""
    missing = [p for p in path.parents if not p.exists()]
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


TMP_MARK = ".tinyq-tmp-"  # temporary files are ".<name>.tinyq-tmp-<pid>-<random><suffix>" beside their target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary files a killed tinyq left beside ``path`` (``kill -9`` runs no cleanup):
    those of processes no longer alive."""
    try:
        leftovers = list(path.parent.glob(f".{path.name}{TMP_MARK}*"))
    except OSError:
        return
    for tmp in leftovers:
        pid = tmp.name[len(f".{path.name}{TMP_MARK}"):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                tmp.unlink()
            except OSError:
                pass


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    A crash, Ctrl-C or error leaves the old file (or none), never a half-written one, and no folder
    it had to make. A symlink, device or folder at ``path`` is refused, not replaced. A process
    killed outright leaves its temporary file; the next write of ``path`` removes it.
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "a folder" if path.is_dir() and not path.is_symlink() else \
            "a symlink" if path.is_symlink() else "a device or special file"
        raise TinyqError(f"{str(path)!r} is {kind}; tinyq writes regular files only: choose another --out")
    made = _made_folders(path)
    remove_stale_temps(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", suffix=suffix or path.suffix,
                                   dir=path.parent)
    except OSError as e:
        _remove_empty(made)
        raise TinyqError(f"cannot write {str(path)!r}: {e.strerror}; choose a writable --out") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_path, path)
        made = []
    except OSError as e:
        raise TinyqError(f"cannot write {str(path)!r}: {e.strerror}; free space or choose another --out") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
        _remove_empty(made)


def write_files(files: dict[Path, bytes]) -> None:
    """Write several files all or none: every one goes to a temporary file first, then all are renamed.

    A full disk or a missing permission fails before any of the files is replaced.
    """
    from contextlib import ExitStack

    with ExitStack() as stack:
        for path, data in files.items():
            tmp = stack.enter_context(atomic_path(path))
            try:
                tmp.write_bytes(data)
            except OSError as e:
                raise TinyqError(f"cannot write {str(path)!r}: {e.strerror}; free space or choose another --out") from None


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def json_bytes(obj) -> bytes:
    """How tinyq writes JSON: sorted keys, indented, a final newline."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_json(path: str | Path, obj) -> None:
    write_bytes(path, json_bytes(obj))


def read_json(path: str | Path) -> dict:
    """A JSON object from ``path``; a missing, unreadable or non-object file is a one-line error."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TinyqError(f"{str(path)!r} is missing; is this a tinyq run folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError, RecursionError):
        raise TinyqError(f"{str(path)!r} is not valid JSON; the run folder is damaged, train again") from None
    if not isinstance(value, dict):
        raise TinyqError(f"{str(path)!r} holds a JSON {type(value).__name__}, not the record tinyq wrote; "
                         "the run folder is damaged, train again")
    return value


class Run:
    """Paths and records of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    config_path = property(lambda self: self.path / "config.json")
    float_model = property(lambda self: self.path / "float.h5")
    model = property(lambda self: self.path / "model.h5")
    tflite = property(lambda self: self.path / "model.tflite")
    history_path = property(lambda self: self.path / "history.json")
    metrics_path = property(lambda self: self.path / "metrics.json")

    def require(self) -> "Run":
        if not self.path.is_dir():
            raise TinyqError(f"run folder {str(self.path)!r} does not exist; train first "
                             "(tinyq train person-detect --out RUN)")
        if not self.config_path.exists():
            raise TinyqError(f"{str(self.path)!r} is not a tinyq run folder (no config.json)")
        version = self.config().get("format_version")
        if version != FORMAT_VERSION:
            raise TinyqError(f"run folder {str(self.path)!r} has format version {version}, this tinyq "
                             f"reads version {FORMAT_VERSION}; train it again with this version")
        return self

    def config(self) -> dict:
        config = read_json(self.config_path)
        for key in ("train", "contract"):
            if key in config and not isinstance(config[key], dict):
                raise TinyqError(f"{str(self.config_path)!r} has a damaged {key!r} entry; train again")
        if "format_version" in config and "contract" not in config:
            raise TinyqError(f"{str(self.config_path)!r} has no input contract; the run folder is damaged, train again")
        return config

    def metrics(self) -> dict:
        return read_json(self.metrics_path) if self.metrics_path.exists() else {}

    def update_metrics(self, **entries) -> dict:
        metrics = self.metrics()
        metrics.update(entries)
        write_json(self.metrics_path, metrics)
        return metrics
