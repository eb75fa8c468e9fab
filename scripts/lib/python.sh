# A Python virtual environment with the `redis` and `confluent-kafka` clients, for the test of
# producers in other languages (tests/foreign_producers.rs). Sourced by scripts/test; needs
# `apt_install` from servers.sh.
#
#   install_python_clients   makes (or reuses) the venv and exports EVENTBUS_PYTHON, its
#                            interpreter.

PYTHON_VENV=${EVENTBUS_TEST_VENV:-$HOME/.cache/eventbus-test-venv}

install_python_clients() {
    local python=$PYTHON_VENV/bin/python
    if ! "$python" -c 'import redis, confluent_kafka' 2>/dev/null; then
        command -v python3 >/dev/null || apt_install python3 || return 1
        if ! python3 -m venv "$PYTHON_VENV" 2>/dev/null; then
            # Debian's python3 keeps `venv` in a package of its own.
            apt_install python3-venv && python3 -m venv "$PYTHON_VENV" || return 1
        fi
        "$PYTHON_VENV/bin/pip" install -q redis confluent-kafka || return 1
    fi
    export EVENTBUS_PYTHON=$python
    echo "python clients: $("$python" -c 'import redis, confluent_kafka; print("redis", redis.__version__, "confluent-kafka", confluent_kafka.version()[0])')"
}
