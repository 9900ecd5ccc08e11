"""Attacks on the hawkBit DDI edge (issue #14), one test per attack, over real uvicorn: a
target token on another controller's path, another device's secret, feedback for an action
that is not the device's, a tenant that is not ours, huge and broken bodies, junk action ids.

Every refusal is one line of JSON ``{"error": ...}`` naming what was wrong, and changes
nothing: the devices' state, history and inventory are compared before and after
(``Unchanged``). Who may call each DDI route with every kind of credential is walked by
``tests/tracker/test_authz.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from suitkit.tracker.quotas import Quotas
from tracker.ddi_kit import ADMIN, DdiWorld, Device, ddi_world, feedback, target


@dataclass
class Site:
    world: DdiWorld
    a: Device
    b: Device
    action_a: int
    action_b: int


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with ddi_world(tmp_path_factory.mktemp("ddi-attacks")) as world:
        release = world.release()
        a, b = world.register("a"), world.register("b")
        world.deploy(release, a, b)
        yield Site(world, a, b, world.action(a), world.action(b))


class Unchanged:
    """Both devices' records before an attack; ``check()`` after it."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.before = self._records()

    def _records(self) -> list[Any]:
        w = self.site.world
        return [(w.device(d.id), w.history(d.id)) for d in (self.site.a, self.site.b)]

    def check(self) -> None:
        after = self._records()
        for (device, history), (device2, history2) in zip(self.before, after, strict=True):
            device.pop("last_seen"), device2.pop("last_seen")
            assert (device, history) == (device2, history2)


def refused(response: httpx.Response, status: int, fragment: str) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/problem+json"
    error = str(response.json()["error"])
    assert fragment in error, error
    assert "\n" not in error and "Traceback" not in error and "site-packages" not in error
    return error


def feedback_url(site: Site, device: Device, action: int) -> str:
    return f"{site.world.base(device.id)}/deploymentBase/{action}/feedback"


def test_ddi_target_token_on_another_controller_s_path_is_refused(site: Site) -> None:
    w, unchanged = site.world, Unchanged(site)
    for method, path, body in (
            ("GET", w.base(site.b.id), None),
            ("GET", f"{w.base(site.b.id)}/deploymentBase/{site.action_b}", None),
            ("POST", feedback_url(site, site.b, site.action_b),
             feedback(site.action_b, "closed", "failure")),
            ("PUT", f"{w.base(site.b.id)}/configData", {"data": {"x": "y"}})):
        response = w.client.request(method, path, json=body, headers=site.a.headers)
        refused(response, 403, "does not open controller")
    unchanged.check()


def test_ddi_another_device_s_secret_alone_is_not_a_target_token(site: Site) -> None:
    w, unchanged = site.world, Unchanged(site)
    secret_b = site.b.token.partition(".")[2]
    response = w.client.post(feedback_url(site, site.a, site.action_a),
                             json=feedback(site.action_a, "closed", "failure"),
                             headers=target(secret_b))
    refused(response, 401, "not valid")
    # a's id with b's secret: not a credential at all
    forged = f"{site.a.id}.{secret_b}"
    refused(w.client.get(w.base(site.a.id), headers=target(forged)), 401, "not valid")
    unchanged.check()


def test_ddi_feedback_for_an_action_that_is_not_the_device_s_changes_nothing(
        site: Site) -> None:
    w, unchanged = site.world, Unchanged(site)
    # b's action on a's own path, and an action id that was never given
    for action in (site.action_b, 12345):
        response = w.client.post(feedback_url(site, site.a, action),
                                 json=feedback(action, "closed", "success"),
                                 headers=site.a.headers)
        refused(response, 409, "is not controller")
        got = w.client.get(f"{w.base(site.a.id)}/deploymentBase/{action}",
                           headers=site.a.headers)
        refused(got, 404, "is not an action of controller")
    # the body's id must be the path's action
    response = w.client.post(feedback_url(site, site.a, site.action_a),
                             json=feedback(site.action_b, "closed", "success"),
                             headers=site.a.headers)
    refused(response, 400, "is not the action of the path")
    # no cancellation is pending: its feedback is refused too
    response = w.client.post(f"{w.base(site.a.id)}/cancelAction/{site.action_a}/feedback",
                             json=feedback(site.action_a, "closed", "success"),
                             headers=site.a.headers)
    refused(response, 409, "is not cancelled")
    unchanged.check()


def test_ddi_without_a_device_credential_is_refused(site: Site) -> None:
    w, unchanged = site.world, Unchanged(site)
    path = feedback_url(site, site.a, site.action_a)
    body = feedback(site.action_a, "closed", "success")
    refused(w.client.post(path, json=body), 401, "TargetToken")
    refused(w.client.post(path, json=body, headers={"Authorization": "GatewayToken x"}), 401,
            "GatewayToken is not supported")
    refused(w.client.post(path, json=body, headers={"Authorization": "Basic eDp5"}), 401,
            "TargetToken")
    # the admin token is no target token (taken as the controller's secret: wrong) and,
    # as a bearer token, not a device credential
    refused(w.client.post(path, json=body, headers=target(ADMIN)), 401, "not valid")
    refused(w.client.post(path, json=body, headers={"Authorization": f"Bearer {ADMIN}"}), 403,
            "takes a device credential")
    refused(w.client.post(path, json=body, headers=target("x" * 300)), 401, "not valid")
    unchanged.check()


def test_ddi_another_tenant_is_unknown(site: Site) -> None:
    w, unchanged = site.world, Unchanged(site)
    response = w.client.post(feedback_url(site, site.a, site.action_a).replace(
        "/DEFAULT/", "/other/"), json=feedback(site.action_a, "closed", "success"),
        headers=site.a.headers)
    refused(response, 404, "tenant")
    unchanged.check()


def test_ddi_huge_and_broken_bodies_are_refused_with_one_line(site: Site) -> None:
    w, unchanged = site.world, Unchanged(site)
    path = feedback_url(site, site.a, site.action_a)
    json_type = {"Content-Type": "application/json", **site.a.headers}
    huge = feedback(site.action_a, "proceeding", details=["x" * 70_000])
    refused(w.client.post(path, json=huge, headers=site.a.headers), 413, "larger than")
    for content, fragment in (
            (b"{", "not valid JSON"),
            (b"[]", "must be a JSON object"),
            (b'{"status": {"execution": NaN}}', "not valid JSON"),
            (b'{"status": {"execution": "closed"}, "status": {}}', "more than once"),
            (b'{"status": {"execution": "exploded"}}', "status.execution"),
            (b'{"status": "closed"}', "feedback: status"),
            (b'{"status": {"execution": "closed", "result": {"finished": "none"}}}',
             "a closed action is"),
            (json.dumps(feedback(site.action_a, "proceeding",
                                 details=["d"] * 49)).encode(), "status.details"),
            (json.dumps(feedback(site.action_a, "proceeding", progress={"cnt": -1})).encode(),
             "progress.cnt"),
            (b'{"status": {"execution": "closed", "result": {"finished": "success"}, '
             b'"details": ["\\u0000"]}}', "NUL")):
        refused(w.client.post(path, content=content, headers=json_type), 400, fragment)
    refused(w.client.post(path, content=b"execution=closed",
                          headers={"Content-Type": "text/plain", **site.a.headers}), 415,
            "application/json")
    config = f"{w.base(site.a.id)}/configData"
    refused(w.client.put(config, json={"data": {"k": "v" * 300}}, headers=site.a.headers), 400,
            "configData")
    refused(w.client.put(config, json={"data": {f"k{i}": "v" for i in range(65)}},
                         headers=site.a.headers), 400, "configData: data")
    refused(w.client.put(config, json={"data": {"k": 1}}, headers=site.a.headers), 400,
            "configData: data.k")
    unchanged.check()


def test_ddi_junk_action_ids_and_controller_ids_are_refused(site: Site) -> None:
    w, unchanged = site.world, Unchanged(site)
    for action in ("abc", "0", "99999999999", "-1", "1e3"):
        response = w.client.get(f"{w.base(site.a.id)}/deploymentBase/{action}",
                                headers=site.a.headers)
        refused(response, 400, "actionId in the path")
    response = w.client.get("/DEFAULT/controller/v1/a%00b", headers=site.a.headers)
    refused(response, 400, "controller_id in the path")
    unchanged.check()


def test_ddi_feedback_and_config_data_floods_are_rate_limited(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    quotas = Quotas(events_per_minute=3, inventory_per_minute=2)
    with ddi_world(tmp_path_factory.mktemp("ddi-flood"), quotas=quotas) as world:
        device = world.register()
        world.deploy(world.release(), device)
        number = world.action(device)
        url = f"{world.base(device.id)}/deploymentBase/{number}/feedback"
        codes = [world.client.post(url, json=feedback(number, "scheduled"),
                                   headers=device.headers).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        flood = world.client.post(url, json=feedback(number, "closed", "failure"),
                                  headers=device.headers)
        refused(flood, 429, "too many events")
        assert flood.headers["retry-after"].isdigit()
        assert world.states(device.id) == ["notified"]
        config = f"{world.base(device.id)}/configData"
        codes = [world.client.put(config, json={"data": {"n": str(i)}},
                                  headers=device.headers).status_code for i in range(3)]
        assert codes == [200, 200, 429]
        assert world.device(device.id)["hardware"] == {"n": "1"}
