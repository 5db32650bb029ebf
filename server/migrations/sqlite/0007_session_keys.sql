-- Sessions into workspaces (issue 13): the Ed25519 keys the control plane signs session tickets
-- with. Every replica signs with the same key, so the row is created once (a fixed id, insert if
-- absent) on first start; agents learn the public keys from heartbeat answers. A rotation adds a
-- row (the newest key signs once agents have had time to hear of it) and later retires the old.
CREATE TABLE session_keys (
    id          TEXT PRIMARY KEY,
    secret_key  TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT
);
