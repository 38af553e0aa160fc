//! Planning an events sync: run its model from the lateness window on, leave out the rows its checkpoint records
//! as sent, check the rest, and pack them into batches bounded in events and bytes. Reads; never writes (a run's
//! batches may be spooled to a scratch file of the state directory, which the run removes).
//!
//! What planning holds grows with the lateness window, not with the model: the batches go to the spool, and of the
//! rows to send only the ids inside the window behind the latest are kept ([`SentRows`]).

use std::collections::{BTreeMap, HashSet};

use arrow::array::ArrayRef;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{PlanError, SyncPlanError};
use crate::config::{Config, EventSyncConfig, InvalidKeys};
use crate::dbt::model_sql;
use crate::events::model::{EventModelError, EventQuery, EventRow, ImportEvent, RowProblem, Rows};
use crate::events::{BadRows, Batcher, Spool};
use crate::progress;
use crate::state::Store;
use crate::state::events::{
    self as checkpoint, EventCheckpoint, EventSettings, Progress, SentRows, Watermark,
    millis_to_time,
};
use crate::warehouse::Warehouse;

/// What an events sync would send, and what it would leave out.
#[derive(Debug, Serialize)]
pub struct EventPlan {
    pub sync: String,
    pub model: String,
    /// The committed checkpoint's run, if there is one.
    pub checkpoint_run: Option<String>,
    /// The latest event sent so far.
    pub watermark: Option<Watermark>,
    /// Rows before this time were not read (the watermark minus the lateness window).
    pub window_start: Option<DateTime<Utc>>,
    /// Rows the model returned in the window.
    pub rows: u64,
    /// Rows in the window that an earlier run sent.
    pub already_sent: u64,
    pub bad_rows: BadRows,
    /// Events to send.
    pub events: u64,
    pub by_event_key: BTreeMap<String, u64>,
    pub first_event_at: Option<DateTime<Utc>>,
    pub last_event_at: Option<DateTime<Utc>>,
    /// Events in each request.
    pub batch_events: Vec<usize>,
    /// What the checkpoint says once every batch is acknowledged.
    #[serde(skip)]
    pub next: Progress,
}

impl EventPlan {
    /// Whether the run would send anything.
    pub fn has_changes(&self) -> bool {
        self.events > 0
    }
}

/// Plans events syncs: runs their models and works out what to send. Reads; never writes.
pub struct EventPlanner<'a> {
    config: &'a Config,
    warehouse: &'a Warehouse,
    store: &'a Store,
    progress: bool,
}

impl<'a> EventPlanner<'a> {
    pub fn new(config: &'a Config, warehouse: &'a Warehouse, store: &'a Store) -> Self {
        EventPlanner {
            config,
            warehouse,
            store,
            progress: false,
        }
    }

    /// Shows the rows fetched so far on standard error while a model runs.
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// The sync's committed checkpoint, checked against the configured project and environment.
    pub fn checkpoint(
        &self,
        sync: &EventSyncConfig,
    ) -> Result<Option<EventCheckpoint>, SyncPlanError> {
        checkpoint::load(self.store, sync, &EventSettings::of(self.config))
            .map_err(|e| self.error(sync, e))
    }

    /// Plans the sync against its committed checkpoint, counting its batches without keeping them.
    pub fn plan(&self, sync: &EventSyncConfig) -> Result<EventPlan, SyncPlanError> {
        let checkpoint = self.checkpoint(sync)?;
        self.plan_from(sync, checkpoint.as_ref(), None)
    }

    /// Plans the sync from `checkpoint` (`None`: from the model's first row), writing its batches to `spool` when
    /// there is one (`sync`), or only counting them.
    pub fn plan_from(
        &self,
        sync: &EventSyncConfig,
        checkpoint: Option<&EventCheckpoint>,
        spool: Option<&mut Spool>,
    ) -> Result<EventPlan, SyncPlanError> {
        self.read_plan(sync, checkpoint, spool)
            .map_err(|e| self.error(sync, e))
    }

    /// Checks the model against the warehouse without running it.
    pub fn prepare(&self, sync: &EventSyncConfig) -> Result<EventQuery, SyncPlanError> {
        self.read_query(sync).map_err(|e| self.error(sync, e))
    }

    fn read_query(&self, sync: &EventSyncConfig) -> Result<EventQuery, PlanError> {
        let model = model_sql(self.config, &sync.name, &sync.model)?;
        Ok(EventQuery::prepare(self.warehouse, sync, &model.sql)?)
    }

    fn read_plan(
        &self,
        sync: &EventSyncConfig,
        checkpoint: Option<&EventCheckpoint>,
        spool: Option<&mut Spool>,
    ) -> Result<EventPlan, PlanError> {
        let query = self.read_query(sync)?;
        let sent = checkpoint.map(|c| c.progress.clone()).unwrap_or_default();
        let window_start = sent.window_start(sync.lateness_ms());
        let latest_allowed = Utc::now()
            .timestamp_millis()
            .saturating_add(sync.max_future_ms());
        let mut plan = EventPlan {
            sync: sync.name.clone(),
            model: self.config.model_label(&sync.model),
            checkpoint_run: checkpoint.map(|c| c.run_id.clone()),
            watermark: sent.watermark.clone(),
            window_start: window_start.map(millis_to_time),
            rows: 0,
            already_sent: 0,
            bad_rows: BadRows::default(),
            events: 0,
            by_event_key: BTreeMap::new(),
            first_event_at: None,
            last_event_at: None,
            batch_events: Vec::new(),
            next: Progress::default(),
        };
        let mut collector = EventCollector::new(sync, &sent, latest_allowed, spool);
        let fetched = progress::fetch_spinner(&sync.name, self.progress);
        query.stream::<PlanError>(self.warehouse, window_start, |columns: &[ArrayRef]| {
            let rows = query.rows(columns)?;
            fetched.inc(rows.len() as u64);
            collector.push(&rows, &mut plan)
        })?;
        fetched.finish_and_clear();
        collector.finish(sent, &mut plan)?;
        Ok(plan)
    }

    fn error(&self, sync: &EventSyncConfig, source: impl Into<PlanError>) -> SyncPlanError {
        SyncPlanError {
            sync: sync.name.clone(),
            model: self.config.model_label(&sync.model),
            source: Box::new(source.into()),
        }
    }
}

/// Turns an events model's rows into batches, leaving out what was sent and counting what is bad.
struct EventCollector<'a, 's> {
    sync: &'a EventSyncConfig,
    /// Row ids the checkpoint records as sent within the window.
    sent: HashSet<String>,
    /// The latest time an event may have (Unix ms): the run's start plus `max_future`.
    latest_allowed: i64,
    /// This run's events within the lateness window, for the next checkpoint and to catch repeated row ids.
    new: SentRows,
    batcher: Batcher<'s>,
}

impl<'a, 's> EventCollector<'a, 's> {
    fn new(
        sync: &'a EventSyncConfig,
        sent: &Progress,
        latest_allowed: i64,
        spool: Option<&'s mut Spool>,
    ) -> Self {
        EventCollector {
            sync,
            sent: sent.recent.iter().map(|r| r.row_id.clone()).collect(),
            latest_allowed,
            new: SentRows::new(sync.lateness_ms()),
            batcher: Batcher::new(&sync.name, sync.batch_size, spool),
        }
    }

    fn push(&mut self, rows: &Rows, plan: &mut EventPlan) -> Result<(), PlanError> {
        for i in 0..rows.len() {
            plan.rows += 1;
            match rows.event(i) {
                Ok(row) if row.at_ms > self.latest_allowed => {
                    self.bad(row.row_id, RowProblem::TimestampInFuture, plan)?
                }
                Ok(row) if self.sent.contains(row.row_id) => plan.already_sent += 1,
                Ok(row) if !self.new.insert(row.row_id, row.at_ms) => {
                    self.bad(row.row_id, RowProblem::RepeatedRowId, plan)?
                }
                Ok(row) => self.add(&row, plan)?,
                Err(problem) => self.bad(rows.row_id(i), problem, plan)?,
            }
        }
        Ok(())
    }

    fn add(&mut self, row: &EventRow<'_>, plan: &mut EventPlan) -> Result<(), PlanError> {
        let event = serde_json::to_string(&ImportEvent::of(row, self.sync))
            .expect("events always serialize");
        self.batcher
            .push(row.row_id, row.at_ms, &event)
            .map_err(PlanError::Spool)?;
        plan.events += 1;
        *plan
            .by_event_key
            .entry(row.event_key.to_string())
            .or_default() += 1;
        let at = millis_to_time(row.at_ms);
        plan.first_event_at = Some(plan.first_event_at.map_or(at, |first| first.min(at)));
        plan.last_event_at = Some(plan.last_event_at.map_or(at, |last| last.max(at)));
        Ok(())
    }

    fn bad(
        &mut self,
        row_id: &str,
        problem: RowProblem,
        plan: &mut EventPlan,
    ) -> Result<(), PlanError> {
        if self.sync.invalid_rows == InvalidKeys::Fail {
            return Err(EventModelError::InvalidRow {
                row_id: row_id.to_string(),
                problem,
            }
            .into());
        }
        plan.bad_rows.add(row_id, problem);
        Ok(())
    }

    /// Closes the last batch and works out the checkpoint the run commits: the later watermark, and the rows sent
    /// within the lateness window behind it.
    fn finish(self, sent: Progress, plan: &mut EventPlan) -> Result<(), PlanError> {
        plan.batch_events = self.batcher.finish().map_err(PlanError::Spool)?;
        plan.next = self.new.advance(sent);
        Ok(())
    }
}
