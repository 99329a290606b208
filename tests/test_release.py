"""Safe releases in-process (ModelHost + InferenceService + ModelControl, no HTTP): one version
loaded and unloaded while the others serve."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Repo, run_service

from pyserve.errors import ErrorKind, PyserveError
from pyserve.protocol import InferRequest
from pyserve.release import TrafficPolicy, key_point
from pyserve.release.golden import GoldenSamples
from pyserve.service import CallContext, InferenceService, ModelControl, ModelHost, SingleModel

pytest.importorskip("onnx")

X = np.arange(4, dtype=np.float32).reshape(1, 4)


def affine(version: int) -> np.ndarray:
    """What version ``version`` of the test models answers for X (conftest's affine model: scale =
    version, bias = version)."""
    weights = np.float32(version) * (1 + 0.25 * np.arange(4, dtype=np.float32))
    return X * weights + np.float32(version)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    repo = Repo(tmp_path / "models")
    repo.onnx("every", {1: 1.0, 2: 2.0, 3: 3.0}, config="max_batch_size = 8\n[version_policy]\nall = true\n")
    repo.onnx("newest", {1: 1.0, 2: 2.0})  # serves version 2 only (latest = 1)
    return repo.root


async def _hammer(service: InferenceService, model: str, version: str | None, stop: asyncio.Event,
                  answers: list[tuple[str, list[float]]], failures: list[str]) -> None:
    """Sends requests one after another until ``stop``, recording each answer or failure."""
    while not stop.is_set():
        try:
            resp = await service.infer(model, version, InferRequest({"x": X}))
        except PyserveError as e:
            failures.append(f"{model}/{version}: {e.kind.name} {e.message}")
        else:
            answers.append((resp.model_version, resp.outputs["y"].ravel().tolist()))
        await asyncio.sleep(0)


def served(service: InferenceService, model: str) -> list[str]:
    return [r["version"] for r in ModelControl(service.host).index() if r["name"] == model and "version" in r]


def test_one_version_unloads_and_loads_while_the_others_serve(models: Path) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        stop = asyncio.Event()
        answers: list[tuple[str, list[float]]] = []
        failures: list[str] = []
        tasks = [asyncio.create_task(_hammer(service, "every", v, stop, answers, failures))
                 for v in ("1", "3", None, "3")]
        while len(answers) < 40:
            await asyncio.sleep(0.001)
        await control.unload_version("every", "2")
        assert served(service, "every") == ["1", "3"]
        with pytest.raises(PyserveError) as e:
            await service.infer("every", "2", InferRequest({"x": X}))
        assert e.value.kind is ErrorKind.NOT_FOUND and "serving: 1, 3" in e.value.message
        mark = len(answers)
        while len(answers) < mark + 40:
            await asyncio.sleep(0.001)
        await control.load_version("every", "2")
        assert served(service, "every") == ["1", "2", "3"]
        resp = await service.infer("every", "2", InferRequest({"x": X}))
        assert resp.outputs["y"].tolist() == affine(2).tolist()
        mark = len(answers)
        while len(answers) < mark + 40:
            await asyncio.sleep(0.001)
        stop.set()
        await asyncio.gather(*tasks)
        assert not failures, failures[:5]
        # Each answer came from the version it names: no request saw a half-loaded version.
        for version, y in answers:
            assert y == affine(int(version)).ravel().tolist()
        assert {v for v, _ in answers} == {"1", "3"}

    run_service(models, body)


def test_version_load_ignores_the_version_policy_until_the_model_loads_again(models: Path) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        assert served(service, "newest") == ["2"]
        await control.load_version("newest", "1")
        assert served(service, "newest") == ["1", "2"]
        resp = await service.infer("newest", "1", InferRequest({"x": X}))
        assert resp.model_version == "1" and resp.outputs["y"].tolist() == affine(1).tolist()
        await control.load("newest")  # the whole model: its version_policy again
        assert served(service, "newest") == ["2"]

    run_service(models, body)


def test_unloading_the_last_version_unloads_the_model(models: Path) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        await control.unload_version("newest", "2")
        row, = [r for r in control.index() if r["name"] == "newest"]
        assert row == {"name": "newest", "state": "UNAVAILABLE", "reason": "unloaded"}
        assert service.host.ready()  # an unload on request keeps the server ready
        await control.load_version("newest", "2")
        assert served(service, "newest") == ["2"]

    run_service(models, body)


@pytest.mark.parametrize(("model", "version", "kind", "message"), [
    ("every", "7", ErrorKind.NOT_FOUND, "model 'every' has no version folder '7' (version folders: 1, 2, 3)"),
    ("every", "stable", ErrorKind.INVALID_ARGUMENT, "model 'every' version 'stable': expected a version number"),
    ("every", "0", ErrorKind.INVALID_ARGUMENT, "expected a version number"),
    ("nope", "1", ErrorKind.NOT_FOUND, "unknown model 'nope'"),
    ("..", "1", ErrorKind.INVALID_ARGUMENT, "'.' and '..' are not model names"),
])
def test_bad_version_loads_are_refused_and_change_nothing(
    models: Path, model: str, version: str, kind: ErrorKind, message: str
) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        before = control.index()
        with pytest.raises(PyserveError) as e:
            await control.load_version(model, version)
        assert e.value.kind is kind and message in e.value.message, e.value.message
        with pytest.raises(PyserveError) as e:
            await control.unload_version(model, version)
        assert e.value.kind is kind or kind is ErrorKind.NOT_FOUND
        assert control.index() == before

    run_service(models, body)


def test_version_that_fails_to_load_changes_nothing(models: Path) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        (models / "every" / "4").mkdir()
        (models / "every" / "4" / "model.onnx").write_bytes(b"not an onnx model")
        control = ModelControl(service.host)
        before = control.index()
        with pytest.raises(PyserveError) as e:
            await control.load_version("every", "4")
        assert e.value.kind is ErrorKind.INVALID_ARGUMENT
        assert control.index() == before
        resp = await service.infer("every", None, InferRequest({"x": X}))
        assert resp.model_version == "3"

    run_service(models, body)


# ---------------------------------------------------------------------------------------------
# Aliases

def policy_file(models: Path, model: str) -> Path:
    return models / model / "traffic.json"


def audit(models: Path) -> list[dict]:
    path = models / ".pyserve" / "traffic-audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_alias_is_usable_wherever_a_version_is(models: Path) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        doc = await control.set_alias("every", "stable", "1", "tester", "first release")
        assert doc == {"aliases": {"stable": "1"}, "weights": {}}
        await control.set_alias("every", "canary", "2", "tester")
        await control.set_alias("every", "current", "stable", "tester")  # an alias of an alias
        for alias, version in (("stable", 1), ("canary", 2), ("current", 1)):
            resp = await service.infer("every", alias, InferRequest({"x": X}))
            assert resp.model_version == str(version), alias
            assert resp.outputs["y"].tolist() == affine(version).tolist()
            assert service.config("every", alias).name == "every"
            assert service.metadata("every", alias).versions == (str(version),)
            assert [r.version for r in service.statistics("every", alias)] == [str(version)]
            service.ready("every", alias)
        assert service.metadata("every").aliases == {"canary": "2", "current": "1", "stable": "1"}
        assert service.metadata("every", "2").aliases == {"canary": "2"}
        rows = {r["version"]: r.get("aliases") for r in control.index() if r["name"] == "every"}
        assert rows == {"1": ["current", "stable"], "2": ["canary"], "3": None}
        # No alias, no version: the newest, as without a policy.
        assert (await service.infer("every", None, InferRequest({"x": X}))).model_version == "3"
        await control.load_version("every", "canary")  # control calls take aliases too
        with pytest.raises(PyserveError) as e:
            await service.infer("every", "nightly", InferRequest({"x": X}))
        assert e.value.kind is ErrorKind.NOT_FOUND
        assert e.value.message == ("model 'every' has no version or alias 'nightly' (serving: 1, 2, 3; "
                                   "aliases: canary, current, stable)")
        await control.remove_alias("every", "canary", "tester", "done")
        assert service.metadata("every").aliases == {"current": "1", "stable": "1"}

    run_service(models, body)


def test_alias_moves_under_traffic_without_a_failed_or_mixed_request(models: Path) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        await control.set_alias("every", "stable", "1", "tester")
        stop = asyncio.Event()
        settled: list[str | None] = ["1"]  # the alias's target while no move is under way, else None
        # (alias target moved to when the call started, version that answered, outputs)
        answers: list[tuple[str | None, str, list[float]]] = []
        failures: list[str] = []

        async def hammer() -> None:
            while not stop.is_set():
                at_start = settled[0]
                try:
                    resp = await service.infer("every", "stable", InferRequest({"x": X}))
                except PyserveError as e:
                    failures.append(f"{e.kind.name} {e.message}")
                else:
                    answers.append((at_start, resp.model_version, resp.outputs["y"].ravel().tolist()))
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(hammer()) for _ in range(4)]
        while len(answers) < 30:
            await asyncio.sleep(0.001)
        for target in ("3", "1", "3", "2", "1"):
            settled[0] = None
            await control.set_alias("every", "stable", target, "tester", f"move to {target}")
            settled[0] = target
            mark = len(answers)
            while len(answers) < mark + 30:
                await asyncio.sleep(0.001)
        stop.set()
        await asyncio.gather(*tasks)
        assert not failures, failures[:5]
        # A call that started between two moves is served by the version moved to; calls that started
        # during a move may be served by either (each by one whole version, checked below).
        started_after = [(at, v) for at, v, _ in answers if at is not None]
        assert len(started_after) >= 5 * 26
        assert all(v == at for at, v in started_after), [p for p in started_after if p[0] != p[1]][:5]
        for _, version, y in answers:
            assert y == affine(int(version)).ravel().tolist()
        assert {v for _, v, _ in answers} == {"1", "2", "3"}
        assert [r["action"] for r in audit(models)] == ["set_alias"] + ["move_alias"] * 5

    run_service(models, body)


@pytest.mark.parametrize(("call", "message"), [
    (("set_alias", "every", "stable", "7"), "policy.aliases.stable: model 'every' version 7 is not loaded (loaded: 1, 2, 3); load it first"),
    (("set_alias", "every", "stable", "nightly"), "'nightly' is neither a version number nor an alias"),
    (("set_alias", "every", "base", "top"), "policy.aliases: alias loop top -> base -> top"),
    (("set_alias", "every", "12", "1"), "alias '12': a number names a version, not an alias"),
    (("set_alias", "every", "_x", "1"), "alias '_x': names starting with '.' or '_' are not served"),
    (("set_alias", "every", "stable", 1.5), "'version' must be a version number or an alias"),
    (("remove_alias", "every", "nightly"), "model 'every' has no alias 'nightly' (aliases: stable, top)"),
    (("remove_alias", "every", "stable"), "model 'every' alias 'stable' is named by aliases.top: change them first"),
    (("unload_version", "every", "1"), "model 'every' version 1 is named by alias(es) 'stable', 'top': move or remove them first"),
    (("set_alias", "nosuch", "stable", "1"), "unknown model 'nosuch'"),
])
def test_bad_alias_changes_are_refused_and_change_nothing(models: Path, call: tuple, message: str) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        await control.set_alias("every", "stable", "1", "tester")
        await control.set_alias("every", "top", "stable", "tester")
        if call[2] == "base":
            # top -> base would close a loop: base -> top -> base
            await control.set_alias("every", "base", "1", "tester")
            await control.set_alias("every", "top", "base", "tester")
        before = (control.traffic("every"), policy_file(models, "every").read_bytes(), audit(models),
                  control.index())
        method, *args = call
        if call[2] == "base":
            args = ["every", "base", "top"]
        with pytest.raises(PyserveError) as e:
            if method == "unload_version":
                await control.unload_version(*args)
            else:
                await getattr(control, method)(*args, "tester")
        assert message in e.value.message, e.value.message
        after = (control.traffic("every"), policy_file(models, "every").read_bytes(), audit(models),
                 control.index())
        assert after == before

    run_service(models, body)


def test_removing_an_alias_that_weights_or_the_shadow_name_says_which(models: Path) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        doc = {"aliases": {"stable": "1", "canary": "2"}, "weights": {"stable": 90, "canary": 10},
               "shadow": {"target": "canary", "percent": 50}}
        await control.set_traffic("every", doc, "tester")
        with pytest.raises(PyserveError) as e:
            await control.remove_alias("every", "canary", "tester")
        assert e.value.kind is ErrorKind.INVALID_ARGUMENT
        assert e.value.message == ("model 'every' alias 'canary' is named by weights.canary, shadow.target: "
                                   "change them first")
        assert control.traffic("every")["aliases"] == doc["aliases"]

    run_service(models, body)


def test_aliases_survive_a_restart_and_every_change_is_audited(models: Path) -> None:
    async def first(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        await control.set_alias("every", "stable", "2", "10.0.0.7:5000", "release 2")
        await control.set_alias("every", "stable", "1", "10.0.0.7:5000", "roll back")

    async def second(service: InferenceService, errors: Any) -> None:
        assert (await service.infer("every", "stable", InferRequest({"x": X}))).model_version == "1"
        assert ModelControl(service.host).traffic("every") == {"aliases": {"stable": "1"}, "weights": {}}

    run_service(models, first)
    assert json.loads(policy_file(models, "every").read_text()) == {"aliases": {"stable": "1"}, "weights": {}}
    assert not [p for p in (models / "every").iterdir() if p.name.startswith(".traffic-")]  # no temp file left
    first_change, second_change = audit(models)
    assert first_change["who"] == "10.0.0.7:5000" and first_change["reason"] == "release 2"
    assert first_change["old"] == {"aliases": {}, "weights": {}}
    assert first_change["new"] == second_change["old"] == {"aliases": {"stable": "2"}, "weights": {}}
    assert second_change["new"]["aliases"] == {"stable": "1"} and second_change["action"] == "move_alias"
    assert second_change["model"] == "every" and second_change["time"].endswith("Z")
    run_service(models, second)


@pytest.mark.parametrize(("text", "why"), [
    ('{"aliases": {"stable": "nightly"}}', "'nightly' is neither a version number nor an alias"),
    # Well formed, but naming a version that is not loaded: was kept, and every request 404.
    ('{"aliases": {"stable": "9"}, "weights": {"stable": 100}}', "traffic.json.aliases.stable: model 'every' "
     "version 9 is not loaded"),
])
def test_a_refused_policy_file_keeps_the_model_off_policy_routes(models: Path, text: str, why: str) -> None:
    policy_file(models, "every").write_text(text)

    async def body(service: InferenceService, errors: Any) -> None:
        for version in ("stable", None):
            with pytest.raises(PyserveError) as e:
                await service.infer("every", version, InferRequest({"x": X}))
            assert e.value.kind is ErrorKind.UNAVAILABLE and "traffic policy was refused at startup" in e.value.message
            assert why in e.value.message, e.value.message
        # An explicit version still serves, metadata still answers; a new policy repairs the model.
        assert (await service.infer("every", "2", InferRequest({"x": X}))).model_version == "2"
        assert service.metadata("every").versions == ("1", "2", "3")
        await ModelControl(service.host).set_traffic("every", {"aliases": {"stable": "1"}}, "tester", "repair")
        assert (await service.infer("every", "stable", InferRequest({"x": X}))).model_version == "1"

    run_service(models, body)


# ---------------------------------------------------------------------------------------------
# Traffic policy: the weighted split

def test_key_point_is_blake2b_64_of_the_key() -> None:
    # Pinned: a change of hash would move every sticky key at the next restart.
    assert key_point("user-1") == int("9aac5a8621eae188", 16) / 2**64
    assert 0 <= key_point("") < 1 and 0 <= key_point("é") < 1


@pytest.mark.parametrize("weights", [{"1": 90, "2": 10}, {"1": 70, "2": 20, "3": 10}, {"1": 50, "2": 0, "3": 50},
                                     {"1": 33.3, "2": 33.3, "3": 33.4}])
def test_split_follows_the_weights_over_many_keys(weights: dict[str, float]) -> None:
    policy = TrafficPolicy.from_doc({"weights": weights})
    keys = [f"user-{i}" for i in range(20000)]
    counts = Counter(policy.pick(k) for k in keys)
    for target, weight in weights.items():
        assert abs(100 * counts[int(target)] / len(keys) - weight) < 1.5, (counts, weights)
    # Sticky: the same key, the same version, every time.
    assert all(policy.pick(k) == policy.pick(k) for k in keys[:500])


def test_widening_the_last_share_only_moves_keys_onto_it() -> None:
    before = TrafficPolicy.from_doc({"aliases": {"stable": "1", "canary": "2"}, "weights": {"stable": 90, "canary": 10}})
    after = TrafficPolicy.from_doc({"aliases": {"stable": "1", "canary": "2"}, "weights": {"stable": 75, "canary": 25}})
    moved = [(before.pick(k), after.pick(k)) for k in (f"k{i}" for i in range(5000))]
    assert (2, 1) not in set(moved)  # no key on the canary goes back to stable
    assert sum(1 for m in moved if m == (1, 2)) > 0


@pytest.mark.parametrize(("doc", "message"), [
    ({"weights": {"1": 90, "2": 20}}, "policy.weights: the percentages must sum to 100, got 110"),
    ({"weights": {"1": 0.9, "2": 0.1}}, "policy.weights: the percentages must sum to 100, got 1"),
    ({"weights": {"1": 110, "2": -10}}, "policy.weights.1: expected a percentage from 0 to 100, got 110"),
    ({"weights": {"1": 100, "2": -0.0001}}, "policy.weights.2: expected a percentage from 0 to 100"),
    ({"weights": {"1": "90", "2": 10}}, "policy.weights.1: expected a percentage from 0 to 100, got '90'"),
    ({"weights": {"1": 100, "canary": 0}}, "policy.weights.canary: 'canary' is neither a version number nor an alias"),
    ({"weights": {"7": 100}}, "policy.weights.7: model 'every' version 7 is not loaded (loaded: 1, 2, 3)"),
    ({"aliases": {"a": "b", "b": "a"}}, "policy.aliases: alias loop a -> b -> a"),
    ({"aliases": {"a": "a"}}, "policy.aliases: alias loop a -> a"),
    ({"aliases": {"stable": "9"}}, "policy.aliases.stable: model 'every' version 9 is not loaded"),
    ({"routing_header": "x user"}, "policy.routing_header: expected an HTTP header name, got 'x user'"),
    ({"weight": {"1": 100}}, "policy: unknown field(s) 'weight'; expected aliases, weights, routing_header, shadow"),
    ({"weights": [1, 2]}, "policy.weights: expected an object (version or alias -> percent), got an array"),
    ({"shadow": {"target": "7"}}, "policy.shadow.target: model 'every' version 7 is not loaded"),
    ({"shadow": {"target": "nightly"}}, "policy.shadow.target: 'nightly' is neither a version number nor an alias"),
    ({"shadow": {"target": "2", "percent": 101}}, "policy.shadow.percent: expected a percentage from 0 to 100"),
    ({"shadow": {"target": "2", "max_in_flight": 0}}, "policy.shadow.max_in_flight: expected an integer >= 1, got 0"),
    ({"shadow": {"target": "2", "share": 5}}, "policy.shadow: unknown field(s) 'share'"),
    ({"shadow": "2"}, "policy.shadow: expected a JSON object with target, percent, max_in_flight, got a string"),
    ({"weights": {"1": 50, "01": 50}}, "policy.weights.01: version 1 is given twice"),
    ({"shadow": {"target": "2", "max_in_flight": 10**17}},
     "policy.shadow.max_in_flight: at most 10000, got 100000000000000000"),
    ({"routing_header": "x" * 5000}, "policy.routing_header: at most 256 characters, got 5000"),
    ({"aliases": {"stable": "1"}, "weights": {"stable": 100}, "shadow": {"target": "1"}},
     "policy.shadow.target: version 1 serves every request that names no version"),
    ({"shadow": {"target": "3"}},
     "policy.shadow.target: version 3 serves every request that names no version"),
    ({"aliases": {f"a{i}": "1" for i in range(101)}}, "policy.aliases: at most 100 aliases, got 101"),
    ({"weights": {str(i): 1 for i in range(1, 102)}}, "policy.weights: at most 100 targets, got 101"),
])
def test_bad_policies_are_refused_naming_the_field_and_change_nothing(models: Path, doc: dict, message: str) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        good = {"aliases": {"stable": "1"}, "weights": {"stable": 80, "3": 20}, "routing_header": "x-user"}
        await control.set_traffic("every", good, "tester", "good")
        before = (policy_file(models, "every").read_bytes(), audit(models))
        with pytest.raises(PyserveError) as e:
            await control.set_traffic("every", doc, "tester", "bad")
        assert e.value.kind is ErrorKind.INVALID_ARGUMENT and message in e.value.message, e.value.message
        assert control.traffic("every") == good
        assert (policy_file(models, "every").read_bytes(), audit(models)) == before

    run_service(models, body)


def test_version_numbers_in_a_policy_are_kept_the_one_way_they_are_shown() -> None:
    doc = {"aliases": {"stable": "01", "canary": 2}, "weights": {"001": 90, "canary": 10},
           "shadow": {"target": "02"}}
    policy = TrafficPolicy.from_doc(doc)
    assert policy.to_doc() == {"aliases": {"stable": "1", "canary": "2"}, "weights": {"1": 90, "canary": 10},
                               "shadow": {"target": "2", "percent": 100, "max_in_flight": 64}}


def test_the_longest_alias_chain_is_checked_at_once() -> None:
    # Following a chain was quadratic per alias (cubic in all): 2000 aliases took minutes of the
    # event loop. A policy holds at most 100, each followed in linear time.
    aliases = {f"a{i}": f"a{i + 1}" for i in range(99)} | {"a99": "1"}
    started = time.perf_counter()
    policy = TrafficPolicy.from_doc({"aliases": aliases, "weights": {"a0": 100}})
    assert policy.resolve("a0") == 1 and policy.pick("alice") == 1
    assert time.perf_counter() - started < 0.5


def test_split_routes_by_key_and_explicit_versions_bypass_it(models: Path) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        doc = {"aliases": {"stable": "1", "canary": "2"}, "weights": {"stable": 80, "canary": 20},
               "routing_header": "X-User"}
        assert await control.set_traffic("every", doc, "tester", "canary 20%") == {**doc, "routing_header": "x-user"}
        assert service.routing_header("every") == "x-user"
        policy = TrafficPolicy.from_doc(doc)
        served: Counter[str] = Counter()
        for i in range(400):
            key = f"user-{i}"
            for ctx in (CallContext("inprocess", routing_key=key), CallContext("inprocess", request_id=key)):
                resp = await service.infer("every", None, InferRequest({"x": X}), ctx)
                assert resp.model_version == str(policy.pick(key))  # the header's key, else the request id
                assert resp.outputs["y"].tolist() == affine(int(resp.model_version)).tolist()
            served[resp.model_version] += 1
        assert 80 - 6 < served["1"] / 4 < 80 + 6 and served["1"] + served["2"] == 400
        # Without a key: random, both versions; a version or an alias named: no split.
        random_versions = {(await service.infer("every", None, InferRequest({"x": X}))).model_version
                           for _ in range(100)}
        assert random_versions == {"1", "2"}
        for version, expect in (("3", "3"), ("canary", "2"), ("stable", "1")):
            for i in range(20):
                ctx = CallContext("inprocess", routing_key=f"user-{i}")
                assert (await service.infer("every", version, InferRequest({"x": X}), ctx)).model_version == expect
        # A version that takes traffic cannot be unloaded.
        with pytest.raises(PyserveError) as e:
            await control.unload_version("every", "2")
        assert "is named by alias(es) 'canary'" in e.value.message
        await control.set_traffic("every", {"weights": {"1": 100}}, "tester", "canary off")
        with pytest.raises(PyserveError) as e:
            await control.unload_version("every", "1")
        assert e.value.message == ("model 'every' version 1 takes traffic: weights.1 is 100%; change the "
                                   "traffic policy first")
        await control.unload_version("every", "2")

    run_service(models, body)


def test_policy_survives_a_restart(models: Path) -> None:
    doc = {"aliases": {"stable": "1"}, "weights": {"stable": 50, "3": 50}, "routing_header": "x-user"}

    async def first(service: InferenceService, errors: Any) -> None:
        await ModelControl(service.host).set_traffic("every", doc, "tester", "split")

    async def second(service: InferenceService, errors: Any) -> None:
        assert ModelControl(service.host).traffic("every") == doc
        for i in range(50):
            key = f"k{i}"
            resp = await service.infer("every", None, InferRequest({"x": X}), CallContext("inprocess", routing_key=key))
            assert resp.model_version == str(TrafficPolicy.from_doc(doc).pick(key))

    run_service(models, first)
    run_service(models, second)


def test_traffic_policy_needs_a_model_folder(tmp_path: Path) -> None:
    onnx_file = Repo(tmp_path / "m").onnx_version("single", 1, 1.0)

    async def main() -> None:
        async with ModelHost(None, [SingleModel("single", onnx_file)]) as host:
            with pytest.raises(PyserveError) as e:
                await ModelControl(host).set_alias("single", "stable", "1", "tester")
            assert "served from one file (--model)" in e.value.message

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# The validation gate: golden samples

XS = np.arange(12, dtype=np.float32).reshape(3, 4)


def write_golden(version_dir: Path, produced_by: int, **extra: Any) -> Path:
    """golden.npz of three samples, with the outputs that version ``produced_by`` answers."""
    weights = np.float32(produced_by) * (1 + 0.25 * np.arange(4, dtype=np.float32))
    y = XS * weights + np.float32(produced_by)
    arrays = {"inputs/x": XS, "outputs/y": y, "outputs/argmax": np.argmax(y, axis=1)}
    arrays.update(extra)
    path = version_dir / "golden.npz"
    np.savez(path, **arrays)
    return path


def test_golden_samples_gate_a_version_load(models: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        write_golden(models / "every" / "2", produced_by=2)
        await control.load_version("every", "2")  # its own answers: passes
        Repo(models).onnx_version("every", 4, scale=4.0, bias=4.0)
        path = write_golden(models / "every" / "4", produced_by=2)  # version 2's answers: wrong
        before = control.index()
        with pytest.raises(PyserveError) as e:
            await control.load_version("every", "4")
        assert e.value.kind is ErrorKind.INVALID_ARGUMENT
        message = e.value.message
        assert message.startswith(f"model 'every' version 4 failed its golden samples ({path}): sample 0, "
                                  "output 'y': 4 of 4 values differ by more than atol 1e-05 + rtol 0.0001 "
                                  "* |expected|; largest |difference| 12.5 at index [0, 3]: got 25, expected 12.5")
        assert control.index() == before  # stays out of traffic
        assert any(r.levelname == "ERROR" and message in r.getMessage() for r in caplog.records)
        with pytest.raises(PyserveError):
            await service.infer("every", "4", InferRequest({"x": X}))
        # A tolerance in the file lets a close answer pass.
        write_golden(models / "every" / "4", produced_by=4, **{"outputs/y": XS * 0 + 1e6, "atol/y": np.float64(1e7)})
        await control.load_version("every", "4")
        assert (await service.infer("every", "4", InferRequest({"x": X}))).model_version == "4"

    run_service(models, body)


def test_a_version_failing_its_golden_samples_at_startup_is_not_served(models: Path) -> None:
    write_golden(models / "newest" / "2", produced_by=1)

    async def body(service: InferenceService, errors: Any) -> None:
        row, = [r for r in ModelControl(service.host).index() if r["name"] == "newest"]
        assert row["state"] == "UNAVAILABLE"
        assert "model 'newest' version 2 failed its golden samples" in row["reason"]
        assert "sample 0, output 'y'" in row["reason"]
        with pytest.raises(PyserveError) as e:
            await service.infer("newest", None, InferRequest({"x": X}))
        assert e.value.kind is ErrorKind.UNAVAILABLE

    run_service(models, body)


def test_golden_samples_run_again_before_an_alias_or_a_weight_sends_traffic(models: Path) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        await control.set_alias("every", "stable", "1", "tester")
        # Version 3's golden file changed after it loaded (a wrong expectation, or a stateful model).
        write_golden(models / "every" / "3", produced_by=1)
        for change in (control.set_alias("every", "stable", "3", "tester"),
                       control.set_traffic("every", {"aliases": {"stable": "1"}, "weights": {"stable": 99, "3": 1}},
                                           "tester")):
            with pytest.raises(PyserveError) as e:
                await change
            assert "model 'every' version 3 failed its golden samples" in e.value.message
            assert control.traffic("every") == {"aliases": {"stable": "1"}, "weights": {}}
        # A weight of 0 sends no traffic: no check.
        await control.set_traffic("every", {"aliases": {"stable": "1"}, "weights": {"stable": 100, "3": 0}}, "tester")

    run_service(models, body)


@pytest.mark.parametrize(("arrays", "message"), [
    ({"inputs/x": XS, "outputs/y": XS[:2]}, "every array must hold the same number of samples along its first axis"),
    ({"inputs/x": XS}, "expected inputs/NAME and outputs/NAME arrays, got inputs/x"),
    ({"inputs/x": XS, "outputs/y": XS, "expected": XS}, "unexpected array 'expected'"),
    ({"inputs/x": XS, "outputs/z": XS}, "outputs/z: model 'every' has no output 'z' (outputs: argmax, y)"),
    ({"inputs/x": XS, "outputs/y": XS, "atol": np.float64(-1)}, "atol: expected a tolerance >= 0, got -1.0"),
    ({"inputs/x": XS[:, :3], "outputs/y": XS}, "sample 0: the model answered an error: input 'x'"),
    ({"inputs/x": XS, "outputs/argmax": np.zeros(3, np.int64)},
     "sample 0, output 'argmax': 1 of 1 values differ; first at index [0]: got 3, expected 0"),
    ({"inputs/x": XS, "outputs/y": np.array([[b"a"]] * 3)}, "sample 0, output 'y': shape [1, 4], expected [1, 1]"),
    ({"inputs/x": XS[:, None, None], "outputs/y": XS}, "inputs/x: 4 dimensions; expected 2 (samples along the first dimension) or 3"),
    ({"inputs/z": XS, "outputs/y": XS}, "inputs/z: model 'every' has no input 'z' (inputs: x)"),
])
def test_bad_golden_files_refuse_the_version(models: Path, arrays: dict, message: str) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        np.savez(models / "every" / "2" / "golden.npz", **arrays)
        with pytest.raises(PyserveError) as e:
            await ModelControl(service.host).load_version("every", "2")
        assert "model 'every' version 2 failed its golden samples" in e.value.message
        assert message in e.value.message, e.value.message

    run_service(models, body)


def _npy(shape: tuple, header: bytes | None = None) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return (header if header is not None else out.getvalue()) + b"\0" * 16


@pytest.mark.parametrize(("members", "message"), [
    # The header alone made numpy allocate 14.6 TiB: MemoryError, not a refusal.
    ({"inputs/x.npy": _npy((10**12, 4)), "outputs/y.npy": _npy((1, 4))},
     "array 'inputs/x' declares shape [1000000000000, 4] of float32 (16000000000000 bytes) "
     "but holds 144 bytes"),
    # numpy's header parser raised a tokenize error.
    ({"inputs/x.npy": _npy((1,), b"\x93NUMPY\x01\x00\x10\x00{'descr': (      \n"),
      "outputs/y.npy": _npy((1, 4))},
     "not a golden-sample file numpy can read without pickle"),
    ({"inputs/x.npy": b"\x93NUMPY\x01", "outputs/y.npy": _npy((1, 4))},
     "not a golden-sample file numpy can read without pickle"),
])
def test_golden_files_with_lying_or_broken_headers_are_refused(tmp_path: Path, members: dict,
                                                               message: str) -> None:
    path = tmp_path / "golden.npz"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(PyserveError) as e:
        GoldenSamples.read(path)
    assert e.value.kind is ErrorKind.INVALID_ARGUMENT and message in e.value.message, e.value.message


def test_golden_samples_of_strings_and_of_a_model_that_does_not_batch(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "models")
    repo.identity("texts", [("t", "BYTES", [1])], max_batch_size=4)
    repo.identity("plain", [("v", "INT32", [2])], max_batch_size=0)
    (repo.root / "texts" / "1").mkdir()
    (repo.root / "plain" / "1").mkdir()
    words = np.array([["ab"], ["é"]])  # U: compared as UTF-8
    np.savez(repo.root / "texts" / "1" / "golden.npz", **{"inputs/in_t": words, "outputs/out_t": words})
    pairs = np.array([[1, 2], [3, 4]], np.int32)
    np.savez(repo.root / "plain" / "1" / "golden.npz", **{"inputs/in_v": pairs, "outputs/out_v": pairs})

    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        assert {r["name"]: r["state"] for r in control.index()} == {"plain": "READY", "texts": "READY"}
        np.savez(repo.root / "texts" / "1" / "golden.npz",
                 **{"inputs/in_t": words, "outputs/out_t": np.array([["ab"], ["e"]])})
        with pytest.raises(PyserveError) as e:
            await control.load_version("texts", "1")
        assert "sample 1, output 'out_t': 1 of 1 values differ; first at index [0, 0]: got b'\\xc3\\xa9', " \
               "expected b'e'" in e.value.message
        assert (await service.infer("texts", "1", InferRequest({"in_t": np.array([[b"x"]], object)}))
                ).outputs["out_t"].tolist() == [[b"x"]]

    run_service(repo.root, body)
