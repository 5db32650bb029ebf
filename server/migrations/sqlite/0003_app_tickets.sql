-- Subdomain apps (issue 18): the single-use tickets that carry a signed-in browser from the
-- access URL to an app host, and the app-scoped credentials those tickets are exchanged for.
-- Both are stored as the SHA-256 of the secret; `app` is the app host's label
-- (`<slug>--<workspace>--<owner>`), so a credential only ever opens the app it was minted for.

CREATE TABLE app_tickets (
    ticket_hash  TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    app          TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used         BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX app_tickets_expires ON app_tickets (expires_at);

CREATE TABLE app_sessions (
    token_hash   TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    app          TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX app_sessions_expires ON app_sessions (expires_at);
