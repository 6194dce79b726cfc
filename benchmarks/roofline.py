"""The op roofline of a JAX function: how long it would take if each of its matrix products
and convolutions ran as fast as that one operation runs alone, and nothing else (the
elementwise work, copies, the loop around it) cost any time.

The matmul peak (``benchmarks.peak``) is the right ceiling for dense nets, whose matmuls
are large; it is not for conv nets of a few dozen channels, whose convolutions XLA:CPU
runs at a fraction of it even alone (measured on a 2-core AMD EPYC: 3×3 convolutions of
32–64 channels on 7×7 to 28×28 maps at 0.40–0.46 of the matmul peak, 1×1 ones at
0.22–0.31). The op roofline is the ceiling those kernels set: a program at 0.9 of it
loses a tenth of its time outside them; one at 0.3 has time to win by fusing or
reshaping its work.

``op_roofline(fn, *args)`` traces ``fn`` (``jax.make_jaxpr``), finds every
``dot_general`` and ``conv_general_dilated`` (inside ``pjit``, ``custom_jvp``/``vjp``
calls and ``scan`` bodies, a scan's counted ``length`` times), compiles each distinct one
alone with the operand shapes it has in ``fn`` and times it (best of ``repeats``, after a
warm-up), on the default device, as the matmul peak is measured. One inside a
``while`` or ``cond`` cannot be counted (how often it runs is not in the trace): that
raises.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import jax
import jax.extend
import jax.numpy as jnp

from cvae.evaluation.chunks import sub_jaxprs

HEAVY = ("dot_general", "conv_general_dilated")
UNCOUNTABLE = ("while", "cond")


@dataclasses.dataclass
class Op:
    """One distinct heavy operation of a program and how often one call runs it."""

    equation: jax.extend.core.JaxprEqn
    count: int = 0
    flops: float = 0.0  # XLA's count for one execution
    seconds: float = 0.0  # the best time of one execution alone

    @property
    def name(self) -> str:
        shapes = " × ".join(str(v.aval.str_short()) for v in self.equation.invars)
        return f"{self.equation.primitive.name}({shapes})"


def _has_heavy(jaxpr) -> bool:
    return any(
        eqn.primitive.name in HEAVY or any(_has_heavy(sub) for sub in sub_jaxprs(eqn))
        for eqn in jaxpr.eqns
    )


def heavy_ops(fn: Callable, *args) -> list[Op]:
    """The distinct matrix products and convolutions one call of ``fn(*args)`` runs, each
    with how many times it runs.

    Raises:
      ValueError: one sits inside a ``while`` or ``cond``, whose trip count or branch the
        trace does not say.
    """
    found: dict[tuple, Op] = {}

    def walk(jaxpr, times: int) -> None:
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name in HEAVY:
                key = (
                    name,
                    tuple((v.aval.shape, str(v.aval.dtype)) for v in eqn.invars),
                    repr(sorted(eqn.params.items())),
                )
                found.setdefault(key, Op(eqn)).count += times
                continue
            subs = sub_jaxprs(eqn)
            if name in UNCOUNTABLE and any(_has_heavy(sub) for sub in subs):
                raise ValueError(
                    f"a matrix product or convolution inside a {name}: how often it runs is "
                    "not in the trace; time the loop body (or one branch) instead"
                )
            inner = times * int(eqn.params.get("length", 1)) if name == "scan" else times
            for sub in subs:
                walk(sub, inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr, 1)
    return list(found.values())


def time_alone(op: Op, repeats: int = 5) -> Op:
    """Compiles ``op`` alone on operands of its shapes, counts its FLOPs (XLA's cost
    analysis) and keeps its best time of ``repeats`` runs after a warm-up."""
    eqn = op.equation
    avals = [v.aval for v in eqn.invars]  # ShapedArrays: the operands are arrays
    operands = [jnp.full(a.shape, 0.01, a.dtype) for a in avals]  # type: ignore[attr-defined]
    alone = jax.jit(lambda *xs: eqn.primitive.bind(*xs, **eqn.params)).lower(*operands).compile()
    cost = alone.cost_analysis() or {}
    op.flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
    jax.block_until_ready(alone(*operands))
    op.seconds = math.inf
    for _ in range(repeats):
        tick = time.perf_counter()
        jax.block_until_ready(alone(*operands))
        op.seconds = min(op.seconds, time.perf_counter() - tick)
    return op


@dataclasses.dataclass
class Roofline:
    """The op roofline of one call: its heavy ops, their FLOPs and their time alone."""

    ops: list[Op]

    @property
    def flops(self) -> float:
        return sum(op.count * op.flops for op in self.ops)

    @property
    def seconds(self) -> float:
        return sum(op.count * op.seconds for op in self.ops)

    def slowest(self, n: int = 5) -> list[str]:
        """The ``n`` ops that take most of the roofline's time, with their rates."""
        ranked = sorted(self.ops, key=lambda op: -op.count * op.seconds)[:n]
        return [
            f"{op.name} ×{op.count}: {op.count * op.seconds * 1e3:.1f} ms, "
            f"{op.flops / op.seconds / 1e9:.0f} GFLOP/s"
            for op in ranked
        ]


def op_roofline(fn: Callable, *args, repeats: int = 5) -> Roofline:
    """The op roofline of one call of ``fn(*args)`` (see the module docstring)."""
    return Roofline([time_alone(op, repeats) for op in heavy_ops(fn, *args)])
