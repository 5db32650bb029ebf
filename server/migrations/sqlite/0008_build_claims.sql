-- One leader among several replicas (issue 15): a build is carried out only by the replica
-- holding its claim (`claimed_by`, an identity: pod name and random suffix) until
-- `claim_expires_at` (ms); the holder renews it while the build runs, and a claim whose holder
-- died expires so the next leader resumes the build. Even two leaders for a moment cannot both
-- hold one build's claim.
ALTER TABLE builds ADD COLUMN claimed_by TEXT;
ALTER TABLE builds ADD COLUMN claim_expires_at BIGINT;
-- The executor's poll (every second, on the leader): active builds oldest first.
CREATE INDEX builds_active ON builds (created_at) WHERE status IN ('pending', 'running');
-- The reconciler's poll (every second, on the leader): workspaces changed since the last one.
CREATE INDEX workspaces_updated_at ON workspaces (updated_at);
