"""The only code that imports SGLang: the plugin entry point, the table of every SGLang name we rely
on (:mod:`~redknot_sglang.integration.targets`, checked at start-up), the subclasses of SGLang's pool,
tree, attention backend and pool configurator, and the hooks. Everything outside this package (head
profiles, memory layout, segment store, placement planning, kernels) is plain Python/torch.
"""
