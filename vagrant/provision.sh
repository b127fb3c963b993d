#!/usr/bin/env bash
# The single install script: Debian 12 packages, a virtualenv with dynod, the `dynod` command on
# PATH and (where systemd runs) a dynod.service unit. Used by the Vagrantfile, by CI, and by hand:
#   sudo vagrant/provision.sh            # from the project's root
# It can run again at any time; it changes nothing that is already as it should be.
set -euo pipefail

project="$(cd "${1:-$(dirname "$0")/..}" && pwd)"
venv="$project/.venv"

if [ "$(id -u)" -ne 0 ]; then
    echo "provision.sh installs packages and a system command: run it as root (sudo)." >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
packages=(python3 python3-venv python3-pip nftables iproute2 util-linux procps iputils-ping curl
          dnsmasq-base     # the tutorial's DNS step, the DNS bench's reference
          chromium graphviz   # `dynod inspect`'s browser test and its svg/png drawings
          wrk nginx-light)    # bench/router_throughput.py: the client and the reference proxy
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # nginx is only bench/router_throughput.py's reference, run with its own configuration: the
    # system service it brings would take port 80 on every address, spaces' router addresses too.
    if [[ " ${missing[*]} " == *" nginx-light "* ]] && command -v systemctl >/dev/null; then
        systemctl disable --now nginx 2>/dev/null || true
    fi
fi

# Debian's own Python 3.11, whatever else is first on PATH.
if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check --editable "$project[test]"
ln -sf "$venv/bin/dynod" /usr/local/bin/dynod

# Who may use the CLI without sudo: members of the dynod group (the daemon gives it the socket).
getent group dynod >/dev/null || groupadd --system dynod

if [ -d /run/systemd/system ]; then
    sed "s|@DYNOD@|$venv/bin/dynod|" "$project/vagrant/dynod.service" > /etc/systemd/system/dynod.service
    systemctl daemon-reload
fi
echo "dynod installed: $(/usr/local/bin/dynod --help | head -1)"
