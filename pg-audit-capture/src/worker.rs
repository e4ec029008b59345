//! The stream loop: transactions gathered from the slot, written in batches with their
//! progress, the slot confirmed after each batch commits.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pg_audit::sql::capture::{GENERATED_COLUMNS_SQL, MESSAGE_PREFIX, generated_values_sql};
use pg_audit::{Operation, QualifiedName, TriggerSpec};
use pg_audit_connect::{Host, SslMode as ConnSslMode};
use pgwire_replication::{
    Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, SslMode, TlsConfig,
};
use tokio_postgres::Client;

use crate::message::{self, ContextMessage};
use crate::pgoutput::{self, Cell, Message, Relation};
use crate::setup::{self, format_lsn};
use crate::value::{self, Kind};
use crate::{Error, Worker, db};

/// A captured table's configuration, as installed.
#[derive(Clone)]
struct Table {
    key: Vec<String>,
    track_only: Option<Vec<String>>,
    exclude: Vec<String>,
    /// The masked columns, as the JSON array the insert reads (`None`: none).
    mask: Option<Arc<str>>,
    /// The columns the configuration keeps out of the log by name (excluded, masked): a change
    /// whose row lacks one (renamed since the install) has its values withheld, and no value
    /// of theirs is kept in a capture issue.
    kept_out: Vec<String>,
    operations: Vec<Operation>,
    /// The condition's query ([`TriggerSpec::capture_condition_sql`]).
    condition: Option<String>,
    /// Its stored generated columns, which the stream leaves out.
    generated: Option<Generated>,
}

/// A table's stored generated columns and the query computing them
/// ([`pg_audit::sql::capture::generated_values_sql`]).
#[derive(Clone)]
struct Generated {
    columns: Vec<String>,
    sql: String,
}

/// A change's values, as JSON by column, before they become a row.
struct Decoded {
    old: Option<Vec<(String, Option<String>)>>,
    new: Option<Vec<(String, Option<String>)>>,
    issues: Vec<Issue>,
}

/// One change, values still as text.
struct Change {
    op: Operation,
    /// The relation as of the change: a column added or dropped later in the same batch
    /// arrives as a new Relation message before the changes it concerns.
    relation: Arc<Relation>,
    /// The table's configuration as of the change.
    table: Arc<Table>,
    old: Option<Vec<Cell>>,
    new: Option<Vec<Cell>>,
    /// The context message in force (index into the transaction's messages).
    context: Option<usize>,
}

/// A committed transaction.
struct Tx {
    xid: u32,
    commit_micros: i64,
    changes: Vec<Change>,
    messages: Vec<ContextMessage>,
}

/// The size past which a batch's rows go to the log in another statement.
const PAYLOAD_BYTES: usize = 16 << 20;

/// Microseconds from 1970 to 2000, PostgreSQL's epoch.
const PG_EPOCH_MICROS: i64 = pg_audit::calendar::PG_EPOCH_UNIX_SECS * 1_000_000;

pub(crate) async fn run(
    worker: &Worker,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let shutdown = shutdown_signal(shutdown);
    let mut started = false;
    loop {
        let mut stop = shutdown.subscribe();
        if *stop.borrow() {
            return Ok(());
        }
        let result = run_once(worker, &mut stop, &mut started).await;
        worker.metrics.streaming.set(0);
        if result.is_err() {
            worker.metrics.errors.inc();
        }
        match result {
            Ok(()) => return Ok(()),
            // A connection lost once streaming worked (a server restart, a network drop):
            // start again from the progress written, which is what exactly once rests on.
            Err(e) if started && e.is_connection_lost() => {
                tracing::warn!(error = %crate::chain(&e), "pg-audit capture: lost a connection; reconnecting in 1 s");
                worker.metrics.reconnects.inc();
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// `shutdown` as a flag every attempt can watch.
fn shutdown_signal(
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> ShutdownFlag<impl std::future::Future<Output = ()> + Send> {
    let (tx, _) = tokio::sync::watch::channel(false);
    ShutdownFlag {
        tx,
        future: tokio::sync::Mutex::new(Some(Box::pin(shutdown))),
    }
}

struct ShutdownFlag<F> {
    tx: tokio::sync::watch::Sender<bool>,
    future: tokio::sync::Mutex<Option<std::pin::Pin<Box<F>>>>,
}

impl<F: std::future::Future<Output = ()>> ShutdownFlag<F> {
    fn subscribe(&self) -> Watch<'_, F> {
        Watch {
            flag: self,
            rx: self.tx.subscribe(),
        }
    }
}

struct Watch<'a, F> {
    flag: &'a ShutdownFlag<F>,
    rx: tokio::sync::watch::Receiver<bool>,
}

impl<F: std::future::Future<Output = ()>> Watch<'_, F> {
    fn borrow(&self) -> tokio::sync::watch::Ref<'_, bool> {
        self.rx.borrow()
    }

    /// Resolves when the shutdown future resolves (polling it here) or was seen to.
    async fn changed(&mut self) {
        let mut guard = self.flag.future.lock().await;
        match guard.as_mut() {
            Some(future) => {
                future.await;
                *guard = None;
                let _ = self.flag.tx.send(true);
            }
            None => std::future::pending::<()>().await,
        }
    }
}

async fn run_once<F: std::future::Future<Output = ()>>(
    worker: &Worker,
    shutdown: &mut Watch<'_, F>,
    started: &mut bool,
) -> Result<(), Error> {
    let start = setup::prepare(worker).await?;
    let mut state = State {
        worker,
        source: start.source,
        target: start.target,
        progress: start.progress,
        relations: HashMap::new(),
        kinds: HashMap::new(),
        tables: HashMap::new(),
        retired: HashMap::new(),
        config_relation: None,
        unknown: HashSet::new(),
        epoch: (0, 0),
    };
    state.load_tables().await?;
    state.load_epoch().await?;
    let mut client = connect_replication(worker, start.progress).await?;
    tracing::info!(slot = %worker.slot, from = %format_lsn(start.progress), "pg-audit capture: streaming");
    let metrics = &worker.metrics;
    metrics.streaming.set(1);
    // The server's end of WAL as last reported, and what the worker has confirmed: their
    // difference is the lag in bytes.
    let mut server_end = start.progress;
    let mut confirmed = start.progress;

    let mut batch: Vec<Tx> = Vec::new();
    let mut batch_end = 0u64;
    let mut batch_rows = 0usize;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut current: Option<Tx> = None;
    *started = true;
    loop {
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            () = shutdown.changed() => break,
            () = sleep => None,
            event = client.recv() => Some(event.map_err(Error::Replication)?),
        };
        match event {
            None => {}
            Some(None) => break,
            Some(Some(event)) => match event {
                ReplicationEvent::Begin {
                    xid,
                    commit_time_micros,
                    ..
                } => {
                    current = Some(Tx {
                        xid,
                        commit_micros: commit_time_micros,
                        changes: Vec::new(),
                        messages: Vec::new(),
                    });
                }
                ReplicationEvent::XLogData { data, wal_end, .. } => {
                    server_end = server_end.max(wal_end.as_u64());
                    let message =
                        pgoutput::parse(&data).map_err(|e| Error::Protocol(e.to_string()))?;
                    state.on_message(message, current.as_mut()).await?;
                }
                ReplicationEvent::Message {
                    transactional: true,
                    prefix,
                    content,
                    ..
                } if prefix == MESSAGE_PREFIX => {
                    if let Some(tx) = current.as_mut() {
                        tx.messages.push(message::parse(&content, tx.xid));
                    }
                }
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let end = end_lsn.as_u64();
                    if let Some(tx) = current.take()
                        && end > state.progress
                    {
                        batch_rows += tx.changes.len();
                        batch.push(tx);
                        batch_end = end;
                        deadline
                            .get_or_insert_with(|| tokio::time::Instant::now() + worker.batch_wait);
                    }
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    server_end = server_end.max(wal_end.as_u64());
                    // Nothing held: everything up to here is written or was not ours.
                    if batch.is_empty() && current.is_none() && wal_end.as_u64() > state.progress {
                        client.update_applied_lsn(wal_end);
                        confirmed = confirmed.max(wal_end.as_u64());
                    }
                }
                ReplicationEvent::StoppedAt { .. } => break,
            },
        }
        let due = deadline.is_some_and(|at| at <= tokio::time::Instant::now());
        if !batch.is_empty() && (batch_rows >= worker.batch_rows || due) {
            state.write(std::mem::take(&mut batch), batch_end).await?;
            client.update_applied_lsn(Lsn::from_u64(batch_end));
            confirmed = confirmed.max(batch_end);
            batch_rows = 0;
            deadline = None;
        }
        metrics
            .lag_bytes
            .set(i64::try_from(server_end.saturating_sub(confirmed)).unwrap_or(i64::MAX));
        let held_since = batch
            .first()
            .or(current.as_ref())
            .map(|tx| tx.commit_micros);
        metrics.lag_seconds.set(held_since.map_or(0.0, |micros| {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            ((now - PG_EPOCH_MICROS - micros) as f64 / 1e6).max(0.0)
        }));
    }
    if !batch.is_empty() {
        state.write(batch, batch_end).await?;
        client.update_applied_lsn(Lsn::from_u64(batch_end));
    }
    // Give the client a moment to report the last position, then stop.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = client.shutdown().await;
    Ok(())
}

/// The replication connection's configuration for each of the source's targets, in order,
/// each named for messages.
fn replication_configs(
    worker: &Worker,
    progress: u64,
) -> Result<Vec<(String, ReplicationConfig)>, Error> {
    let source = &worker.source;
    let verifies = matches!(
        source.sslmode,
        ConnSslMode::VerifyCa | ConnSslMode::VerifyFull
    );
    if verifies
        && source
            .targets
            .iter()
            .any(|t| matches!(t.host, Host::Tcp(_)))
    {
        // The same refusal, with the same message, as the ordinary sessions' (a mode that
        // verifies without a root, a root that cannot be read).
        pg_audit_connect::rustls_config(source).map_err(|source| Error::Connect {
            doing: "setting up TLS for the replication connection",
            source,
        })?;
    }
    source
        .targets
        .iter()
        .map(|target| {
            let host = match &target.host {
                Host::Tcp(h) => h.clone(),
                Host::Unix(dir) => dir.display().to_string(),
            };
            // TLS as the ordinary sessions have it ([`pg_audit_connect`]); never over a Unix
            // socket.
            let mode = match source.sslmode {
                _ if matches!(target.host, Host::Unix(_)) => SslMode::Disable,
                ConnSslMode::Disable => SslMode::Disable,
                ConnSslMode::Prefer => SslMode::Prefer,
                ConnSslMode::Require => SslMode::Require,
                ConnSslMode::VerifyCa => SslMode::VerifyCa,
                ConnSslMode::VerifyFull => SslMode::VerifyFull,
            };
            if mode == SslMode::VerifyFull && host.parse::<std::net::IpAddr>().is_ok() {
                return Err(Error::Url {
                    which: "source",
                    reason: format!(
                        "the replication connection cannot check a certificate against an IP \
                         address ({host}) under sslmode=verify-full: name the host by its DNS name"
                    ),
                });
            }
            let tls = TlsConfig {
                mode,
                // `system`: the replication client's own roots (Mozilla's, as most systems ship).
                ca_pem_path: source
                    .sslrootcert
                    .clone()
                    .filter(|p| p.as_os_str() != "system"),
                sni_hostname: None,
                client_cert_pem_path: source.sslcert.clone().filter(|p| p.is_file()),
                client_key_pem_path: source.sslkey.clone().filter(|p| p.is_file()),
            };
            let name = format!("{host}:{}", target.port);
            let config = ReplicationConfig::new(
                host,
                source.user.clone(),
                source.password_for(target).unwrap_or_default().to_owned(),
                source.dbname.clone(),
                worker.slot.clone(),
                worker.log.publication().as_str(),
            )
            .with_port(target.port)
            .with_tls(tls)
            .with_start_lsn(Lsn::from_u64(progress))
            .with_ack_lsn(Lsn::from_u64(progress))
            .with_status_interval(Duration::from_millis(500))
            .with_wakeup_interval(Duration::from_secs(1))
            .with_application_name("pg-audit capture")
            // Values in the text forms `to_jsonb` writes in the pinned trigger functions.
            .with_options(pg_audit::session::merge_options(source.options.as_deref()));
            Ok((name, config))
        })
        .collect()
}

/// The replication connection: each of the source's targets in turn, as libpq tries them.
async fn connect_replication(worker: &Worker, progress: u64) -> Result<ReplicationClient, Error> {
    let mut last = None;
    for (name, config) in replication_configs(worker, progress)? {
        match ReplicationClient::connect(config).await {
            Ok(client) => return Ok(client),
            Err(e) => {
                tracing::debug!(target = %name, error = %e, "pg-audit capture: the replication connection failed");
                last = Some(e);
            }
        }
    }
    Err(Error::Replication(
        last.expect("a connection string has a target"),
    ))
}

struct State<'w> {
    worker: &'w Worker,
    source: Client,
    target: Client,
    progress: u64,
    relations: HashMap<u32, Arc<Relation>>,
    kinds: HashMap<u32, Kind>,
    tables: HashMap<(String, String), Arc<Table>>,
    /// Configurations of tables no longer installed for WAL capture: a change of one that
    /// still arrives was published while it was, and is logged as configured then.
    retired: HashMap<(String, String), Arc<Table>>,
    /// The install records' table, whose changes in the stream mean a configuration changed.
    config_relation: Option<u32>,
    /// Captured tables with no configuration known, warned about once.
    unknown: HashSet<(String, String)>,
    /// The source's transaction-id epoch and the 32-bit xid it was read at.
    epoch: (u64, u32),
}

impl State<'_> {
    async fn load_tables(&mut self) -> Result<(), Error> {
        let rows = self
            .source
            .query(&self.worker.log.captured_tables_sql(), &[])
            .await
            .map_err(db("reading the captured tables' configuration"))?;
        let previous = std::mem::take(&mut self.tables);
        for row in rows {
            let schema: String = row.get("table_schema");
            let name: String = row.get("table_name");
            let key: Vec<String> = row
                .get::<_, Option<Vec<String>>>("primary_key")
                .unwrap_or_default();
            let track_only: Option<Vec<String>> = row.get("track_only");
            let exclude: Option<Vec<String>> = row.get("exclude_fields");
            let mask: Option<Vec<String>> = row.get("mask");
            let condition_text: Option<String> = row.get("condition");
            let operations: Vec<Operation> = row
                .get::<_, Option<Vec<String>>>("operations")
                .unwrap_or_default()
                .iter()
                .filter_map(|o| o.to_lowercase().parse().ok())
                .collect();
            let condition = match &condition_text {
                Some(text) => {
                    let ident = |n: &str| {
                        pg_audit::Ident::new(n).map_err(|e| Error::Protocol(e.to_string()))
                    };
                    let table = QualifiedName::new(Some(ident(&schema)?), ident(&name)?);
                    TriggerSpec::builder(table)
                        .primary_key(key.clone())
                        .condition(text.clone())
                        .build()
                        .map_err(|e| {
                            Error::Protocol(format!("the condition of {schema}.{name}: {e}"))
                        })?
                        .capture_condition_sql()
                }
                None => None,
            };
            let generated = self.generated_sql(&schema, &name).await?;
            self.tables.insert(
                (schema, name),
                Arc::new(Table {
                    key,
                    track_only,
                    kept_out: exclude
                        .iter()
                        .flatten()
                        .chain(mask.iter().flatten())
                        .cloned()
                        .collect(),
                    exclude: exclude.unwrap_or_default(),
                    mask: mask
                        .filter(|m| !m.is_empty())
                        .map(|m| Arc::from(serde_json::to_string(&m).expect("strings serialize"))),
                    operations,
                    condition,
                    generated,
                }),
            );
        }
        for (key, table) in previous {
            if !self.tables.contains_key(&key) {
                self.retired.insert(key, table);
            }
        }
        for key in self.tables.keys() {
            self.retired.remove(key);
        }
        Ok(())
    }

    /// `schema`.`name`'s stored generated columns and the query computing them, if it has any.
    async fn generated_sql(&self, schema: &str, name: &str) -> Result<Option<Generated>, Error> {
        let columns: Vec<(String, String)> = self
            .source
            .query(GENERATED_COLUMNS_SQL, &[&schema, &name])
            .await
            .map_err(db("reading a captured table's generated columns"))?
            .iter()
            .map(|r| (r.get("name"), r.get("expr")))
            .collect();
        if columns.is_empty() {
            return Ok(None);
        }
        let ident = |n: &str| pg_audit::Ident::new(n).map_err(|e| Error::Protocol(e.to_string()));
        let table = QualifiedName::new(Some(ident(schema)?), ident(name)?);
        Ok(Some(Generated {
            sql: generated_values_sql(&table, &columns),
            columns: columns.into_iter().map(|(name, _)| name).collect(),
        }))
    }

    /// Adds the generated columns' values to every change of a table that has them, computed
    /// by the source server from the rest of each row: one statement a table for the batch
    /// (split when large); if one fails (a value that does not read back into its column),
    /// change by change, and a change they cannot be computed for gets them as null, noted in
    /// its issues.
    async fn generated(&self, batch: &[Tx], decoded: &mut [Decoded]) -> Result<(), Error> {
        let mut by_table: Vec<(Arc<Table>, Vec<usize>)> = Vec::new();
        let changes = batch.iter().flat_map(|tx| &tx.changes);
        for (i, change) in changes.enumerate() {
            if change.table.generated.is_none() {
                continue;
            }
            match by_table
                .iter_mut()
                .find(|(t, _)| Arc::ptr_eq(t, &change.table))
            {
                Some((_, changes)) => changes.push(i),
                None => by_table.push((Arc::clone(&change.table), vec![i])),
            }
        }
        for (table, changes) in by_table {
            let generated = table.generated.as_ref().expect("grouped by it");
            let mut chunk = Vec::new();
            let mut bytes = 0;
            for (n, &i) in changes.iter().enumerate() {
                chunk.push(i);
                bytes += decoded[i].old.as_ref().map_or(0, |v| v.len() * 32)
                    + decoded[i].new.as_ref().map_or(0, |v| v.len() * 32);
                if bytes >= PAYLOAD_BYTES || n + 1 == changes.len() {
                    if !self.add_generated(generated, &chunk, decoded).await? {
                        for &one in &chunk {
                            if !self.add_generated(generated, &[one], decoded).await? {
                                let d = &mut decoded[one];
                                for values in d.old.iter_mut().chain(d.new.iter_mut()) {
                                    values.extend(
                                        generated.columns.iter().map(|c| (c.clone(), None)),
                                    );
                                }
                            }
                        }
                    }
                    chunk.clear();
                    bytes = 0;
                }
            }
        }
        Ok(())
    }

    /// Computes the generated columns of the changes `which` of `decoded` in one statement;
    /// `false` (nothing added, the reason noted in each change's issues) when the server
    /// refuses it.
    async fn add_generated(
        &self,
        generated: &Generated,
        which: &[usize],
        decoded: &mut [Decoded],
    ) -> Result<bool, Error> {
        // One entry per row: (change, whether it is the new row).
        let mut slots = Vec::new();
        let mut payload = String::from("[");
        for &i in which {
            for (is_new, values) in [(false, &decoded[i].old), (true, &decoded[i].new)] {
                if let Some(values) = values {
                    if !slots.is_empty() {
                        payload.push(',');
                    }
                    let _ = write!(
                        payload,
                        "{{\"ord\":{},\"row\":{}}}",
                        slots.len(),
                        full_object(values)
                    );
                    slots.push((i, is_new));
                }
            }
        }
        payload.push(']');
        match self.source.query(&generated.sql, &[&payload]).await {
            Ok(values) => {
                for v in values {
                    let ord: i64 = v.get("ord");
                    if let Some(&(i, is_new)) = usize::try_from(ord).ok().and_then(|o| slots.get(o))
                    {
                        let side = if is_new {
                            &mut decoded[i].new
                        } else {
                            &mut decoded[i].old
                        };
                        if let Some(row) = side {
                            row.push((v.get("name"), v.get("value")));
                        }
                    }
                }
                Ok(true)
            }
            Err(e) if e.as_db_error().is_some() => {
                if let [one] = which {
                    let issue = format!(
                        "the generated columns could not be computed: {}",
                        crate::chain(&e)
                    );
                    tracing::warn!(%issue, "pg-audit capture: generated columns are logged as null");
                    decoded[*one].issues.push(Issue {
                        column: None,
                        issue,
                        raw: payload,
                    });
                }
                Ok(false)
            }
            Err(e) => Err(db("computing generated columns")(e)),
        }
    }

    async fn load_epoch(&mut self) -> Result<(), Error> {
        let row = self
            .source
            .query_one(
                "SELECT pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot())",
                &[],
            )
            .await
            .map_err(db("reading the transaction id epoch"))?;
        let xmax: i64 = row.get(0);
        self.epoch = ((xmax as u64) >> 32, xmax as u32);
        Ok(())
    }

    /// A 32-bit transaction id widened as `txid_current()` would, from the epoch read near it.
    fn full_xid(&self, xid: u32) -> i64 {
        let (epoch, at) = self.epoch;
        let delta = xid.wrapping_sub(at) as i32;
        let epoch = if delta < 0 && xid > at {
            epoch.saturating_sub(1)
        } else if delta >= 0 && xid < at {
            epoch + 1
        } else {
            epoch
        };
        ((epoch << 32) | u64::from(xid)) as i64
    }

    async fn on_message(&mut self, message: Message, tx: Option<&mut Tx>) -> Result<(), Error> {
        let context = tx.as_ref().and_then(|t| t.messages.len().checked_sub(1));
        let (op, relation, old, new) = match message {
            Message::Relation(relation) => {
                let config = self.worker.log.config_table();
                if Some(relation.schema.as_str()) == config.schema.as_ref().map(|s| s.as_str())
                    && relation.name == config.name.as_str()
                {
                    self.config_relation = Some(relation.oid);
                    return Ok(());
                }
                let key = (relation.schema.clone(), relation.name.clone());
                if !self.tables.contains_key(&key) {
                    // Installed since the worker started.
                    self.load_tables().await?;
                }
                let missing: Vec<u32> = relation
                    .columns
                    .iter()
                    .map(|c| c.type_oid)
                    .filter(|oid| !self.kinds.contains_key(oid))
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                if !missing.is_empty() {
                    let kinds = value::kinds(&self.source, &missing)
                        .await
                        .map_err(db("reading the captured columns' types"))?;
                    self.kinds.extend(kinds);
                }
                self.relations.insert(relation.oid, Arc::new(relation));
                return Ok(());
            }
            Message::Insert { relation, .. }
            | Message::Update { relation, .. }
            | Message::Delete { relation, .. }
                if Some(relation) == self.config_relation =>
            {
                // An install or uninstall: the configuration from here on.
                self.load_tables().await?;
                return Ok(());
            }
            Message::Insert { relation, new } => (Operation::Insert, relation, None, Some(new)),
            Message::Update { relation, old, new } => (Operation::Update, relation, old, Some(new)),
            Message::Delete { relation, old } => (Operation::Delete, relation, Some(old), None),
            Message::Truncate { relations } => {
                if let Some(tx) = tx {
                    for relation in relations {
                        if let Some((relation, table)) = self.audited(relation, Operation::Truncate)
                        {
                            tx.changes.push(Change {
                                op: Operation::Truncate,
                                relation,
                                table,
                                old: None,
                                new: None,
                                context,
                            });
                        }
                    }
                }
                return Ok(());
            }
            Message::Other => return Ok(()),
        };
        if let Some(tx) = tx
            && let Some((relation, table)) = self.audited(relation, op)
        {
            tx.changes.push(Change {
                op,
                relation,
                table,
                old,
                new,
                context,
            });
        }
        Ok(())
    }

    /// The relation as it is now and its table's configuration, when the table is captured
    /// and audits `op`.
    fn audited(&mut self, relation: u32, op: Operation) -> Option<(Arc<Relation>, Arc<Table>)> {
        let rel = self.relations.get(&relation)?;
        let key = (rel.schema.clone(), rel.name.clone());
        let Some(table) = self.tables.get(&key).or_else(|| self.retired.get(&key)) else {
            if self.unknown.insert(key) {
                tracing::error!(table = %format!("{}.{}", rel.schema, rel.name), "pg-audit capture: changes of this table were published, but it is no longer installed for WAL capture and the worker never saw its configuration: they are not logged. Uninstall or switch a table only once `pg-audit capture status` shows no lag");
            }
            return None;
        };
        table
            .operations
            .contains(&op)
            .then(|| (Arc::clone(rel), Arc::clone(table)))
    }

    /// Writes `batch` and the progress `end` in one transaction of the log's database.
    async fn write(&mut self, batch: Vec<Tx>, end: u64) -> Result<(), Error> {
        // Every change's values first, then the generated columns of a table's changes in one
        // statement, then the rows.
        let mut decoded = Vec::new();
        for tx in &batch {
            for change in &tx.changes {
                decoded.push(self.decode(change).await?);
            }
        }
        self.generated(&batch, &mut decoded).await?;
        let mut rows = Vec::new();
        let mut decoded = decoded.into_iter();
        for tx in &batch {
            for change in &tx.changes {
                let values = decoded.next().expect("one decoded per change");
                rows.push(self.row(tx, change, values));
            }
        }
        let kept = self.conditions(&rows).await?;
        // Statements of bounded size: a message PostgreSQL accepts, and memory that does not
        // double with a large transaction's JSON.
        let mut payloads = Vec::new();
        let mut payload = String::from("[");
        for (ord, row) in rows.iter().enumerate() {
            if !kept.contains(&ord) {
                continue;
            }
            if payload.len() > 1 {
                payload.push(',');
            }
            row.write_json(ord, &mut payload);
            if payload.len() >= PAYLOAD_BYTES {
                payload.push(']');
                payloads.push(std::mem::replace(&mut payload, String::from("[")));
            }
        }
        if payload.len() > 1 {
            payload.push(']');
            payloads.push(payload);
        }
        let last_commit = batch.last().map(|tx| {
            SystemTime::UNIX_EPOCH
                + Duration::from_micros((tx.commit_micros + PG_EPOCH_MICROS).max(0) as u64)
        });
        let insert = self.worker.log.capture_insert_sql();
        let mut issues: Vec<String> = rows
            .iter()
            .enumerate()
            .filter(|(ord, _)| kept.contains(ord))
            .flat_map(|(_, row)| row.issues.iter().map(|i| i.json(row)))
            .collect();
        let mut batch_failed = None;
        for attempt in 0..2 {
            let t = self
                .target
                .transaction()
                .await
                .map_err(db("beginning the log's transaction"))?;
            // The progress first: the transaction then holds an id before it takes log ids,
            // which the sealer's horizon relies on (`pg_audit::sql::seal`).
            t.execute(
                &self.worker.log.capture_progress_write_sql(),
                &[&self.worker.slot, &format_lsn(end), &last_commit],
            )
            .await
            .map_err(db("recording the capture progress"))?;
            if attempt == 0 {
                let mut written = Ok(0);
                for payload in &payloads {
                    written = t.execute(&insert, &[payload]).await;
                    if written.is_err() {
                        break;
                    }
                }
                match written {
                    Ok(_) => {}
                    // A row the log refuses (no input may stop capture): row by row, next.
                    Err(e) if e.as_db_error().is_some() => {
                        batch_failed = Some(e);
                        continue;
                    }
                    Err(e) => return Err(db("writing captured changes to the log")(e)),
                }
            } else {
                tracing::warn!(error = %crate::chain(batch_failed.as_ref().expect("the batch failed")), "pg-audit capture: the log refused a batch; writing it change by change");
                for (ord, row) in rows.iter().enumerate() {
                    if !kept.contains(&ord) {
                        continue;
                    }
                    let mut one = String::from("[");
                    row.write_json(ord, &mut one);
                    one.push(']');
                    t.batch_execute("SAVEPOINT pg_audit_change")
                        .await
                        .map_err(db("writing captured changes to the log"))?;
                    match t.execute(&insert, &[&one]).await {
                        Ok(_) => {}
                        Err(e) if e.as_db_error().is_some() => {
                            t.batch_execute("ROLLBACK TO SAVEPOINT pg_audit_change")
                                .await
                                .map_err(db("writing captured changes to the log"))?;
                            tracing::warn!(table = %format!("{}.{}", row.schema, row.table), key = row.record_pk.as_deref().unwrap_or(""), txid = row.txid, error = %crate::chain(&e), "pg-audit capture: the log refused a change; it is set aside in the capture issues (pg-audit capture status)");
                            issues.push(
                                Issue {
                                    column: None,
                                    issue: format!(
                                        "the log refused the change: {}",
                                        crate::chain(&e)
                                    ),
                                    raw: if row.withhold_raw {
                                        WITHHELD.to_owned()
                                    } else {
                                        one[1..one.len() - 1].to_owned()
                                    },
                                }
                                .json(row),
                            );
                        }
                        Err(e) => return Err(db("writing captured changes to the log")(e)),
                    }
                }
            }
            if !issues.is_empty() {
                t.execute(
                    &self.worker.log.capture_issues_insert_sql(),
                    &[&self.worker.slot, &format!("[{}]", issues.join(","))],
                )
                .await
                .map_err(db("noting capture issues"))?;
            }
            t.commit()
                .await
                .map_err(db("committing captured changes to the log"))?;
            break;
        }
        self.progress = end;
        let metrics = &self.worker.metrics;
        metrics.batches.inc();
        metrics.changes.inc_by(rows.len() as u64);
        metrics.entries.inc_by(kept.len() as u64);
        tracing::debug!(rows = rows.len(), lsn = %format_lsn(end), "pg-audit capture: batch written");
        Ok(())
    }

    /// A change's values, as JSON by column (old and new, as the change has them), with what
    /// could not be converted noted.
    async fn decode(&self, change: &Change) -> Result<Decoded, Error> {
        let rel = &*change.relation;
        let mut issues = Vec::new();
        if change.op == Operation::Truncate {
            return Ok(Decoded {
                old: None,
                new: None,
                issues,
            });
        }
        let old = match &change.old {
            Some(cells) => Some(self.values(rel, cells, None, &mut issues).await?),
            None => None,
        };
        let new = match &change.new {
            Some(cells) => Some(self.values(rel, cells, old.as_deref(), &mut issues).await?),
            None => None,
        };
        Ok(Decoded { old, new, issues })
    }

    /// One change as a log row, its values as JSON.
    fn row(&self, tx: &Tx, change: &Change, decoded: Decoded) -> Row {
        let message = change
            .context
            .and_then(|i| tx.messages.get(i))
            .cloned()
            .unwrap_or_default();
        let first = tx.messages.first().cloned().unwrap_or_default();
        let commit = pg_timestamp(tx.commit_micros);
        let rel = &*change.relation;
        let table = &*change.table;
        let mut row = Row {
            changed_at: commit.clone(),
            tx_started_at: first.tx_started_at.clone().unwrap_or(commit),
            txid: self.full_xid(tx.xid),
            operation: change.op.keyword(),
            schema: rel.schema.clone(),
            table: rel.name.clone(),
            record_pk: None,
            old_record_pk: None,
            old_values: None,
            new_values: None,
            db_user: first.db_user.clone().unwrap_or_else(|| "?".to_owned()),
            context: message.context,
            condition: table.condition.as_deref().map(Arc::from),
            mask: table.mask.clone(),
            withhold_raw: !table.kept_out.is_empty(),
            full_old: None,
            full_new: None,
            issues: Vec::new(),
        };
        let Decoded { old, new, issues } = decoded;
        row.issues = issues;
        for issue in &mut row.issues {
            if issue
                .column
                .as_ref()
                .is_some_and(|c| table.kept_out.contains(c))
            {
                issue.raw = WITHHELD.to_owned();
            }
        }
        if change.op == Operation::Truncate {
            return row;
        }
        // A column kept out by name missing from the row: renamed since the install, its
        // values would be logged in clear under the new name. Only the key is logged.
        let missing = table.kept_out.iter().find(|c| {
            [&new, &old]
                .into_iter()
                .flatten()
                .any(|values| !values.iter().any(|(n, _)| n == *c))
        });
        let withheld_table;
        let table = match missing {
            Some(column) => {
                tracing::warn!(table = %format!("{}.{}", rel.schema, rel.name), column = %column, "pg-audit capture: a column this table's audit keeps out of the log is missing (renamed?): the change is logged without its values; install the table's audit again");
                row.issues.push(Issue {
                    column: Some(column.clone()),
                    issue: format!(
                        "the table has no column {column}, which its audit keeps out of the log (renamed or dropped?): the change's values were withheld, only its key logged; install the table's audit again with the new name"
                    ),
                    raw: WITHHELD.to_owned(),
                });
                withheld_table = Table {
                    track_only: Some(table.key.clone()),
                    ..table.clone()
                };
                &withheld_table
            }
            None => table,
        };
        let audited = |values: &[(String, Option<String>)]| -> String {
            let mut out = String::from("{");
            let mut push = |name: &str, value: &Option<String>| {
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str(&json_string(name));
                out.push(':');
                out.push_str(value.as_deref().unwrap_or("null"));
            };
            match &table.track_only {
                Some(cols) => {
                    for c in cols {
                        if let Some((n, v)) = values.iter().find(|(n, _)| n == c) {
                            push(n, v);
                        } else {
                            push(c, &None);
                        }
                    }
                }
                None => {
                    for (n, v) in values {
                        if !table.exclude.contains(n) {
                            push(n, v);
                        }
                    }
                }
            }
            out.push('}');
            out
        };
        let key = |values: &[(String, Option<String>)]| -> String {
            let mut out = String::from("{");
            for c in &table.key {
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str(&json_string(c));
                out.push(':');
                let v = values
                    .iter()
                    .find(|(n, _)| n == c)
                    .and_then(|(_, v)| v.as_deref());
                out.push_str(v.unwrap_or("null"));
            }
            out.push('}');
            out
        };
        match change.op {
            Operation::Insert => {
                let new = new.as_deref().unwrap_or_default();
                row.record_pk = Some(key(new));
                row.new_values = Some(audited(new));
            }
            Operation::Update => {
                let new_v = new.as_deref().unwrap_or_default();
                row.record_pk = Some(key(new_v));
                row.new_values = Some(audited(new_v));
                if let Some(old_v) = old.as_deref() {
                    row.old_record_pk = Some(key(old_v));
                    row.old_values = Some(audited(old_v));
                } else {
                    tracing::warn!(table = %rel.name, "pg-audit capture: an UPDATE without its old row (is the table REPLICA IDENTITY FULL?)");
                }
            }
            Operation::Delete => {
                let old_v = old.as_deref().unwrap_or_default();
                row.record_pk = Some(key(old_v));
                row.old_values = Some(audited(old_v));
            }
            Operation::Truncate | Operation::Snapshot | Operation::Ddl => {}
        }
        // Withheld, an UPDATE's two sides are its key alone: without the side before, it is
        // logged (the insert leaves out UPDATEs whose two sides are equal).
        if missing.is_some() && change.op == Operation::Update {
            row.old_values = None;
        }
        if table.condition.is_some() {
            row.full_old = old.as_deref().map(full_object);
            row.full_new = new.as_deref().map(full_object);
        }
        row
    }

    /// A tuple's values as JSON, by column name; unchanged TOASTed values from `old`. A value
    /// the log's `jsonb` cannot hold (a `json` value with `\u0000` or a lone surrogate, a
    /// composite the server cannot convert) is the JSON string of its text instead, noted in
    /// `issues`: nothing a writer stores may stop capture.
    async fn values(
        &self,
        rel: &Relation,
        cells: &[Cell],
        old: Option<&[(String, Option<String>)]>,
        issues: &mut Vec<Issue>,
    ) -> Result<Vec<(String, Option<String>)>, Error> {
        let mut out = Vec::with_capacity(cells.len());
        for (i, (column, cell)) in rel.columns.iter().zip(cells).enumerate() {
            let value = match cell {
                Cell::Null => None,
                Cell::Unchanged => old.and_then(|o| o.get(i)).and_then(|(_, v)| v.clone()),
                Cell::Text(text) => {
                    let kind = self.kinds.get(&column.type_oid);
                    let converted = match kind.and_then(|k| k.json(text)) {
                        Some(json) => Ok(json),
                        None => {
                            match value::via_server(&self.source, column.type_oid, &[text]).await {
                                Ok(mut json) => json
                                    .pop()
                                    .ok_or_else(|| "the server returned no value".to_owned()),
                                Err(e) if e.as_db_error().is_some() => Err(format!(
                                    "the server could not convert it: {}",
                                    crate::chain(&e)
                                )),
                                Err(e) => return Err(db("converting a value with the server")(e)),
                            }
                        }
                    };
                    let checked = match converted {
                        Ok(json) if value::jsonb_may_refuse(&json) => {
                            match self
                                .source
                                .query_one(
                                    "SELECT $1::text::pg_catalog.jsonb IS NOT NULL",
                                    &[&json],
                                )
                                .await
                            {
                                Ok(_) => Ok(json),
                                Err(e) if e.as_db_error().is_some() => Err(format!(
                                    "the log's jsonb cannot hold it: {}",
                                    crate::chain(&e)
                                )),
                                Err(e) => return Err(db("checking a value with the server")(e)),
                            }
                        }
                        other => other,
                    };
                    Some(checked.unwrap_or_else(|issue| {
                        tracing::warn!(table = %rel.name, column = %column.name, %issue, "pg-audit capture: a value is logged as the JSON string of its text");
                        issues.push(Issue {
                            column: Some(column.name.clone()),
                            issue,
                            raw: text.clone(),
                        });
                        let mut fallback = String::with_capacity(text.len() + 2);
                        value::write_string(text, &mut fallback);
                        fallback
                    }))
                }
            };
            out.push((column.name.clone(), value));
        }
        Ok(out)
    }

    /// The positions of the rows the tables' conditions keep.
    async fn conditions(&self, rows: &[Row]) -> Result<HashSet<usize>, Error> {
        let mut kept: HashSet<usize> = (0..rows.len()).collect();
        // Rows by condition query (which names its table).
        let mut by_condition: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            if let Some(sql) = &row.condition
                && row.operation != "TRUNCATE"
            {
                by_condition.entry(Arc::clone(sql)).or_default().push(i);
            }
        }
        for (sql, ords) in by_condition {
            let mut payload = String::from("[");
            for &i in &ords {
                let row = &rows[i];
                if payload.len() > 1 {
                    payload.push(',');
                }
                row.write_condition_json(i, &mut payload);
                kept.remove(&i);
            }
            payload.push(']');
            match self.source.query(&*sql, &[&payload]).await {
                Ok(passed) => kept.extend(passed.iter().map(|r| r.get::<_, i64>(0) as usize)),
                Err(e) if e.as_db_error().is_some() => {
                    // The condition fails on some row (a division by zero, a cast): row by row,
                    // and a row whose condition fails is logged, as a warning says — the
                    // change has committed, and an entry too many beats one lost.
                    for &i in &ords {
                        let row = &rows[i];
                        let mut one = String::from("[");
                        row.write_condition_json(i, &mut one);
                        one.push(']');
                        match self.source.query(&*sql, &[&one]).await {
                            Ok(passed) => {
                                kept.extend(passed.iter().map(|r| r.get::<_, i64>(0) as usize))
                            }
                            Err(e) if e.as_db_error().is_some() => {
                                tracing::warn!(table = %format!("{}.{}", row.schema, row.table), key = row.record_pk.as_deref().unwrap_or(""), error = %crate::chain(&e), "pg-audit capture: the table's condition fails on this change; it is logged");
                                kept.insert(i);
                            }
                            Err(e) => return Err(db("evaluating a captured table's condition")(e)),
                        }
                    }
                }
                Err(e) => return Err(db("evaluating a captured table's condition")(e)),
            }
        }
        Ok(kept)
    }
}

fn full_object(values: &[(String, Option<String>)]) -> String {
    let mut out = String::from("{");
    for (n, v) in values {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&json_string(n));
        out.push(':');
        out.push_str(v.as_deref().unwrap_or("null"));
    }
    out.push('}');
    out
}

/// One log row as the insert reads it.
struct Row {
    changed_at: String,
    tx_started_at: String,
    txid: i64,
    operation: &'static str,
    schema: String,
    table: String,
    record_pk: Option<String>,
    old_record_pk: Option<String>,
    old_values: Option<String>,
    new_values: Option<String>,
    db_user: String,
    context: Option<String>,
    /// The condition's query of the table's configuration as of the change.
    condition: Option<Arc<str>>,
    /// The masked columns of that configuration (a JSON array).
    mask: Option<Arc<str>>,
    /// Whether the configuration keeps columns out of the log: no raw value of the change is
    /// kept in a capture issue.
    withhold_raw: bool,
    /// The whole rows, for a condition.
    full_old: Option<String>,
    full_new: Option<String>,
    /// What could not be logged as it came.
    issues: Vec<Issue>,
}

/// What a capture issue keeps instead of a value its table's audit keeps out of the log.
const WITHHELD: &str = "(withheld: a masked or excluded column)";

/// A value logged as the JSON string of its text, or (no column) a change set aside whole.
struct Issue {
    column: Option<String>,
    issue: String,
    raw: String,
}

impl Issue {
    /// The issue as `capture_issues_insert_sql` reads it.
    fn json(&self, row: &Row) -> String {
        format!(
            "{{\"txid\":{},\"schema_name\":{},\"table_name\":{},\"record_pk\":{},\"column_name\":{},\"issue\":{},\"raw\":{}}}",
            row.txid,
            json_string(&row.schema),
            json_string(&row.table),
            row.record_pk
                .as_deref()
                .map_or_else(|| "null".to_owned(), json_string),
            self.column
                .as_deref()
                .map_or_else(|| "null".to_owned(), json_string),
            json_string(&self.issue),
            json_string(&self.raw),
        )
    }
}

impl Row {
    /// The row as the condition's query reads it: `{"ord", "op", "new", "old"}`.
    fn write_condition_json(&self, ord: usize, out: &mut String) {
        let _ = write!(
            out,
            "{{\"ord\":{ord},\"op\":\"{}\",\"new\":{},\"old\":{}}}",
            self.operation,
            self.full_new.as_deref().unwrap_or("null"),
            self.full_old.as_deref().unwrap_or("null"),
        );
    }

    fn write_json(&self, ord: usize, out: &mut String) {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "null".to_owned());
        let _ = write!(
            out,
            "{{\"ord\":{ord},\"changed_at\":{},\"tx_started_at\":{},\"txid\":{},\"operation\":\"{}\",\"schema_name\":{},\"table_name\":{},\"record_pk\":{},\"old_record_pk\":{},\"old_values\":{},\"new_values\":{},\"db_user\":{},\"context\":{},\"mask\":{}}}",
            json_string(&self.changed_at),
            json_string(&self.tx_started_at),
            self.txid,
            self.operation,
            json_string(&self.schema),
            json_string(&self.table),
            opt(&self.record_pk),
            opt(&self.old_record_pk),
            opt(&self.old_values),
            opt(&self.new_values),
            json_string(&self.db_user),
            opt(&self.context),
            self.mask.as_deref().unwrap_or("null"),
        );
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Microseconds since 2000-01-01 UTC as `YYYY-MM-DD HH:MM:SS.ffffff+00`.
pub(crate) fn pg_timestamp(micros: i64) -> String {
    let total = micros + PG_EPOCH_MICROS;
    let secs = total.div_euclid(1_000_000);
    let frac = total.rem_euclid(1_000_000);
    let (days, rem) = pg_audit::calendar::days_and_seconds(secs);
    let (year, month, day) = pg_audit::calendar::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{frac:06}+00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_times_print_as_postgresql_reads_them() {
        assert_eq!(pg_timestamp(0), "2000-01-01 00:00:00.000000+00");
        assert_eq!(pg_timestamp(-1), "1999-12-31 23:59:59.999999+00");
        // 2026-12-01 15:47:39.5 UTC
        assert_eq!(
            pg_timestamp(849_455_259_500_000),
            "2026-12-01 15:47:39.500000+00"
        );
    }
}
