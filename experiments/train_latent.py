"""Train a latent diffusion model on a tokenizer run's code maps:
``python -m experiments.train_latent --tokenizer DIR [--workdir DIR/latent_diffusion]
[--config.NAME=VALUE …]``.

A DiT (``cvae.models.dit``) learns the codes of a trained tokenizer (a run with
``model.arch=conv_map``) by flow matching; ``--config.space=pixels`` trains the same DiT on
the images instead, at the same number of tokens (the baseline at matched compute). The run
is a run of its own: its workdir (by default inside the tokenizer's) records the tokenizer
and refuses a rerun after the tokenizer's parameters changed; it saves checkpoints (the EMA
of the weights is what is sampled), metrics.jsonl and TensorBoard, and a rerun resumes to
the run that was never interrupted. Sample it with ``experiments.sample --workdir
TOKENIZER --sampler latent_diffusion`` or ``load_run(TOKENIZER).sample(key, n,
sampler="latent_diffusion")``. ``--helpconfig`` lists the config fields."""

from absl import flags

from cvae.training import latent
from experiments import cli

flags.DEFINE_string("tokenizer", None, "The workdir of a trained tokenizer run.")
flags.DEFINE_string(
    "workdir", None, "The latent run's directory (default: TOKENIZER/latent_diffusion)."
)
cli.use_config_schema(latent.LATENT_FIELDS, "cvae/training/latent.py")
cli.define_config_dict(
    "config", latent.latent_config(), "The latent run's config; set fields as --config.NAME=V."
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    tokenizer = cli.require(FLAGS.tokenizer, "tokenizer", "the workdir of a trained tokenizer")
    result = latent.train_latent(FLAGS.config, tokenizer, FLAGS.workdir)
    where = FLAGS.workdir or f"{tokenizer}/{latent.DEFAULT_DIR}"
    if result["stopped_by"]:
        print(f"stopped by {result['stopped_by']} at step {result['step']}; rerun to resume")
        cli.exit_interrupted(result["stopped_by"])
    print(f"done: step {result['step']}, loss {result['loss']:.4f}; workdir {where}")


def entry() -> None:
    """The console script (``pyproject.toml``): the same as ``python -m`` this module."""
    cli.run(main)


if __name__ == "__main__":
    entry()
