-- Startup and shutdown script output (issue 12), per workspace start: one agent lifetime, named
-- by the random start id the agent sends. A batch is stored once, however often the agent
-- retries it: (workspace_id, start_id, seq) is its key in workspace_log_batches. At most 1 MiB
-- of lines is kept per start; the oldest go first, and the start row counts what went (shown as
-- one marker line). Only the latest few starts of a workspace are kept.

CREATE TABLE workspace_log_starts (
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id),
    start_id      TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    bytes         BIGINT NOT NULL DEFAULT 0,
    dropped_lines BIGINT NOT NULL DEFAULT 0,
    dropped_bytes BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, start_id)
);
CREATE INDEX workspace_log_starts_latest ON workspace_log_starts (workspace_id, created_at);

CREATE TABLE workspace_log_batches (
    workspace_id TEXT NOT NULL,
    start_id     TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, start_id, seq)
);

CREATE TABLE workspace_logs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL,
    start_id     TEXT NOT NULL,
    at_ms        BIGINT NOT NULL,
    stream       TEXT NOT NULL,
    text         TEXT NOT NULL,
    bytes        BIGINT NOT NULL
);
CREATE INDEX workspace_logs_start ON workspace_logs (workspace_id, start_id, id);
