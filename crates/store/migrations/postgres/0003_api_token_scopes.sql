-- What an API token may do and until when, postgres dialect. Keep it in step with
-- ../sqlite/0003_api_token_scopes.sql.
--
-- permissions: the token's permissions, comma-separated names (`read,control,console`), at
--   most what its owner may; tokens made before this migration keep all three.
-- expires_at: when the token stops authenticating (unix milliseconds); NULL: never.
ALTER TABLE api_tokens ADD COLUMN permissions TEXT NOT NULL DEFAULT 'read,control,console';
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
