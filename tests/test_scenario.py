from pathlib import Path

import pytest

from fedsec import Scenario, ScenarioError, load_scenario
from fedsec.scenario import AttackConfig, DataConfig, ServerConfig

QUICK = "experiments/quickstart.toml"


def write(tmp_path, text):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


def test_quickstart_loads_and_roundtrips(tmp_path):
    s = load_scenario(QUICK)
    assert s.data.dataset == "digits" and s.data.num_clients == 20 and s.server.rounds == 10
    again = load_scenario(write(tmp_path, s.to_toml()))
    assert again == s
    assert again.digest() == s.digest()


def test_overrides_any_field():
    s = load_scenario(QUICK, ["server.rounds=3", "data.alpha=0.1", 'run.engine="inline"',
                              "model.params={width = 8}"])
    assert (s.server.rounds, s.data.alpha, s.model.params) == (3, 0.1, {"width": 8})


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[server]\nrounds = 0\n", "server.rounds: got 0, expected an integer >= 1"),
        ("[server]\nrounds = 'ten'\n", "server.rounds: got 'ten', expected an integer"),
        ("[server]\nrouns = 3\n", "server.rouns: unknown key (did you mean 'rounds'?)"),
        ("[data]\ndataset = 'digitz'\n", "data.dataset: got 'digitz', expected one of"),
        ("[data]\nalpha = -1\n", "data.alpha: got -1.0, expected a number > 0"),
        ("[server]\naggregator = 'krumm'\n", "server.aggregator: got 'krumm'"),
        ("[model]\nname = 'cnn'\nparams = {widht = 3}\n", "model.params.widht: unknown parameter (did you mean 'width'?)"),
        ("[[attack]]\nbehaviour = 'honest'\npartitions = [25]\n", "attack[0].partitions[0]: got 25, expected a partition id in [0, 20)"),
        ("[[attack]]\nbehaviour = 'nope'\npartitions = [1]\n", "attack[0].behaviour: got 'nope'"),
        ("[[attack]]\nbehaviour = 'honest'\n", "attack[0]: missing required key 'partitions'"),
        ("[[attack]]\nbehaviour = 'honest'\npartitions = [1]\nparams = {x = 1}\n", "attack[0].params: honest: unknown parameter 'x'"),
        ("[run]\nengine = 'warp'\n", "run.engine: got 'warp', expected one of"),
        ("[[plugins]]\nname = 'nope'\n", "plugins[0].name: got 'nope'"),
        ("bogus = 1\n", "bogus: unknown key"),
    ],
)
def test_bad_input_names_field_value_and_expectation(tmp_path, text, fragment):
    with pytest.raises(ScenarioError) as e:
        load_scenario(write(tmp_path, text))
    assert fragment in str(e.value)


def test_overlapping_attack_partitions_rejected():
    with pytest.raises(ScenarioError, match=r"attack\[1\].partitions: got 2"):
        Scenario(attack=[AttackConfig(behaviour="honest", partitions=[1, 2]),
                         AttackConfig(behaviour="honest", partitions=[2, 3])])


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario(tmp_path / "nope.toml")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(write(tmp_path, "[server\n"))
    with pytest.raises(ScenarioError, match="expected KEY=VALUE"):
        load_scenario(QUICK, ["server.rounds"])


def test_python_construction_validates():
    with pytest.raises(ScenarioError, match="data.num_clients"):
        Scenario(data=DataConfig(num_clients=1))
    s = Scenario(server=ServerConfig(rounds=2))
    assert s.replace(**{"server.rounds": 4}).server.rounds == 4


def test_roles_follow_schedule():
    a = AttackConfig(behaviour="honest", partitions=[3], start_round=2, end_round=6, every=2)
    s = Scenario(attack=[a])
    assert [r for r in range(1, 9) if s.role(3, r)] == [2, 4, 6]
    assert s.role(4, 2) is None
    assert s.malicious(4) == [3] and s.malicious(5) == []


@pytest.mark.parametrize("path", sorted(str(p) for p in Path("experiments").rglob("*.toml")))
def test_every_shipped_experiment_file_parses(path):
    """The scenarios and sweeps the docs tell researchers to run stay valid as the schema moves."""
    if path.startswith("experiments/bench/"):
        from fedsec.bench.spec import load_sweep

        assert load_sweep(path).cells
    else:
        assert load_scenario(path).server.rounds >= 1
