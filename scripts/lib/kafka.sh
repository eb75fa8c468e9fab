# Starts a tansu broker (Kafka protocol, sqlite storage) on a free loopback port for the Kafka
# suites. Sourced by scripts/test after scripts/lib/servers.sh (uses free_port, wait_port and
# CLEANUP from it).
#
# Exports EVENTBUS_KAFKA_BROKERS=127.0.0.1:$PORT, EVENTBUS_TANSU_BIN (the binary) and
# EVENTBUS_TANSU_DIR (data directory, log and pid file): the restart suite (tests/kafka_restart.rs)
# stops and starts the broker with the same arguments.

# tansu's sqlite storage needs its `libsql` feature (not in its default features).
install_tansu() {
    echo "installing tansu (cargo install tansu --locked --features libsql; about 15-20 minutes on 2 cores)" >&2
    cargo install tansu --locked --features libsql --force -j"${JOBS:-2}" >&2
}

ensure_tansu() {
    if [[ -x "$HOME/.cargo/bin/tansu" ]]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
    command -v tansu >/dev/null 2>&1 || install_tansu
}

# Starts tansu with the arguments the restart test also uses; `$1` data dir, `$2` port. The
# sqlite path is relative to the data directory, which is tansu's working directory.
tansu_launch() {
    local dir=$1 port=$2
    (cd "$dir" && exec nohup "$EVENTBUS_TANSU_BIN" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "sqlite://tansu.db") >>"$dir/tansu.log" 2>&1 </dev/null &
    echo $! >"$dir/tansu.pid"
}

start_tansu() {
    ensure_tansu
    local port dir
    port=$(free_port)
    dir=$(mktemp -d)
    export EVENTBUS_TANSU_BIN
    EVENTBUS_TANSU_BIN=$(command -v tansu)
    export EVENTBUS_TANSU_DIR="$dir"
    tansu_launch "$dir" "$port"
    if ! wait_port 127.0.0.1 "$port" 30; then
        if grep -q 'FeatureNotEnabled' "$dir/tansu.log"; then
            # A tansu built without sqlite storage: rebuild it with the feature, start again.
            install_tansu
            EVENTBUS_TANSU_BIN=$(command -v tansu)
            tansu_launch "$dir" "$port"
            wait_port 127.0.0.1 "$port" 30 || { cat "$dir/tansu.log" >&2; return 1; }
        else
            cat "$dir/tansu.log" >&2
            return 1
        fi
    fi
    export EVENTBUS_KAFKA_BROKERS="127.0.0.1:$port"
    # The pid file is rewritten when the restart test restarts the broker.
    CLEANUP+=("p=\$(cat '$dir/tansu.pid' 2>/dev/null); kill \$p >/dev/null 2>&1; sleep 0.5; kill -9 \$p >/dev/null 2>&1; rm -rf '$dir'")
    echo "tansu on $EVENTBUS_KAFKA_BROKERS ($($EVENTBUS_TANSU_BIN --version 2>/dev/null || echo tansu))"
}
