-- Fencing: every write a run makes to the store is checked, in its own transaction, against the run that holds the
-- sync's lock. The holder's row names that run, so that a run whose lock went (its connection lost, another host's run
-- taking the sync over) finds it is no longer the holder, and stops instead of writing over the other run's state.
ALTER TABLE run_locks ADD COLUMN run_id text;
