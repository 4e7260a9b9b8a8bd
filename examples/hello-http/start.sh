#!/bin/sh
# Starts the request counter and the web server. The counter lives in the
# memory of one shell process (counter.sh), not in a file: it survives a
# snapshot/restore of the VM exactly like any app's in-process state.
set -eu
mkdir -p /run/hello
rm -f /run/hello/requests
mkfifo /run/hello/requests
sh /app/counter.sh &
echo "hello-http: serving on port 8080"
# -f: stay in the foreground, so the app is the process Ember watches;
# -vv: log each request to stderr, which is the app log (`ember logs`).
exec httpd -f -vv -p 8080 -h /www
