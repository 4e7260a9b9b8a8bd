"""emberd's connections to a Postgres store over TCP: TLS with rustls,
verified against `--store-ca-file` (each of its connections shows as
encrypted in the server's pg_stat_ssl), refused when the certificate does
not chain to the roots or when the server has no TLS, and in plain text
only when the URL says `sslmode=disable`. A server that asks for a client
certificate gets `--store-client-cert`'s, and sees its name."""

import pytest

from harness import create_and_wait
from postgres_server import PostgresServer


@pytest.fixture(scope="module")
def tls_postgres():
    server = PostgresServer(tls=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain_postgres():
    server = PostgresServer(tcp=True).start()
    yield server
    server.stop()


def emberd_connections(server, database):
    return server.query(database, (
        "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
        f"WHERE a.datname = '{database}' AND a.application_name LIKE 'emberd%'"))


def test_tls_to_postgres_is_verified_and_used(separate_emberd, tls_postgres, hello_zip):
    tls_postgres.create_database("ember_tls")
    url = tls_postgres.tcp_url("ember_tls")

    # The test CA is not among the system's roots: no connection.
    with pytest.raises(RuntimeError) as info:
        separate_emberd("--store", url)
    assert "opening the state store" in str(info.value), str(info.value)
    assert "certificate" in str(info.value).lower(), str(info.value)

    ember = separate_emberd("--store", url, "--store-ca-file", str(tls_postgres.ca_file))
    image, version = create_and_wait(ember.client(), "hello-http", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")
    seen = emberd_connections(tls_postgres, "ember_tls")
    assert seen, "no emberd connection seen by the server"
    assert all(ssl == "t" for _, ssl in seen), seen
    # The pool's connections and the node lock's session, both over TLS.
    names = {name for name, _ in seen}
    assert "emberd" in names and any(n.startswith("emberd (node lock ") for n in names), seen


def test_a_postgres_without_tls_is_refused_unless_the_url_says_so(separate_emberd, plain_postgres,
                                                                   tmp_path):
    plain_postgres.create_database("ember_plain")
    with pytest.raises(RuntimeError) as info:
        separate_emberd("--store", plain_postgres.tcp_url("ember_plain"))
    message = str(info.value)
    assert "opening the state store" in message and "TLS" in message, message

    ember = separate_emberd("--store", plain_postgres.tcp_url("ember_plain", "?sslmode=disable"))
    assert ember.client().list_microvm_images()["items"] == []
    seen = emberd_connections(plain_postgres, "ember_plain")
    assert seen and all(ssl == "f" for _, ssl in seen), seen

    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(RuntimeError) as info:
        separate_emberd("--store", plain_postgres.tcp_url("ember_plain"), "--store-ca-file", str(bogus))
    assert "--store-ca-file" in str(info.value), str(info.value)


def test_a_client_certificate_is_presented_when_the_server_asks(separate_emberd, tmp_path):
    server = PostgresServer(client_certs=True).start()
    try:
        server.create_database("ember_client_cert")
        url = server.tcp_url("ember_client_cert")
        ca = ("--store-ca-file", str(server.ca_file))
        # pg_hba says `cert`: without one, no connection.
        with pytest.raises(RuntimeError) as info:
            separate_emberd("--store", url, *ca)
        assert "opening the state store" in str(info.value), str(info.value)
        assert "client certificate" in str(info.value), str(info.value)
        # A key others can read is refused before any connection.
        loose = tmp_path / "client.key"
        loose.write_bytes(server.client_key.read_bytes())
        loose.chmod(0o644)
        with pytest.raises(RuntimeError) as info:
            separate_emberd("--store", url, *ca, "--store-client-cert", str(server.client_cert),
                            "--store-client-key", str(loose))
        assert "--store-client-key has mode 644" in str(info.value), str(info.value)

        ember = separate_emberd("--store", url, *ca, "--store-client-cert",
                                str(server.client_cert), "--store-client-key",
                                str(server.client_key))
        assert ember.client().list_microvm_images()["items"] == []
        seen = server.query("ember_client_cert", (
            "SELECT s.client_dn FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.datname = 'ember_client_cert' AND a.application_name LIKE 'emberd%'"))
        assert seen and all(dn == ["/CN=ember"] for dn in seen), seen
    finally:
        server.stop()
