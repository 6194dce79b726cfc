"""Where a result came from: the code's git commit (and whether the tree was dirty), the
versions of the libraries that computed it, whether they are the lock file's, and the
machine. Training writes it to the workdir (``provenance.json``); ``experiments.report``
prints it under every table. ``params_sha256`` names the params a fitted sampler or a
second-stage run was made from.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import pathlib
import platform
import subprocess
import sys
from collections.abc import Mapping

import jax
import numpy as np

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
_REPO = pathlib.Path(__file__).resolve().parents[2]
LOCK_FILE = _REPO / "requirements.lock"  # present in a checkout, absent in an installed wheel


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _normalised(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def lock_differences(lock_text: str, installed: Mapping[str, str | None]) -> list[str]:
    """The packages whose installed version is not the one a lock file pins.

    Args:
      lock_text: the lock file's text: ``name==version`` lines, comments and blanks.
      installed: normalised package name → installed version (None when absent).

    Returns:
      One ``"name: installed X, lock Y"`` line per difference, sorted; empty when the
      environment is the lock's.
    """
    differences = []
    for line in lock_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" not in line:
            continue
        name, version = (part.strip() for part in line.split("==", 1))
        have = installed.get(_normalised(name))
        if have != version:
            differences.append(f"{_normalised(name)}: installed {have}, lock {version}")
    return sorted(differences)


def installed_versions() -> dict[str, str]:
    """The version of every distribution installed on ``sys.path``, by normalised name.

    Read from the folder names ``NAME-VERSION.dist-info``, which the wheel standard spells
    that way, where reading every METADATA file (``importlib.metadata``) costs half a
    second at each start; other installs (``*.egg-info``) are read from their metadata. The
    first install of a name on ``sys.path`` wins, as for imports.

    Returns:
      Normalised name → version.
    """
    installed: dict[str, str] = {}
    for entry in sys.path:
        folder = pathlib.Path(entry or ".")
        if not folder.is_dir():
            continue
        for info in sorted(folder.glob("*.dist-info")):
            name, _, version = info.name[: -len(".dist-info")].partition("-")
            installed.setdefault(_normalised(name), version)
        for info in sorted(folder.glob("*.egg-info")):
            dist = importlib.metadata.PathDistribution(info)
            if dist.metadata["Name"]:
                installed.setdefault(_normalised(dist.metadata["Name"]), dist.version)
    return installed


def environment_matches_lock() -> dict:
    """Whether this environment has exactly the versions of the checkout's lock file.

    Returns:
      {"lock_file": path or None (an installed cvae has none), "matches": bool or None,
      "differences": the first 20 differences}.
    """
    if not LOCK_FILE.is_file():
        return {"lock_file": None, "matches": None, "differences": []}
    differences = lock_differences(LOCK_FILE.read_text(), installed_versions())
    return {
        "lock_file": LOCK_FILE.name,
        "matches": not differences,
        "differences": differences[:20],
    }


def collect() -> dict:
    """The provenance record of this process.

    Returns:
      The commit and dirty flag, library versions, whether the environment is the lock
      file's (``environment``), the Python version and the devices.
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    device = jax.devices()[0]
    return {
        "git_commit": commit,
        "git_dirty": bool(status) if commit else None,
        "versions": versions,
        "environment": environment_matches_lock(),
        "python": platform.python_version(),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "machine": f"{platform.system()} {platform.machine()}",
    }


def describe(record: dict | None) -> str:
    """One line for a report: commit, versions, whether they are the lock's, devices.

    Args:
      record: a provenance record, or None for a run from before they were written.

    Returns:
      E.g. "commit abc1234567; jax 0.10.2, …; the lock's versions; 1 × cpu (cpu)".
    """
    if not record:
        return "provenance not recorded (a run from before provenance.json)"
    commit = record.get("git_commit")
    code = (
        f"commit {commit[:10]}{' (uncommitted changes)' if record.get('git_dirty') else ''}"
        if commit
        else "code outside a git checkout"
    )
    versions = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items() if v)
    matches = record.get("environment", {}).get("matches")
    lock = {True: "the lock's versions; ", False: "NOT the lock's versions; "}.get(matches, "")
    return (
        f"{code}; {versions}; {lock}{record.get('device_count')} × "
        f"{record.get('device_kind')} ({record.get('platform')})"
    )


def params_sha256(params) -> str:
    """A digest of a params tree's values: which params a sampler or a run was made from.

    Args:
      params: a pytree of arrays.

    Returns:
      The SHA-256 of every leaf's bytes, in tree order, as hex.
    """
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(jax.device_get(params)):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()
