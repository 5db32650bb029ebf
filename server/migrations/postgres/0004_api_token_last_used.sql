-- Dashboard token settings (issue 11): when an API token was last used, shown in the token
-- list. Written at most once a minute per token (the authenticator skips fresher stamps).
ALTER TABLE api_tokens ADD COLUMN last_used_at BIGINT;
