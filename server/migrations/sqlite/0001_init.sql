-- lumie-coder schema (SQLite). Keep in step with ../postgres/0001_init.sql: the repository layer
-- runs the same SQL on both, so ids are TEXT (UUIDs), times BIGINT milliseconds since the epoch,
-- flags BIGINT 0/1 and documents TEXT (JSON).

CREATE TABLE users (
    id           TEXT PRIMARY KEY,
    username     TEXT NOT NULL UNIQUE,
    email        TEXT NOT NULL DEFAULT '',
    is_admin     BIGINT NOT NULL DEFAULT 0,
    login_type   TEXT NOT NULL DEFAULT 'token',
    oidc_subject TEXT UNIQUE,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash   TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT
);

CREATE TABLE workspaces (
    id                TEXT PRIMARY KEY,
    owner_id          TEXT NOT NULL REFERENCES users (id),
    name              TEXT NOT NULL,
    pod_name          TEXT NOT NULL,
    desired_state     TEXT NOT NULL,
    status            TEXT NOT NULL,
    status_reason     TEXT NOT NULL DEFAULT '',
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    status_changed_at BIGINT NOT NULL,
    deleted_at        BIGINT
);
CREATE UNIQUE INDEX workspaces_owner_name ON workspaces (owner_id, name) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX workspaces_pod_name ON workspaces (pod_name) WHERE deleted_at IS NULL;

CREATE TABLE builds (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    number       BIGINT NOT NULL,
    transition   TEXT NOT NULL,
    status       TEXT NOT NULL,
    error        TEXT,
    initiator_id TEXT,
    created_at   BIGINT NOT NULL,
    started_at   BIGINT,
    completed_at BIGINT,
    UNIQUE (workspace_id, number)
);
-- At most one build in flight per workspace.
CREATE UNIQUE INDEX builds_one_active ON builds (workspace_id) WHERE status IN ('pending', 'running');

CREATE TABLE agents (
    id                 TEXT PRIMARY KEY,
    workspace_id       TEXT NOT NULL UNIQUE REFERENCES workspaces (id),
    token_hash         TEXT NOT NULL UNIQUE,
    lifecycle          TEXT NOT NULL DEFAULT 'created',
    lifecycle_reason   TEXT NOT NULL DEFAULT '',
    connection         TEXT NOT NULL DEFAULT 'connecting',
    first_connected_at BIGINT,
    last_contact_at    BIGINT,
    apps               TEXT NOT NULL DEFAULT '{}',
    stats              TEXT,
    version            TEXT NOT NULL DEFAULT '',
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           BIGINT NOT NULL,
    actor_id     TEXT,
    actor_name   TEXT NOT NULL,
    action       TEXT NOT NULL,
    workspace_id TEXT,
    detail       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_workspace ON audit_log (workspace_id, at);
