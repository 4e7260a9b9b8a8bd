#!/bin/sh
# Starts the request counter and the web server. The counter lives in the
# memory of one shell process (counter.sh), not in a file: it survives a
# snapshot/restore of the VM exactly like any app's in-process state.
set -eu
mkdir -p /run/hello
rm -f /run/hello/requests
mkfifo /run/hello/requests
sh /app/counter.sh &
# -f: stay in the foreground, so the app is the process Ember watches.
exec httpd -f -p 8080 -h /www
