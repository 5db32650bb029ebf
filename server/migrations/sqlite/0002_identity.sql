-- Identity (issue 6): OIDC users are keyed by (issuer, subject); the audit log records the client
-- address (as honoured through the trusted proxy) and the before/after of a change.

ALTER TABLE users ADD COLUMN oidc_issuer TEXT;
ALTER TABLE users ADD COLUMN display_name TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN oidc_login TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX users_oidc_identity ON users (oidc_issuer, oidc_subject);

ALTER TABLE api_tokens ADD COLUMN client_ip TEXT;

ALTER TABLE audit_log ADD COLUMN client_ip TEXT;
ALTER TABLE audit_log ADD COLUMN before_value TEXT;
ALTER TABLE audit_log ADD COLUMN after_value TEXT;
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor_name, at);
