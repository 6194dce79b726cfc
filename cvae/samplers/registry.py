"""The registry of ex-post samplers: every kind by its name, and what is done to any of
them — fit, save, load — looked up by that name, never by the sampler's class.

``save`` writes a sampler to a directory (a temporary one, renamed when complete) with a
``sampler.json`` naming its kind; ``load`` reads the kind from there and hands the files
to that kind's reader, bit-identically.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile

from cvae import config as config_lib
from cvae.samplers import diffusion, flow, gmm, two_stage
from cvae.samplers.kind import Kind, Sampler

KINDS: dict[str, Kind] = {m.KIND.name: m.KIND for m in (gmm, flow, two_stage, diffusion)}
EX_POST = tuple(KINDS)  # ("gmm", "flow", "two_stage", "diffusion")
SAMPLERS = ("prior", *EX_POST)  # "prior": the model's own prior, its sample_prior
# A hierarchy's ex-post densities fitted to the top layer's codes alone ("gmm@top", …) or
# to its top N layers' ("gmm@top3": a deep hierarchy's top groups); the layers below are
# drawn from the model's p(z_{l−1} | z_l) (the model's ``descend``).
TOP = "@top"
TOP_SAMPLERS = tuple(f"{kind}{TOP}" for kind in EX_POST)
META = "sampler.json"
# Raised whenever a fitting procedure changes: a save of another version is not loaded (the
# run refits). 2: the two-stage VAE standardises its codes and warms its KL up.
FIT_VERSION = 2


def kind_named(name: str) -> Kind:
    """The kind of sampler called ``name``.

    Args:
      name: "gmm", "flow", "two_stage" or "diffusion".

    Returns:
      Its registry entry.

    Raises:
      ValueError: an unknown name, in one line with the known ones.
    """
    if name not in KINDS:
        raise ValueError(f"the ex-post samplers are {EX_POST}, got {name!r}")
    return KINDS[name]


def split_sampler(name: str) -> tuple[str, int]:
    """``"gmm"`` → ("gmm", 0); ``"gmm@top"`` → ("gmm", 1); ``"gmm@top3"`` → ("gmm", 3).

    Args:
      name: a sampler's name.

    Returns:
      (the sampler kind, how many of a hierarchy's top layers its density is fitted to;
      0: the whole code).

    Raises:
      ValueError: a count after "@top" that is not a positive integer, in one line.
    """
    kind, marker, count = name.partition(TOP)
    if not marker:
        return name, 0
    if not count:
        return kind, 1
    if not count.isdigit() or int(count) < 1:
        raise ValueError(
            f"sampler {name!r}: write {kind}{TOP} for the top layer's codes or "
            f"{kind}{TOP}N, N ≥ 1, for the top N layers'"
        )
    return kind, int(count)


def is_top_sampler(name: str) -> bool:
    """Whether ``name`` is an ex-post kind fitted to a hierarchy's top layers ("gmm@top",
    "flow@top2", …); a malformed count is not one (``split_sampler`` says why).

    Args:
      name: a sampler's name.

    Returns:
      True for KIND@top and KIND@topN with KIND an ex-post kind and N ≥ 1.
    """
    try:
        kind, top = split_sampler(name)
    except ValueError:
        return False
    return kind in KINDS and top >= 1


def top_sampler_name(kind: str, top: int) -> str:
    """The name of ``kind`` fitted to a hierarchy's top ``top`` layers: "gmm@top" for one
    (the name runs saved before counts existed), "gmm@top3" for three.

    Args:
      kind: an ex-post kind.
      top: how many top layers, ≥ 1.

    Returns:
      The sampler's name (also its directory in a run's samplers/).
    """
    return f"{kind}{TOP}" if top == 1 else f"{kind}{TOP}{top}"


def default_sampler(posterior_family: str) -> str:
    """The sampler a model uses when none is named.

    Args:
      posterior_family: the model's posterior family.

    Returns:
      "prior" for the gaussian VAE, "gmm" for collapsed and deterministic models.
    """
    return "prior" if posterior_family == "gaussian" else "gmm"


def fit(
    kind: str,
    codes,
    key,
    *,
    seed: int = 0,
    progress: bool = False,
    labels=None,
    num_classes: int = 0,
    budget=None,
) -> Sampler:
    """The ex-post density ``kind`` fitted to training codes.

    Args:
      kind: "gmm", "flow", "two_stage" or "diffusion".
      codes: (N, d).
      key: the PRNG key of the flow's, the two-stage VAE's and the diffusion model's fit.
      seed: scikit-learn's integer seed for the mixture.
      progress: show a progress bar where the fit has steps to count (flow, diffusion).
      labels: (N,) int labels: a class-conditional diffusion model (the other kinds are
        fitted per class instead, to that class's codes).
      num_classes: the number of classes when labels are given.
      budget: the fits' lengths, a config's ``ex_post`` section (``flow_max_epochs``,
        ``two_stage_epochs``, ``diffusion_updates``); None for the defaults.

    Returns:
      The sampler (``sample(key, n)``, ``log_prob(z)``).

    Raises:
      ValueError: an unknown kind, or too few codes for the mixture.
    """
    return kind_named(kind).fit(
        codes,
        key,
        seed=seed,
        progress=progress,
        labels=labels,
        num_classes=num_classes,
        budget=fit_budget(budget),
    )


def fit_budget(section=None, kind: str | None = None) -> dict:
    """The fits' lengths as a plain dict.

    Args:
      section: a config's ``ex_post`` section (or a dict of some of its fields); the
        defaults of ``cvae.config.base_config`` fill the rest. None for the defaults.
      kind: keep only the fields this kind's fit reads (what its saved sampler records,
        to be refitted when they change); None for all.

    Returns:
      Field name → value.

    Raises:
      ValueError: an unknown kind.
    """
    budget = config_lib.base_config().ex_post.to_dict()
    if section is not None:
        given = section.to_dict() if hasattr(section, "to_dict") else dict(section)
        budget.update({k: given[k] for k in budget if k in given})
    if kind is not None:
        budget = {k: budget[k] for k in kind_named(kind).budget_fields}
    return budget


def save(sampler: Sampler, directory, meta: dict) -> None:
    """Writes a sampler and its metadata to a directory, replaced whole, atomically.

    Args:
      sampler: a fitted sampler.
      directory: where to write (``Workdir.sampler_dir``).
      meta: what identifies the fit (kind, params digest, seed …).
    """
    kind = kind_named(sampler.kind)
    directory = pathlib.Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=".saving-"))
    shape = kind.save(sampler, staging)
    (staging / META).write_text(
        json.dumps(
            {**meta, "kind": kind.name, "shape": shape, "fit_version": FIT_VERSION}, indent=2
        )
    )
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)


def load(directory) -> tuple[Sampler, dict] | None:
    """A sampler written by ``save``.

    Args:
      directory: where it was saved.

    Returns:
      (sampler, meta), or None when the directory holds none, or one fitted by an older
      procedure (``FIT_VERSION``).
    """
    directory = pathlib.Path(directory)
    if not (directory / META).is_file():
        return None
    meta = json.loads((directory / META).read_text())
    if meta.get("fit_version") != FIT_VERSION:
        return None
    return kind_named(meta["kind"]).load(directory, meta["shape"]), meta
