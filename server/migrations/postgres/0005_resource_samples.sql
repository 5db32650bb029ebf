-- Dashboard resource graphs (issue 11): CPU, memory and disk of each workspace over the last
-- hour, from the agents' heartbeats. One row per workspace per time bucket (the primary key),
-- so every replica writing the same bucket agrees on one sample (`ON CONFLICT DO NOTHING`);
-- rows older than an hour are pruned. CPU is stored in millicores to keep to integer columns.
CREATE TABLE resource_samples (
    workspace_id        TEXT NOT NULL,
    bucket              BIGINT NOT NULL,
    at                  BIGINT NOT NULL,
    cpu_millicores      BIGINT NOT NULL,
    memory_used_bytes   BIGINT NOT NULL,
    memory_total_bytes  BIGINT NOT NULL,
    disk_used_bytes     BIGINT NOT NULL,
    disk_total_bytes    BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, bucket)
);
CREATE INDEX resource_samples_at ON resource_samples (at);
