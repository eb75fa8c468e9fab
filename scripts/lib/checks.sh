# Static checks of the runtime seam, sourced by scripts/test.

# No module of the library calls tokio outside the tokio side of the runtime seam
# (`eventbus/src/runtime/tokio.rs`) and the admin server (axum, tokio only by design).
# Doc comments and `self::tokio::` (the seam's own module path) do not count.
check_tokio_outside_seam() {
    local hits
    hits=$(grep -rnE --include='*.rs' '(^|[^:[:alnum:]_])tokio::|^[[:space:]]*use tokio\b' eventbus/src |
        grep -vE '^eventbus/src/runtime/tokio\.rs:|^eventbus/src/admin/' |
        grep -vE '^[^:]+:[0-9]+:[[:space:]]*//')
    if [[ -n $hits ]]; then
        echo "tokio used outside the runtime seam (eventbus/src/runtime/tokio.rs):" >&2
        echo "$hits" >&2
        return 1
    fi
    echo "no tokio outside eventbus/src/runtime/tokio.rs and eventbus/src/admin/"
}

# The dependency tree under `runtime-smol` holds no tokio runtime: without `redis` no tokio at
# all; with `redis`, redis-rs links tokio for its codec and I/O traits only, never its
# executor, reactor or timers (features `rt`, `net`, `time`).
check_smol_dependency_tree() {
    local base="-p eventbus-framework --no-default-features -e normal"
    local tree
    # `cargo tree -i` prints nothing (and a warning) when the package is not in the tree.
    tree=$(cargo tree $base --features "runtime-smol,inventory,kafka,sqlite,postgres" -i tokio 2>/dev/null) || return 1
    if [[ -n $tree ]]; then
        echo "tokio in the tree of runtime-smol,kafka,sqlite,postgres:" >&2
        echo "$tree" >&2
        return 1
    fi
    tree=$(cargo tree $base --features "runtime-smol,inventory,redis,kafka,sqlite,postgres" -e features -i tokio) || return 1
    if grep -E 'tokio feature "(rt|rt-multi-thread|net|time|fs|process|signal)"' <<<"$tree" >&2; then
        echo "a tokio runtime feature is on under runtime-smol,redis (above)" >&2
        return 1
    fi
    echo "runtime-smol,kafka,sqlite,postgres: no tokio; with redis: tokio without rt/net/time:"
    grep -E '^tokio|tokio feature' <<<"$tree" | sort -u
}
