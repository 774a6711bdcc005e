"""RedKnot's Triton kernels, installed as ``redknot_sglang.kernels``."""
