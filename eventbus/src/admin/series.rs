//! `GET /api/series`: the dashboard's charts, rates per topic and lag per group over the
//! configured window ([`crate::admin::AdminConfig::series_window`]).

use axum::extract::State;
use axum::Json;

use super::State as AdminState;
use crate::observability::series::Snapshot;

/// `{"interval_seconds", "window_seconds", "since", "times": [unix ms], "topics": [{"topic",
/// "published", "handled", "failed", "dead_lettered"}], "lag": [{"group", "lag"}]}`: each
/// list holds one value per entry of `times`, a rate per second over the interval ending
/// there (starting at the time before, `since` for the first); lag is messages not yet
/// delivered, `null` where the group was not reported.
pub(crate) async fn series(State(state): State<AdminState>) -> Json<Snapshot> {
    Json(state.series.snapshot())
}
