"""Test-wide setup: 8 simulated CPU devices and one persistent compilation cache (both set
before JAX starts), and tiny configs."""

import importlib.metadata
import os
import shutil
import tempfile

import hypothesis

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# JAX's persistent compilation cache, shared by every process of one suite run: the xdist
# workers and every subprocess a test launches inherit these variables, so a program that
# many tests compile (a digits run's epoch, the evaluation core) is compiled once. The
# directory is created by the first process of the run (the xdist controller, or pytest
# alone) under the system's temporary directory — never the user's home — named for the
# jax version, and removed when the run ends; a later run never reads it.
CACHE_VARIABLE = "CVAE_TEST_COMPILATION_CACHE"
if not os.environ.get(CACHE_VARIABLE):
    os.environ[CACHE_VARIABLE] = tempfile.mkdtemp(
        prefix=f"cvae-tests-jax{importlib.metadata.version('jax')}-"
    )
    OWNS_CACHE = True
else:
    OWNS_CACHE = False
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[CACHE_VARIABLE]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # CPU programs compile fast
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"  # and are small: cache all

# Hypothesis (the property tests): no deadline (a first example pays for XLA compilation),
# no example database in the working tree, and the reproduction blob printed on failure.
# On CI the examples are derandomized, so a run is repeatable; locally each run explores.
hypothesis.settings.register_profile(
    "cvae", deadline=None, database=None, print_blob=True, derandomize=bool(os.environ.get("CI"))
)
hypothesis.settings.load_profile("cvae")


def pytest_unconfigure(config):
    """The process that created the compilation cache removes it when the run ends."""
    del config
    if OWNS_CACHE:
        shutil.rmtree(os.environ[CACHE_VARIABLE], ignore_errors=True)
