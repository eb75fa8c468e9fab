# Installs Debian's Chromium and ChromeDriver for the dashboard's end-to-end test. Sourced by
# scripts/test; needs `apt_install` from servers.sh (root, apt-get update once).
#
#   install_browser   installs chromium + chromium-driver when missing and exports
#                     EVENTBUS_CHROMEDRIVER (the test starts chromedriver itself on a free
#                     loopback port) and EVENTBUS_CHROMIUM.

install_browser() {
    if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
        apt_install chromium chromium-driver || return 1
    fi
    export EVENTBUS_CHROMEDRIVER
    EVENTBUS_CHROMEDRIVER=$(command -v chromedriver)
    export EVENTBUS_CHROMIUM
    EVENTBUS_CHROMIUM=$(command -v chromium)
    echo "chromedriver: $("$EVENTBUS_CHROMEDRIVER" --version 2>/dev/null | head -1)"
}
