"""Sweeps: a grid of configs × seeds, trained group by group as populations.

``run_sweep(base, directory, seeds=range(5), grid={"model.sigma0": [0.01, 0.1]})`` expands
the cartesian product of the grid's values, times the seeds, into *members*; each member is
an ordinary run in ``directory/<field=value>/.../seed=<s>/`` (``cvae.load_run`` and every
script read it unchanged). Members whose configs differ only in
``steps.HYPERPARAMETERS`` form one *group* and train together in one compiled program
(``cvae.training.population``); groups that differ in structure (latent size, widths, posterior,
objective, batch size, data, …) run one after another. ``directory/sweep.json`` lists the
members, their groups and their status; rerunning the same sweep resumes it.

``shard=(i, n)`` trains every n-th member starting at i — the members of one task of a
cluster array job (e.g. SLURM ``--array=0-(n-1)``); the tasks write disjoint workdirs and
merge their entries into ``sweep.json`` under a file lock.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import fcntl
import itertools
import logging
import math
import pathlib

import ml_collections

from cvae import config as config_lib
from cvae import parallel
from cvae.runs.restore import SWEEP_FILE
from cvae.runs.workdir import read_json, write_json_atomic
from cvae.training import population, steps

log = logging.getLogger("cvae")


class SweepSpecError(ValueError):
    """A grid, seed range or shard that cannot be swept (a one-line message)."""


@dataclasses.dataclass(frozen=True)
class Member:
    """One run of a sweep: its directory (relative to the sweep's), overrides and config."""

    name: str
    overrides: dict  # dotted field → value, the seed included
    config: ml_collections.ConfigDict
    group: int = 0


def parse_seeds(spec: str) -> list[int]:
    """``"0:5"`` → [0, 1, 2, 3, 4]; ``"0,3,7"`` → [0, 3, 7]; a lone number is refused.

    ``--seeds 3`` reads as "three seeds" to some and "seed 3" to others, so it is refused
    with both spellings: ``0:3`` for seeds 0, 1, 2 and ``3:4`` for seed 3 alone.
    """
    if spec.strip().isdigit():
        n = int(spec)
        raise SweepSpecError(
            f"--seeds {spec} is ambiguous: write --seeds 0:{n} for {n} seeds (0 to {n - 1}) "
            f"or --seeds {n}:{n + 1} for seed {n} alone"
        )
    try:
        if ":" in spec:
            start, stop = (int(part) for part in spec.split(":"))
            seeds = list(range(start, stop))
        else:
            seeds = [int(part) for part in spec.split(",")]
    except ValueError:
        raise SweepSpecError(
            f"--seeds {spec!r} is not a seed range: write START:STOP "
            "(e.g. 0:5 for seeds 0 to 4) or a list (e.g. 0,3,7)"
        ) from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise SweepSpecError(
            f"--seeds {spec!r} gives {seeds}: a sweep needs at least one "
            "seed, none negative, none repeated"
        )
    return seeds


def parse_grid(specs: list[str], base: ml_collections.ConfigDict) -> dict[str, list]:
    """``["model.sigma0=0.01,0.1", ...]`` → {"model.sigma0": [0.01, 0.1], ...}, each value
    converted to the type of the field in ``base``."""
    fields = config_lib.flatten(base)
    grid = {}
    for spec in specs:
        field, eq, values = spec.partition("=")
        field = field.strip()
        if not eq or not values.strip():
            raise SweepSpecError(
                f"--grid {spec!r} must read FIELD=V1,V2,... (e.g. model.sigma0=0.01,0.1)"
            )
        if field == "seed":
            raise SweepSpecError("sweep seeds with --seeds (e.g. --seeds 0:5), not --grid")
        if field not in fields:
            close = difflib.get_close_matches(field, list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SweepSpecError(
                f"--grid names the unknown config field {field!r}{hint} "
                "(--helpconfig lists every field)"
            )
        if field in grid:
            raise SweepSpecError(
                f"--grid gives {field!r} twice; list all its values in one --grid (FIELD=V1,V2,...)"
            )
        parsed = [_convert(field, fields[field], v.strip()) for v in _split_values(values)]
        if len(set(map(repr, parsed))) != len(parsed):
            raise SweepSpecError(f"--grid {spec!r} repeats a value")
        grid[field] = parsed
    return grid


def _split_values(text: str) -> list[str]:
    """``"0.01,0.1"`` → ["0.01", "0.1"]; commas inside brackets or quotes do not split, so a
    tuple field's values read as literals: ``"(0.01,),(0.1,)"`` → ["(0.01,)", "(0.1,)"]."""
    parts, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def _convert(field: str, default, text: str):
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, list):  # a tuple field (``flatten`` writes tuples as lists)
            value = ast.literal_eval(text)
            if not isinstance(value, tuple | list):
                raise ValueError
            return config_lib.as_tuples(value)
        return text
    except (ValueError, SyntaxError):
        if isinstance(default, list):
            kind, default = "tuple such as (0.1,) or ((100, 100),)", config_lib.as_tuples(default)
        else:
            kind = type(default).__name__
        raise SweepSpecError(
            f"--grid {field}: {text!r} is not a {kind}, the type of {field} (default {default!r})"
        ) from None


def expand(base: ml_collections.ConfigDict, seeds, grid: dict[str, list]) -> list[Member]:
    """Every combination of the grid's values, for every seed, validated and grouped.

    Names use each field's last component (``sigma0=0.01/seed=3``) unless two grid fields
    share it. Group ids number the distinct structures in order of first appearance.
    """
    short = _short_names(list(grid))
    members, structures = [], []
    for values in itertools.product(*grid.values()):
        for seed in seeds:
            overrides = {**dict(zip(grid, values)), "seed": seed}
            cfg = _with_overrides(base, overrides)
            name = "/".join(
                [f"{short[f]}={_format(v)}" for f, v in zip(grid, values)] + [f"seed={seed}"]
            )
            structure = population.population_structure(cfg)
            if structure not in structures:
                structures.append(structure)
            members.append(Member(name, overrides, cfg, structures.index(structure)))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        clash = next(n for n in names if names.count(n) > 1)
        raise SweepSpecError(f"two members of the grid would share the directory {clash!r}")
    return members


def _short_names(fields: list[str]) -> dict[str, str]:
    last = [f.split(".")[-1] for f in fields]
    return {f: (name if last.count(name) == 1 else f) for f, name in zip(fields, last)}


def _format(value) -> str:
    """0.01 → "0.01", 1e12 → "1e+12"; the full repr where the short form would round; a
    tuple's elements joined by "-" (nested ones by "x"): ((100, 100),) → "100x100"."""
    if isinstance(value, tuple):
        inner = ["x".join(map(_format, v)) if isinstance(v, tuple) else _format(v) for v in value]
        return "-".join(inner) or "none"
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def _with_overrides(base, overrides: dict) -> ml_collections.ConfigDict:
    cfg = config_lib.from_dict(base.to_dict())
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        try:
            node[leaf] = value
        except TypeError as err:
            raise SweepSpecError(
                f"--grid {dotted}={value!r} is refused by the config schema: {err}"
            ) from None
    try:
        config_lib.validate(cfg)
    except config_lib.ConfigError as err:
        raise SweepSpecError(f"{err} (from the sweep's {_describe(overrides)})") from None
    return cfg


def _describe(overrides: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in overrides.items())


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"2/8"`` → (2, 8): the third of eight tasks; None → (0, 1)."""
    if spec is None:
        return 0, 1
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        index, count = -1, 0
    if not (count >= 1 and 0 <= index < count):
        raise SweepSpecError(
            f"--shard {spec!r} must read I/N with 0 ≤ I < N (e.g. 0/4 for "
            "the first of four tasks; under SLURM: $SLURM_ARRAY_TASK_ID/N)"
        )
    return index, count


def shard_members(members: list[Member], shard: tuple[int, int]) -> list[Member]:
    """Task i of n trains members i, i + n, i + 2n, … of the full list."""
    index, count = shard
    return members[index::count]


def groups_of(members: list[Member]) -> list[list[Member]]:
    """The members by group, groups in order."""
    ids = sorted({m.group for m in members})
    return [[m for m in members if m.group == g] for g in ids]


class SweepFile:
    """``DIR/sweep.json``: the sweep's members, groups and status, merged under a file
    lock so that the tasks of an array job can write it at once."""

    def __init__(self, directory: pathlib.Path):
        self.path = directory / SWEEP_FILE
        self._lock_path = directory / ".sweep.json.lock"

    def read(self) -> dict | None:
        return read_json(self.path)

    def update(
        self, members: list[Member], status: dict[str, dict], *, description: dict | None = None
    ) -> None:
        """Writes ``members``' entries with ``status[name]`` merged in; entries of other
        tasks' members are kept as they are."""
        if not parallel.is_primary():
            return
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = self.read() or {"members": {}}
            if description:
                record.update(description)
            for m in members:
                entry = record["members"].setdefault(m.name, {})
                entry.update({"overrides": m.overrides, "group": m.group, **status.get(m.name, {})})
                entry.setdefault("status", "pending")
            write_json_atomic(self.path, record)


def run_sweep(
    base: ml_collections.ConfigDict,
    directory,
    *,
    seeds,
    grid: dict,
    shard: tuple[int, int] = (0, 1),
    single_program: bool = False,
    command: str | None = None,
) -> dict[str, population.MemberOutcome]:
    """Trains this task's share of a sweep, group by group.

    Args:
      base: the config every member starts from.
      directory: the sweep directory (``sweep.json`` and one run directory per member).
      seeds: the seeds, e.g. ``range(5)``.
      grid: dotted field → values; the cartesian product times the seeds are the members.
      shard: (task I, of N tasks): this task trains members I, I + N, I + 2N, ….
      single_program: refuse a grid that needs more than one group, naming the field that
        splits it, instead of running the groups one after another.
      command: the command line recorded in ``sweep.json``.

    Returns:
      Each member's outcome, by its directory name.

    Raises:
      SweepSpecError: a bad seed range, grid or shard.
    """
    directory = pathlib.Path(directory)
    members = expand(base, seeds, grid)
    groups = groups_of(members)
    if single_program and len(groups) > 1:
        difference = population.structure_difference(groups[0][0].config, groups[1][0].config)
        raise SweepSpecError(
            f"this grid needs {len(groups)} compiled programs, not one: "
            f"its members differ in {difference}; only "
            f"{', '.join(steps.HYPERPARAMETERS)} share a program"
        )
    mine = shard_members(members, shard)
    directory.mkdir(parents=True, exist_ok=True)
    sweep_file = SweepFile(directory)
    sweep_file.update(
        members,
        {},
        description={
            "command": command,
            "seeds": list(seeds),
            "grid": grid,
            "groups": [[m.name for m in g] for g in groups],
            "shards": shard[1],
        },
    )
    log.info(
        "sweep of %d members in %d group(s); this task (%d/%d) trains %d",
        len(members),
        len(groups),
        shard[0],
        shard[1],
        len(mine),
    )
    outcomes = {}
    for group in groups_of(mine):
        names = [m.name for m in group]
        sweep_file.update(group, {n: {"status": "running"} for n in names})
        result = population.train_population(
            [m.config for m in group], [directory / m.name for m in group]
        )
        for name, outcome in zip(names, result.outcomes):
            outcomes[name] = outcome
        sweep_file.update(group, {n: _status(o) for n, o in zip(names, result.outcomes)})
        if any(o.status == "interrupted" for o in result.outcomes):
            break  # a signal stops the whole task; the rerun resumes from here
    return outcomes


def _status(outcome: population.MemberOutcome) -> dict:
    entry = {
        "status": outcome.status,
        "epoch": outcome.epoch,
        "step": outcome.step,
        "error": outcome.error,
    }
    entry.update({f"test_{k}": v for k, v in outcome.final_metrics.items() if math.isfinite(v)})
    return entry


def describe(record: dict) -> str:
    """One line per status: how many members are in it."""
    counts: dict[str, int] = {}
    for entry in record["members"].values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
