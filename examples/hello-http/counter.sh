#!/bin/sh
# The counter: one process, one variable. Each CGI request writes the path
# of its own reply FIFO into /run/hello/requests; lines shorter than
# PIPE_BUF are written atomically, so concurrent requests never interleave
# and each gets a distinct number.
n=0
# Read-write open: the FIFO never reports EOF when a writer goes away.
exec 3<>/run/hello/requests
while read -r reply <&3; do
    case "$reply" in
        /run/hello/reply.*) ;;
        *) continue ;;  # ignore anything that is not one of our FIFOs
    esac
    n=$((n + 1))
    # Read-write open never blocks, even if that request's CGI already gave
    # up and nobody will read the answer; the counter must never stall.
    [ -p "$reply" ] && echo "$n" 1<>"$reply"
done
