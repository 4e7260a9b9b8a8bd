#!/usr/bin/env bash
# Creates build/venv with the pinned AWS CLI, boto3 and pytest from
# tests/api/requirements.txt. Idempotent: a stamp holding the hash of the
# requirements file skips pip entirely when nothing changed, so a second
# run makes no network call. Never touches the system python or ~/.aws.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/build/venv"
reqs="$root/tests/api/requirements.txt"
stamp="$venv/.requirements.sha256"

want=$(sha256sum "$reqs" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# --no-input: never wait on a prompt in CI; -q keeps the test log readable.
"$venv/bin/python" -m pip install --quiet --no-input --disable-pip-version-check -r "$reqs"
echo "$want" >"$stamp"

# The service model the clients use is the contract in tests/api/models,
# found through AWS_DATA_PATH (it takes precedence over botocore's bundled
# copy, so the tests pin the contract, not whatever botocore ships).
AWS_DATA_PATH="$root/tests/api/models" "$venv/bin/python" - <<'PY'
import botocore.session
session = botocore.session.get_session()
model = session.get_service_model("lambda-microvms")
assert model.metadata["signingName"] == "lambda", model.metadata
PY
echo "venv ready: $venv" >&2
