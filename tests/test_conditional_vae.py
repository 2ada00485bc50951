"""Class-conditional VAEModel and HierarchicalVAEModel, their pipelines and families, on tiny presets (CPU).

Class indices run over 0..K with K the null class (hfgen.models.labels); every model here has K = 3 classes.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from hfgen import HierarchicalVAEPipeline, VAEPipeline
from hfgen.families import HVAEFamily, VAEFamily

from test_hub import BLOCK_HFGEN, _env, _run

NAMES = ["T-shirt", "Trouser", "Bag"]
K = len(NAMES)
FAMILIES = {"vae": VAEFamily, "hvae": HVAEFamily}
PIPELINES = {"vae": VAEPipeline, "hvae": HierarchicalVAEPipeline}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(n=6, seed=0):
    return torch.randint(0, 256, (n, 1, 16, 16), generator=_gen(seed), dtype=torch.uint8)


def _build(name, num_classes=K, perturb=True, seed=0):
    """The family's tiny preset at 16x16, class-conditional as the training loop builds it (``num_classes`` and
    ``class_names`` in the model config); ``perturb`` moves every parameter off its initial value (the FiLM
    projections and priors start at zero), so that the labels matter."""
    family = FAMILIES[name]()
    config = dict(family.presets["tiny"].model)
    if num_classes:
        config.update(num_classes=num_classes, class_names=NAMES[:num_classes])
    torch.manual_seed(seed)
    model = family.build_model(config, 1, 16)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return family, model.eval()


def _config(**overrides):
    """The objective settings the families read from the training config."""
    return SimpleNamespace(**{"kl_warmup_steps": 0, "kl_balancing": True, "free_nats_per_group": 0.0,
                              "spectral_reg_coeff": 0.0, **overrides})


def _pipeline(name, model):
    pipe = PIPELINES[name](vae=model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", ["vae", "hvae"])
def test_loss_and_bounds_with_labels_and_the_null_class(name):
    family, model = _build(name)
    x = _images(4)
    labels = torch.tensor([0, 1, 2, K])
    loss, logs = family.loss(model, x, 0, _gen(1), _config(), class_labels=labels)
    assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in logs.values())
    loss.backward()
    assert model.class_embedding.weight.grad.abs().sum() > 0
    conditional = family.bounds(model, x, 4, _gen(2), class_labels=torch.tensor([1, 1, 1, 1]))
    null = family.bounds(model, x, 4, _gen(2), class_labels=None)
    for bound in (conditional, null):
        assert torch.isfinite(bound.nats_per_image_elbo).all() and torch.isfinite(bound.nats_per_image_iw).all()
        assert (bound.nats_per_image_iw <= bound.nats_per_image_elbo + 1e-3).all()
    # a bound on -log p(x | y) is not the one on -log p(x); None is the null class, index K
    assert not torch.allclose(conditional.nats_per_image_elbo, null.nats_per_image_elbo)
    explicit_null = family.bounds(model, x, 4, _gen(2), class_labels=torch.full((4,), K))
    torch.testing.assert_close(explicit_null.nats_per_image_iw, null.nats_per_image_iw)
    # the ELBO's parts still add up with labels
    out = model(x, class_labels=labels, generator=_gen())
    torch.testing.assert_close(out.elbo, -(out.reconstruction_nll + out.kl))
    with pytest.raises(ValueError, match=r"class_labels must be in 0..3 \(3: the null class\), got values from 0 to 4"):
        model(x, class_labels=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"class_labels must have shape \(4,\)"):
        model(x, class_labels=torch.tensor([0, 1]))


def test_hvae_diagnostics_of_a_conditional_model_use_the_images_classes():
    """kl_per_group of a class-conditional model is KL(q(z|x,y) || p(z|y)) with the images' own classes, as in
    training, not the null class's."""
    family, model = _build("hvae")
    x, labels = _images(6), torch.tensor([0, 1, 2, 0, 1, 2])
    with_labels = family.diagnostics(model, x, labels)
    expected = model.posterior_statistics(x, generator=_gen(), class_labels=labels)
    null = model.posterior_statistics(x, generator=_gen())
    assert with_labels == expected
    assert with_labels["kl_per_group"] != null["kl_per_group"]
    assert family.diagnostics(model, x) == null


def test_vae_class_prior_starts_standard_normal_and_its_kl_is_the_closed_form():
    _, fresh = _build("vae", perturb=False)
    prior = fresh.prior(torch.arange(K + 1), batch_size=K + 1)
    assert prior.mean.shape == (K + 1, *fresh.latent_shape)
    assert torch.equal(prior.mean, torch.zeros_like(prior.mean)) and torch.equal(prior.std, torch.ones_like(prior.std))

    _, model = _build("vae")
    with torch.no_grad():  # a non-trivial prior for class 1
        model.prior_mean[1].normal_(0, 0.7)
        model.prior_log_scale[1].uniform_(-0.5, 0.5)
    x = _images(3)
    labels = torch.tensor([1, 1, 1])
    out = model(x, class_labels=labels, generator=_gen())
    q = model.encode(x.float() / 127.5 - 1, labels).latent_dist
    p = Normal(model.prior_mean[1], model.prior_log_scale[1].exp())
    expected = kl_divergence(Normal(q.mean, q.std), p).flatten(1).sum(1)
    torch.testing.assert_close(out.kl, expected, rtol=1e-5, atol=1e-4)
    # the bounds' log weights use log p(z | y): with one sample their mean is forward()'s analytic-KL ELBO
    draws = 200
    xs, ys = x.repeat(draws, 1, 1, 1), labels.repeat(draws)
    k1 = model.log_likelihood_bounds(xs, ys, importance_samples=1, generator=_gen(1)).nats_per_image_elbo
    with torch.no_grad():
        fwd = -model(xs, class_labels=ys, generator=_gen(2)).elbo
    assert (k1.mean() - fwd.mean()).abs() < 4 * torch.sqrt(k1.var() / len(xs) + fwd.var() / len(xs)) + 1e-3
    # and the class's prior matters: against N(0, I) the KL is another number
    with torch.no_grad():
        model.prior_mean[1].zero_()
        model.prior_log_scale[1].zero_()
    assert not torch.allclose(model(x, class_labels=labels, generator=_gen()).kl, out.kl)


def test_hvae_every_class_prior_starts_standard_normal_and_the_top_kl_is_the_closed_form():
    _, fresh = _build("hvae", perturb=False)
    mean, log_scale = fresh.top_prior(torch.arange(K + 1))
    assert mean.shape == (K + 1, *fresh.group_shapes()[0])
    assert torch.equal(mean, torch.zeros_like(mean)) and torch.equal(log_scale, torch.zeros_like(log_scale))

    _, model = _build("hvae")
    mean, log_scale = model.top_prior(torch.tensor([0, 1]))
    assert not torch.allclose(mean[0], mean[1])  # the top prior depends on the class
    x = _images(3)
    labels = torch.tensor([2, 0, K])
    out = model(x, class_labels=labels, generator=_gen())
    posterior = model.encode(x, labels, generator=_gen(1))
    prior_mean, prior_log_scale = model.top_prior(labels)
    expected = kl_divergence(Normal(posterior.latent_means[0], posterior.latent_log_scales[0].exp()),
                             Normal(prior_mean, prior_log_scale.exp())).flatten(1).sum(1)
    torch.testing.assert_close(out.kl_per_group[:, 0], expected, rtol=1e-5, atol=1e-4)
    assert out.kl_per_group.shape == (3, model.num_groups)


@pytest.mark.parametrize("name", ["vae", "hvae"])
def test_a_few_steps_with_label_dropout_then_samples_with_and_without_labels(name):
    family, model = _build(name, perturb=False)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = _gen(3)
    x = _images(16, seed=4)
    labels = torch.arange(16) % K
    dropped = torch.rand(16, generator=generator) < 0.3
    labels = torch.where(dropped, K, labels)  # label dropout as the training loop does it
    embedding_before = model.class_embedding.weight.detach().clone()
    for step in range(3):
        loss, _ = family.loss(model, x, step, generator, _config(), class_labels=labels)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(model.class_embedding.weight, embedding_before)
    pipe = family.make_pipeline(model.eval())
    pipe.set_progress_bar_config(disable=True)
    options = {"temperature": 0.8}
    by_class = family.sample_images(pipe, 3, _gen(5), class_labels=[0, "Trouser", 2], **options)
    unconditional = family.sample_images(pipe, 3, _gen(5), **options)
    assert len(by_class) == len(unconditional) == 3 and by_class[0].size == (16, 16)
    assert family.num_classes(model) == K and family.class_names(pipe) == NAMES


@pytest.mark.parametrize("name", ["vae", "hvae"])
def test_class_names_and_indices_give_the_same_images(name):
    _, model = _build(name)
    pipe = _pipeline(name, model)
    by_name = pipe(class_labels=["Bag", "T-shirt", "bag"], generator=_gen(7), output_type="pt")
    by_index = pipe(class_labels=[2, 0, 2], generator=_gen(7), output_type="pt")
    assert by_name.images.shape == (3, 1, 16, 16)
    assert torch.equal(by_name.images, by_index.images)
    one_class = pipe(batch_size=2, class_labels="Trouser", generator=_gen(7), output_type="pt").images
    assert torch.equal(one_class, pipe(batch_size=2, class_labels=torch.tensor(1), generator=_gen(7),
                                       output_type="pt").images)
    # the class changes the images; no label is the null class
    other = pipe(batch_size=2, class_labels="Bag", generator=_gen(7), output_type="pt").images
    assert not torch.equal(one_class, other)
    assert pipe.get_label_ids(["Bag", "Trouser"]) == [2, 1] and pipe.get_label_ids("T-shirt") == [0]
    # generator lists: image i is the image generator i draws alone, with its class
    listed = pipe(class_labels=["Bag", "Trouser"], generator=[_gen(1), _gen(2)], output_type="pt").images
    alone = pipe(class_labels="Trouser", generator=_gen(2), output_type="pt").images
    torch.testing.assert_close(listed[1:], alone)
    # latents out and in decode the same images with the same class
    out = pipe(class_labels=["Bag", "Trouser"], generator=_gen(3), output_type="pt")
    again = pipe(class_labels=["Bag", "Trouser"], latents=out.latents, output_type="pt")
    torch.testing.assert_close(again.images, out.images)
    # reconstruction and interpolation take a class too
    x = _images(2)
    assert pipe.reconstruct(x, class_labels="Bag", output_type="pt").shape == (2, 1, 16, 16)
    assert pipe.interpolate(x[:1], x[1:], num_steps=3, class_labels="Bag", output_type="pt").images.shape[0] == 3
    if name == "hvae":
        kept = pipe(images=x, keep_groups=1, batch_size=4, class_labels=["Bag", "Trouser"], temperature=0,
                    output_type="pt").images
        assert kept.shape == (4, 1, 16, 16)


@pytest.mark.parametrize("name", ["vae", "hvae"])
def test_wrong_labels_are_refused_naming_the_valid_ones(name):
    pipe = _pipeline(name, _build(name)[1])
    with pytest.raises(ValueError, match=r"class 'Sneaker' is not one of this model's classes; expected one of "
                                         r"'T-shirt', 'Trouser', 'Bag'"):
        pipe(class_labels="Sneaker")
    with pytest.raises(ValueError, match=r"class index 3 is out of range; this model has 3 classes"):
        pipe(class_labels=[0, 3])
    with pytest.raises(ValueError, match="'Sneaker' is not one of"):
        pipe.get_label_ids(["Bag", "Sneaker"])
    with pytest.raises(ValueError, match="class_names holds 2 names but num_classes is 3"):
        FAMILIES[name]().build_model({**FAMILIES[name]().presets["tiny"].model, "num_classes": 3,
                                      "class_names": ["a", "b"]}, 1, 16)


@pytest.mark.parametrize("name", ["vae", "hvae"])
def test_an_unconditional_model_refuses_class_labels_and_has_no_class_parameters(name):
    family, model = _build(name, num_classes=0)
    assert model.config.num_classes == 0 and model.config.class_names is None and model.class_embedding is None
    assert not any("class_embedding" in key or "film" in key or "prior_" in key for key in model.state_dict())
    pipe = _pipeline(name, model)
    with pytest.raises(ValueError, match="trained without class labels"):
        pipe(class_labels="Bag")
    with pytest.raises(ValueError, match=r"class_labels were given, but this model was trained without class labels"):
        model(_images(2), class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="trained without class labels"):
        family.bounds(model, _images(2), 2, _gen(), class_labels=torch.tensor([0, 1]))
    assert family.num_classes(model) == 0 and family.class_names(pipe) is None


@pytest.mark.parametrize("name", ["vae", "hvae"])
def test_save_and_load_keep_the_classes_and_the_samples(name, tmp_path):
    _, model = _build(name)
    pipe = _pipeline(name, model)
    pipe.save_pretrained(tmp_path / "pipe")
    config = json.loads((tmp_path / "pipe" / "vae" / "config.json").read_text())
    assert config["num_classes"] == K and config["class_names"] == NAMES
    loaded = PIPELINES[name].from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.vae.config.num_classes == K and list(loaded.vae.config.class_names) == NAMES
    a = pipe(class_labels=["Bag", "Trouser"], generator=_gen(), output_type="pt").images
    b = loaded(class_labels=["Bag", "Trouser"], generator=_gen(), output_type="pt").images
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    x = _images(3)
    labels = torch.tensor([0, 2, K])
    torch.testing.assert_close(model(x, class_labels=labels, generator=_gen()).elbo,
                               loaded.vae(x, class_labels=labels, generator=_gen()).elbo)


REMOTE_CODE = BLOCK_HFGEN + """
import json, sys
import numpy as np, torch
from diffusers import DiffusionPipeline

results = {}
for name, folder, out in json.loads(sys.argv[1]):
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=["Bag", "T-shirt"], generator=torch.Generator().manual_seed(0), output_type="np").images
    np.save(out, images)
    results[name] = [type(pipe.vae).__module__, pipe.vae.config.num_classes, list(pipe.vae.config.class_names),
                     pipe.get_label_ids("Trouser")]
print(json.dumps(results))
"""


def test_plain_diffusers_loads_a_conditional_folder_and_samples_a_class_by_name(tmp_path):
    jobs, expected = [], {}
    for name in ("vae", "hvae"):
        pipe = _pipeline(name, _build(name)[1])
        pipe.save_pretrained(tmp_path / name)
        expected[name] = pipe(class_labels=["Bag", "T-shirt"], generator=_gen(), output_type="np").images
        jobs.append((name, str(tmp_path / name), str(tmp_path / f"{name}.npy")))
    results = _run(REMOTE_CODE, jobs, _env(tmp_path, HF_HUB_OFFLINE="1"), tmp_path)
    for name in ("vae", "hvae"):
        module, num_classes, names, trouser = results[name]
        assert module == f"diffusers_modules.local.modeling_{name}"  # the folder's own code, not hfgen's
        assert num_classes == K and names == NAMES and trouser == [1]
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), expected[name], atol=1e-5)


# ---------------------------------------------------------------------------------------------- guidance
def _prior_means_given_the_groups_above(model, latents, labels):
    """Group i's prior mean given the groups above it fixed to ``latents[:i]``, for class indices ``labels`` (None:
    the null class): the z a temperature-0 draw takes for group i."""
    batch = latents[0].shape[0]
    means = []
    for i in range(model.num_groups):
        _, drawn = model.generate_parameters(batch, temperature=0.0, latents=latents[:i] or None,
                                             return_latents=True, class_labels=labels)
        means.append(drawn[i])
    return means


@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_hvae_guidance_extrapolates_every_groups_prior_mean_given_the_same_groups_above(scale):
    """generate_parameters(guidance_scale=s): each group's prior mean is mu_null + s (mu_y - mu_null), both given the
    same (guided) groups above; the likelihood parameters are the class's given those groups."""
    _, model = _build("hvae")
    labels = torch.tensor([0, 2, 1])
    params, guided = model.generate_parameters(3, temperature=0.0, return_latents=True, class_labels=labels,
                                               guidance_scale=scale)
    for i in range(model.num_groups):
        given_y = _prior_means_given_the_groups_above(model, guided[:i] + [guided[i]], labels)[i]
        given_null = _prior_means_given_the_groups_above(model, guided[:i] + [guided[i]], None)[i]
        torch.testing.assert_close(guided[i], given_null + scale * (given_y - given_null), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(params, model.generate_parameters(3, temperature=0.0, latents=guided,
                                                                 class_labels=labels))
    # s = 1 is the class's own prior, draws included; with the null class there is nothing to guide
    plain = model.generate_parameters(3, generator=_gen(4), class_labels=labels)
    torch.testing.assert_close(model.generate_parameters(3, generator=_gen(4), class_labels=labels,
                                                         guidance_scale=1.0), plain)
    torch.testing.assert_close(model.generate_parameters(3, generator=_gen(4), guidance_scale=3.0),
                               model.generate_parameters(3, generator=_gen(4)))


def test_hvae_pipeline_guidance_reaches_the_top_group_and_is_refused_where_it_cannot_apply():
    family, model = _build("hvae")
    pipe = _pipeline("hvae", model)
    scale = 3.0
    out = pipe(class_labels=["Bag", "Trouser"], guidance_scale=scale, temperature=0.0, output_type="pt")
    labels = torch.tensor([2, 1])
    mean_y, mean_null = model.top_prior(labels)[0], model.top_prior(None)[0]
    torch.testing.assert_close(out.latents[0], mean_null + scale * (mean_y - mean_null))
    assert not torch.allclose(out.images, pipe(class_labels=["Bag", "Trouser"], temperature=0.0,
                                               output_type="pt").images)
    # the family's sampler and the command line's option
    images = family.sample_images(pipe, 2, _gen(1), class_labels=["Bag", "Bag"], guidance_scale=scale)
    assert len(images) == 2 and "guidance_scale" in family.sampling_options
    with pytest.raises(ValueError, match=r"guidance_scale must be a finite number >= 0, got -1"):
        pipe(class_labels="Bag", guidance_scale=-1)
    unconditional = _pipeline("hvae", _build("hvae", num_classes=0)[1])
    with pytest.raises(ValueError, match=r"guidance_scale=2.0 guides a class-conditional model, but this one was "
                                         r"trained without class labels"):
        unconditional(batch_size=2, guidance_scale=2.0)
