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
