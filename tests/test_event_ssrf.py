"""The SSRF guard of event endpoints: on by default, no loopback/private/NAT64/odd-spelling
target gets a delivery, the address checked is the address connected to (DNS rebinding),
and what the agency reads never maps our network.

Offline: names are answered by a fake resolver (socket.getaddrinfo), and connections to
public addresses are intercepted (urllib3's create_connection) and fail at once."""
import datetime
import http.server
import socket
import ssl
import threading

import pytest
import urllib3.util.connection
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select, update

from telephony import create_app
from telephony.config import Config, ConfigError
from telephony.models import Job, utcnow
from telephony.services import events
from telephony.services.events import emit_event, is_public_address, resolve_destination
from telephony.worker import Worker

REFUSED = "refused: the host does not resolve to a public address"
PUBLIC_IP = "93.184.215.14"
PUBLIC_IP_2 = "8.8.4.4"


class FakeDns:
    """Answers the names it knows (one answer per lookup, the last one repeated), counts
    lookups, and lets IP literals in any spelling through to the system, asked never to
    use DNS (AI_NUMERICHOST). Any other name fails to resolve."""

    def __init__(self, monkeypatch, answers: dict[str, list[list[str]]]):
        self.answers = {name: list(sequence) for name, sequence in answers.items()}
        self.lookups: list[str] = []
        real = socket.getaddrinfo

        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            if isinstance(host, bytes):
                host = host.decode()
            if host in self.answers:
                self.lookups.append(host)
                sequence = self.answers[host]
                addresses = sequence.pop(0) if len(sequence) > 1 else sequence[0]
                return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port, 0, 0)) if ":" in a
                        else (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port))
                        for a in addresses]
            return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


class Connections:
    """Intercepts urllib3's connection creation: records the address each connection would
    reach (resolved the way create_connection resolves it) and fails at once, unless that
    address is loopback and `allow_loopback` (a real local receiver)."""

    def __init__(self, monkeypatch, allow_loopback: bool = False, error: type[OSError] = ConnectionRefusedError):
        self.addresses: list[tuple[str, int]] = []
        real = urllib3.util.connection.create_connection

        def create_connection(address, *args, **kwargs):
            host, port = address
            resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
            self.addresses.append((resolved, port))
            if allow_loopback and resolved in ("127.0.0.1", "::1"):
                return real(address, *args, **kwargs)
            raise error(f"[Errno 111] Connection refused to {resolved}:{port}")

        monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)


@pytest.fixture
def dev_app(config, tmp_path):
    """The same database, with the local-development opt-out: endpoints saved under it."""
    dev = create_app(config.with_overrides(event_endpoints_allow_private=True), instance_path=str(tmp_path / "dev"))
    yield dev
    dev.extensions["telephony.db"].dispose()


def _create(client, tenant, url: str):
    return client.post("/api/v1/event-endpoints", json={"url": url, "events": ["call.ended"]},
                       headers=tenant.admin())


def _deliver_once(app, db, agency_id) -> None:
    with db.session() as session:
        emit_event(session, agency_id, "call.ended", {"call_id": "c-1"})
    assert Worker(app).run_once() >= 1


def _deliveries(client, tenant, endpoint_id) -> list[dict]:
    response = client.get(f"/api/v1/event-endpoints/{endpoint_id}/deliveries", headers=tenant.admin())
    assert response.status_code == 200, response.json
    return response.json["deliveries"]


# -- the switch -------------------------------------------------------------------------------------

def test_the_guard_is_on_by_default_and_the_opt_out_is_refused_in_production(tmp_path):
    assert Config.from_env({}, instance_path=tmp_path).event_endpoints_allow_private is False
    assert Config(database_url="sqlite://").event_endpoints_allow_private is False
    opted_out = Config.from_env({"EVENT_ENDPOINTS_ALLOW_PRIVATE": "true"}, instance_path=tmp_path)
    assert opted_out.event_endpoints_allow_private is True
    with pytest.raises(ConfigError) as error:
        Config.from_env({"EVENT_ENDPOINTS_ALLOW_PRIVATE": "true", "APP_ENV": "production",
                         "CREDENTIALS_KEYS": opted_out.credentials_keys[0], "SUPABASE_JWT_SECRET": "x" * 32},
                        instance_path=tmp_path)
    assert error.value.variable == "EVENT_ENDPOINTS_ALLOW_PRIVATE"
    with pytest.raises(ConfigError):
        opted_out.with_overrides(production=True)


def test_http_and_loopback_need_the_opt_out(client, make_tenant, dev_app):
    tenant = make_tenant()
    for url in ("http://hooks.example.com/x", "https://127.0.0.1/x"):
        response = _create(client, tenant, url)
        assert response.status_code == 400 and "url" in response.json["fields"], response.json
        assert _create(dev_app.test_client(), tenant, url).status_code == 201
    assert _create(client, tenant, "https://hooks.example.com/x").status_code == 201


# -- no delivery to a non-public target, however it is spelled ---------------------------------------

TARGETS = [
    # the seven loopback spellings of the issue, and localhost
    "127.0.0.1", "127.1", "2130706433", "0x7f000001", "017700000001", "0x7f.1", "[::1]", "[::ffff:127.0.0.1]",
    "localhost", "LOCALHOST.", "app.localhost",
    # NAT64 and other IPv6 forms embedding a non-public IPv4
    "[64:ff9b::7f00:1]", "[64:ff9b::a00:1]", "[64:ff9b:1::808:808]", "[::127.0.0.1]", "[::ffff:10.0.0.1]",
    "[2002:7f00:1::1]", "[2002:a00:1::1]", "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
    # private, shared, link-local (cloud metadata), unspecified, multicast, reserved, documentation
    "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254", "0.0.0.0", "0", "[::]",
    "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.51.100.7", "203.0.113.9",
    "[fc00::1]", "[fd12:3456::1]", "[fe80::1]", "[fec0::1]", "[ff02::1]", "[2001:db8::1]",
]


@pytest.mark.parametrize("host", TARGETS)
def test_non_public_targets_are_refused_at_registration(client, make_tenant, host):
    tenant = make_tenant()
    for url in (f"https://{host}/events", f"https://{host}:8443/events"):
        response = _create(client, tenant, url)
        assert response.status_code == 400 and "url" in response.json["fields"], (url, response.json)


def test_non_public_targets_saved_earlier_get_nothing(app, client, db, make_tenant, dev_app, receiver,
                                                      monkeypatch):
    """Saved while the opt-out was on (or under older rules), refused when delivering: nothing is sent.
    (One test for all targets: an app per target would be slow.)"""
    FakeDns(monkeypatch, {})
    connections = Connections(monkeypatch)
    tenant = make_tenant()
    sent = []
    for host in TARGETS:
        for url in (f"https://{host}:{receiver.port}/events", f"http://{host}:{receiver.port}/events"):
            created = _create(dev_app.test_client(), tenant, url)
            assert created.status_code == 201, created.json
            _deliver_once(app, db, tenant.agency_id)
            [delivery] = _deliveries(client, tenant, created.json["id"])
            if (delivery["status"], delivery["last_status_code"]) != ("pending", None) \
                    or not delivery["last_error"].startswith("refused:"):
                sent.append((url, delivery))
            client.delete(f"/api/v1/event-endpoints/{created.json['id']}", headers=tenant.admin())
    assert sent == []
    assert connections.addresses == [] and receiver.requests == []


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "017700000001", "0x7f.1", "::1",
                                  "::ffff:127.0.0.1", "64:ff9b::7f00:1", "10.0.0.1", "localhost"])
def test_resolution_reads_odd_spellings_as_the_socket_layer_does(monkeypatch, host):
    FakeDns(monkeypatch, {"localhost": [["127.0.0.1", "::1"]]})
    url = f"https://[{host}]/x" if ":" in host else f"https://{host}/x"
    assert resolve_destination(url, allow_private=False) is None
    assert resolve_destination(url, allow_private=True) is not None


@pytest.mark.parametrize("address, public", [
    (PUBLIC_IP, True), ("8.8.8.8", True), ("2606:4700::1111", True), ("64:ff9b::808:808", True),
    ("2002:808:808::1", True), ("127.0.0.1", False), ("::1", False), ("::ffff:8.8.8.8", False),
    ("::8.8.8.8", False), ("64:ff9b::7f00:1", False), ("64:ff9b::a9fe:a9fe", False), ("64:ff9b:1::808:808", False),
    ("2002:7f00:1::1", False), ("2002:c0a8:101::1", False), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),
    ("100.64.0.1", False), ("224.0.0.1", False), ("fec0::1", False), ("fe80::1%1", False), ("3fff::1", False),
    ("not an address", False),
])
def test_public_addresses(address, public):
    assert is_public_address(address) is public


def test_names_resolving_to_any_non_public_address_get_nothing(app, client, db, make_tenant, monkeypatch):
    dns = FakeDns(monkeypatch, {"internal.example.com": [["10.0.0.5"]],
                                "mixed.example.com": [[PUBLIC_IP, "127.0.0.1"]],
                                "nat64.example.com": [["64:ff9b::a00:5"]]})
    connections = Connections(monkeypatch)
    tenant = make_tenant()
    for name in ("internal.example.com", "mixed.example.com", "nat64.example.com", "nowhere.example.com"):
        created = _create(client, tenant, f"https://{name}/events")
        assert created.status_code == 201  # names are judged by what they resolve to, when delivering
        _deliver_once(app, db, tenant.agency_id)
        [delivery] = _deliveries(client, tenant, created.json["id"])
        # An unresolvable name reads the same, so the existence of internal names does not show.
        assert delivery["last_error"] == REFUSED, (name, delivery)
        client.delete(f"/api/v1/event-endpoints/{created.json['id']}", headers=tenant.admin())
    assert connections.addresses == []
    assert dns.lookups == ["internal.example.com", "mixed.example.com", "nat64.example.com"]


# -- DNS rebinding: the address checked is the address connected to -----------------------------------

def test_dns_rebinding_connects_to_the_checked_address_or_nowhere(app, client, db, make_tenant, monkeypatch):
    """The name answers a public address to the first lookup and loopback to every later one."""
    dns = FakeDns(monkeypatch, {"rebind.example.com": [[PUBLIC_IP], ["127.0.0.1"]]})
    connections = Connections(monkeypatch)
    tenant = make_tenant()
    created = _create(client, tenant, "https://rebind.example.com/events").json

    _deliver_once(app, db, tenant.agency_id)
    assert connections.addresses == [(PUBLIC_IP, 443)]  # pinned: no second lookup on the way to connect
    assert dns.lookups == ["rebind.example.com"]
    [delivery] = _deliveries(client, tenant, created["id"])
    assert delivery["last_error"] == "connection failed"

    # The retry resolves again (once), now to loopback: refused, nothing connected.
    with db.session() as session:
        session.execute(update(Job).where(Job.status == "queued").values(run_at=utcnow()))
    assert Worker(app).run_once() == 1
    assert connections.addresses == [(PUBLIC_IP, 443)]
    assert dns.lookups == ["rebind.example.com"] * 2
    [delivery] = _deliveries(client, tenant, created["id"])
    assert (delivery["attempts"], delivery["last_error"]) == (2, REFUSED)


def test_every_checked_address_is_tried_in_order_and_no_other(app, client, db, make_tenant, monkeypatch):
    dns = FakeDns(monkeypatch, {"two.example.com": [[PUBLIC_IP, PUBLIC_IP_2], ["127.0.0.1"]]})
    connections = Connections(monkeypatch)
    tenant = make_tenant()
    created = _create(client, tenant, "https://two.example.com/events").json
    _deliver_once(app, db, tenant.agency_id)
    assert connections.addresses == [(PUBLIC_IP, 443), (PUBLIC_IP_2, 443)]
    assert dns.lookups == ["two.example.com"]
    assert _deliveries(client, tenant, created["id"])[0]["last_error"] == "connection failed"


def test_the_pinned_connection_keeps_the_host_name(dev_app, make_tenant, receiver, monkeypatch):
    """Connected to the pre-resolved address, the request still names the host (Host header;
    over TLS the same `host` gives SNI and the certificate check)."""
    dns = FakeDns(monkeypatch, {"receiver.example.com": [["127.0.0.1"], [PUBLIC_IP]]})
    tenant = make_tenant()
    client, db = dev_app.test_client(), dev_app.extensions["telephony.db"]
    created = _create(client, tenant, f"http://receiver.example.com:{receiver.port}/events").json
    _deliver_once(dev_app, db, tenant.agency_id)
    [(headers, _)] = receiver.requests
    assert headers["host"] == f"receiver.example.com:{receiver.port}"
    assert dns.lookups == ["receiver.example.com"]
    assert _deliveries(client, tenant, created["id"])[0]["status"] == "delivered"


def _certificate(name: str, tmp_path):
    """A CA and a certificate for `name` only (no IP address in it), as PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


def test_tls_to_the_pinned_address_verifies_the_host_name(dev_app, make_tenant, monkeypatch, tmp_path):
    """Over https the pinned connection sends the host name as SNI and checks the
    certificate against it: a certificate naming only the host (no IP) verifies."""
    ca_file, cert_file, key_file = _certificate("hooks.example.com", tmp_path)
    server_names, requests_seen = [], []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            requests_seen.append(self.headers["Host"])
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        FakeDns(monkeypatch, {"hooks.example.com": [["127.0.0.1"], [PUBLIC_IP]]})
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
        tenant = make_tenant()
        client, db = dev_app.test_client(), dev_app.extensions["telephony.db"]
        created = _create(client, tenant, f"https://hooks.example.com:{port}/events").json
        _deliver_once(dev_app, db, tenant.agency_id)
        [delivery] = _deliveries(client, tenant, created["id"])
        assert delivery["status"] == "delivered", delivery
        assert server_names == ["hooks.example.com"] and requests_seen == [f"hooks.example.com:{port}"]
    finally:
        server.shutdown()
        server.server_close()


# -- what the agency reads --------------------------------------------------------------------------------

def test_internal_ports_all_read_the_same(app, client, db, make_tenant, dev_app, receiver, monkeypatch):
    """Open, closed and filtered internal targets are indistinguishable through the deliveries API."""
    FakeDns(monkeypatch, {"open.example.com": [["127.0.0.1"]], "closed.example.com": [["127.0.0.1"]],
                          "filtered.example.com": [["10.255.255.1"]]})
    connections = Connections(monkeypatch, allow_loopback=True)
    tenant = make_tenant()
    seen = []
    for url in (f"https://open.example.com:{receiver.port}/events", "https://closed.example.com:9/events",
                "https://filtered.example.com:22/events", f"https://127.0.0.1:{receiver.port}/events",
                "https://127.0.0.1:9/events"):
        created = _create(dev_app.test_client(), tenant, url).json  # saved earlier, under the opt-out
        _deliver_once(app, db, tenant.agency_id)
        [delivery] = _deliveries(client, tenant, created["id"])
        seen.append((delivery["status"], delivery["last_status_code"], delivery["last_error"]))
        client.delete(f"/api/v1/event-endpoints/{created['id']}", headers=tenant.admin())
    # The same answer whatever listens there (the URL's own form may read differently).
    assert seen[0] == seen[1] == seen[2] == ("pending", None, REFUSED), seen
    assert seen[3] == seen[4] and seen[3][:2] == ("pending", None) and seen[3][2].startswith("refused:"), seen
    assert connections.addresses == [] and receiver.requests == []


@pytest.mark.parametrize("error, expected", [(ConnectionRefusedError, "connection failed"),
                                             (TimeoutError, "timed out"), (OSError, "connection failed")])
def test_delivery_errors_name_no_address(app, client, db, make_tenant, monkeypatch, error, expected):
    FakeDns(monkeypatch, {"hooks.example.com": [[PUBLIC_IP_2]]})
    Connections(monkeypatch, error=error)
    tenant = make_tenant()
    created = _create(client, tenant, "https://hooks.example.com:8443/events").json
    _deliver_once(app, db, tenant.agency_id)
    [delivery] = _deliveries(client, tenant, created["id"])
    assert delivery["last_error"] == expected
    with db.session() as session:
        job_error = session.scalar(select(Job.last_error).where(Job.kind == events.DELIVER_JOB)) or ""
    for leak in (PUBLIC_IP_2, "8443", "Errno", "Connection refused"):
        assert leak not in delivery["last_error"] and leak not in job_error
