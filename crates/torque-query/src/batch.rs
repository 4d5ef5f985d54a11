//! Batch writes: many rows in one statement per chunk.
//!
//! Rows are encoded to PostgreSQL's binary format as they are pushed, so a
//! wrong column count or a Rust value that cannot be sent as the column's type
//! is reported by [`BatchInsert::push`] — before anything reaches the server.
//! Three ways to send them:
//!
//! - [`BatchInsert::execute`]: `INSERT ... SELECT * FROM UNNEST($1::t1[], $2::t2[], ...)`,
//!   one array parameter per column, so one statement carries any number of rows
//!   (chunked at [`chunk_rows`](BatchInsert::chunk_rows) to bound message size).
//! - [`BatchInsert::execute_values`]: multi-row `VALUES`, chunked under
//!   PostgreSQL's 65,535-parameter limit; works for column types UNNEST cannot
//!   take (arrays).
//! - [`BatchInsert::copy_in`]: binary `COPY ... FROM STDIN`, the fastest for
//!   bulk loads (no `ON CONFLICT`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::ops::Range;

use bytes::{BufMut, BytesMut};
use tokio_postgres::GenericClient;
use tokio_postgres::types::{IsNull, Kind, ToSql, Type, to_sql_checked};

/// PostgreSQL's limit on bind parameters in one statement.
pub(crate) const MAX_PARAMS: usize = 65_535;
/// Default most rows per statement.
const DEFAULT_CHUNK_ROWS: usize = 10_000;

/// Why a batch write failed.
///
/// `Display` is this error's own message (the row and column, or the first
/// row of the failed chunk); the encoder's or the driver's error is
/// [`source()`](StdError::source), not repeated in it. tokio-postgres's own
/// message for anything the server refused is just `db error`, with the
/// server's words (`ERROR: duplicate key value ...`) one level further down:
/// log the whole chain — anyhow's `{:#}`, or walk `source()` — not `{err}`
/// alone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// A pushed row has the wrong number of values.
    #[error("row {row} has {got} values but the batch has {expected} columns")]
    ColumnCount {
        /// Index of the row (from 0).
        row: usize,
        /// Values in the row.
        got: usize,
        /// Columns of the batch.
        expected: usize,
    },
    /// A value cannot be sent as its column's type.
    #[error("row {row}, column {column:?}: value cannot be sent as {ty}")]
    Type {
        /// Index of the row (from 0).
        row: usize,
        /// The column's name.
        column: String,
        /// The column's declared type.
        ty: Type,
        /// The encoder's error (`WrongType` for a Rust type that does not match).
        #[source]
        source: Box<dyn StdError + Sync + Send>,
    },
    /// The batch was set up in a way this send method cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The server rejected a chunk; earlier chunks were sent (use a transaction
    /// for all-or-nothing).
    #[error("chunk starting at row {first_row} failed")]
    Postgres {
        /// The first row of the failed chunk.
        first_row: usize,
        /// The server's or driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// What an insert does when a row conflicts with an existing one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Conflict {
    /// Fail (the statement's default).
    #[default]
    Error,
    /// `ON CONFLICT (target) DO NOTHING` (no target: any constraint).
    DoNothing {
        /// The conflict target's columns.
        target: Vec<String>,
    },
    /// `ON CONFLICT (target) DO UPDATE SET c = EXCLUDED.c` for each `update` column.
    Update {
        /// The conflict target's columns.
        target: Vec<String>,
        /// The columns to overwrite from the new row.
        update: Vec<String>,
    },
}

/// A type's base type, through domains.
fn base_type(ty: &Type) -> &Type {
    match ty.kind() {
        Kind::Domain(inner) => base_type(inner),
        _ => ty,
    }
}

/// The bytes of an encoded key value that decide its equality: the encoding,
/// except that a float's two zeros and its many NaNs are made one each
/// (PostgreSQL's `=` has `0 = -0` and `NaN = NaN`, unlike IEEE 754).
fn equality_bytes<'a>(ty: &Type, bytes: &'a [u8]) -> Cow<'a, [u8]> {
    let ty = base_type(ty);
    let float = if *ty == Type::FLOAT8 {
        <[u8; 8]>::try_from(bytes).ok().map(f64::from_be_bytes)
    } else if *ty == Type::FLOAT4 {
        <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|raw| f64::from(f32::from_be_bytes(raw)))
    } else {
        None
    };
    // Shorter than any float's encoding, so equal to none of them.
    match float {
        Some(x) if x.is_nan() => Cow::Borrowed(b"NaN"),
        // Matches -0.0 too: a float pattern compares with `==`.
        Some(0.0) => Cow::Borrowed(b"0"),
        _ => Cow::Borrowed(bytes),
    }
}

/// Quotes an identifier; a dotted name is quoted per part.
///
/// Always quoted: a lower-case name means the same quoted or not, and only
/// quoting keeps reserved words (`user`, `order`, `select`) usable as names.
fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Quotes a column name: one identifier, dots included (`"e.mail"`).
fn quote_column(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQL name of a type, for a cast.
fn type_sql(ty: &Type) -> String {
    if ty.schema() == "pg_catalog" {
        match ty.name() {
            // Unquoted, SQL reads these as `character(1)` and `bit(1)`: the
            // cast would truncate, or (for arrays) name the wrong element type.
            "char" | "bit" => quote_column(ty.name()),
            name if name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
            {
                name.to_string()
            }
            name => quote_column(name),
        }
    } else {
        format!("{}.{}", quote_column(ty.schema()), quote_column(ty.name()))
    }
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    quoted: String,
    ty: Type,
}

/// Rows encoded column by column.
#[derive(Debug, Clone)]
struct Rows {
    columns: Vec<Column>,
    /// Per column: encoded values, back to back.
    data: Vec<BytesMut>,
    /// Per column: each row's byte range in `data`, `None` for NULL.
    cells: Vec<Vec<Option<Range<usize>>>>,
    len: usize,
}

impl Rows {
    fn new(columns: &[(&str, Type)]) -> Self {
        Self {
            columns: columns
                .iter()
                .map(|(name, ty)| Column {
                    name: (*name).to_string(),
                    quoted: quote_column(name),
                    ty: ty.clone(),
                })
                .collect(),
            data: columns.iter().map(|_| BytesMut::new()).collect(),
            cells: columns.iter().map(|_| Vec::new()).collect(),
            len: 0,
        }
    }

    fn push(&mut self, row: &[&(dyn ToSql + Sync)]) -> Result<(), BatchError> {
        if row.len() != self.columns.len() {
            return Err(BatchError::ColumnCount {
                row: self.len,
                got: row.len(),
                expected: self.columns.len(),
            });
        }
        // Encode into scratch first, so a failing row leaves nothing behind.
        let mut encoded: Vec<(BytesMut, bool)> = Vec::with_capacity(row.len());
        for (value, column) in row.iter().zip(&self.columns) {
            let mut buf = BytesMut::new();
            let is_null = value
                .to_sql_checked(&column.ty, &mut buf)
                .map_err(|source| BatchError::Type {
                    row: self.len,
                    column: column.name.clone(),
                    ty: column.ty.clone(),
                    source,
                })?;
            encoded.push((buf, matches!(is_null, IsNull::Yes)));
        }
        for (c, (buf, is_null)) in encoded.into_iter().enumerate() {
            if is_null {
                self.cells[c].push(None);
            } else {
                let start = self.data[c].len();
                self.data[c].extend_from_slice(&buf);
                self.cells[c].push(Some(start..self.data[c].len()));
            }
        }
        self.len += 1;
        Ok(())
    }

    /// When some rows repeat the values of the `key` columns: a copy keeping
    /// only the last row of each key, and each kept row's index here. Keys
    /// are compared by [`equality_bytes`]: exactly as the server would when
    /// [`bytes_decide_equality`](Self::bytes_decide_equality), else some
    /// equal keys remain.
    fn last_per_key(&self, key: &[usize]) -> Option<(Rows, Vec<usize>)> {
        let cell = |c: usize, r: usize| self.cells[c][r].clone().map(|x| &self.data[c][x]);
        let mut last = HashMap::with_capacity(self.len);
        // A key with a NULL equals no other key: such rows are all kept.
        let mut null_keys = Vec::new();
        for r in 0..self.len {
            let values = key
                .iter()
                .map(|&c| cell(c, r).map(|bytes| equality_bytes(&self.columns[c].ty, bytes)));
            match values.collect::<Option<Vec<_>>>() {
                Some(k) => {
                    last.insert(k, r);
                }
                None => null_keys.push(r),
            }
        }
        if last.len() + null_keys.len() == self.len {
            return None;
        }
        let mut kept: Vec<usize> = last.into_values().chain(null_keys).collect();
        kept.sort_unstable();
        Some((self.subset(&kept), kept))
    }

    /// A copy holding only the rows `kept` (indexes here, increasing).
    fn subset(&self, kept: &[usize]) -> Rows {
        let cell = |c: usize, r: usize| self.cells[c][r].clone().map(|x| &self.data[c][x]);
        let mut out = Rows {
            columns: self.columns.clone(),
            data: self.columns.iter().map(|_| BytesMut::new()).collect(),
            cells: self
                .columns
                .iter()
                .map(|_| Vec::with_capacity(kept.len()))
                .collect(),
            len: kept.len(),
        };
        for &r in kept {
            for c in 0..self.columns.len() {
                let range = cell(c, r).map(|bytes| {
                    let start = out.data[c].len();
                    out.data[c].extend_from_slice(bytes);
                    start..out.data[c].len()
                });
                out.cells[c].push(range);
            }
        }
        out
    }

    /// When rows are equal on the `key` columns by the types' own equality
    /// (the server's, see [`last_per_key_select`](Self::last_per_key_select)):
    /// a copy keeping only the last row of each key, and each kept row's
    /// index here; the server decides, in one query over the key columns.
    ///
    /// Each statement of a batch de-duplicates its own rows this way; this
    /// is for batches sent in several chunks, whose equal keys may fall into
    /// different chunks: the later chunk would update the row the earlier
    /// one wrote, and the rows affected would count that key twice. `None`
    /// when no two rows are equal, or when a key column is an array or a
    /// composite (UNNEST would take it apart): such keys are de-duplicated
    /// only within each statement.
    async fn last_per_server_key<C: GenericClient>(
        &self,
        client: &C,
        key: &[usize],
    ) -> Result<Option<(Rows, Vec<usize>)>, BatchError> {
        let unnestable = key.iter().all(|&c| {
            let ty = &self.columns[c].ty;
            !matches!(ty.kind(), Kind::Array(_))
                && !matches!(base_type(ty).kind(), Kind::Composite(_))
        });
        if !unnestable || self.len < 2 {
            return Ok(None);
        }
        let names: Vec<&str> = key
            .iter()
            .map(|&c| self.columns[c].quoted.as_str())
            .collect();
        let arrays: Vec<String> = key
            .iter()
            .enumerate()
            .map(|(i, &c)| format!("${}::{}[]", i + 1, type_sql(&self.columns[c].ty)))
            .collect();
        let any_null: Vec<String> = names.iter().map(|k| format!("{k} IS NULL")).collect();
        let sql = format!(
            "SELECT max(torque_ord) FROM UNNEST({}) WITH ORDINALITY AS torque_keys ({}, torque_ord) \
             GROUP BY {}, CASE WHEN {} THEN torque_ord END",
            arrays.join(", "),
            names.join(", "),
            names.join(", "),
            any_null.join(" OR ")
        );
        let params: Vec<ColumnArray<'_>> = key
            .iter()
            .map(|&c| ColumnArray {
                element: &self.columns[c].ty,
                data: &self.data[c],
                cells: &self.cells[c],
            })
            .collect();
        let err = |source| BatchError::Postgres {
            first_row: 0,
            source,
        };
        let last = client
            .query(sql.as_str(), &as_params(&params))
            .await
            .map_err(err)?;
        if last.len() == self.len {
            return Ok(None);
        }
        let mut kept = Vec::with_capacity(last.len());
        for row in &last {
            let ord: i64 = row.try_get(0).map_err(err)?;
            // Ordinals count from 1.
            kept.push(usize::try_from(ord - 1).unwrap_or(0));
        }
        kept.sort_unstable();
        Ok(Some((self.subset(&kept), kept)))
    }

    /// Whether the [`equality_bytes`] of the `key` columns decide equality
    /// as the server's `=` does for their types, so that
    /// [`last_per_key`](Self::last_per_key) alone de-duplicates exactly. Not
    /// so for `numeric` (`1.0` = `1.00`), `citext`, `bpchar` (trailing
    /// blanks), `interval`, `jsonb`, ... — those keys are also de-duplicated
    /// by the server ([`last_per_key_select`](Self::last_per_key_select)).
    fn bytes_decide_equality(&self, key: &[usize]) -> bool {
        fn exact(ty: &Type) -> bool {
            match ty.kind() {
                // A domain over a collatable type may carry a collation of its
                // own, nondeterministic (`Ann` = `ann`), which the client
                // cannot see: its keys are grouped by the server.
                Kind::Domain(base) => {
                    let text = [Type::TEXT, Type::VARCHAR, Type::NAME].contains(base_type(base));
                    !text && exact(base)
                }
                // One label per value, compared by value.
                Kind::Enum(_) => true,
                // Text under the default collation, which is deterministic:
                // equal strings are equal bytes. Datetimes are 64-bit counts;
                // floats once their zeros and NaNs are made one.
                _ => [
                    Type::FLOAT4,
                    Type::FLOAT8,
                    Type::BOOL,
                    Type::CHAR,
                    Type::INT2,
                    Type::INT4,
                    Type::INT8,
                    Type::OID,
                    Type::TEXT,
                    Type::VARCHAR,
                    Type::NAME,
                    Type::BYTEA,
                    Type::UUID,
                    Type::DATE,
                    Type::TIME,
                    Type::TIMESTAMP,
                    Type::TIMESTAMPTZ,
                ]
                .contains(ty),
            }
        }
        key.iter().all(|&c| exact(&self.columns[c].ty))
    }

    /// A query keeping, of the rows that are equal on the `key` columns by
    /// their types' own equality (the server's, not the bytes'), only the
    /// last; rows whose key has a NULL are all kept (a NULL equals no key).
    /// `rows` is UNNEST `WITH ORDINALITY` or a VALUES list, whose last column
    /// numbers the rows.
    ///
    /// Grouped, not `DISTINCT ON ... ORDER BY`: hashing a `citext` lowers it
    /// once, sorting lowers it at every comparison (10,000 rows: +11 ms
    /// grouped against +70 ms sorted), and unlike an anti-join it stays
    /// linear when many rows share a key.
    fn last_per_key_select(&self, rows: &str, key: &[usize]) -> String {
        let key: Vec<&str> = key
            .iter()
            .map(|&c| self.columns[c].quoted.as_str())
            .collect();
        let any_null: Vec<String> = key.iter().map(|k| format!("{k} IS NULL")).collect();
        let columns = self.column_list();
        format!(
            "WITH torque_rows AS (SELECT * FROM {rows} AS torque_batch ({columns}, torque_ord)) \
             SELECT {columns} FROM torque_rows JOIN (SELECT max(torque_ord) AS torque_last \
             FROM torque_rows GROUP BY {}, CASE WHEN {} THEN torque_ord END) AS torque_kept \
             ON torque_kept.torque_last = torque_rows.torque_ord",
            key.join(", "),
            any_null.join(" OR ")
        )
    }

    /// The rows as a FROM item named `torque_batch`: `rows` itself, or with
    /// `key`, only the last row of each key (see
    /// [`last_per_key_select`](Self::last_per_key_select); `rows` then ends
    /// in an ordinal column).
    fn batch_source(&self, rows: &str, key: Option<&[usize]>) -> String {
        match key {
            None => format!("{rows} AS torque_batch ({})", self.column_list()),
            Some(key) => format!("({}) AS torque_batch", self.last_per_key_select(rows, key)),
        }
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.quoted.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn check_unnest(&self) -> Result<(), BatchError> {
        for c in &self.columns {
            // (An array of a domain over an array is not flattened.)
            let what = match (c.ty.kind(), base_type(&c.ty).kind()) {
                (Kind::Array(_), _) => "an array",
                (_, Kind::Composite(_)) => "a composite",
                _ => continue,
            };
            return Err(BatchError::Unsupported(format!(
                "column {:?} is {what} ({}): UNNEST would take it apart; use execute_values or copy_in",
                c.name, c.ty
            )));
        }
        Ok(())
    }

    /// `UNNEST($1::t1[], $2::t2[], ...)`
    fn unnest_call(&self) -> String {
        let args: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}[]", i + 1, type_sql(&c.ty)))
            .collect();
        format!("UNNEST({})", args.join(", "))
    }

    /// Sends `sql` (whose parameters are one array per column) once per chunk
    /// of `chunk_rows` rows, prepared once; returns the rows affected.
    async fn send_unnest<C: GenericClient>(
        &self,
        client: &C,
        sql: &str,
        chunk_rows: usize,
    ) -> Result<u64, BatchError> {
        self.check_unnest()?;
        if self.len == 0 {
            return Ok(0);
        }
        let statement = client
            .prepare(sql)
            .await
            .map_err(|source| BatchError::Postgres {
                first_row: 0,
                source,
            })?;
        let mut total = 0;
        for start in (0..self.len).step_by(chunk_rows) {
            let end = (start + chunk_rows).min(self.len);
            let arrays = self.arrays(start..end);
            total += client
                .execute(&statement, &as_params(&arrays))
                .await
                .map_err(|source| BatchError::Postgres {
                    first_row: start,
                    source,
                })?;
        }
        Ok(total)
    }

    fn arrays(&self, rows: Range<usize>) -> Vec<ColumnArray<'_>> {
        (0..self.columns.len())
            .map(|c| ColumnArray {
                element: &self.columns[c].ty,
                data: &self.data[c],
                cells: &self.cells[c][rows.clone()],
            })
            .collect()
    }

    /// `($1::t1, $2::t2), ($3::t1, $4::t2), ...` for `n` rows; with
    /// `ordinals`, each tuple ends in its row's number (from 1).
    fn values_tuples(&self, n: usize, ordinals: bool) -> String {
        let cols = self.columns.len();
        let mut sql = String::with_capacity(n * cols * 12);
        for r in 0..n {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for (c, column) in self.columns.iter().enumerate() {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}::{}", r * cols + c + 1, type_sql(&column.ty)));
            }
            if ordinals {
                sql.push_str(&format!(", {}", r + 1));
            }
            sql.push(')');
        }
        sql
    }

    fn values_params(&self, rows: Range<usize>) -> Vec<Raw<'_>> {
        let mut params = Vec::with_capacity(rows.len() * self.columns.len());
        for r in rows {
            for c in 0..self.columns.len() {
                params.push(Raw {
                    bytes: self.cells[c][r].clone().map(|range| &self.data[c][range]),
                });
            }
        }
        params
    }

    fn values_chunk(&self, chunk_rows: usize) -> usize {
        (MAX_PARAMS / self.columns.len().max(1))
            .min(chunk_rows)
            .max(1)
    }
}

/// The rows a batch sends: all that were pushed, or the last of each key,
/// with each one's push index.
struct Sent<'r> {
    rows: Cow<'r, Rows>,
    /// Per row sent, its push index (`None`: all rows are sent).
    kept: Option<Vec<usize>>,
}

impl<'r> Sent<'r> {
    /// `all`, or the `subset` of them that [`Rows::last_per_key`] kept.
    fn new(all: &'r Rows, subset: Option<(Rows, Vec<usize>)>) -> Self {
        match subset {
            None => Sent {
                rows: Cow::Borrowed(all),
                kept: None,
            },
            Some((rows, kept)) => Sent {
                rows: Cow::Owned(rows),
                kept: Some(kept),
            },
        }
    }

    /// With a `server_key` and more than one chunk of `chunk` rows to send,
    /// only the last row of each key by the server's equality
    /// ([`Rows::last_per_server_key`]): equal keys in two chunks would be
    /// written, and counted, twice.
    async fn last_per_server_key<C: GenericClient>(
        self,
        client: &C,
        server_key: Option<&[usize]>,
        chunk: usize,
    ) -> Result<Self, BatchError> {
        let Some(key) = server_key else {
            return Ok(self);
        };
        if self.rows.len <= chunk {
            // One statement, which de-duplicates its rows itself.
            return Ok(self);
        }
        let Some((rows, kept)) = self.rows.last_per_server_key(client, key).await? else {
            return Ok(self);
        };
        let kept = match &self.kept {
            Some(outer) => kept.iter().map(|&i| outer[i]).collect(),
            None => kept,
        };
        Ok(Sent {
            rows: Cow::Owned(rows),
            kept: Some(kept),
        })
    }

    /// Names rows in `e` by their push index.
    fn renumber(&self, e: BatchError) -> BatchError {
        match &self.kept {
            Some(kept) => e.renumber(kept),
            None => e,
        }
    }
}

/// One already-encoded value, sent as is.
#[derive(Debug)]
struct Raw<'a> {
    bytes: Option<&'a [u8]>,
}

impl ToSql for Raw<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self.bytes {
            Some(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked against the column's type when the row was pushed.
        true
    }

    to_sql_checked!();
}

/// A column's values as a one-dimensional array, in PostgreSQL's binary array
/// format (`array_send`): ndim, has-null flag, element OID, (length, lower
/// bound) per dimension, then each element as length + bytes (-1 for NULL).
struct ColumnArray<'a> {
    element: &'a Type,
    data: &'a [u8],
    cells: &'a [Option<Range<usize>>],
}

impl fmt::Debug for ColumnArray<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ColumnArray")
            .field("element", self.element)
            .field("len", &self.cells.len())
            .finish()
    }
}

impl ToSql for ColumnArray<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let len = i32::try_from(self.cells.len()).map_err(|_| "too many rows for one array")?;
        out.reserve(20 + self.data.len() + self.cells.len() * 4);
        out.put_i32(1);
        out.put_i32(i32::from(self.cells.iter().any(Option::is_none)));
        out.put_u32(self.element.oid());
        out.put_i32(len);
        out.put_i32(1);
        for cell in self.cells {
            match cell {
                Some(range) => {
                    let n = i32::try_from(range.len()).map_err(|_| "value larger than 2 GiB")?;
                    out.put_i32(n);
                    out.extend_from_slice(&self.data[range.clone()]);
                }
                None => out.put_i32(-1),
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }

    to_sql_checked!();
}

fn as_params<T: ToSql + Sync>(values: &[T]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// Rows to insert into one table, sent in as few statements as possible.
///
/// The send methods take the driver's client (a `Client` or a
/// `Transaction`); with an [`Instrumented`](crate::Instrumented) one, pass
/// its [`inner`](crate::Instrumented::inner) client, whose statements the
/// N+1 detector does not record (record the batch by hand with
/// [`detect::record`](crate::detect::record) to see it in the trace).
///
/// # Example
/// ```no_run
/// use tokio_postgres::types::Type;
/// use torque_query::BatchInsert;
///
/// # async fn demo(client: &tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let mut insert = BatchInsert::new("accounts", &[("id", Type::INT8), ("owner", Type::TEXT)]);
/// for id in 0..10_000i64 {
///     insert.push(&[&id, &format!("owner {id}")])?; // checked here, before sending
/// }
/// let inserted = insert.execute(client).await?; // one UNNEST statement
/// assert_eq!(inserted, 10_000);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BatchInsert {
    table: String,
    rows: Rows,
    conflict: Conflict,
    chunk_rows: usize,
}

impl BatchInsert {
    /// A batch for `table` (optionally `schema.table`) with these columns and
    /// their PostgreSQL types.
    pub fn new(table: &str, columns: &[(&str, Type)]) -> Self {
        Self {
            table: quote_ident(table),
            rows: Rows::new(columns),
            conflict: Conflict::Error,
            chunk_rows: DEFAULT_CHUNK_ROWS,
        }
    }

    /// What to do on a conflicting row (default: fail).
    pub fn on_conflict(mut self, conflict: Conflict) -> Self {
        self.conflict = conflict;
        self
    }

    /// An upsert: on a conflict on `target`, overwrite the `update` columns
    /// with the new row's values. Rows repeating a `target` key are applied
    /// as if one by one: the last pushed values win. Keys are equal when the
    /// server's `=` for the declared types says so (`citext` `Ann` and `ann`,
    /// float8 `0` and `-0`), so declare a key column with its own type.
    pub fn upsert(self, target: &[&str], update: &[&str]) -> Self {
        self.on_conflict(Conflict::Update {
            target: target.iter().map(|s| (*s).to_string()).collect(),
            update: update.iter().map(|s| (*s).to_string()).collect(),
        })
    }

    /// Most rows per statement (default 10,000; 0 is taken as 1). VALUES
    /// chunks are further capped so rows × columns ≤ 65,535.
    pub fn chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = rows.max(1);
        self
    }

    /// Adds a row, encoding each value as its column's type.
    ///
    /// # Errors
    /// [`BatchError::ColumnCount`] or [`BatchError::Type`]; the row is not added.
    pub fn push(&mut self, row: &[&(dyn ToSql + Sync)]) -> Result<(), BatchError> {
        self.rows.push(row)
    }

    /// Rows pushed so far.
    pub fn len(&self) -> usize {
        self.rows.len
    }

    /// Whether no row has been pushed.
    pub fn is_empty(&self) -> bool {
        self.rows.len == 0
    }

    fn conflict_clause(&self) -> String {
        let list = |cols: &[String]| {
            cols.iter()
                .map(|c| quote_column(c))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.conflict {
            Conflict::Error => String::new(),
            Conflict::DoNothing { target } if target.is_empty() => " ON CONFLICT DO NOTHING".into(),
            Conflict::DoNothing { target } => format!(" ON CONFLICT ({}) DO NOTHING", list(target)),
            Conflict::Update { target, update } => {
                let set: Vec<String> = update
                    .iter()
                    .map(|c| format!("{0} = EXCLUDED.{0}", quote_column(c)))
                    .collect();
                format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    list(target),
                    set.join(", ")
                )
            }
        }
    }

    /// The UNNEST statement `execute` sends (one per chunk).
    pub fn unnest_sql(&self) -> String {
        let source = match self.server_key() {
            None => self.rows.unnest_call(),
            Some(key) => self.rows.batch_source(
                &format!("{} WITH ORDINALITY", self.rows.unnest_call()),
                Some(&key),
            ),
        };
        format!(
            "INSERT INTO {} ({}) SELECT * FROM {}{}",
            self.table,
            self.rows.column_list(),
            source,
            self.conflict_clause()
        )
    }

    /// Sends the rows as `INSERT ... SELECT * FROM UNNEST(...)`, one statement
    /// per chunk; returns the rows inserted (or updated, for an upsert; rows
    /// that repeat a conflict key are sent once, so they count once, whatever
    /// chunks they fall into).
    ///
    /// An upsert whose key the server must compare (see
    /// [`upsert`](Self::upsert): `citext`, `numeric`, ...) and whose rows
    /// take more than one chunk first asks the server which rows are the last
    /// of their key: one query over the key columns, before any row is
    /// written.
    ///
    /// # Errors
    /// [`BatchError::Unsupported`] for array columns (use
    /// [`execute_values`](Self::execute_values)) or an upsert without a
    /// target or a column to update, before anything is sent;
    /// [`BatchError::Postgres`] when the server rejects a chunk (or the
    /// query grouping equal keys, named as the chunk at row 0: nothing was
    /// written then).
    pub async fn execute<C: GenericClient>(&self, client: &C) -> Result<u64, BatchError> {
        let sql = self.unnest_sql();
        self.rows.check_unnest()?;
        self.check_conflict()?;
        let sent = Sent::new(&self.rows, self.upsert_rows())
            .last_per_server_key(client, self.server_key().as_deref(), self.chunk_rows)
            .await?;
        sent.rows
            .send_unnest(client, &sql, self.chunk_rows)
            .await
            .map_err(|e| sent.renumber(e))
    }

    /// An upsert needs a conflict target and at least one column to overwrite.
    fn check_conflict(&self) -> Result<(), BatchError> {
        match &self.conflict {
            Conflict::Update { target, .. } if target.is_empty() => Err(BatchError::Unsupported(
                "an upsert needs a conflict target (ON CONFLICT (...) DO UPDATE)".into(),
            )),
            Conflict::Update { update, .. } if update.is_empty() => Err(BatchError::Unsupported(
                "an upsert needs a column to update; use Conflict::DoNothing to skip conflicts"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// An upsert's conflict target, as column indexes (when all are columns
    /// of the batch).
    fn upsert_key(&self) -> Option<Vec<usize>> {
        let Conflict::Update { target, .. } = &self.conflict else {
            return None;
        };
        let key = target
            .iter()
            .map(|t| self.rows.columns.iter().position(|c| c.name == *t))
            .collect::<Option<Vec<usize>>>()?;
        (!key.is_empty()).then_some(key)
    }

    /// For an upsert whose rows repeat a conflict key byte for byte: the rows
    /// to send, the last of each key (PostgreSQL refuses to update one row
    /// twice in one statement; row by row, the last values would win).
    fn upsert_rows(&self) -> Option<(Rows, Vec<usize>)> {
        self.rows.last_per_key(&self.upsert_key()?)
    }

    /// The conflict target when the server must also de-duplicate the rows
    /// sent: keys whose bytes differ can still be equal (`0` and `-0`).
    fn server_key(&self) -> Option<Vec<usize>> {
        self.upsert_key()
            .filter(|key| !self.rows.bytes_decide_equality(key))
    }

    /// Sends the rows as multi-row `INSERT ... VALUES`, chunked so that no
    /// statement exceeds 65,535 parameters; returns the rows inserted (as
    /// [`execute`](Self::execute) counts them), with one exception: keys
    /// with an array or composite column (which only this method takes)
    /// that are equal to the server but not byte for byte are merged within
    /// each chunk only, so when two such keys fall into two chunks the later
    /// chunk updates the row the earlier one wrote (its values win, as they
    /// should) and both count it.
    ///
    /// # Errors
    /// [`BatchError::Unsupported`] for an upsert without a target or a column
    /// to update, before anything is sent; [`BatchError::Postgres`] when the
    /// server rejects a chunk (or the query grouping equal keys, as for
    /// [`execute`](Self::execute)).
    pub async fn execute_values<C: GenericClient>(&self, client: &C) -> Result<u64, BatchError> {
        self.check_conflict()?;
        let chunk = self.rows.values_chunk(self.chunk_rows);
        let sent = Sent::new(&self.rows, self.upsert_rows())
            .last_per_server_key(client, self.server_key().as_deref(), chunk)
            .await?;
        self.send_values(&sent.rows, client)
            .await
            .map_err(|e| sent.renumber(e))
    }

    async fn send_values<C: GenericClient>(
        &self,
        rows: &Rows,
        client: &C,
    ) -> Result<u64, BatchError> {
        let chunk = rows.values_chunk(self.chunk_rows);
        let server_key = self.server_key();
        let mut total = 0;
        let mut full_statement = None;
        for start in (0..rows.len).step_by(chunk) {
            let end = (start + chunk).min(rows.len);
            let source = match &server_key {
                None => format!("VALUES {}", rows.values_tuples(end - start, false)),
                Some(key) => format!(
                    "SELECT * FROM {}",
                    rows.batch_source(
                        &format!("(VALUES {})", rows.values_tuples(end - start, true)),
                        Some(key)
                    )
                ),
            };
            let sql = format!(
                "INSERT INTO {} ({}) {}{}",
                self.table,
                rows.column_list(),
                source,
                self.conflict_clause()
            );
            let err = |source| BatchError::Postgres {
                first_row: start,
                source,
            };
            // Full chunks share one prepared statement; the last may be shorter.
            let statement = if end - start == chunk {
                match &full_statement {
                    Some(s) => s,
                    None => full_statement.insert(client.prepare(&sql).await.map_err(err)?),
                }
            } else {
                &client.prepare(&sql).await.map_err(err)?
            };
            let params = rows.values_params(start..end);
            total += client
                .execute(statement, &as_params(&params))
                .await
                .map_err(|source| BatchError::Postgres {
                    first_row: start,
                    source,
                })?;
        }
        Ok(total)
    }

    /// Sends the rows with binary `COPY table (cols) FROM STDIN`; returns the
    /// rows copied. The fastest path for bulk loads.
    ///
    /// # Errors
    /// [`BatchError::Unsupported`] when a conflict rule is set (COPY has no
    /// `ON CONFLICT`), or when a declared type is not the table column's
    /// (binary COPY would misread it), before any row is sent;
    /// [`BatchError::Postgres`].
    pub async fn copy_in<C: CopyTarget + GenericClient>(
        &self,
        client: &C,
    ) -> Result<u64, BatchError> {
        use tokio_postgres::binary_copy::BinaryCopyInWriter;

        if self.conflict != Conflict::Error {
            return Err(BatchError::Unsupported(
                "COPY cannot resolve conflicts: use execute() for ON CONFLICT".into(),
            ));
        }
        let err = |source| BatchError::Postgres {
            first_row: 0,
            source,
        };
        self.check_copy_types(client).await?;
        let sql = format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            self.table,
            self.rows.column_list()
        );
        let sink = client.copy_in_sink(&sql).await.map_err(err)?;
        let types: Vec<Type> = self.rows.columns.iter().map(|c| c.ty.clone()).collect();
        let writer = BinaryCopyInWriter::new(sink, &types);
        futures_util::pin_mut!(writer);
        let cols = self.rows.columns.len();
        let mut row: Vec<Raw<'_>> = Vec::with_capacity(cols);
        for r in 0..self.rows.len {
            row.clear();
            row.extend((0..cols).map(|c| {
                Raw {
                    bytes: self.rows.cells[c][r]
                        .clone()
                        .map(|range| &self.rows.data[c][range]),
                }
            }));
            writer
                .as_mut()
                .write(&as_params(&row))
                .await
                .map_err(|source| BatchError::Postgres {
                    first_row: r,
                    source,
                })?;
        }
        writer.finish().await.map_err(err)
    }
}

impl BatchInsert {
    /// Binary COPY reads each value with the *table's* column type and checks
    /// nothing else: an int8 declared for a float8 column would be stored as
    /// the float with the same bits. Refuse declared types whose binary form
    /// differs from the column's.
    async fn check_copy_types<C: GenericClient>(&self, client: &C) -> Result<(), BatchError> {
        // A domain column is described by its base type.
        let probe = format!(
            "SELECT {} FROM {} LIMIT 0",
            self.rows.column_list(),
            self.table
        );
        let statement = client
            .prepare(&probe)
            .await
            .map_err(|source| BatchError::Postgres {
                first_row: 0,
                source,
            })?;
        let text_like =
            |ty: &Type| [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty);
        for (column, actual) in self.rows.columns.iter().zip(statement.columns()) {
            let (declared, actual) = (&column.ty, actual.type_());
            let enum_ = matches!(actual.kind(), Kind::Enum(_));
            let readable = declared.oid() == actual.oid()
                // Text is the binary form of these too.
                || (text_like(declared)
                    && (text_like(actual) || enum_ || [Type::JSON, Type::XML].contains(actual)))
                // An extension's type (citext, geometry, ...) has its own
                // format, which this crate cannot judge.
                || (actual.schema() != "pg_catalog" && !enum_);
            if !readable {
                return Err(BatchError::Unsupported(format!(
                    "column {:?} is {actual} in the table but the batch declares {declared}: \
                     binary COPY would read the values as {actual}; declare {actual} or use execute()",
                    column.name
                )));
            }
        }
        Ok(())
    }
}

/// What binary COPY can be run on: a [`tokio_postgres::Client`] or a
/// [`tokio_postgres::Transaction`] (`GenericClient` has no `copy_in`).
pub trait CopyTarget: Sync {
    /// Starts `COPY ... FROM STDIN`.
    fn copy_in_sink(
        &self,
        sql: &str,
    ) -> impl Future<
        Output = Result<tokio_postgres::CopyInSink<bytes::Bytes>, tokio_postgres::Error>,
    > + Send;
}

impl CopyTarget for tokio_postgres::Client {
    fn copy_in_sink(
        &self,
        sql: &str,
    ) -> impl Future<
        Output = Result<tokio_postgres::CopyInSink<bytes::Bytes>, tokio_postgres::Error>,
    > + Send {
        self.copy_in(sql)
    }
}

impl CopyTarget for tokio_postgres::Transaction<'_> {
    fn copy_in_sink(
        &self,
        sql: &str,
    ) -> impl Future<
        Output = Result<tokio_postgres::CopyInSink<bytes::Bytes>, tokio_postgres::Error>,
    > + Send {
        self.copy_in(sql)
    }
}

/// New values for existing rows, matched on key columns, sent in as few
/// statements as possible.
///
/// Like [`BatchInsert`], it is sent on the driver's client: with an
/// [`Instrumented`](crate::Instrumented) one, its
/// [`inner`](crate::Instrumented::inner) client, unrecorded.
///
/// # Example
/// ```no_run
/// use tokio_postgres::types::Type;
/// use torque_query::BatchUpdate;
///
/// # async fn demo(client: &tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let mut update = BatchUpdate::new("accounts", &[("id", Type::INT8)], &[("balance", Type::INT8)]);
/// update.push(&[&1i64, &500i64])?; // key values, then new values
/// update.push(&[&2i64, &750i64])?;
/// let updated = update.execute(client).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BatchUpdate {
    table: String,
    keys: usize,
    rows: Rows,
    chunk_rows: usize,
}

impl BatchUpdate {
    /// A batch updating `table`: rows are matched on the `key` columns, and the
    /// `set` columns get the new values. Each pushed row holds the key values
    /// first, then the new values.
    pub fn new(table: &str, key: &[(&str, Type)], set: &[(&str, Type)]) -> Self {
        let columns: Vec<(&str, Type)> = key.iter().chain(set).cloned().collect();
        Self {
            table: quote_ident(table),
            keys: key.len(),
            rows: Rows::new(&columns),
            chunk_rows: DEFAULT_CHUNK_ROWS,
        }
    }

    /// Most rows per statement (default 10,000; 0 is taken as 1).
    pub fn chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = rows.max(1);
        self
    }

    /// Adds a row: key values, then new values. A key pushed again replaces
    /// the values pushed for it before (the last push wins); keys are equal
    /// when the server's `=` for the declared key types says so (`citext`
    /// `Ann` and `ann`, float8 `0` and `-0`), not only when their bytes are.
    ///
    /// # Errors
    /// [`BatchError::ColumnCount`] or [`BatchError::Type`]; the row is not added.
    pub fn push(&mut self, row: &[&(dyn ToSql + Sync)]) -> Result<(), BatchError> {
        self.rows.push(row)
    }

    /// Rows pushed so far.
    pub fn len(&self) -> usize {
        self.rows.len
    }

    /// Whether no row has been pushed.
    pub fn is_empty(&self) -> bool {
        self.rows.len == 0
    }

    /// `UPDATE ... FROM from WHERE ...`, `from` being a FROM item named
    /// `torque_batch` ([`Rows::batch_source`]).
    fn statement(&self, from: &str) -> Result<String, BatchError> {
        if self.keys == 0 || self.keys == self.rows.columns.len() {
            return Err(BatchError::Unsupported(
                "a batch update needs at least one key column and one column to set".into(),
            ));
        }
        let (key, set) = self.rows.columns.split_at(self.keys);
        let assignments: Vec<String> = set
            .iter()
            .map(|c| format!("{0} = torque_batch.{0}", c.quoted))
            .collect();
        let matches: Vec<String> = key
            .iter()
            .map(|c| format!("torque_target.{0} = torque_batch.{0}", c.quoted))
            .collect();
        Ok(format!(
            "UPDATE {} AS torque_target SET {} FROM {} WHERE {}",
            self.table,
            assignments.join(", "),
            from,
            matches.join(" AND ")
        ))
    }

    /// The key when the server must also de-duplicate the rows sent: keys
    /// whose bytes differ can still be equal (`0` and `-0`), and a target row
    /// matched by two rows would be updated from either.
    fn server_key(&self) -> Option<Vec<usize>> {
        let key: Vec<usize> = (0..self.keys).collect();
        (!self.rows.bytes_decide_equality(&key)).then_some(key)
    }

    /// Sends the rows as `UPDATE ... FROM UNNEST(...)`, one statement per
    /// chunk; returns the rows updated (a key pushed twice is sent, and counted,
    /// once, whatever chunks its rows fall into: as for
    /// [`BatchInsert::execute`], keys the server must compare are first
    /// grouped by one query when the rows take more than one chunk).
    ///
    /// # Errors
    /// [`BatchError::Unsupported`] (no key or no set column, array columns)
    /// before anything is sent; [`BatchError::Postgres`] (for the query
    /// grouping equal keys, named as the chunk at row 0: nothing was written).
    pub async fn execute<C: GenericClient>(&self, client: &C) -> Result<u64, BatchError> {
        let server_key = self.server_key();
        let rows = match server_key {
            None => self.rows.unnest_call(),
            Some(_) => format!("{} WITH ORDINALITY", self.rows.unnest_call()),
        };
        let sql = self.statement(&self.rows.batch_source(&rows, server_key.as_deref()))?;
        self.rows.check_unnest()?;
        let key: Vec<usize> = (0..self.keys).collect();
        let sent = Sent::new(&self.rows, self.rows.last_per_key(&key))
            .last_per_server_key(client, server_key.as_deref(), self.chunk_rows)
            .await?;
        sent.rows
            .send_unnest(client, &sql, self.chunk_rows)
            .await
            .map_err(|e| sent.renumber(e))
    }

    /// Sends the rows as `UPDATE ... FROM (VALUES ...)`, chunked under the
    /// parameter limit; returns the rows updated (a key pushed twice is
    /// sent, and counted, once; but keys with an array or composite column
    /// that are equal only to the server are merged within each chunk only,
    /// as for [`BatchInsert::execute_values`]).
    ///
    /// # Errors
    /// [`BatchError::Unsupported`] (no key or no set column) before anything is
    /// sent; [`BatchError::Postgres`] (the grouping query as for
    /// [`execute`](Self::execute)).
    pub async fn execute_values<C: GenericClient>(&self, client: &C) -> Result<u64, BatchError> {
        self.statement("")?;
        let key: Vec<usize> = (0..self.keys).collect();
        let chunk = self.rows.values_chunk(self.chunk_rows);
        let sent = Sent::new(&self.rows, self.rows.last_per_key(&key))
            .last_per_server_key(client, self.server_key().as_deref(), chunk)
            .await?;
        self.send_values(&sent.rows, client)
            .await
            .map_err(|e| sent.renumber(e))
    }

    async fn send_values<C: GenericClient>(
        &self,
        rows: &Rows,
        client: &C,
    ) -> Result<u64, BatchError> {
        let chunk = rows.values_chunk(self.chunk_rows);
        let server_key = self.server_key();
        let mut total = 0;
        for start in (0..rows.len).step_by(chunk) {
            let end = (start + chunk).min(rows.len);
            let values = format!(
                "(VALUES {})",
                rows.values_tuples(end - start, server_key.is_some())
            );
            let sql = self.statement(&rows.batch_source(&values, server_key.as_deref()))?;
            let params = rows.values_params(start..end);
            total += client
                .execute(sql.as_str(), &as_params(&params))
                .await
                .map_err(|source| BatchError::Postgres {
                    first_row: start,
                    source,
                })?;
        }
        Ok(total)
    }
}

impl BatchError {
    /// Names rows by their push index when a subset of the rows was sent.
    fn renumber(self, kept: &[usize]) -> Self {
        match self {
            BatchError::Postgres { first_row, source } => BatchError::Postgres {
                first_row: kept.get(first_row).copied().unwrap_or(first_row),
                source,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_every_identifier() {
        assert_eq!(quote_ident("accounts"), "\"accounts\"");
        assert_eq!(quote_ident("user"), "\"user\"");
        assert_eq!(quote_ident("public.accounts"), "\"public\".\"accounts\"");
        assert_eq!(quote_ident("Accounts"), "\"Accounts\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("2fast"), "\"2fast\"");
    }

    #[test]
    fn push_checks_count_and_types_and_keeps_nothing_of_a_bad_row() {
        let mut b = BatchInsert::new("t", &[("id", Type::INT8), ("name", Type::TEXT)]);
        b.push(&[&1i64, &"a"]).unwrap();
        let err = b.push(&[&1i64]).unwrap_err();
        assert!(matches!(
            err,
            BatchError::ColumnCount {
                row: 1,
                got: 1,
                expected: 2
            }
        ));
        let err = b.push(&[&"not a number", &"b"]).unwrap_err();
        assert!(matches!(err, BatchError::Type { row: 1, .. }), "{err}");
        assert!(err.to_string().contains("\"id\""), "{err}");
        let err = b.push(&[&2i64, &3.5f64]).unwrap_err();
        assert!(matches!(err, BatchError::Type { .. }));
        assert_eq!(b.len(), 1);
        b.push(&[&2i64, &None::<String>]).unwrap();
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn sql_shapes() {
        let b = BatchInsert::new(
            "public.Accounts",
            &[("id", Type::INT8), ("owner", Type::TEXT)],
        )
        .upsert(&["id"], &["owner"]);
        assert_eq!(
            b.unnest_sql(),
            "INSERT INTO \"public\".\"Accounts\" (\"id\", \"owner\") SELECT * FROM UNNEST($1::int8[], $2::text[]) \
             ON CONFLICT (\"id\") DO UPDATE SET \"owner\" = EXCLUDED.\"owner\""
        );
        let u = BatchUpdate::new("t", &[("id", Type::INT4)], &[("v", Type::TEXT)]);
        assert_eq!(
            u.statement(&u.rows.batch_source("UNNEST($1::int4[], $2::text[])", None))
                .unwrap(),
            "UPDATE \"t\" AS torque_target SET \"v\" = torque_batch.\"v\" FROM UNNEST($1::int4[], $2::text[]) \
             AS torque_batch (\"id\", \"v\") WHERE torque_target.\"id\" = torque_batch.\"id\""
        );
    }

    /// Keys whose bytes decide equality keep the plain statement; others
    /// (numeric: `1.0` = `1.00`) are grouped by the server, for upserts and updates.
    #[test]
    fn keys_not_decided_by_their_bytes_are_grouped_by_the_server() {
        let domain = Type::new(
            "account_id".into(),
            99_998,
            Kind::Domain(Type::INT8),
            "public".into(),
        );
        let rows = Rows::new(&[
            ("a", Type::INT8),
            ("b", Type::TEXT),
            ("c", domain),
            ("d", Type::FLOAT8),
            ("e", Type::NUMERIC),
            ("f", Type::BPCHAR),
        ]);
        assert!(rows.bytes_decide_equality(&[0, 1, 2, 3]));
        let text_domain = Type::new(
            "email".into(),
            99_997,
            Kind::Domain(Type::TEXT),
            "public".into(),
        );
        let rows_of_text_domain = Rows::new(&[("a", Type::INT8), ("g", text_domain)]);
        assert!(
            !rows_of_text_domain.bytes_decide_equality(&[0, 1]),
            "a domain over text may have a nondeterministic collation"
        );
        for inexact in [4, 5] {
            assert!(!rows.bytes_decide_equality(&[0, inexact]), "{inexact}");
        }

        let b = BatchInsert::new("t", &[("k", Type::NUMERIC), ("v", Type::TEXT)])
            .upsert(&["k"], &["v"]);
        assert_eq!(
            b.unnest_sql(),
            "INSERT INTO \"t\" (\"k\", \"v\") SELECT * FROM (WITH torque_rows AS (SELECT * FROM \
             UNNEST($1::numeric[], $2::text[]) WITH ORDINALITY AS torque_batch (\"k\", \"v\", torque_ord)) \
             SELECT \"k\", \"v\" FROM torque_rows JOIN (SELECT max(torque_ord) AS torque_last \
             FROM torque_rows GROUP BY \"k\", CASE WHEN \"k\" IS NULL THEN torque_ord END) AS torque_kept \
             ON torque_kept.torque_last = torque_rows.torque_ord) AS torque_batch \
             ON CONFLICT (\"k\") DO UPDATE SET \"v\" = EXCLUDED.\"v\""
        );
        let u = BatchUpdate::new("t", &[("k", Type::NUMERIC)], &[("v", Type::TEXT)]);
        assert_eq!(u.server_key(), Some(vec![0]));
        let u = BatchUpdate::new("t", &[("k", Type::INT4)], &[("v", Type::NUMERIC)]);
        assert_eq!(u.server_key(), None, "only the key's type counts");
    }

    /// PostgreSQL's `=` on floats: `0 = -0` and `NaN = NaN` (any payload),
    /// and nothing else beyond equal bits.
    #[test]
    fn float_keys_are_compared_as_the_server_compares_them() {
        let eq = |ty: &Type, a: &[u8], b: &[u8]| equality_bytes(ty, a) == equality_bytes(ty, b);
        let f8 = |x: f64| x.to_be_bytes();
        let f4 = |x: f32| x.to_be_bytes();
        let other_nan = f64::from_bits(f64::NAN.to_bits() ^ 1);
        assert!(eq(&Type::FLOAT8, &f8(0.0), &f8(-0.0)));
        assert!(eq(&Type::FLOAT8, &f8(f64::NAN), &f8(other_nan)));
        assert!(eq(&Type::FLOAT8, &f8(f64::NAN), &f8(-f64::NAN)));
        assert!(!eq(&Type::FLOAT8, &f8(1.0), &f8(1.000_000_000_000_000_2)));
        assert!(!eq(&Type::FLOAT8, &f8(0.0), &f8(f64::MIN_POSITIVE)));
        assert!(!eq(
            &Type::FLOAT8,
            &f8(f64::INFINITY),
            &f8(f64::NEG_INFINITY)
        ));
        assert!(eq(&Type::FLOAT4, &f4(0.0), &f4(-0.0)));
        assert!(eq(&Type::FLOAT4, &f4(f32::NAN), &f4(-f32::NAN)));
        assert!(!eq(&Type::FLOAT4, &f4(1.0), &f4(-1.0)));
        // Other types: the bytes as they are.
        assert!(!eq(
            &Type::INT8,
            &0i64.to_be_bytes(),
            &i64::MIN.to_be_bytes()
        ));
        assert!(!eq(&Type::BYTEA, &f8(0.0), &f8(-0.0)));
    }

    #[test]
    fn type_names_are_quoted_unless_plain() {
        let hostile = Type::new(
            "int4[]); DROP TABLE t; --".into(),
            23,
            Kind::Simple,
            "pg_catalog".into(),
        );
        let dotted = Type::new("my.type".into(), 99_999, Kind::Simple, "public".into());
        let b = BatchInsert::new("t", &[("a", hostile), ("b", dotted)]);
        assert_eq!(
            b.unnest_sql(),
            "INSERT INTO \"t\" (\"a\", \"b\") SELECT * FROM \
             UNNEST($1::\"int4[]); DROP TABLE t; --\"[], $2::\"public\".\"my.type\"[])"
        );
    }

    #[test]
    fn values_chunks_respect_the_parameter_limit() {
        let cols: Vec<(&str, Type)> = (0..7).map(|_| ("c", Type::INT4)).collect();
        let rows = Rows::new(&cols);
        assert_eq!(rows.values_chunk(1_000_000), MAX_PARAMS / 7);
        assert!(rows.values_chunk(1_000_000) * 7 <= MAX_PARAMS);
        assert_eq!(rows.values_chunk(10), 10);
    }
}
