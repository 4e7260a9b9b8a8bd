"""A small app for tests of guest memory and disk across suspends: 64 MiB
of random bytes in tmpfs (guest RAM only), a log on the disk, and CGI
scripts that checksum both and append to the log."""

from artifacts import zip_files
from harness import endpoint_request

PORT = 8080

START = """#!/bin/sh
set -eu
# 64 MiB in tmpfs is 64 MiB of guest memory: it lives only in RAM, so it
# crosses every suspend/resume in the memory snapshot.
dd if=/dev/urandom of=/dev/shm/soak bs=1M count=64 2>/dev/null
mkdir -p /var/soak
: > /var/soak/log
exec httpd -f -p 8080 -h /www
"""

# Both checksums, and the number of lines the disk log holds.
SUM_CGI = """#!/bin/sh
echo "Content-Type: text/plain"
echo
md5sum /dev/shm/soak | cut -d' ' -f1
md5sum /var/soak/log | cut -d' ' -f1
wc -l < /var/soak/log
"""

# Appends the query string to the disk log and syncs it to the disk.
APPEND_CGI = """#!/bin/sh
echo "Content-Type: text/plain"
echo
echo "$QUERY_STRING" >> /var/soak/log
sync
wc -l < /var/soak/log
"""

# Who the guest thinks it is, and 16 bytes from its kernel RNG: VMs
# restored from one snapshot must differ in both.
WHOAMI_CGI = """#!/bin/sh
echo "Content-Type: text/plain"
echo
cat /run/ember-microvm-id; echo
head -c 16 /dev/urandom | md5sum | cut -d' ' -f1
"""

DOCKERFILE = """FROM busybox
COPY start.sh /app/start.sh
COPY sum.cgi append.cgi whoami.cgi /www/cgi-bin/
RUN chmod 755 /app/start.sh /www/cgi-bin/sum.cgi /www/cgi-bin/append.cgi /www/cgi-bin/whoami.cgi
EXPOSE 8080
CMD ["/bin/sh", "/app/start.sh"]
"""



def zip_memory_app(dest):
    return zip_files(dest, {
        "Dockerfile": DOCKERFILE, "start.sh": START, "sum.cgi": SUM_CGI,
        "append.cgi": APPEND_CGI, "whoami.cgi": WHOAMI_CGI})


def get(vm, token, path):
    """The words of a CGI's answer, from the microVM `vm` (a GetMicrovm
    or RunMicrovm answer)."""
    status, body = endpoint_request(vm["endpoint"], token, PORT, path=path)[:2]
    assert status == 200, (path, status, body)
    return body.split()
