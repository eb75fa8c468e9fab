# The tansu broker (Kafka protocol, sqlite storage) for the Kafka suites. Sourced by
# scripts/test and scripts/measure-brokers after scripts/lib/servers.sh.
#
# The suites start a broker of their own per case (tests/support/tansu.rs); this file only
# makes sure the binary exists and exports EVENTBUS_TANSU_BIN. `start_shared_tansu` starts one
# long-lived broker instead (EVENTBUS_KAFKA_BROKERS, EVENTBUS_TANSU_DIR), for measuring that
# setup against the per-case one (docs/testing.md).

TANSU_FEATURES=${EVENTBUS_TANSU_FEATURES:-libsql}
TANSU_INSTALL_LOG=${TMPDIR:-/tmp}/eventbus-tansu-install.log

tansu_path() {
    if [[ -x "$HOME/.cargo/bin/tansu" ]]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
    command -v tansu 2>/dev/null
}

# Whether the tansu on PATH can open sqlite storage (a build without `libsql` cannot).
tansu_has_sqlite() {
    local bin=$1 dir port rc=1
    dir=$(mktemp -d)
    port=$(free_port)
    (cd "$dir" && exec "$bin" broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine "sqlite://probe.db") \
        >"$dir/log" 2>&1 </dev/null &
    local pid=$!
    if wait_port 127.0.0.1 "$port" 15 2>/dev/null; then rc=0; fi
    kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    rm -rf "$dir"
    return $rc
}

# Starts `cargo install tansu` in the background when no usable binary is installed.
start_tansu_install() {
    TANSU_INSTALL_PID=
    local bin
    bin=$(tansu_path) || bin=
    if [[ -n $bin ]] && tansu_has_sqlite "$bin"; then return 0; fi
    echo "installing tansu in the background (cargo install tansu --locked --features $TANSU_FEATURES; about 20 minutes on 2 cores); log: $TANSU_INSTALL_LOG"
    cargo install tansu --locked --features "$TANSU_FEATURES" --force -j"${JOBS:-2}" >"$TANSU_INSTALL_LOG" 2>&1 &
    TANSU_INSTALL_PID=$!
}

# Waits for the background install, then checks the binary serves sqlite storage.
finish_tansu_install() {
    if [[ -n ${TANSU_INSTALL_PID:-} ]]; then
        if ! wait "$TANSU_INSTALL_PID"; then
            tail -30 "$TANSU_INSTALL_LOG" >&2
            return 1
        fi
    fi
    local bin
    bin=$(tansu_path) || { echo "tansu is not installed" >&2; return 1; }
    tansu_has_sqlite "$bin" || { echo "$bin cannot open sqlite storage" >&2; return 1; }
    export EVENTBUS_TANSU_BIN="$bin"
    command -v sqlite3 >/dev/null || apt_install sqlite3 || return 1
    echo "tansu: $bin ($("$bin" --version 2>/dev/null || echo tansu))"
}

# Starts tansu with the arguments the tests also use; `$1` data dir, `$2` port, `$3` storage
# engine URL (default sqlite, relative to the data directory, tansu's working directory).
tansu_launch() {
    local dir=$1 port=$2 storage=${3:-sqlite://tansu.db}
    (cd "$dir" && exec nohup "$EVENTBUS_TANSU_BIN" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "$storage") >>"$dir/tansu.log" 2>&1 </dev/null &
    echo $! >"$dir/tansu.pid"
}

# tansu 0.6's sqlite schema has no index on `header`, and its fetch reads each record's
# headers with a query of its own: without this index each of those scans every header held,
# and a fetch costs the square of the data (tests/support/tansu.rs, HEADER_INDEX, has the
# measurements). Adds it to the database of a broker started in `$1` with storage `$2`, once the
# broker has created its tables; nothing for other engines or with EVENTBUS_TANSU_AS_SHIPPED=1.
tansu_index_headers() {
    local dir=$1 storage=${2:-sqlite://tansu.db}
    [[ $storage == sqlite://* && ${EVENTBUS_TANSU_AS_SHIPPED:-0} == 0 ]] || return 0
    local deadline=$((SECONDS + 30))
    until (cd "$dir" && sqlite3 -cmd '.timeout 5000' "${storage#sqlite://}" \
        'CREATE INDEX IF NOT EXISTS eventbus_header_by_record ON header (topition, offset_id)' 2>"$dir/index.err"); do
        if ((SECONDS > deadline)); then cat "$dir/index.err" >&2; return 1; fi
        sleep 0.1
    done
}

# One long-lived broker (storage `$1`, default sqlite) for EVENTBUS_TANSU_MODE=shared.
start_shared_tansu() {
    local port dir
    port=$(free_port)
    dir=$(mktemp -d)
    export EVENTBUS_TANSU_DIR="$dir"
    export EVENTBUS_TANSU_STORAGE=${1:-sqlite://tansu.db}
    tansu_launch "$dir" "$port" "$EVENTBUS_TANSU_STORAGE"
    wait_port 127.0.0.1 "$port" 30 || { cat "$dir/tansu.log" >&2; return 1; }
    tansu_index_headers "$dir" "$EVENTBUS_TANSU_STORAGE" || return 1
    export EVENTBUS_KAFKA_BROKERS="127.0.0.1:$port"
    CLEANUP+=("p=\$(cat '$dir/tansu.pid' 2>/dev/null); kill \$p >/dev/null 2>&1; sleep 0.5; kill -9 \$p >/dev/null 2>&1; rm -rf '$dir'")
    echo "shared tansu on $EVENTBUS_KAFKA_BROKERS ($EVENTBUS_TANSU_STORAGE)"
}
