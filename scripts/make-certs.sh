#!/usr/bin/env bash
# make-certs.sh — a small PKI for nubo: one CA, server certificates for etcd
# and the coordinator, client certificates for agents, coordinators and the
# CLI. Uses only openssl; EC P-256 keys, SHA-256 signatures, X.509 v3.
#
# Usage:
#   scripts/make-certs.sh OUTDIR [SAN | client:NAME ...]
#
#   SAN          an IP address or DNS name added to BOTH server certificates
#                (127.0.0.1, ::1 and localhost are always included), e.g. the
#                etcd members' and coordinators' addresses and the API VIP.
#   client:NAME  a client certificate with CN=NAME (the identity etcd sees,
#                and the name its RBAC maps to when `--client-cert-auth` and
#                auth are on). "coordinator" and "cli" are always made; give
#                client:root for etcd's administrator (`nubo-coordinator
#                etcd-auth enable`, `node enroll`). Agents' certificates come
#                from `nubo-coordinator node enroll NODE` (CN nubo-node-NODE,
#                with the node's etcd user and role).
#
# Steps (all files in OUTDIR, keys mode 0600):
#   1. ca.key / ca.crt            self-signed CA (CN=nubo-ca, 10 years,
#                                 basicConstraints CA:TRUE, keyCertSign).
#                                 Kept if it exists, so re-running the script
#                                 to add an agent does not invalidate others.
#   2. etcd-server.{key,crt}      CN=etcd, SANs as above, EKU serverAuth +
#                                 clientAuth (etcd also dials itself/peers).
#   3. coordinator-server.{key,crt}
#                                 CN=nubo-coordinator, same SANs, serverAuth,
#                                 for the gRPC API.
#   4. client-NAME.{key,crt}      CN=NAME, EKU clientAuth, no SAN.
#   Leaf certificates are valid 825 days; existing ones are kept unless
#   FORCE=1 (re-issue with the same CA).
#
# Use:
#   etcd --client-cert-auth --trusted-ca-file OUTDIR/ca.crt \
#        --cert-file OUTDIR/etcd-server.crt --key-file OUTDIR/etcd-server.key \
#        --listen-client-urls https://IP:2379 --advertise-client-urls https://IP:2379
#   etcdctl --cacert OUTDIR/ca.crt --cert OUTDIR/client-cli.crt \
#        --key OUTDIR/client-cli.key --endpoints https://IP:2379 get --prefix /nubo/
#   Rust: etcd_client::ConnectOptions::new().with_tls(TlsOptions::new()
#        .ca_certificate(Certificate::from_pem(ca)).identity(Identity::from_pem(crt, key)))
#   Verify: openssl verify -CAfile OUTDIR/ca.crt OUTDIR/client-cli.crt
set -euo pipefail

usage() { echo "usage: $0 OUTDIR [SAN | client:NAME ...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
out=$1; shift
mkdir -p "$out"
umask 077

sans=("IP:127.0.0.1" "IP:::1" "DNS:localhost")
clients=(coordinator cli)
for a in "$@"; do
  case "$a" in
    client:?*) clients+=("${a#client:}") ;;
    client:) usage ;;
    *:*|*[!0-9.]*)
      # IPv6 (has ':'), or a name that is not a dotted quad.
      if [[ "$a" == *:* ]]; then sans+=("IP:$a")
      elif [[ "$a" =~ ^[A-Za-z0-9.*-]+$ ]]; then sans+=("DNS:$a")
      else echo "bad SAN: $a" >&2; exit 2; fi ;;
    *) sans+=("IP:$a") ;;
  esac
done
san_list=$(IFS=,; echo "${sans[*]}")

days_ca=3650
days_leaf=825

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# 1. CA
if [ ! -s "$out/ca.key" ] || [ ! -s "$out/ca.crt" ]; then
  newkey "$out/ca.key"
  openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$days_ca" \
    -subj "/CN=nubo-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$out/ca.crt"
fi

# issue NAME CN EXTENSIONS: a leaf key + certificate signed by the CA.
issue() {
  local name=$1 cn=$2 ext=$3
  if [ -s "$out/$name.crt" ] && [ -s "$out/$name.key" ] && [ "${FORCE:-0}" != 1 ]; then
    return
  fi
  newkey "$out/$name.key"
  openssl req -new -key "$out/$name.key" -subj "/CN=$cn" -out "$out/$name.csr"
  printf '%s\n' "$ext" > "$out/$name.ext"
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$days_leaf" \
    -extfile "$out/$name.ext" -out "$out/$name.crt" 2>/dev/null
  rm -f "$out/$name.csr" "$out/$name.ext"
  openssl verify -CAfile "$out/ca.crt" "$out/$name.crt" >/dev/null
}

server_ext() {
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=$1" \
    "subjectAltName=$san_list"
}

# 2. + 3. servers
issue etcd-server etcd "$(server_ext serverAuth,clientAuth)"
issue coordinator-server nubo-coordinator "$(server_ext serverAuth)"

# 4. clients
for c in "${clients[@]}"; do
  if ! [[ "$c" =~ ^[A-Za-z0-9][A-Za-z0-9._@-]*$ ]]; then
    echo "bad client name: $c" >&2; exit 2
  fi
  issue "client-$c" "$c" "$(printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=clientAuth")"
done

chmod 0644 "$out"/*.crt
chmod 0600 "$out"/*.key
echo "certificates in $out: $(cd "$out" && ls -- *.crt | tr '\n' ' ')"
