#!/usr/bin/env bash
# Makes the real mail servers of tests/test_real_mtas.py available, as root, idempotently.
#
# postfix, exim4-daemon-light and opensmtpd all provide mail-transport-agent, so apt
# installs only one of them (postfix, from tests/apt-packages.txt).  The others are
# fetched with `apt-get download` and unpacked with `dpkg -x` into a folder the tests
# own, outside any repository: nothing is registered with dpkg, nothing replaces the
# system's MTA, no service is started.  Their shared libraries come from
# tests/apt-packages.txt.  The users their maintainer scripts would create are created
# here, since the daemons drop privileges to them.
set -euo pipefail

ROOT=${CHECK_OPEN_RELAY_MTA_ROOT:-/opt/check-open-relay-test-mtas}
PACKAGES=(exim4-daemon-light opensmtpd)

if [ "$(id -u)" != 0 ]; then
    echo "mtas.sh: needs root (creates users, unpacks under $ROOT)" >&2
    exit 1
fi

# Users and groups, as the packages' postinst scripts create them.
if ! getent passwd Debian-exim >/dev/null; then
    adduser --system --group --quiet --home /var/spool/exim4 --no-create-home \
        --disabled-login --force-badname Debian-exim
fi
for name in opensmtpd opensmtpq; do
    getent group "$name" >/dev/null || addgroup --system --quiet "$name"
    getent passwd "$name" >/dev/null || adduser --system --quiet \
        --home /var/lib/opensmtpd/empty --no-create-home --disabled-password \
        --ingroup "$name" "$name"
done
# Paths compiled into smtpd, as the package would create them: the chroot of its
# unprivileged processes, and the spool, on which each test instance mounts its own.
install -d -m 0755 -o root -g root /var/lib/opensmtpd/empty
install -d -m 0711 -o root -g root /var/spool/smtpd

mkdir -p "$ROOT"
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
for package in "${PACKAGES[@]}"; do
    version=$(apt-cache policy "$package" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$version" ] || [ "$version" = "(none)" ]; then
        apt-get update -q >/dev/null
        version=$(apt-cache policy "$package" | awk '/Candidate:/ {print $2}')
    fi
    stamp="$ROOT/.unpacked-$package"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; then
        continue
    fi
    # apt downloads as its sandbox user where it can write.
    chown _apt "$download" 2>/dev/null || true
    (cd "$download" && apt-get download -q "$package=$version" >/dev/null)
    dpkg -x "$download/${package}_"*.deb "$ROOT"
    rm -f "$download/${package}_"*.deb
    echo "$version" >"$stamp"
    echo "mtas.sh: unpacked $package $version into $ROOT"
done

# Fail here, not in the middle of a test run, when a library is missing.
for binary in "$ROOT/usr/sbin/exim4" "$ROOT/usr/sbin/smtpd"; do
    if ldd "$binary" | grep -q "not found"; then
        echo "mtas.sh: $binary misses libraries:" >&2
        ldd "$binary" | grep "not found" >&2
        exit 1
    fi
done
