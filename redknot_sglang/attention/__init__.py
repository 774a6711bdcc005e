"""Plain-torch attention for local heads (sink + window): the CPU path and the kernels' reference."""
