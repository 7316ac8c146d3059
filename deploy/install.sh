#!/bin/sh
# Installs memwatch from an unpacked release tarball (run from its top
# directory, as root):
#   binary   -> /usr/local/bin/memwatch
#   config   -> /etc/memwatch/memwatch.toml (an existing one is kept; the
#               shipped one goes next to it as memwatch.toml.new)
#   unit     -> /etc/systemd/system/memwatch.service
#   rules, dashboard, manifests, README -> /usr/local/share/memwatch/
# DESTDIR=/some/root installs under another root (for packaging or tests).
set -eu
cd "$(dirname "$0")"
root="${DESTDIR:-}"

install -d -m 0755 "$root/usr/local/bin" "$root/etc/memwatch" "$root/etc/systemd/system" \
    "$root/usr/local/share/memwatch" "$root/usr/local/share/doc/memwatch"
install -m 0755 bin/memwatch "$root/usr/local/bin/memwatch"
if [ -e "$root/etc/memwatch/memwatch.toml" ]; then
    install -m 0644 etc/memwatch/memwatch.toml "$root/etc/memwatch/memwatch.toml.new"
    echo "kept /etc/memwatch/memwatch.toml; the shipped one is memwatch.toml.new"
else
    install -m 0644 etc/memwatch/memwatch.toml "$root/etc/memwatch/memwatch.toml"
fi
install -m 0644 systemd/memwatch.service "$root/etc/systemd/system/memwatch.service"
cp -R prometheus grafana kubernetes "$root/usr/local/share/memwatch/"
install -m 0644 README.md "$root/usr/local/share/doc/memwatch/README.md"

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "installed; start it with: systemctl enable --now memwatch"
else
    echo "installed under ${root:-/}"
fi
