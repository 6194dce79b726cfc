"""The samplers' registry: each kind is declared once, by its module, and whatever is done
to a sampler — save, load — is looked up by the kind it names, not by its class."""

import json

import jax
import numpy as np
import pytest

from cvae import samplers
from cvae.samplers import diffusion, flow, gmm, registry, two_stage

pytestmark = pytest.mark.unit


def test_each_module_registers_its_kind_under_its_samplers_name():
    modules = {"gmm": gmm, "flow": flow, "two_stage": two_stage, "diffusion": diffusion}
    assert registry.EX_POST == tuple(modules)
    for name, module in modules.items():
        assert registry.KINDS[name] is module.KIND
    classes = (gmm.LatentMixture, flow.LatentFlow, two_stage.TwoStageSampler)
    assert [c.kind for c in classes] + [diffusion.DiffusionSampler.kind] == list(modules)


def test_load_reads_the_kind_the_saved_files_name(tmp_path):
    codes = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    mixture = samplers.fit("gmm", codes, jax.random.key(0))
    samplers.save(mixture, tmp_path / "a", {"note": 1})
    meta = json.loads((tmp_path / "a" / registry.META).read_text())
    assert (meta["kind"], meta["note"], meta["fit_version"]) == ("gmm", 1, registry.FIT_VERSION)
    loaded, _ = samplers.load(tmp_path / "a")
    np.testing.assert_array_equal(
        loaded.sample(jax.random.key(1), 5), mixture.sample(jax.random.key(1), 5)
    )
    meta["kind"] = "nonesuch"
    (tmp_path / "a" / registry.META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="the ex-post samplers are"):
        samplers.load(tmp_path / "a")
    with pytest.raises(ValueError, match="got 'nonesuch'"):
        samplers.fit("nonesuch", codes, jax.random.key(0))
