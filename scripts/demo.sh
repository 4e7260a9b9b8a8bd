#!/usr/bin/env bash
# `make run`: the whole flow. Starts emberd (or reuses the one already
# serving build/data), builds examples/hello-http through the API, runs a
# microVM from it, and prints its endpoint and a curl line that answers.
# emberd and the microVM keep running afterwards, so the printed line
# keeps working; the script says how to stop them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data="${EMBER_DATA_DIR:-$root/build/data}"
emberd="$root/target/release/emberd"
ember="$root/target/release/ember"
log="$data/emberd.log"
pidfile="$data/emberd.pid"
mkdir -p "$data"
cli() { "$ember" --data-dir "$data" "$@"; }

if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && [ -s "$data/endpoint" ]; then
    echo "== emberd already running (pid $(cat "$pidfile")) at $(cat "$data/endpoint")"
else
    rm -f "$data/endpoint"
    # setsid: emberd outlives this script (and its terminal's ^C).
    setsid "$emberd" --data-dir "$data" --listen 127.0.0.1:0 >"$log.out" 2>"$log" </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 300); do
        [ -s "$data/endpoint" ] && break
        kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "emberd failed to start:" >&2; tail -20 "$log" >&2; exit 1; }
        sleep 0.1
    done
    echo "== emberd started (pid $(cat "$pidfile")) at $(cat "$data/endpoint"), log: $log"
fi
endpoint=$(cat "$data/endpoint")

if cli image get hello-http >/dev/null 2>&1; then
    echo "== hello-http exists: building a new version (the build cache makes it quick)"
    cli image update hello-http --code "$root/examples/hello-http" --base busybox
else
    echo "== building examples/hello-http on the busybox base"
    cli image create hello-http --code "$root/examples/hello-http" --base busybox
fi

echo
echo "== running a microVM from it (restored from the image's snapshot; suspends after 60 s idle)"
vm_json=$(cli run hello-http --idle 60 --suspended-for 3600)
echo "$vm_json"
id=$(sed -n 's/.*"microvmId": "\([^"]*\)".*/\1/p' <<<"$vm_json" | head -1)
vm_endpoint=$(sed -n 's/.*"endpoint": "\([^"]*\)".*/\1/p' <<<"$vm_json" | head -1)
token=$(cli token "$id" --port 8080)

echo
echo "== the endpoint answers (its counter lives in the app's memory):"
for _ in 1 2; do
    curl -sS --fail -H "X-aws-proxy-auth: $token" -H "X-aws-proxy-port: 8080" "$vm_endpoint/"
done

cat <<INFO

microVM:  $id
endpoint: $vm_endpoint
a request that answers (the token is valid for 10 minutes; 'ember token $id' mints another):
  curl -H "X-aws-proxy-auth: $token" -H "X-aws-proxy-port: 8080" $vm_endpoint/

more (ember = $ember --data-dir $data):
  ember ls;  ember curl $id /;  ember logs $id
  ember suspend $id;  ember resume $id;  ember rm $id
  AWS CLI: AWS_SHARED_CREDENTIALS_FILE=$data/credentials AWS_DATA_PATH=$root/tests/api/models \\
    aws lambda-microvms get-microvm --microvm-identifier $id --endpoint-url $endpoint --region us-east-1
stop emberd (microVMs keep running and are taken back by the next emberd):
  kill \$(cat $pidfile)
INFO
