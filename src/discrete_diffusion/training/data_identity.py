"""What a run was trained on: the `--data` argument and an identity of its content.

A run folder keeps `RUN_DIR/data/source.json`:

    {"identity": {"argument": "text8.zip", "path": "/abs/text8.zip", "files": 1,
                  "size": 31344016, "sha256": "...", "stat": "..."},
     "history": [{"step": 500, "from": {...}, "to": {...}}]}

`identity.path` is the argument resolved to an absolute path when it names a file or folder
(None for names such as `digits` or `enwiki`); `sha256` hashes every byte of it (a folder:
each file's relative name, size and bytes, in sorted order), read once: `stat` hashes the
files' sizes and modification times, and while it is unchanged a resume reuses the recorded
hash instead of reading the data again. `history` lists each resume that continued on other
data (allowed with `--allow-data-change`), at the step where it did.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from discrete_diffusion.training.checkpoint import resolve_checkpoint

DATA_RECORD = "source.json"  # in RUN_DIR/data/
_CHUNK = 1 << 20


def identify(argument: str | None, previous: dict | None = None) -> dict:
    """The identity of the data `argument` names (see the module docstring); `previous` is an
    earlier identity whose hash is reused when the files' sizes and times are unchanged."""
    identity: dict = {"argument": argument, "path": None}
    if argument is None:
        return identity
    path = Path(argument).expanduser()
    if not path.exists():
        return identity  # a name the data kind resolves itself
    path = path.resolve()
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    names = [f.name if f == path else f.relative_to(path).as_posix() for f in files]
    stats = [(n, f.stat().st_size, f.stat().st_mtime_ns) for n, f in zip(names, files)]
    stat = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    identity.update(path=str(path), files=len(files), size=sum(s[1] for s in stats), stat=stat)
    if (previous and previous.get("path") == str(path) and previous.get("stat") == stat
            and previous.get("sha256")):
        identity["sha256"] = previous["sha256"]
        return identity
    digest = hashlib.sha256()
    for name, f in zip(names, files):
        digest.update(json.dumps([name, f.stat().st_size]).encode())
        with f.open("rb") as stream:
            while block := stream.read(_CHUNK):
                digest.update(block)
    identity["sha256"] = digest.hexdigest()
    return identity


def same_data(a: dict, b: dict) -> bool:
    """Whether two identities name the same content (by hash; names compare as given)."""
    if a.get("sha256") or b.get("sha256"):
        return all(a.get(k) == b.get(k) for k in ("sha256", "size", "files"))
    return a.get("argument") == b.get("argument")


def describe(identity: dict) -> str:
    """A short description for messages: the path with size and hash, or the name."""
    if identity.get("sha256"):
        return (f"{identity['path']} ({identity['size']} bytes, sha256 "
                f"{identity['sha256'][:12]})")
    if identity.get("argument") is None:
        return "the config's default data"
    return repr(identity["argument"])


def read_record(run_dir: Path) -> dict | None:
    """The run's data record, or None when the run predates it."""
    path = Path(run_dir) / "data" / DATA_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"data record {path} is corrupt: {err}") from err
    if not isinstance(record, dict) or not isinstance(record.get("identity"), dict):
        raise ValueError(f"data record {path} is not a data record")
    return record


def data_for_run(run_dir: Path, argument: str | None, *, resume: bool,
                 allow_change: bool = False) -> tuple[str | None, dict]:
    """The data argument to build and the record to keep in the run folder.

    A fresh run records `argument`. A resumed run without `argument` uses the recorded one
    (its absolute path); with it, or when the recorded file has changed, other content is a
    one-line ValueError naming both, unless `allow_change`, which appends the change to the
    history at the run's latest step.
    """
    saved = read_record(run_dir) if resume else None
    if saved is None:  # a fresh run, or one that predates the record
        return argument, {"identity": identify(argument), "history": []}
    old = saved["identity"]
    use = argument if argument is not None else (old.get("path") or old.get("argument"))
    new = identify(use, previous=old)
    history = list(saved.get("history", []))
    if not same_data(old, new):
        how = "--data names" if argument is not None else "its data is now"
        if not allow_change:
            raise ValueError(f"cannot resume {run_dir} on other data: it was trained on "
                             f"{describe(old)} and {how} {describe(new)}; pass "
                             f"--allow-data-change to continue on it anyway")
        history.append({"step": _latest_step(run_dir), "from": old, "to": new})
    return use, {"identity": new, "history": history}


def _latest_step(run_dir: Path) -> int:
    try:
        return int(resolve_checkpoint(run_dir).stem.removeprefix("step_"))
    except (FileNotFoundError, ValueError):
        return 0
