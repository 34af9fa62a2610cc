#!/bin/sh
# dev-run.sh - serve examples/handler.lua over HTTPS on 127.0.0.1:8080 with a
# development certificate and secret, and say how to post a fixture to it.
set -eu
cd "$(dirname "$0")/.."

dev=.dev
mkdir -p "$dev"
if [ ! -s "$dev/cert.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -days 365 -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
        -keyout "$dev/key.pem" -out "$dev/cert.pem" 2>/dev/null
fi
listen=${GRWHD_LISTEN:-127.0.0.1:8080}
secret="dev-secret"
# The spool (and the delivery keys it remembers for a day) is kept between
# runs, so each run gets a delivery id of its own.
delivery="dev-$(date +%s)"
cat >&2 <<MSG

grwhd is starting on https://$listen with the development secret '$secret'.
In another terminal, post a fixture:

  curl -w '\\n' --cacert $PWD/$dev/cert.pem \\
    -H 'Content-Type: application/json' -H 'X-Webhook-ID: $delivery' \\
    --data-binary @$PWD/tests/fixtures/contact_added.json \\
    'https://$listen/webhook?secret=$secret'

Run it twice: the second time is a repeat of delivery $delivery, which grwhd
acknowledges but does not run again (duplicates=1 in the log); another
X-Webhook-ID is a new delivery.  A batch: tests/fixtures/batch.json.
Ctrl-C stops grwhd.

MSG
exec ./grwhd --script examples/handler.lua --listen "$listen" \
    --tls-cert "$dev/cert.pem" --tls-key "$dev/key.pem" \
    --secret "$secret" --spool "$dev/spool.db"
