"""11. examples/python-counter on debian12-minimal: apt-get needs the
internet egress connector; without it, builds have no network."""

import pytest

from artifacts import zip_dir, zip_files
from harness import DEBIAN_ARN, REPO, create_and_wait


@pytest.mark.slow
def test_python_counter_builds_with_internet(client, tmp_path):
    path = zip_dir(REPO / "examples" / "python-counter", tmp_path / "python-counter.zip")
    image, version = create_and_wait(client, "python-counter", path, base=DEBIAN_ARN,
                                     timeout=1200, egressNetworkConnectors=["INTERNET_EGRESS"])
    assert image["state"] == "CREATED", version.get("stateReason")
    assert version["egressNetworkConnectors"] == ["INTERNET_EGRESS"], version


def test_no_network_without_connector(client, tmp_path):
    path = zip_files(tmp_path / "wget.zip", {"Dockerfile": (
        "FROM busybox\nRUN wget -q -T 10 -O /dev/null http://deb.debian.org/debian/\n"
        "CMD [\"sleep\", \"9\"]\n")})
    image, version = create_and_wait(client, "no-network", path, timeout=300)
    assert image["state"] == "CREATE_FAILED"
    assert "wget" in version.get("stateReason", ""), version.get("stateReason")
