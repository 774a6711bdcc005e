"""Patches for what no SGLang hook reaches, installed as ``redknot_sglang.patches``.

Rule: a patch is small, says why no ``HookRegistry`` hook, registry or entry point can do the job,
and has a test. Everything reachable through hooks lives in :mod:`redknot_sglang.integration.hooks` instead.
"""
