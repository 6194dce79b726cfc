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


def test_a_samplers_name_says_its_kind_and_how_many_top_layers_it_fits():
    assert samplers.split_sampler("gmm") == ("gmm", 0)
    assert samplers.split_sampler("gmm@top") == ("gmm", 1)
    assert samplers.split_sampler("flow@top3") == ("flow", 3)
    for bad in ("gmm@top0", "gmm@topx", "gmm@top-2"):
        with pytest.raises(ValueError, match=r"write gmm@top for the top layer's codes or"):
            samplers.split_sampler(bad)
        assert not samplers.is_top_sampler(bad)
    assert samplers.is_top_sampler("diffusion@top12") and samplers.is_top_sampler("gmm@top")
    assert not samplers.is_top_sampler("prior@top2") and not samplers.is_top_sampler("gmm")
    # one top layer keeps the name runs saved before counts existed
    assert samplers.top_sampler_name("gmm", 1) == "gmm@top"
    assert samplers.top_sampler_name("two_stage", 4) == "two_stage@top4"
    for name in ("gmm@top", "two_stage@top4"):
        assert samplers.top_sampler_name(*samplers.split_sampler(name)) == name
