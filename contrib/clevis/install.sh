#!/bin/sh
# Install the geoprobe clevis pin next to clevis's own pins: install.sh [PREFIX] (default /usr).
set -eu
prefix="${1:-/usr}"
here="$(dirname "$0")"
install -d "$prefix/bin"
install -m 0755 "$here/clevis-encrypt-geoprobe" "$here/clevis-decrypt-geoprobe" "$prefix/bin/"
echo "installed clevis-encrypt-geoprobe and clevis-decrypt-geoprobe in $prefix/bin"
