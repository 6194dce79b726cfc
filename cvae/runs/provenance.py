"""Where a result came from: the code's git commit (and whether the tree was dirty), the
versions of the libraries that computed it, and the machine. Training writes it to the
workdir (``provenance.json``); ``experiments.report`` prints it under every table.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import platform
import subprocess

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
_REPO = pathlib.Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def collect() -> dict:
    """The provenance record of this process: commit, dirty flag, versions, machine."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    device = jax.devices()[0]
    return {"git_commit": commit, "git_dirty": bool(status) if commit else None,
            "versions": versions, "python": platform.python_version(),
            "platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(), "process_count": jax.process_count(),
            "machine": f"{platform.system()} {platform.machine()}"}


def describe(record: dict | None) -> str:
    """One line: 'commit abc1234 (dirty), jax 0.10.2, …, on 1 × cpu'."""
    if not record:
        return "provenance not recorded (a run from before provenance.json)"
    commit = record.get("git_commit")
    code = (f"commit {commit[:10]}{' (uncommitted changes)' if record.get('git_dirty') else ''}"
            if commit else "code outside a git checkout")
    versions = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items() if v)
    return (f"{code}; {versions}; {record.get('device_count')} × {record.get('device_kind')} "
            f"({record.get('platform')})")
