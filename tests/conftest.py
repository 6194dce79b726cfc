"""Test-wide setup: 8 simulated CPU devices and a persistent compilation cache (both set
before JAX starts), and the Hypothesis profile."""

import importlib.metadata
import os
import pathlib
import shutil
import zlib

import hypothesis

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# JAX's persistent compilation cache, shared by every process of a suite run and kept
# between runs: the xdist workers and every subprocess a test launches inherit these
# variables, so a program that many tests compile (a digits run's epoch, the evaluation
# core) is compiled once, and a rerun after a small change recompiles only the programs the
# change touched (the cache key is the program, its compile options and the jax/jaxlib
# build, so a stale entry is never read). The suite owns the directory
# build/jax-compilation-cache/ in the working tree — never the user's home — with one
# subdirectory per jax/jaxlib version: the first process of a run removes the others and
# tidies this one (``_tidy_compilation_cache``). CVAE_TEST_COMPILATION_CACHE names another
# directory (e.g. an empty one, to measure a cold run).
#
# JAX's own size bound is off (max size -1): with one, every write takes a lock that all
# processes share, lists the whole directory and reads every entry's access-time file —
# thousands of reads per compiled program — and a single entry left without its
# access-time file (a process killed between the two writes, as the kill tests do) makes
# every later write fail.
CACHE_VARIABLE = "CVAE_TEST_COMPILATION_CACHE"
CACHE_MAX_BYTES = 2 * 10**9


def _tidy_compilation_cache(directory: pathlib.Path) -> None:
    """Keeps the cache readable and bounded: entries a killed process left truncated (not a
    whole compressed stream) are removed, and the whole directory once it outgrows 2 GB."""
    entries = list(directory.glob("*-cache"))
    if sum(entry.stat().st_size for entry in entries) > CACHE_MAX_BYTES:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        return
    for entry in entries:
        if not _whole_stream(entry):
            entry.unlink(missing_ok=True)
    for leftover in directory.glob("*-atime"):  # from JAX's size bound, when it was on
        leftover.unlink(missing_ok=True)


def _whole_stream(entry: pathlib.Path) -> bool:
    """Whether a cache entry decompresses: JAX compresses with zstandard where it is
    installed, else with zlib."""
    try:
        data = entry.read_bytes()
    except OSError:
        return False
    try:
        zlib.decompress(data)
        return True
    except zlib.error:
        pass
    try:
        import zstandard

        zstandard.ZstdDecompressor().decompress(data)
        return True
    except Exception:  # noqa: BLE001 - not installed, or not a whole zstd frame
        return False


if not os.environ.get(CACHE_VARIABLE):
    versions = "jax{}-jaxlib{}".format(
        importlib.metadata.version("jax"), importlib.metadata.version("jaxlib")
    )
    cache_root = pathlib.Path(__file__).resolve().parent.parent / "build" / "jax-compilation-cache"
    for stale in cache_root.glob("*"):
        if stale.name != versions:
            shutil.rmtree(stale, ignore_errors=True)
    (cache_root / versions).mkdir(parents=True, exist_ok=True)
    _tidy_compilation_cache(cache_root / versions)
    os.environ[CACHE_VARIABLE] = str(cache_root / versions)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[CACHE_VARIABLE]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # CPU programs compile fast
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"  # and are small: cache all
os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = "-1"  # bounded by _tidy_compilation_cache

# Hypothesis (the property tests): no deadline (a first example pays for XLA compilation),
# no example database in the working tree, and the reproduction blob printed on failure.
# On CI the examples are derandomized, so a run is repeatable; locally each run explores.
hypothesis.settings.register_profile(
    "cvae", deadline=None, database=None, print_blob=True, derandomize=bool(os.environ.get("CI"))
)
hypothesis.settings.load_profile("cvae")
