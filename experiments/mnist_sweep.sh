#!/usr/bin/env bash
# The MNIST sweep of docs/results.md: the collapsed VAE's σ₀ from 0.001 to 1, the Gaussian VAE, the
# deterministic AE and the RAE, 5 seeds each, trained as three sweeps (three compiled
# programs: σ₀ is a traced hyperparameter, and so is RAE's code penalty), then every member
# evaluated (nll_is at K = 1000) and its prior and mixture samples scored with the
# classifier FID, and the tables and σ₀ figure written.
#
#   TFDS_DATA_DIR=../shared/tensorflow_datasets bash experiments/mnist_sweep.sh [EPOCHS=50]
#
# Rerunning resumes every step. Results: runs/sweep/{cvae,vae,ae}/ and docs/figures/.
set -euo pipefail
EPOCHS=${1:-50}
PY=${PYTHON:-.venv/bin/python}
# The published numbers were trained on one XLA:CPU device; experiments.sweep would split a
# CPU host into a device per core (faster, the same numbers up to float rounding).
SWEEP=(env "XLA_FLAGS=${XLA_FLAGS:---xla_force_host_platform_device_count=1}" $PY -m experiments.sweep)
OUT=runs/sweep
COMMON=(--seeds 0:5 --config.train.num_epochs="$EPOCHS")

"${SWEEP[@]}" --config experiments/configs/mnist_cvae.py --workdir $OUT/cvae \
    --grid model.sigma0=0.001,0.01,0.03,0.1,0.3,1.0 "${COMMON[@]}"
"${SWEEP[@]}" --config experiments/configs/mnist_vae.py --workdir $OUT/vae \
    "${COMMON[@]}"
# AE (code_l2 = 0) and RAE (code_l2 = 1, as experiments/configs/mnist_rae.py): one program.
"${SWEEP[@]}" --config experiments/configs/mnist_ae.py --workdir $OUT/ae \
    --grid model.code_l2=0,1 "${COMMON[@]}"

[ -e runs/mnist_classifier/classifier.json ] || \
    $PY -m experiments.train_classifier --workdir runs/mnist_classifier
for sweep in cvae vae ae; do
  for member in $($PY -c "import sys, json; print(' '.join(json.load(open(sys.argv[1]))['members']))" $OUT/$sweep/sweep.json); do
    dir=$OUT/$sweep/$member
    [ -e $dir/eval.json ] || $PY -m experiments.evaluate --workdir $dir --k 1000
    [ -e $dir/sample_quality.json ] || \
        $PY -m experiments.sample_quality --workdir $dir --classifier runs/mnist_classifier
  done
done
$PY -m experiments.report --group_by model.sigma0 $OUT/cvae
$PY -m experiments.report $OUT/vae $OUT/ae
$PY -m experiments.report --group_by model.sigma0 --plot docs/figures/sigma0_sweep.png \
    --reference $OUT/vae --reference $OUT/ae $OUT/cvae
