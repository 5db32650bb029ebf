-- Several replicas on one database (issue 15). Each replica keeps agents and session use in
-- memory as a cache and refreshes what changed elsewhere once a second: these indexes make that
-- one cheap query ("rows written since", "workspaces deleted since").
CREATE INDEX agents_updated_at ON agents (updated_at);
CREATE INDEX workspaces_deleted_at ON workspaces (deleted_at) WHERE deleted_at IS NOT NULL;

-- When a session last carried anything into the workspace (ms); written in batches.
ALTER TABLE workspaces ADD COLUMN last_used_at BIGINT;
CREATE INDEX workspaces_last_used_at ON workspaces (last_used_at) WHERE last_used_at IS NOT NULL;

-- OIDC logins in progress, so a login begun on one replica completes on any: keyed by the
-- sha256 of `state` (the browser holds the state itself, in a cookie), used once, kept until
-- they expire (a replayed callback is named as such). `login` is the PKCE verifier, nonce and
-- return path as JSON: worthless without the provider's one-time code for this login.
CREATE TABLE oidc_logins (
    state_hash  TEXT PRIMARY KEY,
    login       TEXT NOT NULL,
    client_key  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX oidc_logins_created_at ON oidc_logins (created_at);
CREATE INDEX oidc_logins_client ON oidc_logins (client_key, created_at);
