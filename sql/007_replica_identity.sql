-- Deletes of handles must reach the change log with the whole row: with
-- the default replica identity Postgres logs only the primary key of a
-- deleted row, and the resumer could not tell which correlation id lost
-- its handle (its key in Kafka, too, would be empty).
ALTER TABLE flow_resume_handles REPLICA IDENTITY FULL;
