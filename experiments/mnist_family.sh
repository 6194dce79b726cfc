#!/usr/bin/env bash
# The family comparison of docs/results.md, every sampler and every sample metric: the
# Gaussian VAE, the collapsed VAE at σ₀ ∈ {0.01, 0.1}, the AE and the RAE-L2 (one program:
# the code penalty is traced), WAE-MMD, RAE-GP, the VampPrior VAE and the collapsed VampPrior
# VAE, each trained as a sweep over 3 seeds (the seed nets, MNIST data and the configs'
# 50 epochs), then every member evaluated (nll_is at K = 1000) and scored with the classifier
# FID, precision/recall, density/coverage and memorisation under every sampler that applies:
# prior, gmm, flow, two_stage, diffusion.
#
#   TFDS_DATA_DIR=../shared/tensorflow_datasets bash experiments/mnist_family.sh [MODELS...]
#
# MODELS (default: all) picks sweeps by name: vae cvae ae wae rae_gp vamp cvae_vamp.
# Rerunning resumes every step: a trained sweep, an evaluated run and a sampler already
# scored are skipped.
# Results: runs/family/<model>/ and one report per sweep.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(vae cvae ae wae rae_gp vamp cvae_vamp)
# One XLA:CPU device, as the σ₀ sweep (experiments/mnist_sweep.sh says why).
SWEEP=(env "XLA_FLAGS=${XLA_FLAGS:---xla_force_host_platform_device_count=1}" $PY -m experiments.sweep)
FAMILY=runs/family
SEEDS=(--seeds 0:3)

for model in "${MODELS[@]}"; do
  case $model in
    vae)       args=(--config experiments/configs/mnist_vae.py) ;;
    cvae)      args=(--config experiments/configs/mnist_cvae.py --grid model.sigma0=0.01,0.1) ;;
    ae)        args=(--config experiments/configs/mnist_ae.py --grid model.code_l2=0,1) ;;
    wae)       args=(--config experiments/configs/mnist_wae.py) ;;
    rae_gp)    args=(--config experiments/configs/mnist_rae_gp.py) ;;
    vamp)      args=(--config experiments/configs/mnist_vamp.py) ;;
    cvae_vamp) args=(--config experiments/configs/mnist_cvae_vamp.py) ;;
    *) echo "mnist_family.sh: unknown model '$model' (vae cvae ae wae rae_gp vamp cvae_vamp)" >&2; exit 2 ;;
  esac
  "${SWEEP[@]}" "${args[@]}" --workdir $FAMILY/$model "${SEEDS[@]}"
done

[ -e runs/mnist_classifier/classifier.json ] || \
    $PY -m experiments.train_classifier --workdir runs/mnist_classifier
for model in "${MODELS[@]}"; do
  sweep=$FAMILY/$model
  for member in $($PY -c "import sys, json; print(' '.join(json.load(open(sys.argv[1]))['members']))" $sweep/sweep.json); do
    dir=$sweep/$member
    # the samplers this run has no score for yet (all five on a fresh run)
    missing=$(for s in prior gmm flow two_stage diffusion; do
      grep -q "\"fid_$s\"" $dir/sample_quality.json 2>/dev/null || printf '%s,' $s
    done)
    [ -z "$missing" ] || \
        $PY -m experiments.sample_quality --workdir $dir --classifier runs/mnist_classifier \
            --samplers ${missing%,}
    [ -e $dir/eval.json ] || $PY -m experiments.evaluate --workdir $dir --k 1000
  done
  case $model in
    cvae) group=(--group_by model.sigma0) ;;
    ae)   group=(--group_by model.code_l2) ;;
    *)    group=(--group_by model.posterior) ;;
  esac
  $PY -m experiments.report "${group[@]}" $sweep
done
