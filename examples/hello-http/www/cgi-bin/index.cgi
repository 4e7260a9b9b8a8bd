#!/bin/sh
# GET / : asks the counter process for the next number.
reply=/run/hello/reply.$$
trap 'rm -f "$reply"' EXIT
mkfifo "$reply"
# Holding the reply FIFO open read-write before asking means the counter's
# write lands in the pipe even if it answers before we start reading.
exec 4<>"$reply"
echo "$reply" 1<>/run/hello/requests
if read -r -t 5 n <&4; then
    printf 'Content-Type: text/plain\r\n\r\n'
    echo "hello from ember: request $n"
else
    printf 'Status: 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\n'
    echo "counter not answering"
fi
