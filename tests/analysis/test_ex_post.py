"""Ex-post densities: the flow, the two-stage VAE and the diffusion model fit a toy mixture
about as well as the mixture model does, every kind reloads bit-identically, and a run fits each
sampler once and reuses it."""

import logging

import jax
import numpy as np
import pytest

import cvae
from cvae import training
from cvae.samplers import registry as ex_post
from tests.helpers import make_test_config

pytestmark = pytest.mark.slow

CENTRES = np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]], np.float32)


def _three_blobs(n, seed):
    rng = np.random.default_rng(seed)
    return (CENTRES[rng.integers(0, 3, n)] + 0.5 * rng.standard_normal((n, 2))).astype(np.float32)


# Shorter fits than the defaults (flow 200 epochs, diffusion 2,500 updates on 3,000 codes)
# that still reach the bounds below on these three blobs: 30 s of fitting instead of 75.
BUDGET = {"flow_max_epochs": 50, "two_stage_epochs": 100, "diffusion_updates": 750}


@pytest.fixture(scope="module")
def fitted():
    train_codes = _three_blobs(3000, 0)
    return {
        kind: ex_post.fit(kind, train_codes, jax.random.key(1), budget=BUDGET)
        for kind in ex_post.EX_POST
    }


def test_flow_and_two_stage_fit_held_out_codes_nearly_as_well_as_the_mixture(fitted):
    held_out = _three_blobs(1000, 1)
    score = {kind: float(np.mean(fitted[kind].log_prob(held_out))) for kind in fitted}
    # One Gaussian fitted to the same codes: what ignoring the three modes costs.
    mean, cov = held_out.mean(0), np.cov(_three_blobs(3000, 0).T)
    diff = held_out - mean
    one_gaussian = float(
        np.mean(
            -0.5 * np.sum(diff @ np.linalg.inv(cov) * diff, 1)
            - 0.5 * np.log(np.linalg.det(2 * np.pi * cov))
        )
    )
    assert all(np.isfinite(v) for v in score.values())
    assert score["flow"] >= score["gmm"] - 0.3  # measured: 0.16 below (0.13 at 200 epochs)
    assert score["two_stage"] >= score["gmm"] - 0.6  # measured: 0.40 below (an IS bound)
    # an exact log-density (the ODE, 32 Heun steps); measured: 0.02 below the mixture (0.004
    # above with the default 2,500 updates)
    assert score["diffusion"] >= score["gmm"] - 0.3
    assert min(score.values()) > one_gaussian + 1.0


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_two_stage_samples_spread_like_the_codes_at_any_scale(scale):
    """Codes far below the second stage's initial γ = 1 once collapsed it (every sample the
    mean code); standardised, it spreads its samples like the codes whatever their scale."""
    codes = scale * _three_blobs(3000, 0)
    sampler = ex_post.fit("two_stage", codes, jax.random.key(1))
    samples = np.asarray(sampler.sample(jax.random.key(2), 3000))
    np.testing.assert_allclose(samples.std(0) / codes.std(0), 1.0, atol=0.3)
    np.testing.assert_allclose(samples.mean(0), codes.mean(0), atol=0.2 * scale)


@pytest.mark.parametrize("kind", ex_post.EX_POST)
def test_a_saved_sampler_reloads_bit_identically(fitted, kind, tmp_path):
    ex_post.save(fitted[kind], tmp_path / kind, {"note": "test"})
    loaded, meta = ex_post.load(tmp_path / kind)
    assert meta["kind"] == kind and meta["note"] == "test"
    key = jax.random.key(7)
    np.testing.assert_array_equal(
        np.asarray(loaded.sample(key, 100)), np.asarray(fitted[kind].sample(key, 100))
    )
    codes = _three_blobs(50, 2)
    np.testing.assert_array_equal(
        np.asarray(loaded.log_prob(codes)), np.asarray(fitted[kind].log_prob(codes))
    )
    assert ex_post.load(tmp_path / "absent") is None


def test_a_run_fits_each_sampler_once_and_reuses_it(tmp_path, monkeypatch, caplog):
    training.train_and_evaluate(make_test_config(), tmp_path)
    with caplog.at_level(logging.INFO, logger="cvae"):
        first = {
            kind: np.asarray(cvae.load_run(tmp_path).sample(jax.random.key(0), 16, kind))
            for kind in ("flow", "two_stage", "diffusion", "gmm")
        }
    # every fit says so first: none is a silent minute (the mixture's EM takes one on MNIST)
    fitting = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fitting")]
    assert [m.split()[2] for m in fitting] == ["flow", "two_stage", "diffusion", "gmm"]
    caplog.clear()
    assert (tmp_path / "samplers" / "flow" / "sampler.json").is_file()
    monkeypatch.setattr(ex_post, "fit", lambda *a, **k: pytest.fail("refitted a saved sampler"))
    again = cvae.load_run(tmp_path)
    for kind, images in first.items():
        np.testing.assert_array_equal(np.asarray(again.sample(jax.random.key(0), 16, kind)), images)
    # Damaged files (a garbled header, a truncated parameter file) are refitted with one
    # warning each: the fit is a function of its key, so the samples are the same.
    monkeypatch.undo()
    (tmp_path / "samplers" / "flow" / "sampler.json").write_bytes(b'{"kind": "fl\xf6')
    params = tmp_path / "samplers" / "two_stage" / "params.msgpack"
    params.write_bytes(params.read_bytes()[:20])
    (tmp_path / "samplers" / "diffusion" / "standardise.npz").write_bytes(b"not a zip")
    with caplog.at_level(logging.WARNING, logger="cvae"):
        refitted = cvae.load_run(tmp_path)
        for kind, images in first.items():
            drawn = refitted.sample(jax.random.key(0), 16, kind)
            np.testing.assert_array_equal(np.asarray(drawn), images)
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 3 and all("\n" not in w for w in warnings), warnings
    assert ex_post.load(tmp_path / "samplers" / "flow") is not None  # saved again, whole
    # Other fit lengths are another sampler: that kind alone is fitted again, with them.
    fitted_before, fits = {kind: refitted.ex_post(kind) for kind in first}, []

    def fit(kind, *args, **kwargs):
        fits.append((kind, ex_post.fit_budget(kwargs["budget"], kind)))
        return fitted_before[kind]

    monkeypatch.setattr(ex_post, "fit", fit)
    refitted.config.ex_post.two_stage_epochs += 1
    for kind in first:
        refitted.ex_post(kind)
    assert fits == [("two_stage", {"two_stage_epochs": 11})]
