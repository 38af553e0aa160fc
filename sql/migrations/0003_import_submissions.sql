-- A batch that goes as a big-segment CSV import is submitted once: the import's ID (and the uploaded file's content
-- hash) is recorded as soon as LaunchDarkly gives it, so that a run killed while the import runs resumes by polling
-- that import, never by uploading the file again.
ALTER TABLE journal_batches ADD COLUMN submission jsonb;
