//! The archived file's format: one Parquet column per log column (integers, timestamps in
//! microseconds UTC, text; JSON as the server prints it), built from the server's rows, and
//! turned back into CSV for `COPY` when rows are loaded back.

use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use pg_audit::LOG_COLUMNS;
use pg_audit::sql::archive::ArchiveType;

/// Rows per row group: small enough that a record's lookup reads little, large enough to
/// compress well.
pub(crate) const ROW_GROUP_ROWS: usize = 65_536;

/// Rows per batch built from the server's rows.
pub(crate) const BATCH_ROWS: usize = 8_192;

/// The files' schema, from the log's columns.
pub(crate) fn schema() -> SchemaRef {
    let fields: Vec<Field> = LOG_COLUMNS
        .iter()
        .map(|c| {
            let ty = match ArchiveType::of(c) {
                ArchiveType::Int64 => DataType::Int64,
                ArchiveType::TimestampMicros => {
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
                }
                ArchiveType::Text => DataType::Utf8,
            };
            Field::new(c.name, ty, c.nullable)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// zstd, statistics per page (the row-group statistics readers prune with), and what the file
/// holds in its metadata.
pub(crate) fn properties(metadata: Vec<(String, String)>) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("3 is a zstd level"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_key_value_metadata(Some(
            metadata
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect(),
        ))
        .build()
}

/// What a file says of itself in its key-value metadata.
pub(crate) fn file_metadata(
    log: &pg_audit::AuditLog,
    partition: &str,
    range_start: &str,
    range_end: &str,
    redacted: bool,
) -> Vec<(String, String)> {
    let mut metadata = vec![
        ("pg_audit.log".to_owned(), log.table().to_string()),
        ("pg_audit.partition".to_owned(), partition.to_owned()),
        ("pg_audit.range_start".to_owned(), range_start.to_owned()),
        ("pg_audit.range_end".to_owned(), range_end.to_owned()),
        (
            "pg_audit.sorted_by".to_owned(),
            pg_audit::sql::archive::FILE_ORDER.to_owned(),
        ),
    ];
    if redacted {
        metadata.push(("pg_audit.redacted".to_owned(), "true".to_owned()));
    }
    metadata
}

/// One column being built.
enum Builder {
    Int(Int64Builder),
    Time(TimestampMicrosecondBuilder),
    Text(StringBuilder),
}

/// Builds record batches from the server's rows (as `archive_rows_sql` selects them).
pub(crate) struct BatchBuilder {
    columns: Vec<Builder>,
    rows: usize,
}

impl BatchBuilder {
    pub(crate) fn new() -> Self {
        let columns = LOG_COLUMNS
            .iter()
            .map(|c| match ArchiveType::of(c) {
                ArchiveType::Int64 => Builder::Int(Int64Builder::with_capacity(BATCH_ROWS)),
                ArchiveType::TimestampMicros => Builder::Time(
                    TimestampMicrosecondBuilder::with_capacity(BATCH_ROWS).with_timezone("UTC"),
                ),
                ArchiveType::Text => {
                    Builder::Text(StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 64))
                }
            })
            .collect();
        BatchBuilder { columns, rows: 0 }
    }

    pub(crate) fn push(&mut self, row: &tokio_postgres::Row) {
        for (i, column) in self.columns.iter_mut().enumerate() {
            match column {
                Builder::Int(b) => b.append_option(row.get::<_, Option<i64>>(i)),
                Builder::Time(b) => b.append_option(row.get::<_, Option<i64>>(i)),
                Builder::Text(b) => b.append_option(row.get::<_, Option<&str>>(i)),
            }
        }
        self.rows += 1;
    }

    /// A row from its fields (as the digest reads them), in the log's column order.
    pub(crate) fn push_fields(&mut self, fields: &[crate::digest::Field<'_>]) {
        use crate::digest::Field;
        for (column, field) in self.columns.iter_mut().zip(fields) {
            match (column, field) {
                (Builder::Int(b), Field::Int(v)) => b.append_value(*v),
                (Builder::Time(b), Field::Int(v)) => b.append_value(*v),
                (Builder::Text(b), Field::Text(t)) => b.append_value(t),
                (Builder::Int(b), _) => b.append_null(),
                (Builder::Time(b), _) => b.append_null(),
                (Builder::Text(b), _) => b.append_null(),
            }
        }
        self.rows += 1;
    }

    pub(crate) fn len(&self) -> usize {
        self.rows
    }

    pub(crate) fn finish(&mut self) -> RecordBatch {
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|c| -> ArrayRef {
                match c {
                    Builder::Int(b) => Arc::new(b.finish()),
                    Builder::Time(b) => Arc::new(b.finish()),
                    Builder::Text(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        self.rows = 0;
        RecordBatch::try_new(schema(), arrays).expect("the builders follow the schema")
    }
}

/// Column `name` of `batch` as integers (an Int64 or a timestamp column).
pub(crate) fn ints<'a>(batch: &'a RecordBatch, name: &str) -> Option<IntColumn<'a>> {
    let array = batch.column_by_name(name)?;
    if let Some(a) = array.as_any().downcast_ref::<Int64Array>() {
        return Some(IntColumn::Int(a));
    }
    array
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .map(IntColumn::Time)
}

/// Column `name` of `batch` as text.
pub(crate) fn texts<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    batch.column_by_name(name)?.as_any().downcast_ref()
}

/// An integer column of a batch.
pub(crate) enum IntColumn<'a> {
    Int(&'a Int64Array),
    Time(&'a TimestampMicrosecondArray),
}

impl IntColumn<'_> {
    pub(crate) fn get(&self, row: usize) -> Option<i64> {
        match self {
            IntColumn::Int(a) => (!a.is_null(row)).then(|| a.value(row)),
            IntColumn::Time(a) => (!a.is_null(row)).then(|| a.value(row)),
        }
    }
}

/// Appends the rows of `batch` as CSV lines in the log's column order, for `COPY ... (FORMAT
/// csv)`: every text value quoted, NULL as nothing.
pub(crate) fn append_csv(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), crate::Error> {
    let columns = log_columns(batch)?;
    for row in 0..batch.num_rows() {
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match column {
                Column::Int(c) => {
                    if let Some(v) = c.get(row) {
                        out.extend_from_slice(v.to_string().as_bytes());
                    }
                }
                Column::Text(a) => {
                    if !a.is_null(row) {
                        out.push(b'"');
                        for &b in a.value(row).as_bytes() {
                            if b == b'"' {
                                out.push(b'"');
                            }
                            out.push(b);
                        }
                        out.push(b'"');
                    }
                }
            }
        }
        out.push(b'\n');
    }
    Ok(())
}

/// One of the log's columns in a batch of an archived file.
pub(crate) enum Column<'a> {
    Int(IntColumn<'a>),
    Text(&'a StringArray),
}

/// The log's columns of `batch`, in the log's order, by name: an error when the file lacks one
/// or holds it with another type.
pub(crate) fn log_columns(batch: &RecordBatch) -> Result<Vec<Column<'_>>, crate::Error> {
    LOG_COLUMNS
        .iter()
        .map(|c| match ArchiveType::of(c) {
            ArchiveType::Int64 | ArchiveType::TimestampMicros => {
                ints(batch, c.name).map(Column::Int)
            }
            ArchiveType::Text => texts(batch, c.name).map(Column::Text),
        })
        .collect::<Option<_>>()
        .ok_or_else(|| {
            crate::Error::Mismatch(
                "an archived file lacks a log column, or holds it with another type".into(),
            )
        })
}
