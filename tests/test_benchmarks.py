"""benchmarks/gpu_suite.py keeps working between the rare runs on a GPU: its --quick mode on the CPU writes every
measurement's JSON line (no timing assertions), and a part that overruns its budget is killed and reported."""

import json
import subprocess
import sys

from hfgen.families import VAEFamily
from hfgen.training import build_parser, train

from conftest import FASHION_MNIST_DIR, PYTHON, ROOT, requires_fashion_mnist

SUITE = ROOT / "benchmarks" / "gpu_suite.py"
sys.path.insert(0, str(SUITE.parent))
import gpu_suite  # noqa: E402  (light imports only: no torch)

COMMON = ("name", "device", "device_name", "torch", "date", "quick")
FIGURES = {
    "ddpm_train": ("img_per_s_hfgen", "img_per_s_baseline", "ratio", "gflop_per_img", "tflop_per_s",
                   "fraction_of_peak", "peak_memory_gb", "seconds"),
    "ddpm_train_compiled": ("img_per_s_hfgen", "img_per_s_baseline", "ratio", "gflop_per_img", "torch_compile"),
    "ddpm_sample": ("img_per_s", "speedup_vs_ddpm", "batch_size", "dtype"),
    "vae_train": ("img_per_s_hfgen", "gflop_per_img", "tflop_per_s", "peak_memory_gb"),
    "vae_train_compiled": ("img_per_s_hfgen", "torch_compile"),
    "vae_memory": ("peak_step_memory_gb", "peak_step_memory_gb_checkpointed"),
    "hvae_train": ("img_per_s_hfgen", "gflop_per_img", "tflop_per_s", "peak_memory_gb"),
    "hvae_train_compiled": ("img_per_s_hfgen", "torch_compile"),
    "hvae_memory": ("peak_step_memory_gb", "peak_step_memory_gb_checkpointed"),
    "hvae_fmnist": ("bits_per_dim_elbo", "num_samples", "train_steps"),
    "vae_fmnist": ("bits_per_dim_elbo", "num_samples", "train_steps"),
    "iw_bounds": ("folders", "importance_samples", "fashion_mnist_dir"),
    "suite": ("seconds", "budget_minutes", "parts", "errors"),
}


def _run(args, run_env, timeout):
    return subprocess.run([PYTHON, str(SUITE), *args], capture_output=True, text=True, env=run_env, cwd=ROOT,
                          timeout=timeout)


def test_every_measurement_has_a_name():
    measured = {name for _, names in gpu_suite.PARTS.values() for name in names}
    assert measured == set(gpu_suite.MEASUREMENTS) == set(FIGURES) - {"suite"}


def test_peak_lookup_by_device_name():
    assert gpu_suite.peak_bf16_tflops("NVIDIA H200") == 989.0
    assert gpu_suite.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_suite.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_suite.peak_bf16_tflops("cpu") is None


def test_quick_suite_on_cpu_writes_every_line(tmp_path, run_env):
    output = tmp_path / "suite.jsonl"
    args = ["--device", "cpu", "--quick", "--output", str(output)]
    have_fmnist = FASHION_MNIST_DIR.is_dir()
    if have_fmnist:
        args += ["--fashion-mnist-dir", str(FASHION_MNIST_DIR)]
    run = _run(args, run_env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    in_order = [name for part in gpu_suite.SPEED_PARTS for name in gpu_suite.PARTS[part][1]]
    assert [line["name"] for line in lines] == [*in_order, "suite"]  # iw_bounds only with --iw-folders
    printed = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert printed == lines
    for line in lines:
        assert all(key in line for key in COMMON), line
        assert line["device"] == "cpu" and line["quick"] is True
        if line["name"].endswith("_fmnist") and not have_fmnist:
            assert "Fashion-MNIST" in line["error"]
            continue
        assert "error" not in line, line
        assert all(key in line for key in FIGURES[line["name"]]), (line["name"], sorted(line))
    by_name = {line["name"]: line for line in lines}
    assert set(by_name["ddpm_sample"]["img_per_s"]) == {"ddpm_100", "dpm-solver++_20", "ddim_50"}
    assert by_name["ddpm_train_compiled"]["torch_compile"] is True
    assert by_name["suite"]["errors"] == ([] if have_fmnist else ["hvae_fmnist", "vae_fmnist"])


def test_a_part_over_its_budget_is_killed_and_reported(tmp_path, run_env):
    # 0.2 minutes: ddpm_sample's share (12%) is 1.4 s, less than its child process needs to import torch
    output = tmp_path / "suite.jsonl"
    run = _run(["--device", "cpu", "--quick", "--isolation", "process", "--parts", "ddpm_sample",
                "--budget-minutes", "0.2", "--output", str(output)], run_env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    sample, suite = (json.loads(line) for line in output.read_text().splitlines())
    assert sample["name"] == "ddpm_sample" and sample["error"].startswith("timed out"), sample
    assert suite["name"] == "suite" and suite["errors"] == ["ddpm_sample"]
    assert (tmp_path / "suite_logs" / "ddpm_sample.log").exists()


@requires_fashion_mnist
def test_iw_bounds_of_a_carried_folder_resume_to_the_same_figures(tmp_path, run_env):
    """The K=1000 part on a tiny trained folder (--quick: K=4 on 64 test images): the CLI's figures and units, a
    progress file beside the logs, and a second run that finds every batch there gives the same figures."""
    folder = tmp_path / "vae-tiny"
    train(VAEFamily(), build_parser(VAEFamily()).parse_args([
        "--output_dir", str(folder), "--preset", "tiny", "--max_train_samples", "256", "--max_train_steps", "3",
        "--final_eval_max_samples", "16", "--final_importance_samples", "2", "--report_to", "none"]))
    output = tmp_path / "suite.jsonl"
    args = ["--device", "cpu", "--quick", "--iw-folders", str(folder), "--parts", "iw_bounds",
            "--fashion-mnist-dir", str(FASHION_MNIST_DIR), "--output", str(output)]
    for _ in range(2):
        run = _run(args, run_env, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    first, _, second, _ = (json.loads(line) for line in output.read_text().splitlines())
    assert first["name"] == second["name"] == "iw_bounds" and "error" not in first, first
    figures = first["folders"]["vae-tiny"]
    assert figures["importance_samples"] == 4 and figures["num_samples"] == 64 and figures["num_dims"] == 784
    assert figures["split"] == "test[:64]" and figures["bits_per_dim_iw"] <= figures["bits_per_dim_elbo"]
    assert (tmp_path / "suite_logs" / "iw_vae-tiny.progress.json").exists()
    resumed = second["folders"]["vae-tiny"]
    assert resumed["bits_per_dim_iw"] == figures["bits_per_dim_iw"]
    assert resumed["bits_per_dim_elbo"] == figures["bits_per_dim_elbo"]


def test_grouped_conv_backward_flops_and_hvae_cells_script():
    """train_throughput counts a grouped (depthwise) conv's backward as two forwards, as it does a dense conv's
    (torch's formula counts its weight gradient as dense); hvae_cells.py gives one row per cell type."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import hvae_cells
    import train_throughput

    mapping = {torch.ops.aten.convolution_backward: train_throughput._conv_backward_flop}
    for groups in (1, 4, 32):
        conv = torch.nn.Conv2d(32, 32, 5, padding=2, groups=groups)
        x = torch.randn(2, 32, 8, 8, requires_grad=True)
        forward, both = FlopCounterMode(display=False), FlopCounterMode(display=False, custom_mapping=mapping)
        with forward:
            conv(x)
        with both:
            conv(x).sum().backward()
        assert forward.get_total_flops() == 2 * 2 * 32 * (32 // groups) * 25 * 64
        assert both.get_total_flops() == 3 * forward.get_total_flops()
    rows = hvae_cells.main(["--preset", "tiny", "--steps", "1", "--warmup-steps", "0", "--batch-size", "4"])
    assert [row["cell_type"] for row in rows] == ["resnet", "bottleneck", "inverted_residual"]
    assert all(row["num_parameters"] > 0 and row["mflop_per_img"] > 0 and row["img_per_s"] > 0 for row in rows)


def test_throughput_baseline_trains_the_objective_hfgen_trains():
    """The baseline loop's objective (train_throughput.example_loss, written as a user extending diffusers'
    example would) equals hfgen's DDPM objective on the same network, draws and timesteps: v-prediction with
    learned variances (the hybrid L_vlb term, t = 0's decoder included) and the plain epsilon one."""
    import types

    import torch

    import train_throughput
    from hfgen.families import DDPMFamily
    from hfgen.models.ddpm import add_noise, vlb_term_nats

    for prediction_type, variance_type in (("v_prediction", "learned_range"), ("epsilon", "fixed_small")):
        family = DDPMFamily()
        config = dict(block_out_channels=[8, 16], layers_per_block=1, attention_resolutions=[], norm_num_groups=4,
                      dropout=0.0, num_train_timesteps=50, beta_schedule="squaredcos_cap_v2",
                      prediction_type=prediction_type, variance_type=variance_type)
        torch.manual_seed(0)
        model = family.build_model(config, 1, 8)
        x0 = torch.rand(6, 1, 8, 8) * 2 - 1
        x0[:, :, 0] = -1.0  # exact edge bins, as Fashion-MNIST's many zeros
        x0[:, :, 1] = 1.0
        cfg = types.SimpleNamespace(snr_gamma=None, vlb_weight=None)
        hfgen_loss, _, _ = family.diffusion_objective(model, x0, torch.Generator().manual_seed(3), cfg)
        generator = torch.Generator().manual_seed(3)  # the same draws, in diffusion_objective's order
        t = torch.randint(0, 50, (6,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        noisy = add_noise(family.tables("cpu"), x0, noise, t)
        output = model(noisy, t).sample
        example = train_throughput.example_loss(family.scheduler, output, x0, noise, noisy, t)
        torch.testing.assert_close(example, hfgen_loss, rtol=1e-4, atol=1e-6)
        if variance_type == "learned_range":  # the term itself, with t = 0 (the decoder) among the timesteps
            t0 = torch.tensor([0, 0, 1, 5, 20, 49])
            noisy0 = add_noise(family.tables("cpu"), x0, noise, t0)
            output0 = model(noisy0, t0).sample
            prediction, variance = output0.chunk(2, dim=1)
            expected = vlb_term_nats(family.tables("cpu"), x0, noisy0, t0, output0, stop_mean_gradient=True)
            actual = train_throughput.example_hybrid_vlb_term(family.scheduler, prediction, variance, x0, noisy0, t0)
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
