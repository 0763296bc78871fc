"""The README's "Adding a method" example, run as a third-party plugin: its Python block
becomes a module and its pyproject block the entry points of an installed distribution (a
``*.dist-info`` folder on ``sys.path``, which is what ``importlib.metadata`` reads for an
installed package). The method must reach the registry through the entry point alone and
pass the method contract, so the README cannot drift from the code."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from bench.core.registry import ENTRY_POINT_PREFIX
from methods import METHODS

REPO = Path(__file__).resolve().parent.parent
GROUP = ENTRY_POINT_PREFIX + "methods"


def readme_blocks(heading: str) -> dict[str, list[str]]:
    """Fenced code blocks under a ``## `` heading of README.md, by language."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end >= 0 else None]
    blocks: dict[str, list[str]] = {}
    for lang, body in re.findall(r"^```(\w+)\n(.*?)^```$", section, flags=re.S | re.M):
        blocks.setdefault(lang, []).append(body)
    return blocks


@pytest.fixture
def readme_plugin(tmp_path, monkeypatch):
    """Install the README's example as a distribution in ``tmp_path``; yield its method's
    name and module. The registry and ``sys.modules`` are restored afterwards."""
    blocks = readme_blocks("Adding a method (one file)")
    assert len(blocks.get("python", [])) == 1 and len(blocks.get("toml", [])) == 1, blocks.keys()
    project = tomllib.loads(blocks["toml"][0])["project"]
    declared = project["entry-points"][GROUP]  # the group the registry reads
    assert len(declared) == 1
    ((method_name, module),) = declared.items()
    assert re.fullmatch(r"\w+", module), "the example's entry point names one module"
    # the project declares the same group for its own distribution
    ours = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    assert GROUP in ours

    site = tmp_path / "site"
    site.mkdir()
    (site / f"{module}.py").write_text(blocks["python"][0])
    dist = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (dist / "entry_points.txt").write_text(f"[{GROUP}]\n{method_name} = {module}\n")

    METHODS.names()  # the built-in methods and any installed plugins, before ours
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHODS, "_entry_points_loaded", False)  # look again, now with ours installed
    monkeypatch.syspath_prepend(str(site))
    assert module not in sys.modules
    try:
        yield method_name, module
    finally:
        sys.modules.pop(module, None)


def test_readme_method_loads_through_the_entry_point_and_keeps_the_contract(readme_plugin, tmp_path):
    import test_flops
    import test_method_contract as contract

    name, module = readme_plugin
    assert name in METHODS.names()
    cls = METHODS.get(name)
    assert cls.__module__ == module and cls.name == name
    assert contract.declared_config_type(cls) is cls.Config  # its options are typed
    for backbone, head in contract.BACKBONES:
        # attach, forward, backward; only its tensors train; trainable_count (the default)
        contract.test_forward_backward_only_method_params_train(name, backbone, head)
    contract.test_save_load_round_trip(name, "tiny-llama", "causal_lm", tmp_path)
    contract.test_generate(name, "tiny-llama", "causal_lm")
    # what it declares (through KVPrefixAdapter) is what torch counts
    test_flops._check_exact(test_flops._attached("tiny-llama", name, {"init_std": 0.1}))


def test_readme_method_takes_its_options_from_a_suite(readme_plugin):
    from bench.core.config import ConfigError
    from bench.run.matrix import expand

    name, _ = readme_plugin
    doc = {"suites": {"s": {"methods": [name], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
                            "prefix_lengths": [2], "seeds": [0], "method_args": {name: {"init_std": 0.1}}}}}
    (cell,) = expand(doc, "s")
    assert cell.method_args == {"init_std": 0.1}
    assert cell.identity["method"]["source"]  # its module's digest is part of the cell id
    doc["suites"]["s"]["method_args"] = {name: {"init_sd": 0.1}}
    with pytest.raises(ConfigError, match="init_sd"):
        expand(doc, "s")
