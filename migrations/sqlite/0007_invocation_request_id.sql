-- The `client-request-id` of an invocation's last call to a REST service (Exchange Online's
-- InvokeCommand, or the `$batch` that carried it): what Microsoft support asks for. NULL for
-- invocations run over WinRM/PSRP and for rows written before this column existed.
ALTER TABLE invocations ADD COLUMN request_id TEXT;
