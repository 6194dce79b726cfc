"""Test-wide setup: 8 simulated CPU devices and a persistent compilation cache (both set
before JAX starts), and the Hypothesis profile."""

import importlib.metadata
import os
import pathlib
import shutil

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
# subdirectory per jax/jaxlib version: the first process of a run removes the others, and
# JAX evicts the least recently used entries beyond 2 GB. CVAE_TEST_COMPILATION_CACHE
# names another directory (e.g. an empty one, to measure a cold run).
CACHE_VARIABLE = "CVAE_TEST_COMPILATION_CACHE"
if not os.environ.get(CACHE_VARIABLE):
    versions = "jax{}-jaxlib{}".format(
        importlib.metadata.version("jax"), importlib.metadata.version("jaxlib")
    )
    cache_root = pathlib.Path(__file__).resolve().parent.parent / "build" / "jax-compilation-cache"
    for stale in cache_root.glob("*"):
        if stale.name != versions:
            shutil.rmtree(stale, ignore_errors=True)
    (cache_root / versions).mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_VARIABLE] = str(cache_root / versions)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[CACHE_VARIABLE]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # CPU programs compile fast
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"  # and are small: cache all
os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(2 * 10**9)

# Hypothesis (the property tests): no deadline (a first example pays for XLA compilation),
# no example database in the working tree, and the reproduction blob printed on failure.
# On CI the examples are derandomized, so a run is repeatable; locally each run explores.
hypothesis.settings.register_profile(
    "cvae", deadline=None, database=None, print_blob=True, derandomize=bool(os.environ.get("CI"))
)
hypothesis.settings.load_profile("cvae")
