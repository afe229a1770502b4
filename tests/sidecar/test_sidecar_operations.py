"""Running the sidecar: policy file, reload, shutdown, socket handling, access control, logs."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest
from sidecar_helpers import RawClient, start_server

import llmthrottle as lt
from llmthrottle.sidecar.config import DEFAULT_RULES, load_config, parse_config
from llmthrottle.sidecar.protocol import ERROR, OK, Op


def _poll(predicate, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Waits until `predicate()` holds (a liveness bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


# ------------------------------------------------------------------ the policy file


def test_config_file_is_parsed() -> None:
    config = parse_config(
        """
[server]
socket = "/tmp/x.sock"
socket_mode = "0600"
reservation_timeout = 30
[state]
kind = "in-process"
[ledger]
path = "/tmp/ledger"
[limits."*"]
requests = "500/min"
[namespaces.batch.limits."team:*"]
tokens = "1M/min"
[access]
1000 = ["user:*"]
"*" = ["public:*"]
""",
        "llmthrottle.toml",
    )
    assert (config.socket, config.socket_mode, config.reservation_timeout_s) == ("/tmp/x.sock", 0o600, 30.0)
    assert config.ledger_path == "/tmp/ledger"
    assert config.namespaces == {"default": {"*": {"requests": "500/min"}}, "batch": {"team:*": {"tokens": "1M/min"}}}
    assert config.access == {1000: ["user:*"]} and config.access_default == ["public:*"]


def test_no_file_means_the_embedded_default() -> None:
    assert load_config(None).namespaces == {"default": DEFAULT_RULES}
    assert parse_config("").namespaces == {"default": DEFAULT_RULES}


@pytest.mark.parametrize(
    "text, message",
    [
        ("[budgetz]\nx = 1\n", r"llmthrottle.toml:1: budgetz: unknown table"),
        ("[server]\nsocket = 'a'\nsocket_mode = 'rw'\n", r"llmthrottle.toml:3: server.socket_mode: must be an octal"),
        ("[server]\nport = 80\n", r"llmthrottle.toml:2: server.port: unknown key"),
        (
            "[state]\nkind = 'memcached'\n",
            r"llmthrottle.toml:2: state.kind: must be one of 'in-process', 'shared', 'redis'",
        ),
        ("[state]\ncapacity = 0\n", r"llmthrottle.toml:2: state.capacity: must be a positive integer, not 0"),
        (
            "[state]\nkind = 'in-process'\ncapacity = 100\n",
            r'state.capacity: sizes a shared table: it needs kind = "shared"',
        ),
        ('[limits."*"]\nrequests = "5/fortnight"\n', r'llmthrottle.toml:2: limits."\*".requests: .*fortnight'),
        ('\n[limits."user:*"]\nrequests = 5\n', r'llmthrottle.toml:3: limits."user:\*".requests: .*requests'),
        ('[limits."*"]\nrequests = "5/s"\nconcurency = 20\n', r"toml:3: .*concurency.*did you mean 'concurrency'"),
        (
            "[server]\nmax_reservation = 5\n",
            r"toml:2: server.max_reservation: unknown key \(did you mean 'max_reservations'\?\)",
        ),
        ("[servr]\n", r"servr: unknown table \(did you mean 'server'\?\)"),
        ("[namespaces.x]\nrequests = '5/s'\n", r"llmthrottle.toml:1: namespaces.x: must hold exactly one table"),
        (
            "[access]\nnobody_by_that_name_x = ['*']\n",
            r"llmthrottle.toml:2: access.nobody_by_that_name_x: no such user",
        ),
        ("[access]\n1000 = 'user:*'\n", r"access.1000: must be a list of key patterns"),
        ("[server\n", r"invalid TOML"),
    ],
)
def test_config_errors_name_the_key_and_line(text: str, message: str) -> None:
    with pytest.raises(lt.ConfigError, match=message):
        parse_config(text, "llmthrottle.toml")


def test_shared_state_without_the_build_is_a_clear_error() -> None:
    from llmthrottle.sidecar.service import Service

    config = parse_config("[state]\nkind = 'shared'\n")
    if hasattr(lt, "SharedState"):
        pytest.skip("this build has SharedState")
    with pytest.raises(lt.ConfigError, match="needs llmthrottle.SharedState"):
        Service(config)


def test_check_and_help(directory: str) -> None:
    path = os.path.join(directory, "llmthrottle.toml")
    with open(path, "w") as file:
        file.write('[limits."*"]\nrequests = "5/s"\n')
    run = [sys.executable, "-m", "llmthrottle.cli", "serve"]
    checked = subprocess.run([*run, "--config", path, "--check"], capture_output=True, text=True, check=True)
    assert "OK" in checked.stdout
    with open(path, "w") as file:
        file.write('[limits."*"]\nrequests = "5/fortnight"\n')
    bad = subprocess.run([*run, "--config", path, "--check"], capture_output=True, text=True)
    assert bad.returncode == 2 and "llmthrottle.toml:2" in bad.stderr
    usage = subprocess.run([*run, "--help"], capture_output=True, text=True, check=True).stdout
    for words in ("--socket", "--config", "SIGHUP", "curl --unix-socket"):
        assert words in usage


# ------------------------------------------------------------------ reload, shutdown, ledger


def test_reload_keeps_counters_and_applies_new_limits(directory: str) -> None:
    # The reference: the same changes made to an in-process limiter with set_limits.
    local = lt.Limiter({"requests": "3/h"})
    expected = [bool(local.try_acquire("k")) for _ in range(2)]
    local.set_limits({"requests": "4/h"})
    expected_after_sighup = [bool(local.try_acquire("k")) for _ in range(3)]
    local.set_limits({"requests": "6/h"})
    expected_after_http = [bool(local.try_acquire("k")) for _ in range(3)]
    assert expected_after_sighup.count(True) < 3, "a fresh counter would admit all three"

    server = start_server(directory, '[limits."*"]\nrequests = "3/h"\n')

    def admitted(count: int) -> list[bool]:
        return [server.http("POST", "/v1/acquire", {"key": "k"})[0] == 200 for _ in range(count)]

    try:
        assert admitted(2) == expected
        server.write_config('[limits."*"]\nrequests = "4/h"\n')
        server.proc.send_signal(signal.SIGHUP)
        _poll(lambda: "policy reloaded" in server.log(), "SIGHUP reload")
        assert admitted(3) == expected_after_sighup
        server.write_config('[limits."*"]\nrequests = "6/h"\n')
        status, _, body = server.http("POST", "/v1/reload")
        assert (status, body["reloaded"]) == (200, True)
        assert admitted(3) == expected_after_http
        server.write_config('[limits."*"]\nrequests = "oops"\n')
        status, _, body = server.http("POST", "/v1/reload")
        assert (status, body["error"]) == (400, "ConfigError")
        assert admitted(1) == [bool(local.try_acquire("k"))], "the old policy stays in force"
    finally:
        server.stop()


def test_usage_that_meets_a_full_table_is_still_recorded(directory: str) -> None:
    from llmthrottle.ledger import Ledger
    from llmthrottle.sidecar.service import Service

    name = f"lt-full-{os.getpid()}-{time.monotonic_ns()}"
    config = parse_config(
        f'[state]\nkind = "shared"\nname = "{name}"\ncapacity = 1\n'
        '[limits."*"]\nrequests = "1000/min"\ntokens = "1000/min"\n'
    )
    assert config.state_capacity == 1
    service = Service(config, ledger=Ledger(os.path.join(directory, "ledger")))
    try:
        _, reservation_id = service.acquire("default", "k", {"requests": 1}, 0)
        assert reservation_id is not None
        with pytest.raises(lt.StateError, match="is full"):  # other keys take every slot
            for n in range(1000):
                service.acquire("default", f"filler-{n}", {"requests": 1}, 0)
        # No tokens were reserved, and there is no room left for the key's tokens cell.
        with pytest.raises(lt.StateError, match="is full"):
            service.commit(reservation_id, {"tokens": 5, "model": "m"})
        assert reservation_id not in service.held  # settled: never committed twice
        records = list(service.ledger.records())
        assert [(r.model, r.tags["key"], r.tags["usage"]) for r in records] == [
            ("m", "k", {"requests": 1, "tokens": 5})
        ]
    finally:
        service.close()
        lt.SharedState.remove(name)


def test_sigterm_under_load_loses_no_ledger_record(directory: str) -> None:
    ledger_dir = os.path.join(directory, "ledger")
    server = start_server(directory, f'[ledger]\npath = "{ledger_dir}"\n[limits."*"]\nrequests = "1M/s"\n')
    acknowledged = [0] * 3
    started = threading.Barrier(4)

    def load(index: int) -> None:
        client = RawClient(server.socket)
        started.wait()
        try:
            for i in range(10**9):
                answer = client.call([i, Op.ACQUIRE, "default", f"tenant:{index}", {}, 0.0])
                assert answer[1] == OK
                answer = client.call(
                    [
                        i,
                        Op.COMMIT,
                        answer[2][7],
                        {"model": "gpt-4o", "tenant": f"t{index}", "cost_micros": 7, "input_tokens": 3},
                    ]
                )
                assert answer[1] == OK
                acknowledged[index] += 1
        except (EOFError, OSError):
            pass  # the server went away mid-load: expected
        finally:
            client.close()

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    started.wait()
    _poll(lambda: sum(acknowledged) >= 300, "some load")
    assert server.stop(signal.SIGTERM) == 0
    for thread in threads:
        thread.join()
    from llmthrottle.ledger import Ledger

    with Ledger(ledger_dir) as ledger:
        recorded = len(ledger)
        assert ledger.spend() == 7 * recorded
    # Every acknowledged commit is recorded; at most one per client was recorded but its answer
    # lost with the connection.
    assert sum(acknowledged) <= recorded <= sum(acknowledged) + len(threads)
    assert "stopped" in server.log()


def test_unsettled_reservations_expire(directory: str) -> None:
    server = start_server(directory, '[server]\nreservation_timeout = 0.5\n[limits."*"]\nconcurrency = 1\n')
    try:
        status, _, decision = server.http("POST", "/v1/acquire", {"key": "k"})
        assert status == 200
        assert server.http("POST", "/v1/acquire", {"key": "k"})[0] == 429

        def released() -> bool:
            return server.http("GET", "/v1/status?key=k")[2]["limits"][0]["used"] == 0

        _poll(released, "the expired reservation's slot comes back")
        status, _, body = server.http("POST", "/v1/commit", {"reservation_id": decision["reservation_id"]})
        assert (status, body["error"]) == (404, "UnknownReservation")
        assert 'outcome="expired"' in server.http("GET", "/metrics")[2]
    finally:
        server.stop()


# ------------------------------------------------------------------ the socket


def test_socket_mode_and_stale_socket(directory: str) -> None:
    path = os.path.join(directory, "lt.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a crashed server's leftover: the file stays, nothing answers
    server = start_server(directory, "[server]\nsocket_mode = '0600'\n")
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        second = subprocess.run(
            [sys.executable, "-m", "llmthrottle.sidecar", "--socket", path], capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1
        assert "another llmthrottle server" in second.stderr or "already answering" in second.stderr
        assert server.http("GET", "/health")[0] == 200, "the first server is untouched"
    finally:
        server.stop()
    assert not os.path.exists(path), "a clean shutdown removes the socket"


def test_refuses_to_replace_a_file_that_is_not_a_socket(directory: str) -> None:
    path = os.path.join(directory, "lt.sock")
    with open(path, "w") as file:
        file.write("precious")
    result = subprocess.run(
        [sys.executable, "-m", "llmthrottle.sidecar", "--socket", path], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "is not a socket" in result.stderr
    with open(path) as file:
        assert file.read() == "precious"


# ------------------------------------------------------------------ access, logs


def test_peer_credentials_restrict_keys(directory: str) -> None:
    uid = os.getuid()
    server = start_server(directory, f'[access]\n{uid} = ["user:*", "team:a"]\n')
    try:
        assert server.http("POST", "/v1/acquire", {"key": "user:1"})[0] == 200
        assert server.http("POST", "/v1/acquire", {"key": ["user:1", "team:a"]})[0] == 200
        status, _, body = server.http("POST", "/v1/acquire", {"key": ["user:1", "team:b"]})
        assert (status, body["error"]) == (403, "AccessDenied")
        assert f"uid {uid}" in body["message"] and "team:b" in body["message"]
        client = RawClient(server.socket)
        try:
            assert client.call([1, Op.ACQUIRE, "default", "user:2", {}, 0.0])[1] == OK
            answer = client.call([2, Op.ACQUIRE, "default", "admin:1", {}, 0.0])
            assert answer[1:] == [ERROR, ["AccessDenied", f"uid {uid} may not use key 'admin:1'"]]
            assert client.call([3, Op.STATUS, "default", "admin:1"])[2][0] == "AccessDenied"
        finally:
            client.close()
        from llmthrottle.client import Sidecar

        sidecar = Sidecar(server.socket)
        try:
            lim = lt.Limiter(None, state=sidecar)
            assert lim.try_acquire("user:3")
            with pytest.raises(PermissionError, match="may not use key 'team:z'"):
                lim.try_acquire("team:z")
        finally:
            sidecar.close()
    finally:
        server.stop()


def test_other_uids_are_denied_when_not_listed(directory: str) -> None:
    other = os.getuid() + 12345
    server = start_server(directory, f'[access]\n{other} = ["*"]\n')
    try:
        status, _, body = server.http("POST", "/v1/acquire", {"key": "user:1"})
        assert (status, body["error"]) == (403, "AccessDenied")
    finally:
        server.stop()


def test_json_logs(directory: str) -> None:
    server = start_server(directory, None, ("--log-format", "json"))
    server.stop()
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert any("serving on" in entry["message"] for entry in lines)
    assert {"time", "level", "logger", "message"} <= set(lines[0])


# ------------------------------------------------------------------ tenancy and poison


def test_a_reservation_can_be_settled_only_by_the_uid_that_made_it(directory: str) -> None:
    from llmthrottle.ledger import Ledger
    from llmthrottle.sidecar.service import Service, ServiceError

    config = parse_config('[limits."*"]\nrequests = "1000/min"\nconcurrency = 1\n')
    service = Service(config, ledger=Ledger(os.path.join(directory, "ledger")))
    try:
        _, mine = service.acquire("default", "tenant:acme", {"requests": 1}, 0, owner=0)
        assert mine is not None
        # Another uid guesses the id: as if it did not exist, and the reservation is untouched.
        for settle in (
            lambda: service.cancel(mine, owner=65534),
            lambda: service.commit(mine, {"requests": 5, "cost_micros": 10**6, "tenant": "forged"}, owner=65534),
        ):
            with pytest.raises(ServiceError) as refused:
                settle()
            assert refused.value.kind == "UnknownReservation"
        assert mine in service.held
        service.commit(mine, {"requests": 1}, owner=0)
        service.ledger.flush()
        # The tenant comes from the reservation's key (as Guard records it), never the forgery.
        assert [r.tenant for r in service.ledger.records()] == ["acme"]
    finally:
        service.close()


def test_a_commit_writes_only_ledger_columns_its_peer_may_use_as_keys(directory: str) -> None:
    from llmthrottle.ledger import Ledger
    from llmthrottle.sidecar.access import AccessPolicy
    from llmthrottle.sidecar.service import Service, ServiceError

    config = parse_config('[limits."*"]\nrequests = "1000/min"\n')
    service = Service(config, ledger=Ledger(os.path.join(directory, "ledger")))
    peer = AccessPolicy({65534: ["public:*", "team:public"]}, None).peer(1, 65534, 65534)
    try:
        _, mine = service.acquire("default", "public:x", {"requests": 1}, 0, owner=65534)
        for forged in ({"tenant": "acme"}, {"team": "payments"}, {"user": "root"}):
            with pytest.raises(ServiceError) as refused:
                service.commit(mine, {"requests": 1, "model": "m", **forged}, owner=65534, peer=peer)
            assert refused.value.kind == "AccessDenied"
            assert mine in service.held  # untouched: its owner may still commit it
        service.commit(mine, {"requests": 1, "model": "m", "team": "public"}, owner=65534, peer=peer)
        service.ledger.flush()
        assert [(r.tenant, r.team) for r in service.ledger.records()] == [(None, "public")]
    finally:
        service.close()


@pytest.mark.parametrize(
    "usage", [{"cost_micros": 2**63}, {"input_tokens": 10**13}, {"output_tokens": -1}, {"cost_micros": 1.5}]
)
def test_a_commit_the_ledger_cannot_hold_is_a_bad_request_and_poisons_nothing(
    directory: str, usage: dict[str, object]
) -> None:
    ledger_dir = os.path.join(directory, "ledger")
    server = start_server(directory, f'[ledger]\npath = "{ledger_dir}"\n[limits."*"]\nrequests = "1M/s"\n')
    client = RawClient(server.socket)
    try:
        admitted = client.call([1, Op.ACQUIRE, "default", "tenant:x", {}, 0.0])
        answer = client.call([2, Op.COMMIT, admitted[2][7], {"model": "gpt-4o", **usage}])
        assert answer[1] == ERROR and answer[2][0] == "BadRequest", answer
        # The reservation is still held: the caller may commit it correctly.
        assert client.call([3, Op.COMMIT, admitted[2][7], {"model": "gpt-4o", "cost_micros": 7}])[1] == OK
        for i in range(3):
            admitted = client.call([10 + i, Op.ACQUIRE, "default", "tenant:x", {}, 0.0])
            assert client.call([20 + i, Op.COMMIT, admitted[2][7], {"model": "m", "cost_micros": 1}])[1] == OK
    finally:
        client.close()
        returncode = server.stop()
    assert returncode == 0
    from llmthrottle.ledger import Ledger

    with Ledger(ledger_dir) as ledger:
        assert (len(ledger), ledger.spend()) == (4, 10)


def test_mass_expiry_is_done_in_bounded_slices(directory: str) -> None:
    from llmthrottle.sidecar.service import Service

    config = parse_config('[limits."*"]\nrequests = "1M/min"\n')
    assert config.max_reservations <= 100_000  # sized so no one client can stall the loop
    service = Service(config)
    try:
        for n in range(5):
            assert service.acquire("default", f"k{n}", {"requests": 1}, 0)[1] is not None
        later = time.monotonic() + config.reservation_timeout_s + 1
        assert [service.expire(later, limit=2) for _ in range(4)] == [2, 2, 1, 0]
        assert not service.held
    finally:
        service.close()


def test_a_cancelled_reservation_is_recorded_at_nothing(directory: str) -> None:
    from llmthrottle.ledger import Ledger
    from llmthrottle.sidecar.service import Service

    config = parse_config('[limits."*"]\nrequests = "1000/min"\n')
    service = Service(config, ledger=Ledger(os.path.join(directory, "ledger")))
    try:
        _, reservation_id = service.acquire("default", "tenant:acme", {"requests": 1}, 0)
        service.cancel(reservation_id)
        service.ledger.flush()
        assert [(r.outcome, r.cost_micros) for r in service.ledger.records()] == [("cancelled", 0)]
    finally:
        service.close()


def test_a_commit_with_a_model_and_tokens_but_no_cost_is_priced(directory: str) -> None:
    from llmthrottle.ledger import Ledger
    from llmthrottle.sidecar.service import Service

    config = parse_config('[limits."*"]\nrequests = "1000/min"\n')
    service = Service(config, ledger=Ledger(os.path.join(directory, "ledger")))
    try:
        for usage in (
            {"model": "gpt-4o-mini", "input_tokens": 1000, "output_tokens": 100},
            {"model": "no-such-model", "input_tokens": 5},
            {"model": "gpt-4o-mini", "input_tokens": 1000, "cost_micros": 3},
        ):
            _, reservation_id = service.acquire("default", "tenant:acme", {"requests": 1}, 0)
            service.commit(reservation_id, usage)
        service.ledger.flush()
        priced, unknown, given = service.ledger.records()
        assert (
            priced.cost_micros == lt.cost("gpt-4o-mini", {"prompt_tokens": 1000, "completion_tokens": 100}).total_micros
        )
        assert priced.cost_micros == 210 and "unpriced" not in priced.tags
        assert (unknown.cost_micros, unknown.tags["unpriced"]) == (0, True)
        assert given.cost_micros == 3  # a cost the caller gives is recorded as given
    finally:
        service.close()


def test_one_uid_cannot_hold_every_reservation(directory: str) -> None:
    from llmthrottle.sidecar.service import Service, ServiceError

    config = parse_config('[server]\nmax_reservations_per_uid = 3\n[limits."*"]\nrequests = "1M/min"\n')
    service = Service(config)
    try:
        mine = [service.acquire("default", f"public:{n}", {"requests": 1}, 0, owner=65534)[1] for n in range(3)]
        with pytest.raises(ServiceError) as refused:
            service.acquire("default", "public:x", {"requests": 1}, 0, owner=65534)
        assert refused.value.kind == "Overloaded" and "max_reservations_per_uid" in str(refused.value)
        assert (
            service.acquire("default", "tenant:acme", {"requests": 1}, 0, owner=0)[1] is not None
        )  # others still get in
        service.cancel(mine[0], owner=65534)
        assert service.acquire("default", "public:y", {"requests": 1}, 0, owner=65534)[1] is not None
    finally:
        service.close()


def test_one_uid_cannot_hold_every_concurrency_lease(directory: str) -> None:
    from llmthrottle.sidecar.service import Service, ServiceError

    name = f"slots-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    config = parse_config(
        f'[state]\nkind = "shared"\nname = "{name}"\nlease_capacity = 40\n'
        '[limits."*"]\nrequests = "1M/min"\nconcurrency = 1000\n'
    )
    service = Service(config)  # a quarter of 40 leases: 10 slots per uid
    try:
        mine = [service.acquire("default", f"public:{n}", {}, 0, owner=65534)[1] for n in range(8)]
        mine.append(service.acquire("default", ["public:a", "public:b"], {}, 0, owner=65534)[1])  # 2 slots
        with pytest.raises(ServiceError) as refused:
            service.acquire("default", "public:x", {}, 0, owner=65534)
        assert refused.value.kind == "Overloaded" and "max_slots_per_uid" in str(refused.value)
        assert service.acquire("default", "tenant:acme", {}, 0, owner=0)[1] is not None  # others still get in
        service.cancel(mine[-1], owner=65534)  # its two slots come back
        assert service.acquire("default", ["public:c", "public:d"], {}, 0, owner=65534)[1] is not None
    finally:
        service.close()
        lt.SharedState.remove(name)
    assert parse_config("[server]\nmax_slots_per_uid = 7\n").max_slots_per_uid == 7


def test_the_lease_table_is_sized_in_the_config() -> None:
    config = parse_config('[state]\nkind = "shared"\nlease_capacity = 100000\n')
    assert config.state_lease_capacity == 100_000
    with pytest.raises(lt.ConfigError, match="lease_capacity"):
        parse_config('[state]\nkind = "in-process"\nlease_capacity = 10\n')


def test_serve_prints_the_socket_it_would_use(directory: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "LLMTHROTTLE_SOCKET")}
    command = [sys.executable, "-m", "llmthrottle.cli", "serve", "--print-socket"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=directory, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"/tmp/llmthrottle-{os.getuid()}.sock")
    done = subprocess.run(
        [*command, "--socket", "/run/x/lt.sock"], capture_output=True, text=True, env=env, cwd=directory, timeout=60
    )
    assert done.stdout.strip() == "/run/x/lt.sock"


def test_metrics_count_what_the_ledger_quarantined(directory: str) -> None:
    from llmthrottle.ledger import Ledger
    from llmthrottle.sidecar.service import Service

    service = Service(
        parse_config('[limits."*"]\nrequests = "1000/min"\n'), ledger=Ledger(os.path.join(directory, "ledger"))
    )
    try:
        assert "llmthrottle_ledger_quarantined_total 0" in service.metrics.render()
        service.ledger.quarantine.add("record", "test", b"{}")
        assert "llmthrottle_ledger_quarantined_total 1" in service.metrics.render()
    finally:
        service.close()
