"""Helpers shared by the tests, the benchmarks and the device scripts: the test model and real
SGLang server processes."""
