"""GET /metrics after known traffic, the shard-side tallies, multiprocess mode, and the
Grafana dashboard against a real scrape.

The session server is shared with other tests, so counters are compared before and
after, and the money is in an asset code only this module uses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families

from opay.observability import metrics
from opay.observability.tally import ShardTally
from tests.ilp_support import Connection

pytestmark = pytest.mark.anyio

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "opay.json"
SHARDS = 2  # tests/support.py OpayServer runs OPAY_SHARDS=2
# The sample names a family of each type exposes (the parser names counters without _total).
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}


class Scrape:
    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels`."""
        return sum(s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def where(self, name: str, test) -> float:
        return sum(s.value for s in self.samples if s.name == name and test(s.labels))

    def sample_names(self) -> set[str]:
        return {f.name + suffix for f in self.families.values() for suffix in SUFFIXES.get(f.type, ("",))}


async def scrape(http: httpx.AsyncClient, server) -> Scrape:
    answer = await http.get(f"{server.operator_url}/metrics")  # no operator token: scrapers have none
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4, answer.headers
    return Scrape(answer.text)


async def until(http, server, check, timeout: float = 30.0) -> Scrape:
    """Scrape until `check(scrape)` holds (settlement and timers run after the answers)."""
    with anyio.fail_after(timeout):
        while True:
            found = await scrape(http, server)
            if check(found):
                return found
            await anyio.sleep(0.2)


def route_is(suffix: str):
    return lambda labels: labels.get("route", "").endswith(suffix)


def money(code: str, scale: int, value: int) -> dict:
    return {"value": str(value), "assetCode": code, "assetScale": scale}


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_known_traffic_moves_the_counters_by_exactly_that(world) -> None:
    http, server, operator = world.http, world.server, world.operator
    code = "M" + uuid.uuid4().hex[:8].upper()  # this test's own asset: its money series start at zero
    tag = uuid.uuid4().hex[:8]
    usd_receiver = world.receiver  # ILP credentials are only issued in the link's asset, USD/2 here
    world.receiver = await operator.wallet_address(f"metrics-{tag}", code, 2, "Metrics")
    sender = await operator.wallet_address(f"metrics-sender-{tag}", code, 2, "Metrics sender")
    token = await world.token()
    usd_payment = (await world.create_payment(token, walletAddress=usd_receiver["id"], incomingAmount=money("USD", 2, 1000))).json()
    before = await scrape(http, server)

    # N signed creates; one of them expires in a second, so a timer fires.
    n = 3
    payments = []
    for i in range(n):
        extra = {"expiresAt": rfc3339(datetime.now(timezone.utc) + timedelta(seconds=1))} if i == n - 1 else {}
        created = await world.create_payment(token, incomingAmount=money(code, 2, 1000), **extra)
        assert created.status_code == 201, created.text
        payments.append(created.json())

    # M operator credits, then one replay and one refusal (past incomingAmount).
    amounts = [100, 250, 7]
    for i, amount in enumerate(amounts):
        credited = await operator.credit(payments[i % 2]["id"], str(amount), f"credit-{tag}-{i}")
        assert credited.status_code == 200, credited.text
    replay = await operator.credit(payments[0]["id"], str(amounts[0]), f"credit-{tag}-0")
    assert replay.status_code == 200, replay.text
    refused = await operator.credit(payments[1]["id"], "5000", f"credit-{tag}-refused")
    assert refused.status_code == 409, refused.text
    refused_code = refused.json()["error"]["code"]

    # ILP: a peer lends its incoming token (its url is never called: nothing is routed to it),
    # one packet is fulfilled and one unreadable body is rejected F01.
    peer_token = f"metrics-peer-{tag}-secret"
    peer = {"name": f"metrics-{tag}", "url": "https://1.1.1.1/ilp", "outgoingToken": f"out-{tag}", "incomingToken": peer_token}
    added = await http.post(
        f"{server.operator_url}/peers",
        json={**peer, "assetCode": "USD", "assetScale": 2, "routes": [f"test.metrics{tag}"]},
        headers=server.operator_headers,
    )
    assert added.status_code == 201, added.text
    connection = Connection.to(http, server.public_url, usd_payment, bearer=peer_token)
    packet = 40
    assert (await connection.send(packet)).code == "fulfill"
    garbage = await connection.post(b"\x0c\x01")
    assert garbage.status_code == 200

    # A local outgoing payment, settled by a credit to payments[1].
    outgoing_token = await world.outgoing_token({"debitAmount": money(code, 2, 1000)}, wallet=sender)
    debit = 120
    paid = await world.client.request(
        "POST",
        f"{server.public_url}/outgoing-payments",
        json={"walletAddress": sender["id"], "incomingPayment": payments[1]["id"], "debitAmount": money(code, 2, debit)},
        token=outgoing_token,
    )
    assert paid.status_code == 201, paid.text

    def delta(after: Scrape, name: str, **labels: str) -> float:
        return after.total(name, **labels) - before.total(name, **labels)

    after = await until(
        http,
        server,
        lambda s: s.total("opay_settlements_total", kind="local", outcome="completed") > before.total("opay_settlements_total", kind="local", outcome="completed")
        and s.total("opay_timer_lag_seconds_count") > before.total("opay_timer_lag_seconds_count"),
    )

    # Credits by source and outcome, counted by the shards.
    assert delta(after, "opay_credits_total", source="operator", outcome="credited") == len(amounts)
    assert delta(after, "opay_credits_total", source="operator", outcome="replayed") == 1
    assert delta(after, "opay_credits_total", source="operator", outcome="refused", code=refused_code) == 1
    assert delta(after, "opay_credits_total", source="ilp", outcome="credited") == 1
    assert delta(after, "opay_credits_total", source="settlement", outcome="credited") == 1
    # Money per asset: exactly what was credited and settled, in minor units.
    assert after.total("opay_money_credited_minor_units_total", asset_code=code, asset_scale="2") == sum(amounts) + debit
    assert delta(after, "opay_money_credited_minor_units_total", asset_code="USD", asset_scale="2") == packet
    assert after.total("opay_money_settled_minor_units_total", asset_code=code, asset_scale="2") == debit
    assert delta(after, "opay_settlements_total", kind="local", outcome="completed") == 1

    # ILP packets received, by outcome.
    assert delta(after, "opay_ilp_packets_total", direction="received", outcome="fulfilled") == 1
    assert delta(after, "opay_ilp_packets_total", direction="received", outcome="rejected", code="F01") == 1

    # Histograms moved: shard calls from the router, the shards' group commits, the timer.
    assert delta(after, "opay_shard_batch_size_count") >= 1 and delta(after, "opay_shard_batch_size_sum") >= 1
    assert delta(after, "opay_shard_call_duration_seconds_count", outcome="ok") >= 1
    assert delta(after, "opay_redis_write_duration_seconds_count") >= 1
    assert after.total("opay_timer_lag_seconds_count") > before.total("opay_timer_lag_seconds_count")

    # Every shard answered, with its own series.
    for shard in map(str, range(SHARDS)):
        assert after.total("opay_shard_up", shard=shard) == 1
        assert [s for s in after.samples if s.name == "opay_shard_active_entities" and s.labels["shard"] == shard]
        assert [s for s in after.samples if s.name == "opay_redis_write_duration_seconds_count" and s.labels["shard"] == shard]
        assert [s for s in after.samples if s.name == "opay_shard_start_time_seconds" and s.labels["shard"] == shard]
    assert after.total("opay_shard_active_entities") >= 1
    # The webhook queue, read from Redis (this server sends no webhooks: both empty).
    assert after.total("opay_redis_up") == 1
    assert after.total("opay_webhook_events", state="pending") == 0 and after.total("opay_webhook_events", state="dead") == 0

    # Requests by route and status (the ASGI middleware records every answer).
    creates = lambda s: s.where("opay_http_requests_total", lambda l: route_is("/incoming-payments")(l) and l["method"] == "POST" and l["status"] == "201")
    assert creates(after) - creates(before) == n
    credits_200 = lambda s: s.where("opay_http_requests_total", lambda l: route_is("/credits")(l) and l["status"] == "200")
    credits_409 = lambda s: s.where("opay_http_requests_total", lambda l: route_is("/credits")(l) and l["status"] == "409")
    assert credits_200(after) - credits_200(before) == len(amounts) + 1
    assert credits_409(after) - credits_409(before) == 1
    latency = lambda s: s.where("opay_http_request_duration_seconds_count", route_is("/incoming-payments"))
    assert latency(after) - latency(before) >= n


async def test_the_dashboard_only_asks_for_metrics_a_real_server_exposes(world) -> None:
    dashboard = json.loads(DASHBOARD.read_text())  # valid JSON, or this fails
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = []
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        exprs += [target["expr"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bopay_[a-z0-9_]+", expr)}
    exposed = (await scrape(world.http, world.server)).sample_names()
    assert used - exposed == set()
    # Prometheus itself asks for OpenMetrics first, and gets it.
    open_metrics = await world.http.get(f"{world.server.operator_url}/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text") and open_metrics.text.endswith("# EOF\n")
    # Each family opay declares has a panel.
    declared = {name for name in exposed if name.startswith("opay_") and not name.endswith("_created")}
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in declared}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}
    assert families - shown == set()


def test_a_shard_that_does_not_answer_has_up_0_and_no_other_series() -> None:
    tally = ShardTally()
    tally.write_seconds.observe(0.003)
    tally.write_seconds.observe(7.0)  # above every bound: +Inf only
    tally.credit("operator", "credited", "", ("USD", 2), 150)
    # Kept exactly in Python ints; rendered once as the nearest float64 (2^60 + 1 -> 2^60).
    tally.credit("ilp", "credited", "", ("WEI", 18), 2**60)
    tally.credit("ilp", "credited", "", ("WEI", 18), 1)
    assert tally.snapshot()["credited"][("WEI", 18)] == 2**60 + 1
    answered = {"active": 3, "quarantined": 0, "metrics": tally.snapshot()}
    text = metrics.exposition([metrics.ShardCollector([answered, None]), metrics.OutboxCollector(None)])[0].decode()
    found = Scrape(text)
    assert found.total("opay_shard_up", shard="0") == 1 and found.total("opay_shard_up", shard="1") == 0
    assert {s.labels["shard"] for s in found.samples if s.name.startswith(("opay_shard_active", "opay_redis_write", "opay_credits"))} == {"0"}
    assert found.total("opay_redis_write_duration_seconds_bucket", shard="0", le="0.005") == 1
    assert found.total("opay_redis_write_duration_seconds_bucket", shard="0", le="+Inf") == 2
    assert found.total("opay_redis_write_duration_seconds_count", shard="0") == 2
    assert found.total("opay_money_credited_minor_units_total", asset_code="WEI") == float(2**60)
    assert found.total("opay_money_credited_minor_units_total", asset_code="USD", asset_scale="2") == 150
    # Redis did not answer: opay_redis_up 0, and no queue depth rather than a false 0.
    assert found.total("opay_redis_up") == 0 and not [s for s in found.samples if s.name == "opay_webhook_events"]


_WRITER = """
import os, sys
from opay.observability import metrics
metrics.observe_request("public", "POST", "/incoming-payments", 201, 0.02)
metrics.observe_ilp_packet("sent", "")
metrics.observe_ilp_packet("sent", "zz!")  # not an ILP code shape: counted as "other"
metrics.WEBHOOKS_IN_FLIGHT.set(int(sys.argv[1]))
print(os.getpid())
"""
_SCRAPER = """
import sys
from opay.observability import metrics
sys.stdout.buffer.write(metrics.exposition([metrics.OutboxCollector((3, 1))])[0])
"""


def test_multiprocess_mode_sums_every_process_in_one_scrape(tmp_path: Path) -> None:
    """Two front-end processes write into one PROMETHEUS_MULTIPROC_DIR; a third process's
    scrape renders both, summed (counters and histograms; the gauge as livesum)."""
    directory = tmp_path / "prom"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}

    def run(code: str, *args: str) -> bytes:
        return subprocess.run([sys.executable, "-c", code, *args], env=env, check=True, capture_output=True, timeout=60).stdout

    pids = [int(run(_WRITER, str(in_flight))) for in_flight in (2, 5)]
    assert len(list(directory.glob("*.db"))) >= 2  # each process its own files
    found = Scrape(run(_SCRAPER).decode())
    assert found.total("opay_http_requests_total", route="/incoming-payments", status="201") == 2
    assert found.total("opay_http_request_duration_seconds_count", route="/incoming-payments") == 2
    assert found.total("opay_ilp_packets_total", direction="sent", outcome="fulfilled") == 2
    assert found.total("opay_ilp_packets_total", direction="sent", outcome="rejected", code="other") == 2
    assert found.total("opay_webhook_deliveries_in_flight") == 7
    assert found.total("opay_webhook_events", state="pending") == 3  # scrape-time collectors still render
    assert not [s for s in found.samples if s.name.startswith("process_")]  # per-process collectors stay out

    # A process that exits is marked dead by whoever started it: its live gauge goes, its counters stay.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pids[0], str(directory))
    found = Scrape(run(_SCRAPER).decode())
    assert found.total("opay_webhook_deliveries_in_flight") == 5
    assert found.total("opay_http_requests_total", route="/incoming-payments") == 2
