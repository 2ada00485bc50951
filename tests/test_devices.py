"""The device descriptions that metrics.json, model cards and benchmarks record."""

import torch

from hfgen.devices import cpu_description, device_description, parse_cpuinfo

ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512_bf16

processor\t: 1
model name\t: another CPU
"""


def test_parse_cpuinfo_reads_the_first_processor():
    fields = parse_cpuinfo(ZEN5)
    assert fields["model name"] == "AMD EPYC" and fields["cpu family"] == "26" and fields["model"] == "2"
    assert "avx512_bf16" in fields["flags"].split()


def test_cpu_description_names_model_family_widest_vector_unit_and_threads():
    assert cpu_description(ZEN5, threads=2) == "AMD EPYC (family 26 model 2; AVX-512, AVX-512 BF16), 2 threads"
    avx2_only = ZEN5.replace(" avx512f avx512bw avx512_bf16", "")
    assert cpu_description(avx2_only, threads=1) == "AMD EPYC (family 26 model 2; AVX2), 1 thread"
    amx = ZEN5.replace("AMD EPYC", "Intel Xeon").replace("avx512_bf16", "amx_bf16 amx_tile")
    assert "AVX-512, AMX-BF16" in cpu_description(amx, threads=4)


def test_cpu_description_without_cpuinfo_still_names_the_machine():
    described = cpu_description("", threads=3)
    assert described.endswith(", 3 threads") and len(described) > len(", 3 threads")


def test_device_description_of_this_cpu():
    threads = torch.get_num_threads()
    assert device_description(torch.device("cpu")) == cpu_description()
    assert cpu_description().endswith(f", {threads} thread{'s' if threads != 1 else ''}")
