"""The sidecar's HTTP/JSON API, driven with http.client over the Unix socket."""

from __future__ import annotations

import json

from sidecar_helpers import ServerProcess, unique


def test_health_answers_with_namespaces(sidecar_server: ServerProcess) -> None:
    status, _, body = sidecar_server.http("GET", "/health")
    assert status == 200
    assert body["status"] == "ok"
    assert {"default", "tight"} <= set(body["namespaces"])


def test_acquire_commit_and_status(sidecar_server: ServerProcess) -> None:
    key = unique("tenant")
    status, _, decision = sidecar_server.http("POST", "/v1/acquire", {"key": key, "amounts": {"tokens": 1200}})
    assert status == 200
    assert decision["allowed"] is True
    assert decision["reserved"] == {"requests": 1, "tokens": 1200, "concurrency": 1}
    assert isinstance(decision["reservation_id"], str) and len(decision["reservation_id"]) == 32
    status, _, body = sidecar_server.http(
        "POST", "/v1/commit", {"reservation_id": decision["reservation_id"], "usage": {"tokens": 900}}
    )
    assert (status, body) == (200, {"ok": True})
    status, _, body = sidecar_server.http("GET", f"/v1/status?key={key}")
    assert status == 200
    limits = {entry["dimension"]: entry for entry in body["limits"]}
    assert limits["concurrency"]["used"] == 0  # released by the commit
    assert limits["tokens"]["used"] <= 900


def test_cancel_refunds(sidecar_server: ServerProcess) -> None:
    key = unique()
    _, _, decision = sidecar_server.http(
        "POST", "/v1/acquire", {"namespace": "tight", "key": key, "amounts": {"tokens": 1000}}
    )
    assert decision["allowed"]
    status, _, _ = sidecar_server.http("POST", "/v1/cancel", {"reservation_id": decision["reservation_id"]})
    assert status == 200
    _, _, again = sidecar_server.http(
        "POST", "/v1/acquire", {"namespace": "tight", "key": key, "amounts": {"tokens": 1000}}
    )
    assert again["allowed"], "the cancelled 1000 tokens were refunded"
    sidecar_server.http("POST", "/v1/cancel", {"reservation_id": again["reservation_id"]})


def test_denied_acquire_is_429_with_retry_after(sidecar_server: ServerProcess) -> None:
    key = unique()
    for _ in range(5):
        status, _, decision = sidecar_server.http("POST", "/v1/acquire", {"namespace": "tight", "key": key})
        assert status == 200
        sidecar_server.http("POST", "/v1/commit", {"reservation_id": decision["reservation_id"]})
    status, headers, decision = sidecar_server.http("POST", "/v1/acquire", {"namespace": "tight", "key": key})
    assert status == 429
    assert decision["allowed"] is False
    assert decision["limited_by"] == "requests"
    assert decision["limited_key"] == key
    assert decision["reservation_id"] is None
    assert int(headers["Retry-After"]) >= int(decision["retry_after"])


def test_peek_charges_nothing(sidecar_server: ServerProcess) -> None:
    key = unique()
    for _ in range(3):
        status, _, decision = sidecar_server.http("POST", "/v1/peek", {"namespace": "tight", "key": key})
        assert status == 200 and decision["allowed"]
    _, _, body = sidecar_server.http("GET", f"/v1/status?namespace=tight&key={key}")
    assert all(entry["used"] == 0 for entry in body["limits"])


def test_errors_are_json_with_status_codes(sidecar_server: ServerProcess) -> None:
    http = sidecar_server.http
    assert http("POST", "/v1/acquire", {"namespace": "nope", "key": "a"})[0] == 404
    status, _, body = http("POST", "/v1/acquire", {"namespace": "tight", "key": "a", "amounts": {"tokens": 10**6}})
    assert (status, body["error"]) == (422, "ExceedsCapacity")
    status, _, body = http("POST", "/v1/acquire", {"key": "a", "amounts": {"tokens": -1}})
    assert (status, body["error"]) == (400, "InvalidInput")
    status, _, body = http("POST", "/v1/acquire", {"key": 5})
    assert (status, body["error"]) == (400, "BadRequest")
    assert "key" in body["message"]
    status, _, body = http("POST", "/v1/acquire", {})
    assert (status, body["error"]) == (400, "BadRequest")
    status, _, body = http("POST", "/v1/commit", {"reservation_id": "0" * 32})
    assert (status, body["error"]) == (404, "UnknownReservation")
    status, _, body = http("POST", "/v1/commit", {"reservation_id": 12345})
    assert (status, body["error"]) == (400, "BadRequest")
    from sidecar_helpers import http_request

    status, _, body = http_request(sidecar_server.socket, "POST", "/v1/acquire", raw=b"{not json")
    assert (status, body["error"]) == (400, "BadRequest")
    status, _, body = http_request(sidecar_server.socket, "POST", "/v1/acquire", raw=b"[1, 2]")
    assert status == 400
    assert http("GET", "/v1/status")[0] == 400
    assert http("GET", "/no/such/path")[0] == 404


def test_register_a_namespace_then_use_it(sidecar_server: ServerProcess) -> None:
    namespace = unique("ns")
    status, _, body = sidecar_server.http(
        "POST", "/v1/register", {"namespace": namespace, "limits": {"requests": "2/h"}}
    )
    assert status == 200
    assert body["source"] == "client"
    assert body["dimensions"] == ["requests"]
    results = [sidecar_server.http("POST", "/v1/acquire", {"namespace": namespace, "key": "k"})[0] for _ in range(3)]
    assert results == [200, 200, 429]
    status, _, body = sidecar_server.http(
        "POST", "/v1/register", {"namespace": namespace, "limits": {"requests": "nonsense"}}
    )
    assert (status, body["error"]) == (400, "ConfigError")


def test_file_namespace_ignores_registrations(sidecar_server: ServerProcess) -> None:
    status, _, body = sidecar_server.http(
        "POST", "/v1/register", {"namespace": "tight", "limits": {"requests": "1000/s"}}
    )
    assert status == 200
    assert body["source"] == "file"
    assert body["rules"]["*"]["requests"] == "5/h"


def test_metrics_exposition(sidecar_server: ServerProcess) -> None:
    sidecar_server.http("POST", "/v1/acquire", {"key": unique()})
    status, headers, text = sidecar_server.http("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert "# TYPE llmthrottle_decisions_total counter" in text
    assert 'llmthrottle_decisions_total{namespace="default",outcome="allowed"}' in text
    assert 'llmthrottle_request_seconds_bucket{protocol="http",op="acquire",le="+Inf"}' in text
    assert "llmthrottle_reservations_held" in text
    for line in text.splitlines():
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2, line


def test_openapi_describes_every_route(sidecar_server: ServerProcess) -> None:
    status, _, spec = sidecar_server.http("GET", "/openapi.json")
    assert status == 200
    assert spec["openapi"].startswith("3.")
    assert {"/v1/acquire", "/v1/commit", "/v1/cancel", "/v1/status", "/health", "/metrics"} <= set(spec["paths"])
    json.dumps(spec)


def test_keep_alive_connection_serves_many_requests(sidecar_server: ServerProcess) -> None:
    from sidecar_helpers import UnixHTTPConnection

    connection = UnixHTTPConnection(sidecar_server.socket)
    try:
        for _ in range(20):
            connection.request("GET", "/health")
            response = connection.getresponse()
            assert response.status == 200
            response.read()
    finally:
        connection.close()
