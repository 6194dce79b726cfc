#!/usr/bin/env bash
# What collapsing the posterior does to a latent diffusion model: tokenizers of MNIST
# (experiments/configs/mnist_tokenizer.py: 7×7×4 code maps) collapsed at σ₀ ∈ {0 (the
# autoencoder), 0.01, 0.03, 0.1, 0.3, 1} and the Gaussian KL-VAE at KL weight 1e-6, each
# with a latent DiT trained on its codes (experiments.train_latent), and the same DiT on
# pixels at the same 49 tokens; every tokenizer evaluated (nll_is at K = 1000, code_std,
# sigma0_relative) and every DiT's samples scored with the classifier FID, precision,
# recall, density, coverage and memorisation.
#
#   TFDS_DATA_DIR=../shared/tensorflow_datasets bash experiments/latent_study.sh \
#       [EPOCHS] [STEPS] [SEEDS] [POINTS]
#   DATA=digits bash experiments/latent_study.sh 50 2000    # the offline digits, 2×2×4 maps
#
# EPOCHS (default 20) is each tokenizer's budget, STEPS (default 20000) each DiT's, SEEDS
# (default "0 1 2") the seeds, POINTS (default: all) the points to run, e.g. "cvae_0.1
# pixels"; SAMPLES (default 10,000; digits 1,000) the images each DiT's scores are computed
# on. Each point is a run of its own, trained with streamed batches (the fast path for conv
# nets on a CPU). Rerunning resumes every step: a trained run resumes or is skipped, an
# evaluated or scored one is skipped. Results: runs/latent_<data>/<point>_s<seed>/ (the
# tokenizer's eval.json; its latent_diffusion/sample_quality.json; the pixel DiT of a seed
# in cvae_0.1_s<seed>/pixel_diffusion/), and the report of every point:
#   python -m experiments.report runs/latent_<data>/*_s* --group_by model.posterior,model.sigma0
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
EPOCHS=${1:-20}
STEPS=${2:-20000}
SEEDS=${3:-0 1 2}
ALL="ae cvae_0.01 cvae_0.03 cvae_0.1 cvae_0.3 cvae_1 klvae_1e-6 pixels"
POINTS=${4:-$ALL}
DATA=${DATA:-mnist}
case $DATA in
  mnist) SAMPLES=${SAMPLES:-10000} ;;
  digits) SAMPLES=${SAMPLES:-1000} ;;
  *) echo "DATA is mnist or digits" >&2; exit 2 ;;
esac
OUT=runs/latent_$DATA
CLASSIFIER=runs/${DATA}_classifier
CONFIG=(--config experiments/configs/${DATA}_tokenizer.py --config.train.num_epochs=$EPOCHS)

[ -e $CLASSIFIER/classifier.json ] || \
    $PY -m experiments.train_classifier --workdir $CLASSIFIER --dataset $DATA

tokenizer_flags() {  # the tokenizer of a point
  case $1 in
    ae) echo --config.model.posterior=deterministic ;;
    cvae_*) echo --config.model.sigma0=${1#cvae_} ;;
    klvae_*) echo --config.model.posterior=gaussian --config.objective.beta=${1#klvae_} ;;
    pixels) echo --config.model.sigma0=0.1 ;;  # its DiT reads pixels: any tokenizer's data
  esac
}

for point in $POINTS; do
  for seed in $SEEDS; do
    dir=$OUT/${point}_s$seed
    # A point's tokenizer: the pixel DiT shares the σ₀ = 0.1 tokenizer of its seed.
    tokenizer=$dir
    [ "$point" = pixels ] && tokenizer=$OUT/cvae_0.1_s$seed
    [ -e "$tokenizer/eval.json" ] || {
      $PY -m experiments.train "${CONFIG[@]}" $(tokenizer_flags "$point") \
          --config.seed=$seed --workdir "$tokenizer"
      $PY -m experiments.evaluate --workdir "$tokenizer" --k 1000
    }
    latent=$dir/latent_diffusion
    space=latent
    [ "$point" = pixels ] && latent=$tokenizer/pixel_diffusion && space=pixels
    $PY -m experiments.train_latent --tokenizer "$tokenizer" --workdir "$latent" \
        --config.space=$space --config.num_steps=$STEPS --config.seed=$seed
    grep -q '"fid_latent_diffusion"' "$latent/sample_quality.json" 2>/dev/null || \
        $PY -m experiments.sample_quality --workdir "$latent" \
            --classifier $CLASSIFIER --n $SAMPLES
  done
done
