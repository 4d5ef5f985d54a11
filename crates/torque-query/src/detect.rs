//! N+1 and redundant-query detection over request scopes.
//!
//! Sans-IO: a [`Scope`] is fed SQL text (by hand, or by the `postgres`
//! feature's instrumentation) and [`Scope::finish`] reports what it saw. The
//! rules are the project's query contract (docs/query.md):
//!
//! - **N+1**: a table-touching, batchable statement — `SELECT`/`UPDATE`/`DELETE`
//!   with an equality, `IN` or `ANY` predicate, or a single-row
//!   `INSERT ... VALUES` — whose fingerprint occurs at least
//!   [`threshold`](DetectorConfig::threshold) times in the scope (in any order,
//!   interleaved or concurrent), with at least one of those slots taking
//!   different values (a bind parameter counts as varying).
//! - Not N+1: repeats differing only in `LIMIT`/`OFFSET` or in a range predicate
//!   under `ORDER BY ... LIMIT` (pagination); statements touching no table;
//!   utility statements.
//! - **Redundant**: the same statement with the same values, repeated.

use std::collections::HashMap;
use std::fmt;
use std::panic::Location;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::fingerprint::{Analysis, StatementKind, analyze};

/// What to do when a scope finishes with findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnFinding {
    /// Log each finding at `warn` through `tracing`.
    #[default]
    Log,
    /// Count findings through the `metrics` facade (`torque_query_findings_total`,
    /// labelled by kind; needs the `metrics` feature) and log them at `debug`.
    Count,
    /// Panic with a report of the findings (or return an error from
    /// [`Scope::try_finish`]): for test suites, like Bullet's raise mode.
    Fail,
    /// Only return the findings.
    Return,
}

/// Settings of a [`Detector`].
///
/// # Example
/// ```
/// use torque_query::detect::{DetectorConfig, OnFinding};
///
/// let config = DetectorConfig {
///     threshold: 3,
///     allow_sql_patterns: vec!["select * from feature_flags*".into()],
///     on_finding: OnFinding::Fail,
///     ..DetectorConfig::default()
/// };
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Occurrences of one fingerprint in a scope that make an N+1 (default 5;
    /// values below 2 are taken as 2).
    pub threshold: usize,
    /// Identical executions (same statement, same values) that make a redundant
    /// finding (default 2; values below 2 are taken as 2).
    pub redundant_threshold: usize,
    /// Fingerprint hashes ([`Fingerprint::hash`](crate::Fingerprint::hash)) never reported.
    pub allow_fingerprints: Vec<u64>,
    /// Patterns matched against the normalized SQL; `*` matches any run of
    /// characters, matching is case-insensitive. Matching statements are never
    /// reported.
    pub allow_sql_patterns: Vec<String>,
    /// Call sites whose file path contains one of these strings are not counted
    /// (e.g. `"src/admin/"`).
    pub allow_call_sites: Vec<String>,
    /// What [`Scope::finish`] does with findings.
    pub on_finding: OnFinding,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            threshold: 5,
            redundant_threshold: 2,
            allow_fingerprints: Vec::new(),
            allow_sql_patterns: Vec::new(),
            allow_call_sites: Vec::new(),
            on_finding: OnFinding::Log,
        }
    }
}

/// Where a statement was issued from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallSite {
    /// Source file.
    pub file: String,
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

impl CallSite {
    /// A call site from its parts.
    pub fn new(file: impl Into<String>, line: u32, column: u32) -> Self {
        Self {
            file: file.into(),
            line,
            column,
        }
    }
}

impl From<&Location<'_>> for CallSite {
    fn from(l: &Location<'_>) -> Self {
        Self::new(l.file(), l.line(), l.column())
    }
}

impl fmt::Display for CallSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// The kind of a [`Finding`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FindingKind {
    /// One statement per row where one batched statement would do.
    NPlusOne,
    /// The same statement with the same values run again: cache or hoist it.
    Redundant,
}

/// Something a scope saw that should be fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// N+1 or redundant.
    pub kind: FindingKind,
    /// The statement's fingerprint hash.
    pub fingerprint: u64,
    /// The statement's normalized SQL.
    pub normalized: String,
    /// How many times it ran in the scope (for a redundant finding: how many
    /// times with the most repeated values).
    pub count: usize,
    /// The distinct places it was issued from, in order of first use.
    pub call_sites: Vec<CallSite>,
    /// How to fix it.
    pub suggestion: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            FindingKind::NPlusOne => "N+1 query",
            FindingKind::Redundant => "redundant query",
        };
        write!(f, "{what} ({}x): {}", self.count, self.normalized)?;
        if !self.call_sites.is_empty() {
            write!(f, "\n  from:")?;
            for c in &self.call_sites {
                write!(f, " {c}")?;
            }
        }
        write!(f, "\n  fix: {}", self.suggestion)
    }
}

/// Findings, as an error: what [`Scope::try_finish`] returns under
/// [`OnFinding::Fail`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} query finding(s) in scope:\n{}", .0.len(), render(.0))]
pub struct FindingsError(pub Vec<Finding>);

fn render(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| format!("- {f}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Finds N+1 and redundant queries; hands out one [`Scope`] per request.
///
/// Cheap to clone; share one per application.
#[derive(Debug, Clone)]
pub struct Detector {
    config: Arc<DetectorConfig>,
}

impl Default for Detector {
    fn default() -> Self {
        Self::new(DetectorConfig::default())
    }
}

static GLOBAL: OnceLock<Detector> = OnceLock::new();

tokio::task_local! {
    static CURRENT: Scope;
}

/// Runs `future` in a fresh scope of the [global detector](Detector::global),
/// then acts on its findings ([`OnFinding`]) and returns the future's output.
///
/// Every statement recorded through [`record`] or an instrumented client while
/// the future runs — including from futures joined inside it — lands in that
/// scope. A task spawned inside it does not inherit the scope: hand it
/// [`Scope::current`] and wrap it in [`Scope::run`].
///
/// # Panics
/// Under [`OnFinding::Fail`], when the scope has findings.
///
/// # Example
/// ```
/// use torque_query::detect;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let answer = detect::scoped(async {
///     detect::record("SELECT * FROM users WHERE id = 1");
///     42
/// })
/// .await;
/// assert_eq!(answer, 42);
/// # }
/// ```
pub async fn scoped<F: std::future::Future>(future: F) -> F::Output {
    Detector::global().scoped(future).await
}

/// Records `sql` into the current task's scope, if there is one; a no-op
/// outside [`scoped`] / [`Scope::run`].
#[track_caller]
pub fn record(sql: &str) {
    let site = Location::caller();
    let _ = CURRENT.try_with(|scope| scope.record_at(sql, site));
}

impl Detector {
    /// The process-wide detector used by [`scoped`]: the one given to
    /// [`set_global`](Self::set_global), else one with default settings.
    pub fn global() -> &'static Detector {
        GLOBAL.get_or_init(Detector::default)
    }

    /// Makes `self` the process-wide detector.
    ///
    /// # Errors
    /// Gives `self` back when a global detector was already set or used.
    pub fn set_global(self) -> Result<(), Detector> {
        GLOBAL.set(self)
    }

    /// Runs `future` in a fresh scope of this detector, then acts on its
    /// findings and returns the future's output. See [`scoped`].
    ///
    /// # Panics
    /// Under [`OnFinding::Fail`], when the scope has findings.
    pub async fn scoped<F: std::future::Future>(&self, future: F) -> F::Output {
        let scope = self.scope();
        let out = scope.run(future).await;
        scope.finish();
        out
    }

    /// A detector with these settings.
    pub fn new(mut config: DetectorConfig) -> Self {
        config.threshold = config.threshold.max(2);
        config.redundant_threshold = config.redundant_threshold.max(2);
        for p in &mut config.allow_sql_patterns {
            *p = p.to_lowercase();
        }
        Self {
            config: Arc::new(config),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// A fresh scope: one request, job or test.
    pub fn scope(&self) -> Scope {
        Scope {
            inner: Arc::new(ScopeInner {
                config: Arc::clone(&self.config),
                groups: Mutex::new(Groups::default()),
                paused: AtomicUsize::new(0),
            }),
        }
    }
}

/// The statements of one request (or job, or test), recorded as they run.
///
/// Clones share the same record, so concurrent work of one request (joined
/// futures, spawned tasks handed a clone) lands in one place. Memory grows with
/// the number of distinct statements, not with the number executed.
#[derive(Debug, Clone)]
pub struct Scope {
    inner: Arc<ScopeInner>,
}

#[derive(Debug)]
struct ScopeInner {
    config: Arc<DetectorConfig>,
    groups: Mutex<Groups>,
    paused: AtomicUsize,
}

#[derive(Debug, Default)]
struct Groups {
    by_fingerprint: HashMap<u64, Group>,
    order: Vec<u64>,
}

/// What a scope keeps per fingerprint.
#[derive(Debug)]
struct Group {
    analysis: Analysis,
    count: usize,
    first_key_values: u64,
    key_values_vary: bool,
    /// Executions per exact values (only for statements without parameters).
    identical: HashMap<u64, usize>,
    call_sites: Vec<CallSite>,
}

/// While alive, the scope it came from records nothing. See [`Scope::pause`].
#[derive(Debug)]
#[must_use = "recording resumes as soon as the guard is dropped"]
pub struct PauseGuard {
    inner: Arc<ScopeInner>,
}

impl Drop for PauseGuard {
    fn drop(&mut self) {
        self.inner.paused.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most call sites kept per statement.
const MAX_CALL_SITES: usize = 16;

impl Scope {
    /// The scope of the current task, inside [`scoped`] or [`Scope::run`].
    pub fn current() -> Option<Scope> {
        CURRENT.try_with(Scope::clone).ok()
    }

    /// Runs `future` with this scope as the current one: statements recorded
    /// through [`record`] or an instrumented client land here.
    /// The returned future owns a handle to the scope, so it can be spawned.
    pub fn run<F: std::future::Future>(
        &self,
        future: F,
    ) -> impl std::future::Future<Output = F::Output> + use<F> {
        CURRENT.scope(self.clone(), future)
    }

    /// Records a statement, with the caller's location as its call site.
    #[track_caller]
    pub fn record(&self, sql: &str) {
        self.record_at(sql, Location::caller());
    }

    /// Records a statement issued from `call_site`.
    pub fn record_at(&self, sql: &str, call_site: impl Into<CallSite>) {
        if self.inner.paused.load(Ordering::Relaxed) > 0 {
            return;
        }
        let call_site = call_site.into();
        if self
            .inner
            .config
            .allow_call_sites
            .iter()
            .any(|p| call_site.file.contains(p.as_str()))
        {
            return;
        }
        let analysis = analyze(sql);
        let mut groups = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let hash = analysis.fingerprint.hash();
        let key_values = analysis.key_values;
        let all_values = analysis.all_values;
        let any_params = analysis.any_params;
        let Groups {
            by_fingerprint,
            order,
        } = &mut *groups;
        let group = by_fingerprint.entry(hash).or_insert_with(|| {
            order.push(hash);
            Group {
                analysis,
                count: 0,
                first_key_values: key_values,
                key_values_vary: false,
                identical: HashMap::new(),
                call_sites: Vec::new(),
            }
        });
        group.count += 1;
        if key_values != group.first_key_values {
            group.key_values_vary = true;
        }
        if !any_params {
            *group.identical.entry(all_values).or_insert(0) += 1;
        }
        if group.call_sites.len() < MAX_CALL_SITES && !group.call_sites.contains(&call_site) {
            group.call_sites.push(call_site);
        }
    }

    /// Stops recording until the returned guard is dropped (for code known to
    /// loop on purpose). Guards nest.
    pub fn pause(&self) -> PauseGuard {
        self.inner.paused.fetch_add(1, Ordering::Relaxed);
        PauseGuard {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Statements recorded so far (all executions).
    pub fn len(&self) -> usize {
        self.lock_groups()
            .by_fingerprint
            .values()
            .map(|g| g.count)
            .sum()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock_groups(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.inner
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The findings so far, without acting on them or clearing anything.
    pub fn findings(&self) -> Vec<Finding> {
        let config = &self.inner.config;
        let groups = self.lock_groups();
        let mut findings = Vec::new();
        for hash in &groups.order {
            let Some(g) = groups.by_fingerprint.get(hash) else {
                continue;
            };
            let a = &g.analysis;
            if allowed(config, a) {
                continue;
            }
            let touches_table = !a.fingerprint.tables().is_empty();
            let batchable = touches_table
                && match a.fingerprint.kind() {
                    StatementKind::Select | StatementKind::Update | StatementKind::Delete => {
                        a.has_key_slot
                    }
                    StatementKind::Insert => a.insert_rows == 1 && a.has_key_slot,
                    _ => false,
                };
            let varying = g.key_values_vary || (a.key_params && !a.paginated);
            if batchable && varying && g.count >= config.threshold {
                findings.push(Finding {
                    kind: FindingKind::NPlusOne,
                    fingerprint: *hash,
                    normalized: a.fingerprint.normalized().to_string(),
                    count: g.count,
                    call_sites: g.call_sites.clone(),
                    suggestion: suggest_batch(a),
                });
                continue;
            }
            let relevant = touches_table && !matches!(a.fingerprint.kind(), StatementKind::Utility);
            if let Some(&most) = g.identical.values().max()
                && relevant
                && most >= config.redundant_threshold
            {
                findings.push(Finding {
                    kind: FindingKind::Redundant,
                    fingerprint: *hash,
                    normalized: a.fingerprint.normalized().to_string(),
                    count: most,
                    call_sites: g.call_sites.clone(),
                    suggestion: match a.fingerprint.kind() {
                        StatementKind::Select => "run it once and reuse the result (hoist it out of the loop, or cache it per request)".to_string(),
                        _ => "the same write with the same values ran more than once: make it run once".to_string(),
                    },
                });
            }
        }
        findings
    }

    /// Ends the scope: returns its findings after acting on them as configured
    /// ([`OnFinding`]).
    ///
    /// # Panics
    /// Under [`OnFinding::Fail`], when there is any finding.
    pub fn finish(&self) -> Vec<Finding> {
        match self.try_finish() {
            Ok(findings) => findings,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`finish`](Self::finish), but returns an error instead of panicking
    /// under [`OnFinding::Fail`].
    ///
    /// # Errors
    /// Under [`OnFinding::Fail`], when there is any finding.
    pub fn try_finish(&self) -> Result<Vec<Finding>, FindingsError> {
        let findings = self.findings();
        for f in &findings {
            match self.inner.config.on_finding {
                OnFinding::Log => tracing::warn!(
                    kind = ?f.kind,
                    fingerprint = f.fingerprint,
                    count = f.count,
                    "{f}"
                ),
                OnFinding::Count => {
                    #[cfg(feature = "metrics")]
                    metrics::counter!(
                        "torque_query_findings_total",
                        "kind" => match f.kind {
                            FindingKind::NPlusOne => "n_plus_one",
                            FindingKind::Redundant => "redundant",
                        }
                    )
                    .increment(1);
                    tracing::debug!(kind = ?f.kind, fingerprint = f.fingerprint, "{f}");
                }
                OnFinding::Fail | OnFinding::Return => {}
            }
        }
        if self.inner.config.on_finding == OnFinding::Fail && !findings.is_empty() {
            return Err(FindingsError(findings));
        }
        Ok(findings)
    }
}

fn allowed(config: &DetectorConfig, a: &Analysis) -> bool {
    let hash = a.fingerprint.hash();
    if config.allow_fingerprints.contains(&hash) {
        return true;
    }
    let sql = a.fingerprint.normalized();
    config
        .allow_sql_patterns
        .iter()
        .any(|p| glob_match(p.as_bytes(), sql.as_bytes()))
}

/// `*` matches any run of bytes; everything else matches itself,
/// ASCII-case-insensitively (the pattern is lower-cased already).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative wildcard matching with one backtrack point (linear-ish).
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && pattern[p] != b'*' && pattern[p] == text[t].to_ascii_lowercase() {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

fn suggest_batch(a: &Analysis) -> String {
    let sql = a.fingerprint.normalized();
    let col = a.key_column.as_deref().unwrap_or("id");
    // A row of key columns (`(a, b) IN ((1, 2), ...)`) is matched against
    // one array per column.
    let (all, keys) = if col.starts_with('(') {
        (
            format!("{col} IN (SELECT * FROM UNNEST($1::type[], $2::type[], ...))"),
            "one array per key column",
        )
    } else {
        (format!("{col} = ANY($1)"), "the keys as an array")
    };
    match a.fingerprint.kind() {
        StatementKind::Insert => format!(
            "insert all rows in one statement: INSERT ... SELECT * FROM UNNEST($1::type[], ...) \
             or a multi-row VALUES (torque_query::BatchInsert), instead of `{sql}` per row"
        ),
        StatementKind::Update => format!(
            "update all rows in one statement: UPDATE ... FROM UNNEST(...) matched on {col} \
             (torque_query::BatchUpdate), or `... WHERE {all}` when the new values are equal"
        ),
        StatementKind::Delete => {
            format!("delete in one statement: `... WHERE {all}` with all the keys")
        }
        _ => format!(
            "load all keys in one round trip: `... WHERE {all}` with {keys} \
             (torque_query::Loader batches lookups made in the same tick), or JOIN it into the query \
             that produced the keys"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_case_insensitively() {
        assert!(glob_match(
            b"select * from flags*",
            b"select a from flags where id = ?"
        ));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a*b*c", b"aXXbYYc"));
        assert!(!glob_match(b"a*b*c", b"aXXbYY"));
        assert!(glob_match(b"select", b"SELECT"));
    }
}
