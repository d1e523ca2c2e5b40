"""Byte units, defined once. GB = 10⁹ bytes (what vendors print), GiB = 2³⁰ bytes (what
``nvidia-smi`` and PyTorch's allocator print); MiB = 2²⁰."""

GIB = 2**30
MIB = 2**20
GB = 10**9
