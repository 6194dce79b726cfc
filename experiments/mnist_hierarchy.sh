#!/usr/bin/env bash
# Where in a hierarchy can the posterior be collapsed: a two-layer model on MNIST
# (experiments/configs/mnist_hierarchy.py: z₁ 16, z₂ 8 on the seed nets) with each
# combination of {gaussian, collapsed σ₀ = 0.01, collapsed σ₀ = 0.1} at the bottom and at
# the top, beside one-layer references with the same 24 latents (the Gaussian VAE and the
# collapsed VAE at both σ₀), each a sweep over seeds (σ₀ is traced: a sweep's grid trains in
# one program). Then every member is evaluated (nll_is at K = 1000, per-layer KL and active
# units) and its prior and ex-post mixture samples scored with the classifier FID, and one
# report aggregates the combinations.
#
#   TFDS_DATA_DIR=../shared/tensorflow_datasets bash experiments/mnist_hierarchy.sh \
#       [EPOCHS] [SEEDS] [SAMPLERS] [INFERENCE]
#
# EPOCHS (default 20) is every run's budget, SEEDS (default 0:3) the sweeps' seeds, SAMPLERS
# (default prior,gmm; none: evaluate only) those scored (gmm@top: a hierarchy's mixture of
# top codes), INFERENCE (default bottom_up) the two-layer models' model.inference; with
# top_down the one-layer references are not trained again (they are bottom_up's). Rerunning
# resumes every step: a trained sweep, an evaluated run and a scored sampler are skipped.
# Results: runs/hierarchy/<combination>/ and runs/hierarchy/report.md (top_down:
# runs/hierarchy_top_down/).
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
EPOCHS=${1:-20}
SEEDS=${2:-0:3}
SAMPLERS=${3:-prior,gmm}  # add gmm@top to score the hierarchies' top-code mixtures too
INFERENCE=${4:-bottom_up}
OUT=runs/hierarchy
[ "$INFERENCE" = bottom_up ] || OUT=runs/hierarchy_$INFERENCE
SWEEP=(env "XLA_FLAGS=${XLA_FLAGS:---xla_force_host_platform_device_count=1}"
       $PY -m experiments.sweep --seeds "$SEEDS")
BUDGET=--config.train.num_epochs=$EPOCHS  # after --config: absl reads the overrides in order
TWO=(--config experiments/configs/mnist_hierarchy.py $BUDGET --config.model.inference=$INFERENCE)
ONE=($BUDGET --config.model.latent_dim=24)
SIGMA=(--grid model.sigma0=0.01,0.1)
UPPER_SIGMA=(--grid "model.upper_sigma0s=(0.01,),(0.1,)")

"${SWEEP[@]}" "${TWO[@]}" --workdir $OUT/gaussian_gaussian
"${SWEEP[@]}" "${TWO[@]}" --workdir $OUT/gaussian_collapsed \
    --config.model.upper_posteriors="('collapsed',)" "${UPPER_SIGMA[@]}"
"${SWEEP[@]}" "${TWO[@]}" --workdir $OUT/collapsed_gaussian \
    --config.model.posterior=collapsed --config.model.upper_posteriors="('gaussian',)" "${SIGMA[@]}"
"${SWEEP[@]}" "${TWO[@]}" --workdir $OUT/collapsed_collapsed \
    --config.model.posterior=collapsed "${SIGMA[@]}" "${UPPER_SIGMA[@]}"
if [ "$INFERENCE" = bottom_up ]; then
  "${SWEEP[@]}" --config experiments/configs/mnist_vae.py "${ONE[@]}" --workdir $OUT/one_layer_vae
  "${SWEEP[@]}" --config experiments/configs/mnist_cvae.py "${ONE[@]}" "${SIGMA[@]}" \
      --workdir $OUT/one_layer_cvae
fi

[ -e runs/mnist_classifier/classifier.json ] || \
    $PY -m experiments.train_classifier --workdir runs/mnist_classifier
for sweep in $OUT/*/; do
  for member in $($PY -c "import sys, json; print(' '.join(json.load(open(sys.argv[1]))['members']))" $sweep/sweep.json); do
    dir=$sweep$member
    [ -e $dir/eval.json ] || $PY -m experiments.evaluate --workdir $dir --k 1000
    missing=$(for s in ${SAMPLERS//,/ }; do
      case $sweep:$s in */one_layer_*:*@top | *:none) continue ;; esac  # one layer: no top code
      grep -q "\"fid_$s\"" $dir/sample_quality.json 2>/dev/null || printf '%s,' $s
    done)
    [ -z "$missing" ] || \
        $PY -m experiments.sample_quality --workdir $dir --classifier runs/mnist_classifier \
            --samplers ${missing%,}
  done
done
$PY -m experiments.report \
    --group_by model.posterior,model.sigma0,model.upper_posteriors,model.upper_sigma0s \
    --by_sampler $OUT/gaussian_gaussian $OUT/gaussian_collapsed $OUT/collapsed_gaussian \
    $OUT/collapsed_collapsed | tee $OUT/report.md
[ "$INFERENCE" != bottom_up ] || \
    $PY -m experiments.report --group_by model.posterior,model.sigma0 --by_sampler \
        $OUT/one_layer_vae $OUT/one_layer_cvae | tee -a $OUT/report.md
