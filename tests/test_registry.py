import pytest

from bench.core.registry import Registry, RegistryError, UnknownNameError


class Base:
    pass


def test_register_and_get():
    reg: Registry = Registry("widget", Base)

    @reg.register("a")
    class A(Base):
        pass

    assert reg.get("a") is A
    assert reg.names() == ["a"]
    assert "a" in reg and "b" not in reg


def test_duplicate_name_rejected():
    reg: Registry = Registry("widget", Base)

    @reg.register("a")
    class A(Base):
        pass

    with pytest.raises(RegistryError, match="already registered"):
        @reg.register("a")
        class B(Base):
            pass


def test_wrong_type_rejected():
    reg: Registry = Registry("widget", Base)
    with pytest.raises(RegistryError, match="subclass"):
        reg.add("x", int)
    inst: Registry = Registry("thing", Base, instances=True)
    with pytest.raises(RegistryError, match="instance"):
        inst.add("x", Base)  # a class, not an instance
    inst.add("ok", Base())


def test_unknown_name_lists_valid_names_and_suggests():
    reg: Registry = Registry("widget", Base)
    for name in ("prefix_tuning", "lora"):
        reg.add(name, type(name, (Base,), {}))
    with pytest.raises(UnknownNameError) as err:
        reg.get("prefix_tunning")
    msg = str(err.value)
    assert "prefix_tunning" in msg and "lora, prefix_tuning" in msg and "did you mean 'prefix_tuning'" in msg


def test_builtin_registries_have_first_plugins():
    from bench.run.backbones import BACKBONES
    from methods import METHODS
    from tasks import TASKS

    assert {"prefix_tuning", "prompt_tuning", "lora"} <= set(METHODS.names())
    assert "glue/sst2" in TASKS
    assert {"smollm2-135m", "minilm-l6", "tiny-llama"} <= set(BACKBONES.names())


def test_entry_point_plugin_is_loaded(monkeypatch):
    """A third-party distribution's entry point registers its plugin on first lookup."""
    import bench.core.registry as registry_module

    class FakeEP:
        name = "external"

        def load(self):
            reg.add("external", Ext)
            return Ext

    class Ext(Base):
        pass

    reg: Registry = Registry("widget", Base)
    monkeypatch.setattr(registry_module, "entry_points",
                        lambda group: [FakeEP()] if group == "prefix_bench.widgets" else [])
    assert reg.get("external") is Ext
