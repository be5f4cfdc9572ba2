"""The GPUs the package knows: peak FLOP/s (for MFU) and memory (for ``hf-clm plan``). Imports no
library, so ``hf-clm plan --help`` lists them without the seconds of importing torch."""

from __future__ import annotations

from typing import NamedTuple


class Gpu(NamedTuple):
    peak_bf16_flops: float  # dense bf16 tensor-core FLOP/s, from the vendor's data sheet (no sparsity)
    memory_bytes: int | None  # total memory as nvidia-smi reports it; None where the data sheet lists several sizes


MIB = 2**20
# One table of the GPUs the package knows, for MFU (matched against torch's device name, so a
# specific name comes before the generic one it contains) and for `hf-clm plan`'s memory check.
GPUS = {
    "H200": Gpu(989e12, 143_771 * MIB), "H100 SXM": Gpu(989e12, 81_559 * MIB),
    "H100 NVL": Gpu(835e12, 95_830 * MIB), "H100 PCIe": Gpu(756e12, 81_559 * MIB),
    "H100": Gpu(989e12, 81_559 * MIB), "GH200": Gpu(989e12, None), "B200": Gpu(2250e12, None),
    "A100 40GB": Gpu(312e12, 40_960 * MIB), "A100 80GB": Gpu(312e12, 81_920 * MIB), "A100": Gpu(312e12, None),
    "A10G": Gpu(70e12, 23_028 * MIB), "A10": Gpu(125e12, 23_028 * MIB), "L40S": Gpu(362e12, 46_068 * MIB),
    "L4": Gpu(121e12, 23_034 * MIB), "RTX 4090": Gpu(165e12, 24_564 * MIB), "RTX 3090": Gpu(71e12, 24_576 * MIB),
    "V100": Gpu(125e12, None), "T4": Gpu(65e12, 15_360 * MIB),
}
PEAK_BF16_FLOPS = {name: gpu.peak_bf16_flops for name, gpu in GPUS.items()}
# Model FLOPs utilisation `hf-clm plan` assumes for a time to finish.
DEFAULT_MFU = 0.40


def gpus_with_memory() -> dict[str, Gpu]:
    """The GPUs whose memory is one size: those ``hf-clm plan --gpu`` can check a run against."""
    return {name: gpu for name, gpu in GPUS.items() if gpu.memory_bytes}
