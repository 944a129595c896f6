"""One directory per run: the resolved config, environment facts, finished-stage markers.

Rerunning the same command in the same directory skips finished stages (their marker exists) and
resumes unfinished training from its last checkpoint. A directory made with a different config is
refused with the keys that differ, so results of two configs never mix.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from prunelimit.runs import paths
from prunelimit import dist
from prunelimit.runs.io import atomic_write_text, make_dirs, read_json, write_json
from prunelimit.errors import PrunelimitError

LOCK_FILE = paths.LOCK

# Keys that may change between invocations of the same run without invalidating its results.
_VOLATILE = {"show_progress", "out", "device", "gpu", "name", "workers", "download", "allow_pickle", "threads",
             "eval_batch_size"}
# Inside a section only these are volatile: "name" at the top is the run's name, but model.name is the model.
_SECTION_VOLATILE = _VOLATILE - {"name"}
# Keys whose change only matters for stages that have not run yet (later stages re-check them).
_STAGE_KEYS = {"gp", "finetune", "prune", "limit", "spectrum", "stages", "pipeline"}


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def sub(self, name: str) -> Path:
        p = self.path / name
        if dist.is_main():
            make_dirs(p)
        return p

    # ---- paths kept in markers and results: relative, so a moved or copied run reads its own files ----
    def relative(self, path: str | Path) -> str:
        """``path`` (a file of this run) as markers and results store it: relative to the run directory."""
        p = Path(path)
        try:
            return p.relative_to(self.path).as_posix()
        except ValueError:
            return p.absolute().relative_to(self.path.absolute()).as_posix()

    def resolve(self, stored: str | Path, what: str = "file") -> Path:
        """The file a marker or result names, in this run directory. Older versions stored absolute paths:
        one that lies under a folder of this run's name (``/old/place/RUN/dense/...``) is read as the
        same file here (the run was moved or copied), never as the original's; any other is refused."""
        p = Path(stored)
        if not p.is_absolute():
            return self.path / p
        here = self.path.absolute()
        if p == here or here in p.parents:
            return p
        parts = p.parts
        if self.path.name in parts[:-1]:
            index = len(parts) - 1 - parts[:-1][::-1].index(self.path.name) - 1
            return self.path.joinpath(*parts[index + 1:])
        raise PrunelimitError(f"run directory {str(self.path)!r} names the {what} {str(p)!r}, which lies outside it "
                              f"(the run was copied or moved under another name); rename the directory back to "
                              f"its original name, or delete its stages/ folder to compute again")

    # ---- config and environment -------------------------------------------------------------
    def write_config(self, cfg_dict: dict[str, Any], *, strict_keys: set[str] | None = None) -> None:
        """Record the resolved config; refuse a directory holding results of a different one.

        ``strict_keys``: top-level keys that must match an existing record (default: the model; each
        finished stage also checks the config slice it depends on, see ``stage_result``)."""
        strict = strict_keys if strict_keys is not None else {"model"}
        path = self.path / paths.CONFIG
        stages = self.path / paths.STAGES
        if path.exists() and stages.is_dir() and any(stages.glob("*.json")):  # only results can conflict
            old = yaml.safe_load(path.read_text()) or {}
            diffs = [k for k in sorted(strict) if _strip(old.get(k)) != _strip(cfg_dict.get(k))]
            if diffs:
                detail = "; ".join(f"{k}: {_diff(old.get(k), cfg_dict.get(k))}" for k in diffs)
                raise PrunelimitError(
                    f"run directory {str(self.path)!r} holds results of a different config ({detail}). "
                    f"Use another --out, or delete the directory to start over.")
        if dist.is_main():
            atomic_write_text(path, yaml.safe_dump(cfg_dict, sort_keys=False))

    def write_environment(self, argv: list[str] | None = None) -> None:
        if not dist.is_main():
            return
        import torch

        env = {
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": list(argv if argv is not None else sys.argv),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "world_size": dist.world_size(),
            "prunelimit": _package_version(),
            "git_sha": _git_sha(),
        }
        try:
            import torchvision

            env["torchvision"] = torchvision.__version__
        except ImportError:  # pragma: no cover
            pass
        write_json(self.path / paths.ENVIRONMENT, env)

    # ---- stage markers ----------------------------------------------------------------------
    def _marker(self, stage: str) -> Path:
        return self.path / paths.STAGES / f"{stage}.json"

    def _started(self, stage: str) -> Path:
        return self.path / paths.STAGES / f"{stage}.started.json"

    def forget_stage(self, stage: str) -> None:
        """Remove the stage's finished and started markers (rank 0), so the next run computes it afresh;
        its files are the caller's to remove or overwrite."""
        if dist.is_main():
            self._marker(stage).unlink(missing_ok=True)
            self._started(stage).unlink(missing_ok=True)

    def stage_result(self, stage: str, fingerprint: dict | None = None, *, redo_hint: str = "",
                     defaults: dict | None = None, files: dict | None = None) -> dict | None:
        """The finished stage's record, or None if it has not finished.

        ``fingerprint``: what the stage's results depend on (config slice, input checksums, world size). A
        finished stage made with a different one is refused (never silently reused): the message names
        the keys that differ and how to redo it (``redo_hint``, default: another --out or delete it).
        ``defaults``: the fingerprint's keys at their schema defaults; a key an older marker lacks (added by
        a newer version) matches when its value now is that default, which is how the older version ran.
        ``files``: {role: path} of the input files whose checksums the fingerprint holds, so a refusal names
        the files, not only their hashes (the marker keeps the paths it was made from as ``_files``)."""
        m = self._marker(stage)
        if not m.exists():
            return None
        record = read_json(m)
        self._refuse_mismatch(stage, record.get("_fingerprint"), fingerprint, "already holds", m, redo_hint,
                              defaults, files=(record.get("_files"), files))
        return record

    def check_started(self, stage: str, fingerprint: dict, *, redo_hint: str = "",
                      defaults: dict | None = None, files: dict | None = None) -> None:
        """Refuse to resume a stage that an earlier command started with another fingerprint: its partial
        files (a training checkpoint, a half-written sweep) would continue with different numbers."""
        m = self._started(stage)
        if m.exists():
            record = read_json(m)
            self._refuse_mismatch(stage, record.get("_fingerprint"), fingerprint, "holds a partly run",
                                  m, redo_hint, defaults, files=(record.get("_files"), files))

    def _refuse_mismatch(self, stage, old, new, holds: str, marker: Path, redo_hint: str,
                         defaults: dict | None = None, files: tuple = (None, None)) -> None:
        if new is None or old is None:
            return
        # only what the stage depends on now: a key a newer version dropped from its fingerprint (a
        # speed-only setting) does not block a run directory an older version made
        diffs = _flat_diff(_project(old, new), new, defaults=defaults or {})
        if not diffs:
            return
        diffs = [_named_input(d, old, new, *files) for d in diffs]
        how = redo_hint or (f"Use another --out for the new config, or delete {str(marker)!r} (and that "
                            f"stage's files) to redo it")
        raise PrunelimitError(f"run directory {str(self.path)!r} {holds} stage {stage!r} made with different "
                              f"settings ({'; '.join(diffs[:5])}). {how}.")

    def mark_started(self, stage: str, fingerprint: dict, files: dict | None = None) -> None:
        if dist.is_main():
            write_json(self._started(stage), {"_fingerprint": fingerprint, **({"_files": files} if files else {})})
        dist.barrier()

    def mark_done(self, stage: str, result: dict, fingerprint: dict | None = None, files: dict | None = None) -> None:
        if dist.is_main():
            record = {**result, "_fingerprint": fingerprint} if fingerprint else dict(result)
            write_json(self._marker(stage), {**record, "_files": files} if files else record)
            self._started(stage).unlink(missing_ok=True)
        dist.barrier()

    # ---- one command at a time ----------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self):
        """Hold ``.lock`` while a command works here; a second command on the same directory is refused
        (it would duplicate the work and interleave the files). Rank 0 holds it for all ranks."""
        if not dist.is_main():
            yield
            return
        make_dirs(self.path)
        path = self.path / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:   # a run directory on a read-only or foreign file system: one line, not a traceback
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise PrunelimitError(f"run directory {str(self.path)!r} is not writable: cannot create its "
                                      f"{LOCK_FILE} ({e.strerror}, errno {e.errno}); choose a writable --out, or "
                                      f"copy the run directory somewhere writable") from None
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise PrunelimitError(f"run directory {str(self.path)!r} is in use by another prunelimit command "
                                      f"({holder}); wait for it to finish, or use another --out") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _named_input(diff: str, old: dict, new: dict, old_files: dict | None, new_files: dict | None) -> str:
    """``inputs.masks: 'sha…' -> 'sha…'`` with the files' names: two hashes alone do not say which mask
    file the run directory was made with."""
    if not diff.startswith("inputs."):
        return diff
    role = diff[len("inputs."):].split(":", 1)[0]

    def named(files, fingerprint) -> str:
        digest = ((fingerprint or {}).get("inputs") or {}).get(role)
        name = (files or {}).get(role, "an earlier file")
        return f"{name} (sha256 {digest[:12]}...)" if digest else f"{name} (missing)"

    return f"inputs.{role}: {named(old_files, old)} -> {named(new_files, new)}"


def _flat_diff(old: Any, new: Any, prefix: str = "", defaults: Any = None) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        defaults = defaults if isinstance(defaults, dict) else {}
        for k in sorted(set(old) | set(new)):
            if k in (_VOLATILE if not prefix else _SECTION_VOLATILE):
                continue
            if k not in old and k in defaults and new.get(k) == defaults[k]:
                continue   # a key newer than the marker, at the default the older version ran with
            out += _flat_diff(old.get(k), new.get(k), f"{prefix}{k}.", defaults.get(k))
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def _project(old: Any, new: Any) -> Any:
    """``old`` restricted to the keys ``new`` has (recursively)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {k: _project(v, new[k]) for k, v in old.items() if k in new}
    return old


def _strip(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _strip(v) for k, v in d.items() if k not in _SECTION_VOLATILE}   # d: one section
    return d


def _diff(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        parts = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys
                 if k not in _SECTION_VOLATILE and old.get(k) != new.get(k)]
        return ", ".join(parts[:4])
    return f"{old!r} -> {new!r}"


def _package_version() -> str:
    from prunelimit import __version__

    return __version__


def _git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
