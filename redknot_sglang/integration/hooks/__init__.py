"""Hooks on SGLang functions, registered through ``HookRegistry`` by the plugin. One module per
hook, each saying which SGLang behaviour it adjusts and why."""
