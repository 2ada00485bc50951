"""hfgen's VAE and hierarchical VAE pipelines used as a diffusers user uses any pipeline (issue 13), tiny CPU
configs: offload hooks, from_pretrained's keywords, generator lists, latents in and out, interpolation."""

import pytest
import torch

from hfgen import HierarchicalVAEModel, HierarchicalVAEPipeline, VAEModel, VAEPipeline

VAE_TINY = dict(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4)
HVAE_TINY = dict(sample_size=16, block_out_channels=[8, 8, 8], groups_per_scale=[1, 1, 2], latent_channels=2,
                 decoder_blocks_per_group=1, output_blocks=0)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(n=2, seed=0):
    return torch.randint(0, 256, (n, 1, 16, 16), generator=_gen(seed), dtype=torch.uint8)


def _vae_pipe(**overrides):
    torch.manual_seed(0)
    pipe = VAEPipeline(vae=VAEModel(**{**VAE_TINY, **overrides}).eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _hvae_pipe(**overrides):
    """Zero-initialised layers perturbed, so that priors and posteriors depend on the upper groups and the image."""
    torch.manual_seed(0)
    model = HierarchicalVAEModel(**{**HVAE_TINY, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pipe = HierarchicalVAEPipeline(vae=model.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


PIPES = {"vae": _vae_pipe, "hvae": _hvae_pipe}


# ---------------------------------------------------------------------------------------------- 1. offload
@pytest.fixture
def hook_calls(monkeypatch):
    """The classes of the modules whose accelerate hook ran its pre-forward, in order."""
    import accelerate.hooks

    calls = []
    for cls in (accelerate.hooks.CpuOffload, accelerate.hooks.AlignDevicesHook):
        original = cls.pre_forward

        def pre_forward(self, module, *args, _original=original, **kwargs):
            calls.append(type(module).__name__)
            return _original(self, module, *args, **kwargs)

        monkeypatch.setattr(cls, "pre_forward", pre_forward)
    return calls


def _enable_offload(pipe, mode):
    if mode == "model":
        pipe.enable_model_cpu_offload(device="cpu")
        return
    pipe.enable_sequential_cpu_offload(device="cpu")
    # diffusers names the execution device "cpu:0" (f"{type}:{index}"); accelerate, moving a weight from "cpu" to
    # "cpu:0", copies it into a plain tensor and then fails to offload it again. On a GPU the device is "cuda:0" and
    # no such copy happens; on this CPU-only machine the hooks get "cpu".
    for module in pipe.vae.modules():
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", [hook]):
            if getattr(h, "execution_device", None) is not None:
                h.execution_device = torch.device("cpu")


@pytest.mark.parametrize("family", ["vae", "hvae"])
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_hooks_fire_for_every_model_call(family, mode, hook_calls):
    pipe = PIPES[family]()
    model_class = type(pipe.vae).__name__
    images = pipe(batch_size=3, generator=_gen(), decode_batch_size=2, output_type="pt").images
    recon = pipe.reconstruct(_images(), output_type="pt")
    _enable_offload(pipe, mode)
    assert pipe._execution_device.type == "cpu"
    hook_calls.clear()
    offloaded = pipe(batch_size=3, generator=_gen(), decode_batch_size=2, output_type="pt").images
    top_level = [name for name in hook_calls if name == model_class]
    # the model calls a pipeline makes: VAE: sample_latents, decode per chunk; HVAE: top_prior, then
    # generate_parameters and decode_image per chunk. Under sequential offload the model's own hook runs for each
    # (twice for the HVAE, whose top-level parameter gets a second hook) and every layer's hook runs in forward.
    calls = {"vae": 1 + 2, "hvae": 1 + 2 * 2}[family]
    repeats = 2 if (mode, family) == ("sequential", "hvae") else 1
    assert len(top_level) == calls * repeats
    if mode == "sequential":
        assert len(hook_calls) > len(top_level)  # the layers' own hooks
    assert torch.equal(offloaded, images)
    hook_calls.clear()
    assert torch.equal(pipe.reconstruct(_images(), output_type="pt"), recon)
    assert len([name for name in hook_calls if name == model_class]) == 2 * repeats  # encode + decode


# ---------------------------------------------------------------------------------------------- 2. from_pretrained
@pytest.mark.parametrize("family", ["vae", "hvae"])
def test_from_pretrained_takes_dtype_variant_device_map_like_diffusers(family, tmp_path, caplog):
    pipe = PIPES[family]()
    pipe_class = type(pipe)
    pipe.save_pretrained(tmp_path / "fp32")
    weights = {k: v.clone() for k, v in pipe.vae.state_dict().items()}

    for keyword in ("dtype", "torch_dtype"):  # diffusers 0.42 deprecates torch_dtype for dtype; both load
        loaded = pipe_class.from_pretrained(tmp_path / "fp32", **{keyword: torch.bfloat16})
        assert loaded.vae.dtype == torch.bfloat16
        assert all(torch.equal(v.to(torch.bfloat16), loaded.vae.state_dict()[k]) for k, v in weights.items())
    loaded.set_progress_bar_config(disable=True)
    images = loaded(batch_size=2, generator=_gen(), output_type="pt").images
    assert images.dtype == torch.float32 and images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()
    assert pipe_class.from_pretrained(tmp_path / "fp32", dtype={"vae": torch.float16}).vae.dtype == torch.float16
    with pytest.raises(ValueError, match="both `dtype` and `torch_dtype`"):
        pipe_class.from_pretrained(tmp_path / "fp32", dtype=torch.float16, torch_dtype=torch.float16)

    # save_pretrained(variant="fp16") writes diffusion_pytorch_model.fp16.safetensors; variant="fp16" reads it back
    pipe.to(torch.float16).save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "vae" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    half = pipe_class.from_pretrained(tmp_path / "fp16", variant="fp16", dtype=torch.float16)
    assert half.vae.dtype == torch.float16
    assert all(torch.equal(v.half(), half.vae.state_dict()[k]) for k, v in weights.items())
    with pytest.raises(ValueError, match=r"`variant=bf16`, but no such modeling files are available\. No component "
                                         r"folder of .*fp16 has a \*\.bf16\.\* weights file"):  # diffusers' words
        pipe_class.from_pretrained(tmp_path / "fp16", variant="bf16")

    # low_cpu_mem_usage either way, device_map as diffusers takes it, a component passed in
    for low in (True, False):
        loaded = pipe_class.from_pretrained(tmp_path / "fp32", low_cpu_mem_usage=low)
        assert all(torch.equal(v, loaded.vae.state_dict()[k]) for k, v in weights.items())
    mapped = pipe_class.from_pretrained(tmp_path / "fp32", device_map="cpu")
    assert mapped.hf_device_map == "cpu" and mapped.vae.device.type == "cpu"
    balanced = pipe_class.from_pretrained(tmp_path / "fp32", device_map="balanced")
    assert balanced.hf_device_map == {"vae": "cpu"}
    with pytest.raises(NotImplementedError, match="auto not supported. Supported strategies are: balanced"):
        pipe_class.from_pretrained(tmp_path / "fp32", device_map="auto")
    with pytest.raises(ValueError, match="low_cpu_mem_usage` to False"):
        pipe_class.from_pretrained(tmp_path / "fp32", device_map="cpu", low_cpu_mem_usage=False)
    assert pipe_class.from_pretrained(tmp_path / "fp32", vae=pipe.vae).vae is pipe.vae

    # unknown keywords: diffusers' warning, not a TypeError
    import diffusers.utils.logging

    diffusers.utils.logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            loaded = pipe_class.from_pretrained(tmp_path / "fp32", not_a_keyword=1, trust_remote_code=True)
    finally:
        diffusers.utils.logging.disable_propagation()
    assert "Keyword arguments {'not_a_keyword': 1} are not expected" in caplog.text
    assert all(torch.equal(v, loaded.vae.state_dict()[k]) for k, v in weights.items())


# ---------------------------------------------------------------------------------------------- 3. generator lists
@pytest.mark.parametrize("family", ["vae", "hvae"])
@pytest.mark.parametrize("sample_pixels", [False, True])
def test_generator_list_image_i_is_the_image_generator_i_draws_alone(family, sample_pixels):
    pipe = PIPES[family]()

    def images(seeds, **kwargs):
        generator = [_gen(s) for s in seeds] if isinstance(seeds, list) else _gen(seeds)
        return pipe(batch_size=len(seeds) if isinstance(seeds, list) else 1, generator=generator,
                    sample_pixels=sample_pixels, output_type="pt", **kwargs).images

    # decode_batch_size=2 splits the batch into chunks: each chunk takes its own slice of the list
    listed = images([11, 12, 13], decode_batch_size=2)
    # image i depends on generator[i] alone: change the others and it stays the same, bit for bit
    assert torch.equal(images([21, 12, 23], decode_batch_size=2)[1], listed[1])
    assert torch.equal(images([11, 22, 13], decode_batch_size=2)[[0, 2]], listed[[0, 2]])
    # and it is the image that generator alone draws with batch_size=1 (the same noise; the network then runs on a
    # batch of 1 instead of 2, which on CPU changes the last bit of some convolution sums, hence the 1e-6)
    for i, seed in enumerate([11, 12, 13]):
        torch.testing.assert_close(listed[i : i + 1], images(seed), rtol=0, atol=1e-6)
    assert not torch.equal(listed[0], listed[1])
    message = (r"You have passed a list of generators of length 2, but requested an effective batch size of 3\. "
               r"Make sure the batch size matches the length of the generators\.")
    with pytest.raises(ValueError, match=message):
        pipe(batch_size=3, generator=[_gen(1), _gen(2)])
    with pytest.raises(ValueError, match="list of generators of length 3"):
        pipe.reconstruct(_images(2), generator=[_gen(1), _gen(2), _gen(3)], use_posterior_mean=False)
    # posterior samples in reconstruction follow the same rule
    recon = pipe.reconstruct(_images(2), generator=[_gen(1), _gen(2)], use_posterior_mean=False, output_type="pt")
    other = pipe.reconstruct(_images(2), generator=[_gen(5), _gen(2)], use_posterior_mean=False, output_type="pt")
    assert torch.equal(recon[1], other[1]) and not torch.equal(recon[0], other[0])


# ---------------------------------------------------------------------------------------------- 4. latents
@pytest.mark.parametrize("family", ["vae", "hvae"])
def test_latents_in_and_out_reproduce_a_sample(family):
    pipe = PIPES[family]()
    out = pipe(batch_size=3, generator=_gen(3), temperature=0.8, decode_batch_size=2, output_type="pt")
    again = pipe(batch_size=3, latents=out.latents, decode_batch_size=2, output_type="pt")
    assert torch.equal(again.images, out.images)  # bit for bit, from the returned latents alone
    images, latents = pipe(batch_size=3, generator=_gen(3), temperature=0.8, decode_batch_size=2, output_type="pt",
                           return_dict=False)
    assert torch.equal(images, out.images)
    # generator lists: the latents image i drew are those its generator draws alone, bit for bit
    listed = pipe(batch_size=2, generator=[_gen(7), _gen(8)], output_type="pt").latents
    alone = pipe(batch_size=1, generator=_gen(8), output_type="pt").latents
    if family == "vae":
        assert torch.equal(listed[1:], alone)
        with pytest.raises(ValueError, match=r"latents must have shape \(3, 4, 8, 8\).*got \(2, 4, 8, 8\)"):
            pipe(batch_size=3, latents=out.latents[:2])
        return
    assert torch.equal(listed[0][1:], alone[0])  # the top group's noise and prior do not depend on the batch
    for a, b in zip(listed[1:], alone[1:]):  # below it the prior's mean comes from a batch of 2 vs 1: last bits
        # (float32 rounding, relative to the value: a few ulps, 1.2e-6 at 3.7 on one thread)
        torch.testing.assert_close(a[1:], b, rtol=1e-6, atol=1e-6)
    shapes = pipe.vae.group_shapes()
    assert [tuple(z.shape) for z in out.latents] == [(3, *shape) for shape in shapes]
    # any prefix of groups given, the rest drawn: the given ones come back unchanged
    prefix = pipe(batch_size=3, latents=out.latents[:2], generator=_gen(4), output_type="pt")
    assert all(torch.equal(a, b) for a, b in zip(prefix.latents[:2], out.latents[:2]))
    assert not torch.equal(prefix.latents[2], out.latents[2])
    # with temperature 0 below the given groups the images are a function of them alone
    a, b = (pipe(batch_size=3, latents=out.latents[:2], generator=_gen(seed), temperature=[1, 1, 0, 0],
                 output_type="pt").images for seed in (1, 2))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"latents must have shape \(3, 2, 4, 4\) for group 1.*got \(3, 2, 8, 8\)"):
        pipe(batch_size=3, latents=[out.latents[0], out.latents[2]])
    with pytest.raises(ValueError, match="latents holds 5 groups, but the model has 4"):
        pipe(batch_size=3, latents=out.latents + out.latents[:1])


@pytest.mark.parametrize("family", ["vae", "hvae"])
def test_encode_and_interpolation_endpoints_are_the_images_decodings(family):
    pipe = PIPES[family]()
    x = _images(2, seed=4)
    recon = pipe.reconstruct(x, output_type="pt")
    encoded = pipe.encode(x)
    means = encoded if family == "vae" else encoded.latent_means
    decoded = pipe(batch_size=2, latents=means, output_type="pt").images
    assert torch.equal(decoded, recon)  # the posterior means decode to the reconstruction, bit for bit
    steps = pipe.interpolate(x[:1], x[1:], num_steps=5, output_type="pt")
    assert steps.images.shape == (5, 1, 16, 16)
    for index, image in ((0, x[:1]), (-1, x[1:])):
        own = pipe.encode(image)
        own = [own] if family == "vae" else own.latent_means
        ends = [steps.latents[[index]]] if family == "vae" else [z[[index]] for z in steps.latents]
        assert all(torch.equal(end, z) for end, z in zip(ends, own))  # each image's own latents, bit for bit
    # ... so the end images are the two reconstructions (decoded in a batch of 5 instead of 2: the last bit of some
    # CPU convolution sums differs, hence 1e-6)
    torch.testing.assert_close(steps.images[[0, -1]], recon, rtol=0, atol=1e-6)
    # spherical: the midpoint keeps the norm (a straight line would shrink it)
    from hfgen.pipelines.pipeline_vae import slerp

    a, b = torch.randn(1, 64, generator=_gen(1)), torch.randn(1, 64, generator=_gen(2))
    mid = slerp(a, b, 0.5)
    assert abs(mid.norm() - (a.norm() + b.norm()) / 2) < 0.35 * a.norm()
    assert mid.norm() > ((a + b) / 2).norm()
    if family == "hvae":
        samples = pipe.encode(x, generator=[_gen(1), _gen(2)])
        assert [tuple(z.shape) for z in samples.latents] == [(2, *s) for s in pipe.vae.group_shapes()]
        assert not torch.equal(samples.latents[0], samples.latent_means[0])
        assert all((s > -10).all() for s in samples.latent_log_scales)


def test_hvae_keep_top_groups_of_an_image_and_draw_the_rest():
    pipe = _hvae_pipe()
    x = _images(2, seed=4)
    means = pipe.encode(x).latent_means
    out = pipe(images=x, keep_groups=2, batch_size=4, temperature=0.7, generator=_gen(1), output_type="pt")
    assert out.images.shape == (4, 1, 16, 16)
    for group in range(2):  # each image fills two places, with its own posterior means in the kept groups
        assert torch.equal(out.latents[group], means[group].repeat_interleave(2, dim=0))
    assert not torch.equal(out.latents[2][0], out.latents[2][1])  # the rest drawn: two variations of image 0
    # keeping every group at temperature anything gives the reconstruction (to the batch-size rounding)
    full = pipe(images=x, keep_groups=pipe.vae.num_groups, output_type="pt").images
    assert torch.equal(full, pipe.reconstruct(x, output_type="pt"))
    with pytest.raises(ValueError, match="keep_groups must be between 0 and 4"):
        pipe(images=x, keep_groups=5)
    with pytest.raises(ValueError, match="batch_size must be a multiple of the number of images"):
        pipe(images=x, keep_groups=1, batch_size=3)
    with pytest.raises(ValueError, match="images and keep_groups go together"):
        pipe(images=x)
