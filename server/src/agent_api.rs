//! The agent's HTTP routes (agent token, not a user's session): heartbeats today; the agent
//! table they update is [`crate::agents::AgentHub`].

use std::time::Instant;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use http::HeaderMap;
use lumie_contract::agent_api::{
    AGENT_TOKEN_HEADER, HEARTBEAT_PATH, HeartbeatRequest, HeartbeatResponse,
};

use crate::error::{Error, Result};
use crate::state::AppState;

/// The agent API's routes.
pub fn routes() -> Router<AppState> {
    Router::new().route(HEARTBEAT_PATH, post(heartbeat))
}

/// The agent token from its header, or `Authorization: Bearer` as Coder's agents send it.
fn agent_token(headers: &HeaderMap) -> Result<&str> {
    headers
        .get(AGENT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            Error::Unauthorized(format!(
                "agent token missing: send the {AGENT_TOKEN_HEADER} header"
            ))
        })
}

/// `POST /api/v2/workspaceagents/me/heartbeat`.
async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(hb): Json<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>> {
    let start = Instant::now();
    let r = agent_token(&headers).and_then(|token| state.agents.heartbeat(token, hb));
    state
        .metrics
        .heartbeat_latency
        .observe(start.elapsed().as_secs_f64());
    r.map(Json)
}
