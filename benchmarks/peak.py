"""The machine's f32 matmul peak, measured: the denominator of every fraction-of-peak figure
(shared by every benchmark and benchmarks.profile_step; defines no flags)."""

import math
import time

import jax
import jax.numpy as jnp


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best-of-``repeats`` f32 n×n matmul rate on the default device, in GFLOP/s."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.dot)
    matmul(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        tick = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - tick)
    return 2 * n**3 / best / 1e9
