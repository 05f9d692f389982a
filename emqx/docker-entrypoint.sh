#!/bin/sh
# iot_server's EMQX entrypoint: check the environment, render emqx.conf from
# the template, write the API key bootstrap file, then hand over to the image's
# own entrypoint. There are no default credentials: a missing variable stops
# the container with one line naming every missing one.
#
#   IOT_API_URL          the API's base URL as EMQX reaches it (http://api:8000)
#   MQTT_SECRET_KEY      sent as `Authorization: Bearer ...` to the hooks
#   MQTT_ADMIN_PASSWORD  password of the dashboard user `admin` (8+ characters)
#   EMQX_API_KEY, EMQX_API_SECRET  optional, both or neither: a REST API key
#   EMQX_NODE__COOKIE    optional Erlang cookie (random per start when unset)
#   IOT_API_CA_FILE      optional, for an https:// IOT_API_URL: the CA bundle that
#                        checks the API's certificate (default: the image's system CAs)
#
# `docker-entrypoint.sh --render-only` renders and exits (used by the tests).
set -eu
umask 077 # the rendered files hold secrets

template="${IOT_EMQX_TEMPLATE:-/opt/emqx/etc/iot_server.conf.template}"
conf="${IOT_EMQX_CONF:-/opt/emqx/etc/emqx.conf}"
key_file="${IOT_EMQX_API_KEY_FILE:-/opt/emqx/etc/iot_api_keys.txt}"
# The emqx/emqx:5.8 image is Debian with ca-certificates installed.
ca_file="${IOT_API_CA_FILE:-/etc/ssl/certs/ca-certificates.crt}"

fail() {
  echo "emqx: $*" >&2
  exit 1
}

missing=""
for name in IOT_API_URL MQTT_SECRET_KEY MQTT_ADMIN_PASSWORD; do
  eval "value=\${$name:-}"
  [ -n "$value" ] || missing="$missing $name"
done
[ -z "$missing" ] || fail "refusing to start without credentials, set:$missing"

for name in IOT_API_URL MQTT_SECRET_KEY MQTT_ADMIN_PASSWORD EMQX_API_KEY EMQX_API_SECRET EMQX_NODE__COOKIE IOT_API_CA_FILE; do
  eval "value=\${$name:-}"
  case "$value" in
  *[[:cntrl:]]*) fail "$name must not contain control characters" ;;
  esac
done

api_url="$IOT_API_URL"
while :; do
  case "$api_url" in
  */) api_url="${api_url%/}" ;;
  *) break ;;
  esac
done
# The hook paths are appended to it: a query, a fragment or a user would break them.
# shellcheck disable=SC2016 # a literal ${ is what is refused
case "$api_url" in
*[[:space:]\"\\?#@]* | *'${'*) fail "IOT_API_URL must be a plain base URL (scheme, host, port, path)" ;;
http://?* | https://?*) ;;
*) fail "IOT_API_URL must start with http:// or https:// (e.g. http://api:8000)" ;;
esac

# The URL's host (no port or path, IPv6 without brackets): for https it is the TLS
# server name, which the API's certificate must carry.
authority="${api_url#*://}"
authority="${authority%%/*}"
case "$authority" in
\[*\]*)
  api_host="${authority#\[}"
  api_host="${api_host%%\]*}"
  ;;
*) api_host="${authority%%:*}" ;;
esac
[ -n "$api_host" ] || fail "IOT_API_URL has no host: $api_url"
case "$api_host" in
*:*) host_is_name=0 ;;        # IPv6
*[!0-9.]*) host_is_name=1 ;;  # a DNS name
*) host_is_name=0 ;;          # IPv4
esac

# EMQX refuses an https authenticator without TLS settings; the template holds them
# on `#@https` lines, kept only for https.
tls=0
case "$api_url" in
https://*)
  tls=1
  [ -r "$ca_file" ] || fail "IOT_API_CA_FILE $ca_file is not readable: it must hold the CA certificates that sign the API's certificate"
  ;;
esac

# EMQX renders ${...} placeholders in header values: a secret holding one would
# not reach the API as written.
# shellcheck disable=SC2016
case "$MQTT_SECRET_KEY" in
*'${'*) fail "MQTT_SECRET_KEY must not contain \${" ;;
esac

[ "${#MQTT_ADMIN_PASSWORD}" -ge 8 ] || fail "MQTT_ADMIN_PASSWORD must have at least 8 characters"

api_key="${EMQX_API_KEY:-}"
api_secret="${EMQX_API_SECRET:-}"
if [ -n "$api_key" ] || [ -n "$api_secret" ]; then
  if [ -z "$api_key" ] || [ -z "$api_secret" ]; then
    fail "set both EMQX_API_KEY and EMQX_API_SECRET, or neither"
  fi
  # bootstrap_file lines are key:secret[:role] (emqx_mgmt_auth.erl)
  case "$api_key$api_secret" in
  *[:[:space:]]*) fail "EMQX_API_KEY and EMQX_API_SECRET must not contain ':' or spaces" ;;
  esac
fi

cookie="${EMQX_NODE__COOKIE:-}"
if [ -z "$cookie" ]; then
  cookie="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
fi

[ -r "$template" ] || fail "template $template not found"

tmp="$conf.tmp.$$"
IOT_R_URL="$api_url" IOT_R_SECRET="$MQTT_SECRET_KEY" IOT_R_ADMIN="$MQTT_ADMIN_PASSWORD" \
IOT_R_COOKIE="$cookie" IOT_R_KEY_FILE="$key_file" IOT_R_HOST="$api_host" IOT_R_CA_FILE="$ca_file" \
IOT_R_TLS="$tls" IOT_R_HOST_IS_NAME="$host_is_name" awk '
  # Escape for a double-quoted HOCON string.
  function esc(s,   out, i, c) {
    out = ""
    for (i = 1; i <= length(s); i++) {
      c = substr(s, i, 1)
      if (c == "\\" || c == "\"") out = out "\\"
      out = out c
    }
    return out
  }
  # Replace every occurrence of tok literally (no regex, no & in gsub).
  function rep(line, tok, val,   i, out) {
    out = ""
    while ((i = index(line, tok)) > 0) {
      out = out substr(line, 1, i - 1) val
      line = substr(line, i + length(tok))
    }
    return out line
  }
  BEGIN {
    v["@@IOT_API_URL@@"] = esc(ENVIRON["IOT_R_URL"])
    v["@@MQTT_SECRET_KEY@@"] = esc(ENVIRON["IOT_R_SECRET"])
    v["@@MQTT_ADMIN_PASSWORD@@"] = esc(ENVIRON["IOT_R_ADMIN"])
    v["@@NODE_COOKIE@@"] = esc(ENVIRON["IOT_R_COOKIE"])
    v["@@API_KEY_FILE@@"] = esc(ENVIRON["IOT_R_KEY_FILE"])
    v["@@IOT_API_HOST@@"] = esc(ENVIRON["IOT_R_HOST"])
    v["@@IOT_API_CA_FILE@@"] = esc(ENVIRON["IOT_R_CA_FILE"])
    tls = ENVIRON["IOT_R_TLS"] == "1"
    named = ENVIRON["IOT_R_HOST_IS_NAME"] == "1"
  }
  {
    line = $0
    # Conditional lines: kept without their mark, or dropped.
    if (line ~ /^[ \t]*#@https-name /) {
      if (!(tls && named)) next
      sub(/#@https-name /, "", line)
    } else if (line ~ /^[ \t]*#@https /) {
      if (!tls) next
      sub(/#@https /, "", line)
    }
    for (tok in v) line = rep(line, tok, v[tok])
    print line
  }
' "$template" >"$tmp"
if grep -q '@@[A-Z_]*@@' "$tmp"; then
  rm -f "$tmp"
  fail "unknown @@TOKEN@@ left in $template"
fi
mv "$tmp" "$conf"

if [ -n "$api_key" ]; then
  printf '%s:%s\n' "$api_key" "$api_secret" >"$key_file"
else
  : >"$key_file"
fi

[ "${1:-}" != "--render-only" ] || exit 0

# EMQX reads EMQX_* variables as config overrides, and EMQX_API_KEY would land
# on its `api_key` root; the values are in the rendered files now.
unset EMQX_API_KEY EMQX_API_SECRET EMQX_API_URL MQTT_SECRET_KEY MQTT_ADMIN_PASSWORD
exec /usr/bin/docker-entrypoint.sh "$@"
