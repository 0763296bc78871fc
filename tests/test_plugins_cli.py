"""--plugin takes a module or a .py file on every command; a broken installed entry point
is named and skipped, never fatal."""

from __future__ import annotations

import sys
import types

import pytest

from bench.cli import build_parser, main
from bench.core.registry import Registry, RegistryError, import_plugins
from methods import METHODS

PLUGIN = '''
from methods.prompt_tuning import PromptTuning
from methods.base import register_method

@register_method("file_plugin_prompt")
class FilePrompt(PromptTuning):
    paper = "a test plugin loaded from a file"
'''


def test_every_command_takes_plugin():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        assert any("--plugin" in a.option_strings for a in command._actions), name


def test_a_plugin_file_registers_its_method_for_list(tmp_path, capsys):
    path = tmp_path / "my_method.py"
    path.write_text(PLUGIN)
    try:
        assert main(["list", "methods", "--plugin", str(path)]) == 0
        assert "file_plugin_prompt" in capsys.readouterr().out
        import_plugins([str(path)])  # a second import of the same file is a no-op, not a duplicate
    finally:
        METHODS._items.pop("file_plugin_prompt", None)
        for name in [m for m in sys.modules if m.startswith("prefix_bench_plugin_")]:
            del sys.modules[name]


def test_a_missing_or_broken_plugin_file_is_a_clear_error(tmp_path, capsys):
    assert main(["list", "methods", "--plugin", str(tmp_path / "nope.py")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.py"
    bad.write_text("def (:\n")
    with pytest.raises(RegistryError, match="SyntaxError"):
        import_plugins([str(bad)])


def test_a_broken_entry_point_is_named_and_skipped(monkeypatch, capsys):
    class BrokenEP:
        name, value = "broken", "not_installed_pkg.plugin"

        def load(self):
            raise ModuleNotFoundError("No module named 'not_installed_pkg'")

    monkeypatch.setattr("bench.core.registry.entry_points", lambda group: [BrokenEP()])
    reg: Registry[types.SimpleNamespace] = Registry("gadget", types.SimpleNamespace, instances=True)
    reg.add("fine", types.SimpleNamespace())
    assert reg.names() == ["fine"]
    assert "broken" in reg.broken[0] and "not_installed_pkg" in capsys.readouterr().err
