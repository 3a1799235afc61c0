#!/bin/sh
# ACME renewal hook for a hapd pair (the guide's "rsync on renewal" approach).
#
# Run it on the node where the ACME client renewed, as its deploy hook:
#   certbot:  --deploy-hook /etc/hapd/acme-renew-hook.sh   (sets RENEWED_LINEAGE)
#   acme.sh:  --reloadcmd "RENEWED_LINEAGE=/path/to/cert/dir /etc/hapd/acme-renew-hook.sh"
# It installs the new certificate where hapd reads it, checks the config with it, reloads
# hapd here, then copies the files to every peer and reloads hapd there. A check that fails
# stops before anything is reloaded, so a broken certificate never replaces a working one.
#
# Settings (environment, or /etc/default/hapd-acme):
#   RENEWED_LINEAGE  directory with cert.pem, chain.pem, privkey.pem (certbot's layout)
#   HAPD_CONFIG      hapd's config (default /etc/hapd/hapd.toml)
#   CERT KEY CHAIN   where the config's [[tls.certificate]] reads them
#   PEERS            the other nodes, for ssh/rsync (space separated; empty: this node only).
#                    Leave it empty on nodes with `[cluster] sync_certificates = true`: hapd
#                    pushes the renewed files to its peers itself (docs/operations.md,
#                    "Certificate sync"), without ssh between the nodes.
#   SSH              ssh command for peers (default "ssh -o BatchMode=yes")
set -eu

# shellcheck source=/dev/null
[ -r /etc/default/hapd-acme ] && . /etc/default/hapd-acme

: "${RENEWED_LINEAGE:?set RENEWED_LINEAGE to the renewed certificate directory}"
HAPD=${HAPD:-hapd}
HAPD_CONFIG=${HAPD_CONFIG:-/etc/hapd/hapd.toml}
CERT=${CERT:-/etc/pki/tls/certs/example-corp.crt}
KEY=${KEY:-/etc/pki/tls/private/example-corp.key}
CHAIN=${CHAIN:-/etc/pki/tls/certs/example-corp-chain.crt}
PEERS=${PEERS:-}
SSH=${SSH:-ssh -o BatchMode=yes}

for f in cert.pem chain.pem privkey.pem; do
	[ -r "$RENEWED_LINEAGE/$f" ] || { echo "acme-renew-hook: $RENEWED_LINEAGE/$f is missing" >&2; exit 1; }
done

# Install beside the live files, then rename: hapd never reads a half-written file.
install_file() { # mode source destination
	tmp="$3.new.$$"
	install -m "$1" "$2" "$tmp"
	mv -f "$tmp" "$3"
}
backup() { for f in "$CERT" "$KEY" "$CHAIN"; do [ -e "$f" ] && cp -p "$f" "$f.bak"; done; return 0; }
restore() { for f in "$CERT" "$KEY" "$CHAIN"; do [ -e "$f.bak" ] && mv -f "$f.bak" "$f"; done; return 0; }

backup
install_file 0644 "$RENEWED_LINEAGE/cert.pem" "$CERT"
install_file 0644 "$RENEWED_LINEAGE/chain.pem" "$CHAIN"
install_file 0600 "$RENEWED_LINEAGE/privkey.pem" "$KEY"
if ! "$HAPD" check --config "$HAPD_CONFIG" >/dev/null; then
	echo "acme-renew-hook: hapd check fails with the new certificate; the old one is back" >&2
	restore
	exit 1
fi
"$HAPD" reload --config "$HAPD_CONFIG"
for f in "$CERT" "$KEY" "$CHAIN"; do rm -f "$f.bak"; done

for peer in $PEERS; do
	for f in "$CERT" "$CHAIN" "$KEY"; do
		rsync -a -e "$SSH" "$f" "$peer:$f"
	done
	$SSH "$peer" "$HAPD" reload --config "$HAPD_CONFIG"
	echo "acme-renew-hook: $peer reloaded"
done
