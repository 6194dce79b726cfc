"""Draw samples: ``python -m experiments.sample --workdir DIR [--n 64]
[--sampler prior|gmm|flow|two_stage|diffusion|latent_diffusion] [--label C]
[--out FILE.png]``. gmm (an ex-post
Gaussian mixture on training codes) is the default for collapsed and deterministic models,
prior for the gaussian VAE; flow, two_stage and diffusion are the other ex-post densities
(cvae.samplers), fitted once and saved in DIR/samplers/; a hierarchy's KIND@top and
KIND@topN fit them to the codes of its top layer or top N layers. With a --label, diffusion
samples its class-conditional model, guided by --guidance W. latent_diffusion samples the
DiT that experiments.train_latent trained on a tokenizer's code maps (DIR/latent_diffusion)."""

import math
import os
import pathlib

import jax
from absl import flags

from cvae import Workdir, load_run, samplers
from cvae.analysis.run import LATENT_DIFFUSION
from cvae.runs import writers
from experiments import cli

flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
flags.DEFINE_integer("n", 64, "Number of samples.")
flags.DEFINE_string(
    "sampler",
    None,
    f"One of {', '.join(samplers.SAMPLERS)} or {LATENT_DIFFUSION}. Where latents come from: "
    "the prior or an ex-post density (KIND@top or KIND@topN: a hierarchy's, fitted to the "
    "codes of its top layer or top N layers), or latent_diffusion: the DiT trained on the "
    "run's code maps by experiments.train_latent.",
)
flags.DEFINE_integer("label", None, "Class of conditional samples (conditional models).")
flags.DEFINE_float(
    "guidance",
    0.0,
    "Classifier-free guidance weight w of --sampler diffusion or latent_diffusion with "
    "--label (0: none).",
)
flags.DEFINE_string("out", None, "PNG path (default DIR/samples_<sampler>.png).")
flags.DEFINE_integer("seed", 0, "PRNG seed of the draw.")
FLAGS = flags.FLAGS
GUIDED = ("diffusion", LATENT_DIFFUSION)  # the samplers with classifier-free guidance


def main(argv):
    del argv
    workdir = cli.require(FLAGS.workdir, "workdir", "the directory of a trained run")
    if FLAGS.n <= 0:
        raise cli.UsageError(f"--n must be ≥ 1, got {FLAGS.n}")
    if FLAGS.out is not None:
        out = pathlib.Path(FLAGS.out)
        if out.is_dir():
            raise cli.UsageError(
                f"--out {out} is a directory; name a file such as {out / 'samples.png'}"
            )
        if out.suffix.lower() != ".png":
            raise cli.UsageError(f"--out {out} must end in .png (the grid is written as a PNG)")
    run = load_run(workdir)
    _check_host_memory(FLAGS.n, tuple(run.info.shape))
    sampler = FLAGS.sampler or samplers.default_sampler(run.model.posterior_family)
    if sampler not in (*samplers.SAMPLERS, LATENT_DIFFUSION) and not samplers.is_top_sampler(
        sampler
    ):
        raise cli.UsageError(
            f"--sampler {sampler}: choose from {', '.join(samplers.SAMPLERS)}, "
            f"{LATENT_DIFFUSION}, or KIND@top / KIND@topN (a hierarchy's top layers)"
        )
    if FLAGS.guidance and (sampler not in GUIDED or FLAGS.label is None):
        raise cli.UsageError(
            "--guidance applies to --sampler diffusion or latent_diffusion with a --label"
        )
    images = run.sample(
        jax.random.key(FLAGS.seed),
        FLAGS.n,
        sampler=sampler,
        labels=FLAGS.label,
        guidance=FLAGS.guidance,
    )
    out = pathlib.Path(FLAGS.out) if FLAGS.out else Workdir(workdir).samples_path(sampler)
    writers.save_png(out, writers.image_grid(jax.device_get(images)))
    print(f"wrote {FLAGS.n} {sampler} samples to {out}")


def _check_host_memory(n: int, shape: tuple[int, ...]) -> None:
    """Refuses, in one line, a grid that cannot fit in the host's free memory: the samples
    are drawn in chunks on the device, but the grid needs all of them at once (float32
    samples and their RGB tiling)."""
    need = n * math.prod(shape[:2]) * (shape[-1] + 3) * 4
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > free:
        raise cli.UsageError(
            f"--n {n}: a grid of {n} {'×'.join(map(str, shape))} images needs about "
            f"{need / 1e9:.1f} GB of host memory and {free / 1e9:.1f} GB is free; lower --n "
            "(a grid is read at a few thousand images; experiments.sample_quality scores "
            "samples in chunks)"
        )


def entry() -> None:
    """The console script (``pyproject.toml``): the same as ``python -m`` this module."""
    cli.run(main)


if __name__ == "__main__":
    entry()
