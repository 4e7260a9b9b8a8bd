#!/usr/bin/env bash
# `make run`: start emberd, build examples/hello-http through the API (the
# ember CLI follows the live build log), show the image, then stop emberd.
# Everything lives under build/data; a second run rebuilds from the cache.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data="${EMBER_DATA_DIR:-$root/build/data}"
emberd="$root/target/release/emberd"
ember="$root/target/release/ember"
log="$data/emberd.log"
mkdir -p "$data"

rm -f "$data/endpoint"
"$emberd" --data-dir "$data" --listen 127.0.0.1:0 >"$log.out" 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    [ -s "$data/endpoint" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "emberd failed to start:" >&2; tail -20 "$log" >&2; exit 1; }
    sleep 0.1
done
endpoint=$(cat "$data/endpoint")
echo "emberd listening on $endpoint (log: $log)"

cli() { "$ember" --data-dir "$data" "$@"; }
if cli image get hello-http >/dev/null 2>&1; then
    echo "== hello-http exists: building a new version (the build cache makes it quick)"
    cli image update hello-http --code "$root/examples/hello-http" --base busybox
else
    echo "== building examples/hello-http on the busybox base"
    cli image create hello-http --code "$root/examples/hello-http" --base busybox
fi
echo
echo "== the image, as the API reports it"
cli image list
version=$(cli image get hello-http | sed -n 's/.*"latestActiveImageVersion": "\([0-9]*\)".*/\1/p' | head -1)
echo
echo "== to drive it yourself: start emberd, then use the AWS CLI (or boto3, or ember):"
echo "target/release/emberd --data-dir $data --listen 127.0.0.1:9070 &"
echo "AWS_SHARED_CREDENTIALS_FILE=$data/credentials AWS_DATA_PATH=$root/tests/api/models \\"
echo "  aws lambda-microvms get-microvm-image-version --image-identifier hello-http \\"
echo "  --image-version ${version:-1} --endpoint-url http://127.0.0.1:9070 --region us-east-1"
