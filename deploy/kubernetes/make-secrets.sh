#!/usr/bin/env bash
# Makes the secret files the manifests mount, in deploy/kubernetes/base/secrets/ (or DIR): the
# brokers' first signing key (signing-1.pem: active at once), the key that seals MFA secrets (mfa.key),
# PostgreSQL's password and the brokers' database URL,
# an internal CA with the brokers' and the gateways' certificates (every hop inside the cluster
# is TLS) and a public certificate from the same CA
# (replace secrets/public.crt and public.key with your own). Files that exist are kept, so running it
# again changes nothing; delete a file to make it anew.
#
#   deploy/kubernetes/make-secrets.sh [--dir DIR] [--public-name NAME]... [--database-host HOST]
#
#   --public-name NAME   a name (or IP address) the public certificate is for; repeatable
#                        (default: atrium.example.com)
#   --database-host HOST where brokers reach PostgreSQL (default: atrium-postgres, the Service)
#   --database-port PORT (default: 5432)
#
# The directory's bind password is read from $ATRIUM_LDAP_BIND_PASSWORD, or asked for.
set -euo pipefail
dir="$(cd "$(dirname "$0")" && pwd)/base/secrets"
names=()
db_host=atrium-postgres
db_port=5432
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --public-name) names+=("$2"); shift 2 ;;
    --database-host) db_host="$2"; shift 2 ;;
    --database-port) db_port="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "make-secrets: unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=(atrium.example.com)
command -v openssl >/dev/null || { echo "make-secrets: openssl is missing" >&2; exit 1; }
umask 077
mkdir -p "$dir"
cd "$dir"

made() { echo "make-secrets: $1" >&2; }
random() { openssl rand -hex 24; }

# subject_alt_names NAME...: DNS:x or IP:x entries.
subject_alt_names() {
  local out=() n
  for n in "$@"; do
    if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then out+=("IP:$n"); else out+=("DNS:$n"); fi
  done
  (IFS=,; echo "${out[*]}")
}

if [ ! -s signing-1.pem ]; then
  openssl genpkey -algorithm ed25519 -out signing-1.pem
  made "signing-1.pem: the broker's Ed25519 signing key"
fi
if [ ! -s mfa.key ]; then
  # 32 random bytes, base64url: seals the users' MFA secrets in the database.
  openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n' >mfa.key
  echo >>mfa.key
  made "mfa.key: the brokers' key for MFA secrets (keep it out of database backups)"
fi
if [ ! -s database-password ]; then
  random >database-password
  made "database-password"
fi
if [ ! -s database-url ]; then
  printf 'postgres://atrium:%s@%s:%s/atrium\n' "$(head -n1 database-password)" "$db_host" "$db_port" >database-url
  made "database-url (PostgreSQL at $db_host:$db_port)"
fi
if [ ! -s ldap-bind-password ]; then
  pw="${ATRIUM_LDAP_BIND_PASSWORD:-}"
  if [ -z "$pw" ] && [ -t 0 ]; then
    read -r -s -p "The directory service account's password: " pw
    echo >&2
  fi
  [ -n "$pw" ] || { echo "make-secrets: set ATRIUM_LDAP_BIND_PASSWORD" >&2; exit 1; }
  printf '%s\n' "$pw" >ldap-bind-password
  made "ldap-bind-password"
fi
if [ ! -s ca.crt ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=Atrium internal CA" -keyout ca.key -out ca.crt 2>/dev/null
  made "ca.crt: the internal CA (its key ca.key stays here, not in the cluster)"
fi
# issue NAME CN SAN...: a certificate and key for a server, from the internal CA.
issue() {
  local name=$1 cn=$2
  shift 2
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
    -keyout "$name.key" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile <(printf 'basicConstraints=critical,CA:FALSE\nsubjectAltName=%s\nextendedKeyUsage=serverAuth\n' \
      "$(subject_alt_names "$@")") \
    -out "$name.crt" 2>/dev/null
  rm -f "$name.csr"
}
if [ ! -s broker.crt ]; then
  issue broker atrium-broker atrium-broker atrium-broker.atrium.svc \
    atrium-broker.atrium.svc.cluster.local localhost 127.0.0.1
  made "broker.crt: the brokers' certificate, from the internal CA"
fi
if [ ! -s gateway.crt ]; then
  issue gateway atrium-gateway atrium-gateway atrium-gateway.atrium.svc \
    atrium-gateway.atrium.svc.cluster.local localhost 127.0.0.1
  made "gateway.crt: the gateways' certificate, from the internal CA"
fi
if [ ! -s public.crt ]; then
  issue public "${names[0]}" "${names[@]}"
  made "public.crt: for ${names[*]}, from the internal CA (replace it with your own, or have browsers trust ca.crt)"
fi
echo "$dir"
