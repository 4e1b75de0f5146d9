#!/usr/bin/env bash
# Install the real SAMP peers used by the `peers` tests (Debian 12 / bookworm packages).
#
#   sudo bash tests/peers/install.sh
#
# Idempotent: packages already installed are left alone; `apt-get update` runs at most
# once, and only when the package lists are missing, don't know a package, or an
# install from the existing lists fails (e.g. a superseded version is gone from the mirror).
#
# What each package is for (see tests/peers/harness.py):
#   topcat, stilts        TOPCAT 4.8.7 (+ STILTS as a command-line table sender)
#   jsamp                 JSAMP hub and messagesender/snooper (/usr/share/java/jsamp.jar)
#   saods9, xpa-tools     DS9 8.4.1 and xpaget/xpaset (DS9 is stopped with `xpaset -p T exit`)
#   tclxml                tcl `xml` package; Debian's DS9 never does `package require xml`,
#                         so VOTables load empty unless tests/peers/ds9_init.tcl loads it
#   aladin                Aladin 12.001
#   xvfb, xauth           the X server the GUI peers run on
#   xdotool               GUI automation (TOPCAT row clicks, moving the pointer off DS9)
#   imagemagick           `import -window root` screenshots of the Xvfb display
#   fontconfig, fonts-dejavu-core   Java AWT and Tk need real fonts; the click
#                         coordinates used by the harness were measured with DejaVu
#   procps                ps/pgrep for leftover-process checks
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: must run as root (sudo bash $0)" >&2
    exit 1
fi

PACKAGES=(
    topcat stilts jsamp
    saods9 xpa-tools tclxml
    aladin
    xvfb xauth xdotool imagemagick
    fontconfig fonts-dejavu-core
    procps
)

export DEBIAN_FRONTEND=noninteractive
updated=0

apt_update() {
    if [ "$updated" -eq 0 ]; then
        echo "install.sh: apt-get update"
        apt-get update -q
        updated=1
    fi
}

missing_packages() {
    local p status
    for p in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
        [ "$status" = "installed" ] || printf '%s\n' "$p"
    done
}

mapfile -t MISSING < <(missing_packages)
if [ "${#MISSING[@]}" -eq 0 ]; then
    echo "install.sh: all peer packages already installed"
else
    echo "install.sh: installing ${MISSING[*]}"
    # Lists missing, or some package unknown to them -> update first.
    if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
        apt_update
    else
        for p in "${MISSING[@]}"; do
            cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
            if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
                apt_update
                break
            fi
        done
    fi
    if ! apt-get install -y -q --no-install-recommends "${MISSING[@]}"; then
        [ "$updated" -eq 0 ] || exit 1
        echo "install.sh: install failed with the existing package lists; updating and retrying"
        apt_update
        apt-get install -y -q --no-install-recommends "${MISSING[@]}"
    fi
fi

# Sanity checks: every file the harness runs.
rc=0
for f in /usr/share/java/jsamp.jar /usr/share/java/starlink-topcat.jar /usr/share/java/aladin.jar; do
    [ -r "$f" ] || { echo "install.sh: missing $f" >&2; rc=1; }
done
for exe in java Xvfb ds9 xpaget xpaset xdotool import; do
    command -v "$exe" >/dev/null || { echo "install.sh: missing executable $exe" >&2; rc=1; }
done
if ! echo 'puts [package require xml]' | tclsh >/dev/null 2>&1; then
    echo "install.sh: tcl package 'xml' (tclxml) not loadable; DS9 VOTables would load empty" >&2
    rc=1
fi
[ "$rc" -eq 0 ] && echo "install.sh: peers ready"
exit "$rc"
