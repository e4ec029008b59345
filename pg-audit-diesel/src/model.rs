//! Audited models: the trait `#[pg_audit]` implements, the registry of annotated models,
//! explicit model lists, and what the registry decides for the whole program (whether the
//! helpers emit the context to the write-ahead log).

use diesel::Table;
use diesel::pg::Pg;
use diesel::query_builder::QueryFragment;
use pg_audit::{Capture, Ident, Operation, QualifiedName, TriggerSpec};

use crate::Error;
use crate::names::{parse_identifier_list, render};

/// Which columns of a model's table are logged, by SQL name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnSelection {
    /// Every column.
    All,
    /// Only these.
    TrackOnly(&'static [&'static str]),
    /// Every column but these.
    Exclude(&'static [&'static str]),
}

/// A model's audit configuration, as `#[pg_audit(...)]` wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// The logged columns.
    pub columns: ColumnSelection,
    /// The masked columns (logged as keyed digests; see `pg_audit::sql::mask`).
    pub mask: &'static [&'static str],
    /// The condition, a SQL boolean over `NEW` and `OLD`.
    pub condition: Option<&'static str>,
    /// The logged operations.
    pub operations: &'static [Operation],
    /// Where changes are captured: triggers, or the write-ahead log (`capture = wal`).
    pub capture: Capture,
}

/// A Diesel model whose table is audited; implemented by `#[pg_audit(...)]`.
pub trait Audited: 'static {
    /// The model's Diesel table.
    type Table: Table<PrimaryKey: QueryFragment<Pg>> + QueryFragment<Pg> + Default;

    /// The model's Rust name, for messages.
    const MODEL: &'static str;

    /// The audit configuration.
    const CONFIG: AuditConfig;

    /// The audit trigger spec of the model's table, with the table's schema, name and primary
    /// key taken from its `table!`.
    fn trigger_spec() -> Result<TriggerSpec, Error> {
        trigger_spec::<Self>()
    }
}

fn trigger_spec<T: Audited + ?Sized>() -> Result<TriggerSpec, Error> {
    let table = T::Table::default();
    let rendering = |sql: Option<String>| Error::Rendering {
        model: T::MODEL,
        sql: sql.unwrap_or_default(),
    };
    let table_sql = render(&table).ok_or_else(|| rendering(None))?;
    let name = match parse_identifier_list(&table_sql).as_deref() {
        Some([parts]) => match parts.as_slice() {
            [name] => QualifiedName::new(None, ident(T::MODEL, name)?),
            [schema, name] => {
                QualifiedName::new(Some(ident(T::MODEL, schema)?), ident(T::MODEL, name)?)
            }
            _ => return Err(rendering(Some(table_sql))),
        },
        _ => return Err(rendering(Some(table_sql))),
    };
    let key_sql = render(&table.primary_key()).ok_or_else(|| rendering(None))?;
    let key: Vec<String> = parse_identifier_list(&key_sql)
        .ok_or_else(|| rendering(Some(key_sql.clone())))?
        .into_iter()
        .map(|mut parts| parts.pop().unwrap_or_default())
        .collect();
    let config = T::CONFIG;
    let mut builder = TriggerSpec::builder(name)
        .primary_key(key)
        .operations(config.operations.iter().copied())
        .capture(config.capture);
    builder = match config.columns {
        ColumnSelection::All => builder,
        ColumnSelection::TrackOnly(cols) => builder.track_only(cols.iter().copied()),
        ColumnSelection::Exclude(cols) => builder.exclude_fields(cols.iter().copied()),
    };
    if !config.mask.is_empty() {
        builder = builder.mask(config.mask.iter().copied());
    }
    if let Some(condition) = config.condition {
        builder = builder.condition(condition);
    }
    builder.build().map_err(|source| Error::Config {
        model: T::MODEL,
        source,
    })
}

fn ident(model: &'static str, name: &str) -> Result<Ident, Error> {
    Ident::new(name).map_err(|source| Error::Config { model, source })
}

/// One audited model, as the registry and explicit lists hold it.
#[derive(Debug, Clone, Copy)]
pub struct AuditedModel {
    model: &'static str,
    spec: fn() -> Result<TriggerSpec, Error>,
}

impl AuditedModel {
    /// The entry of model `T`.
    pub const fn of<T: Audited>() -> Self {
        AuditedModel {
            model: T::MODEL,
            spec: T::trigger_spec,
        }
    }

    /// The model's Rust name.
    pub fn model(&self) -> &'static str {
        self.model
    }

    /// Its trigger spec.
    pub fn trigger_spec(&self) -> Result<TriggerSpec, Error> {
        (self.spec)()
    }
}

inventory::collect!(AuditedModel);

/// The models to audit: every `#[pg_audit]` model linked into the program
/// ([`ModelSet::registered`]), or a list given by hand ([`ModelSet::with`]).
///
/// The registry is filled by the linker, which drops a crate the program never refers to: a
/// model defined in such a crate is silently missing from it. When that matters (models in a
/// separate crate, or to be explicit), list the models:
///
/// ```
/// # use diesel::prelude::*;
/// # use pg_audit_diesel::{pg_audit, ModelSet};
/// # diesel::table! { users (id) { id -> Int4, name -> Text } }
/// # diesel::table! { products (id) { id -> Int4, title -> Text } }
/// # #[pg_audit] #[derive(Queryable)] #[diesel(table_name = users)] pub struct User { pub id: i32 }
/// # #[pg_audit] #[derive(Queryable)] #[diesel(table_name = products)] pub struct Product { pub id: i32 }
/// # fn main() {
/// let models = ModelSet::new().with::<User>().with::<Product>();
/// # let _ = models;
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ModelSet {
    models: Vec<AuditedModel>,
}

impl ModelSet {
    /// An empty list, to fill with [`ModelSet::with`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds model `T`.
    #[must_use]
    pub fn with<T: Audited>(mut self) -> Self {
        self.models.push(AuditedModel::of::<T>());
        self
    }

    /// Every `#[pg_audit]` model linked into this program, by model name; an error when there
    /// are none, which usually means the crate defining them is not linked (see above).
    pub fn registered() -> Result<Self, Error> {
        let mut models: Vec<AuditedModel> = inventory::iter::<AuditedModel>
            .into_iter()
            .copied()
            .collect();
        if models.is_empty() {
            return Err(Error::NoModels);
        }
        models.sort_by_key(|m| m.model);
        Ok(ModelSet { models })
    }

    /// The models, in order.
    pub fn models(&self) -> &[AuditedModel] {
        &self.models
    }

    /// Each model with its trigger spec; an error names the model whose configuration is wrong,
    /// or two models auditing the same table.
    pub fn specs(&self) -> Result<Vec<(&'static str, TriggerSpec)>, Error> {
        let mut specs: Vec<(&'static str, TriggerSpec)> = Vec::with_capacity(self.models.len());
        for model in &self.models {
            let spec = model.trigger_spec()?;
            if let Some((other, _)) = specs.iter().find(|(_, s)| s.table() == spec.table()) {
                if *other == model.model {
                    continue; // listed twice: once is enough
                }
                return Err(Error::SameTable {
                    table: spec.table().to_string(),
                    first: other,
                    second: model.model,
                });
            }
            specs.push((model.model, spec));
        }
        Ok(specs)
    }
}

/// Whether any linked model is captured from the WAL: decided from the registry on first use.
static ANY_WAL_MODEL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether the helpers emit the context to the write-ahead log: as the program said
/// ([`crate::emit_context_to_wal`]), else when any `#[pg_audit]` model linked into the program
/// has `capture = wal`.
pub(crate) fn emits_context_to_wal() -> bool {
    pg_audit_runtime::transaction::emit_context_to_wal_set().unwrap_or_else(|| {
        *ANY_WAL_MODEL.get_or_init(|| {
            inventory::iter::<AuditedModel>.into_iter().any(|m| {
                m.trigger_spec()
                    .is_ok_and(|s| s.capture() == pg_audit::Capture::Wal)
            })
        })
    })
}
