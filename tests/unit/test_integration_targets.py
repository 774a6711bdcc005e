"""The start-up self-check: every SGLang name in the integration table resolves on the installed
SGLang, and a renamed one is named (the failure an upgrade would otherwise hide)."""

from __future__ import annotations

import argparse

import pytest

from redknot_sglang.integration import targets
from redknot_sglang.integration.hooks import server_args

ADDER = "sglang.srt.managers.schedule_policy.PrefillAdder"


def test_every_name_resolves_on_the_installed_sglang():
    assert targets.missing() == []


def test_a_renamed_hook_target_is_named(monkeypatch):
    from sglang.srt.managers.schedule_policy import PrefillAdder

    monkeypatch.delattr(PrefillAdder, "add_chunked_req")
    assert targets.missing() == [ADDER + ".add_chunked_req"]
    with pytest.raises(targets.IntegrationError, match=r"SGLang \d+\.\d+\.\d+ lacks 1 name\(s\) .*"
                                                       r"PrefillAdder\.add_chunked_req"):
        targets.check()


def test_instance_attributes_are_found_in_the_source():
    relied = {ADDER: ("can_run_list", "rem_chunk_tokens", "rem_swa_tokens_offset"),
              "sglang.srt.configs.model_config.ModelConfig": ("swa_attention_layer_ids", "full_attention_layer_ids"),
              "sglang.srt.managers.schedule_lost": ("anything",)}
    assert targets.missing(hooks=(), relied=relied) == [ADDER + ".rem_swa_tokens_offset",
                                                        "sglang.srt.managers.schedule_lost.anything"]


def test_the_launcher_stops_with_one_line_when_a_name_is_missing(monkeypatch):
    from sglang.srt.managers.schedule_policy import PrefillAdder

    monkeypatch.delattr(PrefillAdder, "add_chunked_req")
    args = argparse.Namespace(redknot_head_profile="all-global", attention_backend="redknot",
                              radix_cache_backend="redknot")
    with pytest.raises(SystemExit, match=r"^redknot: SGLang .* lacks .*add_chunked_req "
                                         r"\(supported: SGLang 0\.5\.17 and 0\.5\.23\)$"):
        server_args.from_cli_args(lambda cls, a: pytest.fail("SGLang's parser reached"), object, args)


def test_the_plugin_registers_the_table(monkeypatch):
    from sglang.srt.plugins.hook_registry import HookRegistry

    from redknot_sglang.integration.plugin import register

    register()
    registered = {t: [h for _, h, _ in hooks] for t, hooks in HookRegistry._hooks.items()}
    for hook in targets.HOOKS:
        assert hook.function in registered[hook.target], hook.target


def test_annotations_resolve_against_the_installed_sglang():
    """Every annotation of the integration layer names something real: SGLang's types are imported
    under ``TYPE_CHECKING`` only, so a moved or misspelled one would otherwise pass unseen."""
    import ast
    import importlib
    import inspect
    import pkgutil
    import typing

    import redknot_sglang.integration as pkg

    checked = 0
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        module = importlib.import_module(info.name)
        names = dict(vars(module))
        for node in ast.parse(inspect.getsource(module)).body:
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                exec(compile(ast.Module(body=node.body, type_ignores=[]), info.name, "exec"), names)
        for obj in vars(module).values():
            if getattr(obj, "__module__", None) != info.name:
                continue
            funcs = [obj] if inspect.isfunction(obj) else [f for f in vars(obj).values() if inspect.isfunction(f)] \
                if inspect.isclass(obj) else []
            for f in funcs:
                typing.get_type_hints(f, globalns=names)
                checked += 1
    assert checked > 100
