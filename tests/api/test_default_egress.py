"""`emberd --default-egress internet`: requests that name no egress
connector get the real service's default (open egress); an explicit empty
list still means none. Ember's own default (no egress) is checked by the
session's emberd in test_microvm_validation.py."""

import pytest

from harness import create_and_wait, terminate_quietly, wait_microvm


def test_default_egress_internet_applies_only_when_the_field_is_left_out(
        separate_emberd, hello_zip):
    daemon = separate_emberd("--default-egress", "internet")
    client = daemon.client()
    image, version = create_and_wait(client, "open-egress", hello_zip)
    assert image["state"] == "CREATED", version.get("stateReason")
    left_out = client.run_microvm(imageIdentifier="open-egress")["microvmId"]
    empty = client.run_microvm(imageIdentifier="open-egress",
                               egressNetworkConnectors=[])["microvmId"]
    try:
        got = wait_microvm(client, left_out, "RUNNING", timeout=90)
        assert got["egressNetworkConnectors"] == ["INTERNET_EGRESS"], got
        got = wait_microvm(client, empty, "RUNNING", timeout=90)
        assert "egressNetworkConnectors" not in got, got
    finally:
        terminate_quietly(client, left_out, empty)


def test_an_unknown_default_egress_stops_emberd_at_start(separate_emberd):
    with pytest.raises(RuntimeError) as err:
        separate_emberd("--default-egress", "everywhere")
    assert "--default-egress" in str(err.value), err.value
