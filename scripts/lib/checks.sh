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

# docs/operations: the alert rules validate (`promtool check rules`), their unit tests pass
# (`promtool test rules`: each alert fires on the series it watches), and every alert has its
# runbook section, linked by its `runbook` annotation.
check_operations_docs() {
    if ! command -v promtool >/dev/null; then
        apt_install --no-install-recommends prometheus || return 1
    fi
    promtool check rules docs/operations/alerts.yaml || return 1
    promtool test rules docs/operations/alerts_test.yaml || return 1
    local alert missing=0
    while read -r alert; do
        if ! grep -qx "## $alert" docs/operations/runbooks.md; then
            echo "alert $alert has no section \`## $alert\` in docs/operations/runbooks.md" >&2
            missing=1
        fi
        if ! grep -q "runbook: docs/operations/runbooks.md#${alert,,}\$" docs/operations/alerts.yaml; then
            echo "alert $alert does not link docs/operations/runbooks.md#${alert,,}" >&2
            missing=1
        fi
    done < <(sed -nE 's/^ *- alert: *([A-Za-z0-9]+) *$/\1/p' docs/operations/alerts.yaml)
    [[ $missing -eq 0 ]] && echo "every alert has its runbook"
}
