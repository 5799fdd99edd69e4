"""Crash-safe files: atomic writers, readers that refuse truncated or corrupted files, and provenance.

A writer puts the bytes in a temporary file in the target's directory, fsyncs it and renames it over
the target (os.replace is atomic), so a crash at any moment leaves the old file or the new one, never
half of one. CSV files and checkpoints end with a sha256 line and JSON objects carry a "_sha256" key,
so a file truncated or damaged elsewhere (a copy, a full disk) gives a ValueError naming the file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import hashlib
import io
import json
import math
import numbers
import os
import re
import secrets
from pathlib import Path

import numpy as np

_TRAILER = re.compile(rb"\n# spo_tabular sha256=([0-9a-f]{64})\n\Z")
_TRAILER_LEN = len(b"\n# spo_tabular sha256=\n") + 64
JSON_CHECKSUM_KEY = "_sha256"


# --------------------------------------------------------------------------- atomic writers

def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path, data) -> Path:
    """Write `data` to `path` atomically: temp file in the same directory, fsync, os.replace. Returns the path."""
    path = Path(path)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory: os.replace is only atomic within one file system. Mode 0o666 lets the umask
    # apply as for open() (mkstemp would give 0o600); O_EXCL never reuses another writer's file.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)    # a replaced file keeps its permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)
    return path


def atomic_write_text(path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write a str atomically (see atomic_write_bytes); newlines are written as given."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding))


def _seal(data: bytes) -> bytes:
    """data + a trailer line holding its sha256."""
    return data + b"\n# spo_tabular sha256=" + hashlib.sha256(data).hexdigest().encode() + b"\n"


def _unseal(path: Path, raw: bytes, what: str) -> bytes:
    """The data before the sha256 trailer, checked; ValueError naming the file if it is missing or wrong."""
    match = _TRAILER.search(raw[-_TRAILER_LEN:]) if len(raw) >= _TRAILER_LEN else None
    if match is None:
        raise ValueError(f"{path}: truncated or not a {what} written by spo_tabular "
                         f"(its last line is not the '# spo_tabular sha256=...' end marker)")
    data = raw[:-_TRAILER_LEN]
    if hashlib.sha256(data).hexdigest().encode() != match.group(1):
        raise ValueError(f"{path}: corrupted {what}: the sha256 of its {len(data)} bytes does not match its end marker")
    return data


def _json_digest(obj) -> str:
    # Python's float repr round-trips, so the digest of the parsed object equals that of the written one.
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def atomic_write_json(path, obj, *, provenance: dict | None = None) -> Path:
    """Write obj as indented JSON, atomically; a dict also gets `provenance` (if given) and a "_sha256" key.

    NaN and ±inf are written as Python's json writes them (NaN, Infinity), so they read back exactly.
    """
    if provenance is not None:
        if not isinstance(obj, dict) or "provenance" in obj:
            raise ValueError("obj must be a dict without a 'provenance' key to carry provenance")
        obj = {**obj, "provenance": provenance}
    try:
        text = json.dumps(obj, indent=2)
    except TypeError as exc:
        raise TypeError(f"obj must be JSON-serialisable: {exc}") from None
    if isinstance(obj, dict):
        if JSON_CHECKSUM_KEY in obj:
            raise ValueError(f"obj must not hold the reserved key {JSON_CHECKSUM_KEY!r}")
        # The digest of what a reader will parse (int keys become str, tuples lists), not of obj itself.
        parsed = json.loads(text)
        text = json.dumps({**parsed, JSON_CHECKSUM_KEY: _json_digest(parsed)}, indent=2)
    return atomic_write_text(path, text + "\n")


def atomic_save_csv(frame, path, *, provenance: dict | None = None, index: bool = False) -> Path:
    """Write a pandas DataFrame as CSV ending in a sha256 line, atomically.

    `provenance` (a dict, e.g. from provenance()) adds one column per key to every row, except
    where the frame already has that column (a sweep's per-row seed stays as it is).
    """
    import pandas as pd
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    if provenance is not None:
        frame = frame.assign(**{k: [v] * len(frame) for k, v in provenance.items() if k not in frame.columns})
    body = frame.to_csv(index=index, lineterminator="\n").encode("utf-8")
    return atomic_write_bytes(path, _seal(body))


def atomic_save_torch(obj, path) -> Path:
    """torch.save(obj) to `path` atomically, with a sha256 trailer (checked by load_torch)."""
    import torch
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, _seal(buffer.getvalue()))


# --------------------------------------------------------------------------- readers

def _read(path) -> tuple[Path, bytes]:
    path = Path(path)
    raw = path.read_bytes()            # a missing file stays FileNotFoundError (it names the path)
    if not raw.strip():
        raise ValueError(f"{path}: empty file (truncated?)")
    return path, raw


def read_json(path):
    """Parse a JSON file; ValueError naming the file if it is truncated, not UTF-8 JSON, or fails its "_sha256"."""
    path, raw = _read(path)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: corrupted JSON (not UTF-8 at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: truncated or corrupted JSON ({exc.msg} at line {exc.lineno}, "
                         f"column {exc.colno})") from None
    if isinstance(obj, dict) and JSON_CHECKSUM_KEY in obj:
        digest = obj.pop(JSON_CHECKSUM_KEY)
        if digest != _json_digest(obj):
            raise ValueError(f"{path}: corrupted JSON: its content does not match its {JSON_CHECKSUM_KEY!r} key")
    return obj


def read_csv(path, *, required_columns=(), verify: bool = True):
    """Read a CSV written by atomic_save_csv as a DataFrame; ValueError naming the file if truncated or corrupted.

    verify=False reads a CSV without the sha256 line (written elsewhere); parse errors still name the file.
    """
    import pandas as pd
    path, raw = _read(path)
    body = _unseal(path, raw, "CSV file") if verify else raw
    try:
        frame = pd.read_csv(io.StringIO(body.decode("utf-8")))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: corrupted CSV (not UTF-8 at byte {exc.start})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: truncated or corrupted CSV ({' '.join(str(exc).split())})") from None
    missing = [c for c in required_columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (has {list(frame.columns)})")
    return frame


def load_torch(path, *, map_location="cpu", weights_only: bool = True):
    """torch.load a file written by atomic_save_torch after checking its sha256; ValueError naming the file if bad."""
    import torch
    path, raw = _read(path)
    data = _unseal(path, raw, "checkpoint")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=weights_only)
    except Exception as exc:      # a checksummed file that torch cannot read: a different format or version
        raise ValueError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


# --------------------------------------------------------------------------- provenance

def _canonical(value, where: str = "config"):
    """A JSON-ready form of value with one spelling per value: dicts with str keys, lists, ints, finite floats, str."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} keys must be str, got {key!r}")
            out[key] = _canonical(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, enum.Enum):
        return _canonical(value.value, where)
    if isinstance(value, (list, tuple)):
        return [_canonical(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(item, where) for item in value), key=repr)
    if isinstance(value, np.ndarray) or (type(value).__module__.startswith("torch") and hasattr(value, "tolist")):
        return _canonical(value.tolist(), where)
    if isinstance(value, np.generic):
        return _canonical(value.item(), where)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            return repr(value)                          # "nan", "inf", "-inf"
        # 1 and 1.0 are one configuration: integral floats are spelled as ints (exact below 2**53).
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{where} has type {type(value).__name__}, which has no canonical JSON form")


def canonical_json(config) -> str:
    """The canonical JSON of a config (dict or dataclass): sorted keys, no spaces, 1.0 spelled 1."""
    return json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config) -> str:
    """sha256 hex digest of canonical_json(config): equal configs hash equal in any process or session."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def provenance(config, *, seed=None) -> dict:
    """{seed, config_hash, package_version, torch_version, numpy_version, created_at} for a result or a file.

    seed defaults to config["seed"] when the config has one; config_hash covers the whole config as given.
    """
    import torch
    from . import __version__
    canonical = _canonical(config)
    if seed is None and isinstance(canonical, dict):
        seed = canonical.get("seed")
    return {"seed": _canonical(seed, "seed"), "config_hash": config_hash(config), "package_version": __version__,
            "torch_version": torch.__version__, "numpy_version": np.__version__,
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def args_provenance(args) -> dict:
    """provenance() of parsed command-line arguments (an argparse Namespace): private "_" entries and the
    output-format flag "json" are not part of the configuration."""
    return provenance({k: v for k, v in vars(args).items() if not k.startswith("_") and k != "json"})
