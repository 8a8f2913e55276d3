#!/usr/bin/env bash
# Build (once) the sandbox Asterisk 22 that tests and the demo run against.
#
# Debian bookworm has no asterisk package, so we debootstrap a minimal sid
# root outside the repo and install Asterisk there. A system `asterisk` on
# PATH wins and nothing is built. Idempotent: a finished root carries a
# `.pbx-ready` marker and is reused.
#
# Env: PBX_ASTERISK_SANDBOX  where the root lives
#                             (default /var/cache/pbx-controller/asterisk-sid)
#      PBX_FORCE_SANDBOX     set: build/use the sandbox even if asterisk is on PATH
# Building takes about 40 s and 450 MB, and needs root and Debian's mirror.
set -euo pipefail

SANDBOX="${PBX_ASTERISK_SANDBOX:-/var/cache/pbx-controller/asterisk-sid}"
PACKAGES="asterisk asterisk-modules asterisk-core-sounds-en-gsm asterisk-moh-opsound-gsm"
APT_OPTS=(-o Acquire::Check-Valid-Until=false -o Acquire::Retries=3 -o Dpkg::Use-Pty=0)

die() { echo "asterisk-sandbox: $*" >&2; exit 1; }

if [ -z "${PBX_FORCE_SANDBOX:-}" ] && command -v asterisk >/dev/null 2>&1; then
    echo "asterisk-sandbox: using the system Asterisk: $(command -v asterisk)"
    exit 0
fi

if [ -f "$SANDBOX/.pbx-ready" ] && [ "$(id -u)" != 0 ]; then
    die "the sandbox at $SANDBOX is built, but running it needs root (chroot)"
fi

if [ -f "$SANDBOX/.pbx-ready" ] && chroot "$SANDBOX" asterisk -V >/dev/null 2>&1; then
    echo "asterisk-sandbox: ready at $SANDBOX ($(chroot "$SANDBOX" asterisk -V))"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "building the sandbox Asterisk needs root (debootstrap, chroot): run 'sudo make asterisk', or install Asterisk 22 on PATH."

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "asterisk-sandbox: installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
        || die "could not install debootstrap with apt-get"
fi

# The Debian mirror this machine's apt already uses (we do not hard-code one).
mirror="$(grep -hoE '^(URIs:|deb)[[:space:]]+[^[:space:]]+/debian/?([[:space:]]|$)' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '{print $2}' | head -n1 || true)"
[ -n "$mirror" ] || die "cannot find a Debian mirror in /etc/apt/sources*; set one there"

work="$SANDBOX.partial"
rm -rf "$work"
mkdir -p "$(dirname "$SANDBOX")"
echo "asterisk-sandbox: debootstrap sid into $work (about 40 s)"
debootstrap --variant=minbase sid "$work" "$mirror" >"$work.log" 2>&1 \
    || { tail -n 20 "$work.log" >&2; die "debootstrap failed (full log: $work.log)"; }

cp /etc/resolv.conf "$work/etc/resolv.conf" 2>/dev/null || true
echo "asterisk-sandbox: installing $PACKAGES"
{
    chroot "$work" apt-get "${APT_OPTS[@]}" update \
    && DEBIAN_FRONTEND=noninteractive chroot "$work" apt-get "${APT_OPTS[@]}" install -y \
        --no-install-recommends $PACKAGES
} >>"$work.log" 2>&1 || { tail -n 20 "$work.log" >&2; die "apt-get in the sandbox failed (full log: $work.log)"; }
chroot "$work" apt-get clean >/dev/null 2>&1 || true

# The package ships no recording spool; bridge recording fails with HTTP 500 without it.
mkdir -p "$work/var/spool/asterisk/recording"
chroot "$work" chown -R asterisk:asterisk /var/spool/asterisk/recording

rm -rf "$SANDBOX"
mv "$work" "$SANDBOX"
mv "$work.log" "$SANDBOX/.pbx-build.log"
touch "$SANDBOX/.pbx-ready"
echo "asterisk-sandbox: ready at $SANDBOX ($(chroot "$SANDBOX" asterisk -V))"
