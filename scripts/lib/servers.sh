# Starts throwaway servers on free loopback ports for the test suite. Sourced by scripts/test;
# each start_* function exports the server's URL and registers its stop command in CLEANUP.

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# A free port whose cluster bus port (port + 10000, Redis Cluster's rule) is free too.
free_cluster_port() {
    python3 -c '
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
while True:
    p = random.randint(20000, 55000)
    if free(p) and free(p + 10000):
        print(p)
        break'
}

wait_port() { # host port seconds
    local deadline=$((SECONDS + $3))
    until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
        if ((SECONDS > deadline)); then echo "port $2 did not open" >&2; return 1; fi
        sleep 0.1
    done
}

apt_install() { # package...
    if [[ $(id -u) -ne 0 ]]; then echo "need root to apt-get install $*" >&2; return 1; fi
    if [[ -z ${APT_UPDATED:-} ]]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_redis() {
    command -v redis-server >/dev/null || apt_install redis-server || return 1
    local port dir
    port=$(free_port)
    dir=$(mktemp -d)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly yes \
        --appendfsync everysec --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" \
        --logfile "$dir/redis.log" || return 1
    wait_port 127.0.0.1 "$port" 10 || return 1
    export EVENTBUS_REDIS_URL="redis://127.0.0.1:$port"
    export EVENTBUS_REDIS_DIR="$dir"
    export EVENTBUS_REDIS_SERVER
    EVENTBUS_REDIS_SERVER=$(command -v redis-server)
    CLEANUP+=("redis-cli -p $port shutdown nosave >/dev/null 2>&1; rm -rf '$dir'")
    echo "redis on $EVENTBUS_REDIS_URL"
}

# A three-master Redis Cluster on loopback (no replicas): exports EVENTBUS_REDIS_CLUSTER_URL (a
# seed node), EVENTBUS_REDIS_CLUSTER_DIR (one data directory per node, named by port) and
# EVENTBUS_REDIS_CLUSTER_PORTS.
start_redis_cluster() {
    local dir port ports=() deadline
    dir=$(mktemp -d)
    for _ in 1 2 3; do
        port=$(free_cluster_port)
        mkdir -p "$dir/$port"
        redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
            --cluster-config-file "$dir/$port/nodes.conf" --cluster-node-timeout 2000 \
            --save '' --appendonly yes --appendfsync everysec --dir "$dir/$port" --daemonize yes \
            --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log" || return 1
        ports+=("$port")
        CLEANUP+=("redis-cli -p $port shutdown nosave >/dev/null 2>&1")
    done
    for port in "${ports[@]}"; do
        wait_port 127.0.0.1 "$port" 10 || { tail -20 "$dir/$port/redis.log" >&2; return 1; }
    done
    redis-cli --cluster create "127.0.0.1:${ports[0]}" "127.0.0.1:${ports[1]}" "127.0.0.1:${ports[2]}" \
        --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 || { cat "$dir/create.log" >&2; return 1; }
    deadline=$((SECONDS + 30))
    for port in "${ports[@]}"; do
        until redis-cli -p "$port" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; do
            if ((SECONDS > deadline)); then echo "redis cluster did not become ready" >&2; return 1; fi
            sleep 0.2
        done
    done
    export EVENTBUS_REDIS_CLUSTER_URL="redis://127.0.0.1:${ports[0]}"
    export EVENTBUS_REDIS_CLUSTER_DIR="$dir"
    export EVENTBUS_REDIS_CLUSTER_PORTS="${ports[*]}"
    CLEANUP+=("rm -rf '$dir'")
    echo "redis cluster on ${ports[*]}"
}

start_postgres() {
    local pgbin port dir
    pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [[ -z $pgbin ]]; then
        apt_install postgresql || return 1
        pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    port=$(free_port)
    dir=$(mktemp -d)
    local as=()
    if [[ $(id -u) -eq 0 ]]; then chown postgres:postgres "$dir"; as=(runuser -u postgres --); fi
    "${as[@]}" "$pgbin/initdb" -D "$dir/db" -U postgres --auth=trust -E UTF8 --no-locale --no-sync >/dev/null || return 1
    "${as[@]}" "$pgbin/pg_ctl" -D "$dir/db" -l "$dir/log" -w \
        -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c max_connections=200" start >/dev/null || return 1
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    CLEANUP+=("${as[*]} '$pgbin/pg_ctl' -D '$dir/db' -m immediate stop >/dev/null 2>&1; rm -rf '$dir'")
    echo "postgres on $DATABASE_URL"
}

# Installs the Debian packages the suites need when missing (one `apt-get update`).
install_packages() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || missing+=(postgresql)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    # The lint gate builds every feature: Kafka's TLS and SASL (`kafka-ssl`, `kafka-gssapi`)
    # link the system OpenSSL and Cyrus SASL.
    for package in libssl-dev libsasl2-dev pkg-config; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
}

# Starts Redis and PostgreSQL and points the dashboard test at the browser.
start_servers() {
    start_redis && start_redis_cluster && start_postgres && install_browser
}

# The library's features without tokio's executor (`runtime-tokio` off).
SMOL_ONLY_FEATURES=runtime-smol,inventory,redis,kafka,sqlite,postgres

# Test builds under other feature sets: the library on smol alone with every backend (and its
# in-memory suite), the OpenTelemetry bridge.
build_variants() {
    cargo test -j"$JOBS" -p eventbus-framework --no-default-features --features "$SMOL_ONLY_FEATURES" --test memory_pipeline --no-run &&
        cargo test -j"$JOBS" -p eventbus-framework --features opentelemetry --test opentelemetry_bridge --no-run
}
