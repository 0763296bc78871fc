import pytest

from bench.core.config import ConfigError
from bench.run.matrix import expand, load_suite

DOC = {
    "defaults": {"train_steps": 10},
    "suites": {
        "s": {
            "methods": ["prefix_tuning", "lora"],
            "tasks": ["glue/sst2"],
            "backbones": ["tiny-llama", "tiny-bert"],
            "prefix_lengths": [2, 4],
            "seeds": [0, 1],
            "train": {"batch_size": 4},
            "overrides": {"lora": {"lr": 0.005}},
            "backbone_overrides": {"tiny-bert": {"max_length": 16}},
            "method_args": {"prefix_tuning": {"projection": False}},
            "exclude": [{"method": "prefix_tuning", "backbone": "tiny-bert", "prefix_length": 4}],
        }
    },
}


def test_expansion_counts_and_axis_collapse():
    cells = expand(DOC, "s")
    pt = [c for c in cells if c.method == "prefix_tuning"]
    lora = [c for c in cells if c.method == "lora"]
    # prefix_tuning: 2 backbones x 2 lengths x 2 seeds minus 2 excluded (tiny-bert, P=4)
    assert len(pt) == 6
    # lora uses no prefix: the length axis collapses to one cell per backbone x seed
    assert len(lora) == 4 and all(c.prefix_length is None for c in lora)


def test_overrides_and_defaults_resolve_in_order():
    cells = expand(DOC, "s")
    lora = next(c for c in cells if c.method == "lora" and c.backbone == "tiny-bert")
    pt = next(c for c in cells if c.method == "prefix_tuning" and c.backbone == "tiny-llama")
    assert lora.train["lr"] == 0.005 and lora.train["max_length"] == 16
    assert lora.train["train_steps"] == 10 and lora.train["batch_size"] == 4
    assert pt.train["lr"] == 1e-3  # the method's default_lr, made explicit
    assert pt.method_args["projection"] is False and pt.train["max_length"] == 128


def test_ids_are_stable_and_distinct():
    a, b = expand(DOC, "s"), expand(DOC, "s")
    assert [c.id for c in a] == [c.id for c in b]
    assert len({c.id for c in a}) == len(a)
    # the suite name is a label, not part of the id: the same cell in two suites is one cell
    doc2 = {"defaults": DOC["defaults"], "suites": {"other": DOC["suites"]["s"]}}
    assert {c.id for c in expand(doc2, "other")} == {c.id for c in a}
    # any change to the resolved config changes the id
    doc3 = {"defaults": {"train_steps": 11}, "suites": DOC["suites"]}
    assert not {c.id for c in expand(doc3, "s")} & {c.id for c in a}


@pytest.mark.parametrize("mutate, needle", [
    (lambda s: s.update(methods=["prefix_tunin"]), "unknown method 'prefix_tunin'"),
    (lambda s: s.update(tasks=["glue/nope"]), "unknown task 'glue/nope'"),
    (lambda s: s.update(backbones=["gpt5"]), "unknown backbone 'gpt5'"),
    (lambda s: s.update(prefix_lengths=[0]), "prefix lengths must be >= 1"),
    (lambda s: s.update(seeds=[]), "'seeds' must be a non-empty list"),
    (lambda s: s.update(colour="red"), "unknown key(s) 'colour'"),
    (lambda s: s.update(train={"lr": "fast"}), "key 'lr' has value 'fast'"),
    (lambda s: s.update(train={"learning_rate": 1}), "unknown key(s) 'learning_rate'"),
    (lambda s: s.update(method_args={"prefix_tuning": {"init": "magic"}}), "init 'magic' is not one of"),
    (lambda s: s.update(exclude=[{"methd": "lora"}]), "exclude[0]: unknown key(s) 'methd' (did you mean 'method'?)"),
    (lambda s: s.update(train={"train_step": 5}), "'train_step' (did you mean 'train_steps'?)"),
    (lambda s: s.update(prefix_length=[5]), "'prefix_length' (did you mean 'prefix_lengths'?)"),
    (lambda s: s.update(overrides={"full_finetune": {"lr": 1.0}}), "not on this suite's axis"),
])
def test_bad_config_errors_name_the_value(mutate, needle):
    import copy
    doc = copy.deepcopy(DOC)
    mutate(doc["suites"]["s"])
    with pytest.raises(ConfigError) as err:
        expand(doc, "s")
    assert needle in str(err.value)


def test_unknown_suite_lists_suites():
    with pytest.raises(ConfigError, match="valid suites: s"):
        expand(DOC, "t")


def test_shipped_suites_expand():
    for suite in ("default", "smoke", "tiny"):
        assert load_suite(None, suite)


def test_a_user_file_can_include_a_built_in_suite(tmp_path):
    from bench.run.matrix import load_suite

    user = tmp_path / "mine.toml"
    user.write_text('[suites.mine]\ninclude = ["smoke", "extra"]\n\n'
                    '[suites.extra]\nmethods = ["lora"]\ntasks = ["glue/sst2"]\nbackbones = ["tiny-bert"]\n'
                    'prefix_lengths = [1]\nseeds = [9]\n')
    cells = load_suite(user, "mine")
    smoke = load_suite(None, "smoke")
    assert {c.suite for c in cells} == {"mine"}
    assert len(cells) == len(smoke) + 1 and any(c.seed == 9 for c in cells)
    user.write_text('[suites.mine]\ninclude = ["smok"]\n')
    with pytest.raises(ConfigError, match="no such suite .* or among the built-in suites"):
        load_suite(user, "mine")
