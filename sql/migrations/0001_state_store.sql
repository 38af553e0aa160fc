-- ldsync's state store in PostgreSQL: what the local store keeps in files under `state.directory`, in tables that
-- every host running the syncs shares. ldsync applies these migrations itself, in the schema `state.schema` names.

-- Each run's snapshot of the model's distinct keys: the committed checkpoint's, and the one a run under way will
-- commit. The keys of snapshot N are in the table `snapshot_N` (one column, `key`), so that a replaced snapshot is
-- dropped at once rather than deleted row by row.
CREATE TABLE snapshots (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sync text NOT NULL,
    run_id text NOT NULL,
    -- How many keys `snapshot_N` holds: the table and this row are written in one transaction.
    key_count bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sync, run_id)
);

-- A sync's committed checkpoint: its manifest (as the local store's manifest.json) and the snapshot it names.
CREATE TABLE checkpoints (
    sync text PRIMARY KEY,
    run_id text NOT NULL,
    snapshot_id bigint NOT NULL REFERENCES snapshots (id),
    manifest jsonb NOT NULL,
    committed_at timestamptz NOT NULL
);

-- The journal of a run under way: written whole before its first request, each batch acknowledged as LaunchDarkly
-- answers, and deleted in the transaction that commits the run's checkpoint.
CREATE TABLE journals (
    sync text PRIMARY KEY,
    run_id text NOT NULL,
    header jsonb NOT NULL,
    -- LaunchDarkly's refusal of one of the run's batches: such a run is never resumed.
    refusal jsonb
);

CREATE TABLE journal_batches (
    sync text NOT NULL REFERENCES journals (sync) ON DELETE CASCADE,
    batch_index integer NOT NULL,
    -- What the batch carries (keys, events), for progress.
    units bigint NOT NULL,
    batch jsonb NOT NULL,
    acknowledged_at timestamptz,
    PRIMARY KEY (sync, batch_index)
);

-- Every run of every sync, as `ldsync history` shows it.
CREATE TABLE runs (
    sync text NOT NULL,
    run_id text NOT NULL,
    finished_at timestamptz NOT NULL,
    record jsonb NOT NULL,
    PRIMARY KEY (sync, run_id)
);

-- An events sync's checkpoint: how far its model has been sent.
CREATE TABLE event_checkpoints (
    sync text PRIMARY KEY,
    checkpoint jsonb NOT NULL
);

-- Who holds a sync's run lock (a session advisory lock): written by the holder when it takes the lock, and believed
-- only while that backend still holds an advisory lock.
CREATE TABLE run_locks (
    sync text PRIMARY KEY,
    holder text NOT NULL,
    backend_pid integer NOT NULL
);
