#!/usr/bin/env bash
# The family comparison of docs/results.md: WAE-MMD, RAE-GP, the VampPrior VAE and the
# collapsed VampPrior VAE trained as sweeps over 3 seeds (the σ₀ sweep's nets, data and 50
# epochs), then every member of those and of the σ₀ sweep's VAE, collapsed σ₀ ∈ {0.01, 0.1},
# AE and RAE (experiments/mnist_sweep.sh) evaluated (nll_is at K = 1000) and scored with the
# classifier FID, precision/recall, density/coverage and memorisation under every
# sampler: prior, gmm, flow, two_stage, diffusion.
#
#   TFDS_DATA_DIR=../shared/tensorflow_datasets bash experiments/mnist_family.sh
#
# Rerunning resumes every step (a scored run is skipped). Results: runs/family/.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
# One XLA:CPU device, as the σ₀ sweep (experiments/mnist_sweep.sh says why).
SWEEP=(env "XLA_FLAGS=${XLA_FLAGS:---xla_force_host_platform_device_count=1}" $PY -m experiments.sweep)
FAMILY=runs/family

for name in mnist_wae mnist_rae_gp mnist_vamp mnist_cvae_vamp; do
  "${SWEEP[@]}" --config experiments/configs/$name.py --workdir $FAMILY/$name --seeds 0:3
done

[ -e runs/mnist_classifier/classifier.json ] || \
    $PY -m experiments.train_classifier --workdir runs/mnist_classifier
members() {  # the member directories of sweep $1 whose path starts with $2
  $PY -c "import sys, json; print(' '.join(sys.argv[1] + '/' + m for m in json.load(open(sys.argv[1] + '/sweep.json'))['members'] if m.startswith(sys.argv[2])))" "$1" "$2"
}
for dir in $(members runs/sweep/vae "") $(members runs/sweep/cvae sigma0=0.01/) \
           $(members runs/sweep/cvae sigma0=0.1/) $(members runs/sweep/ae "") \
           $(members $FAMILY/mnist_wae "") $(members $FAMILY/mnist_rae_gp "") \
           $(members $FAMILY/mnist_vamp "") $(members $FAMILY/mnist_cvae_vamp ""); do
  [ -e $dir/eval.json ] || $PY -m experiments.evaluate --workdir $dir --k 1000
  grep -q fid_diffusion $dir/sample_quality.json 2>/dev/null || \
      $PY -m experiments.sample_quality --workdir $dir --classifier runs/mnist_classifier \
          --samplers prior,gmm,flow,two_stage,diffusion
done
for sweep in runs/sweep/vae runs/sweep/cvae runs/sweep/ae $FAMILY/mnist_wae $FAMILY/mnist_rae_gp \
             $FAMILY/mnist_vamp $FAMILY/mnist_cvae_vamp; do
  $PY -m experiments.report --group_by model.sigma0 $sweep
done
