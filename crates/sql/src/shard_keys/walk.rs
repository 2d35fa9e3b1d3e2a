//! Walks one parsed statement: records every table it names (sharded, reference, other), reads
//! the key constraints of the top-level scopes, the key values of an `INSERT ... VALUES`, and any
//! assignment to a shard key. Sharded tables met anywhere else (CTEs, subqueries, derived
//! tables, `INSERT ... SELECT` sources) stay unconstrained. The walk need not know every AST
//! shape: the caller cross-checks it against the token stream (see `shard_keys.rs`).

mod from;

use super::scope::{dedup, Scope};
use super::values::{fold, fold_name, key_source};
use super::{KeySource, ShardingSpec, TableKind};
use sqlparser::ast::{
    Assignment, AssignmentTarget, Delete, Expr, FromTable, Insert, ObjectName, ObjectType,
    OnConflictAction, OnInsert, Query, Select, SelectItem, SetExpr, Statement, TableAlias,
    TableObject, Update, UpdateTableFromKind,
};

/// Deeper than this the walk stops and reports `too_deep` (the caller then pins nothing).
const MAX_DEPTH: usize = 150;

/// One reference to a sharded table; `key` is `None` unless a top-level scope pins it.
#[derive(Debug)]
pub(crate) struct ShardedRef {
    pub(crate) table: usize,
    pub(crate) key: Option<Vec<KeySource>>,
}

/// The key of each row of a top-level `INSERT ... VALUES` into a sharded table.
#[derive(Debug)]
pub(crate) struct InsertKeys {
    pub(crate) keys: Vec<KeySource>,
    pub(crate) returning: bool,
    pub(crate) on_conflict: bool,
}

#[derive(Debug)]
pub(crate) struct Walker<'s> {
    spec: &'s ShardingSpec,
    pub(crate) sharded: Vec<ShardedRef>,
    pub(crate) reference: Vec<usize>,
    pub(crate) other: Vec<String>,
    /// The last part of every relation name met, CTE names included.
    pub(crate) seen_names: Vec<String>,
    /// Names the statement defines for itself: table and column aliases, output names, window
    /// names. A word equal to a table's name that is one of these need not name that table.
    pub(crate) aliases: Vec<String>,
    /// `SELECT` nodes visited, to compare with the `SELECT` keywords in the text.
    pub(crate) selects: usize,
    /// An outer join keeps every row of a side that reads no sharded table (a reference table,
    /// a function, `VALUES`) against a side that does: see `ShardAnalysis::outer_join_of_copies`.
    pub(crate) outer_join_of_copies: bool,
    pub(crate) too_deep: bool,
    pub(crate) insert: Option<InsertKeys>,
    pub(crate) key_update: Option<KeySource>,
    pub(crate) key_assigned: bool,
    ctes: Vec<String>,
}

impl<'s> Walker<'s> {
    pub(crate) fn new(spec: &'s ShardingSpec) -> Self {
        Walker {
            spec,
            sharded: Vec::new(),
            reference: Vec::new(),
            other: Vec::new(),
            seen_names: Vec::new(),
            aliases: Vec::new(),
            selects: 0,
            outer_join_of_copies: false,
            too_deep: false,
            insert: None,
            key_update: None,
            key_assigned: false,
            ctes: Vec::new(),
        }
    }

    fn deep(&mut self, depth: usize) -> bool {
        self.too_deep |= depth > MAX_DEPTH;
        self.too_deep
    }

    /// `top`: the statement's own scope, whose predicates may pin keys.
    pub(crate) fn statement(&mut self, st: &Statement, top: bool, depth: usize) {
        if self.deep(depth) {
            return;
        }
        let d = depth + 1;
        match st {
            Statement::Query(q) => self.query(q, top, d),
            Statement::Insert(i) => self.insert(i, top, d),
            Statement::Update(u) => self.update(u, top, d),
            Statement::Delete(del) => self.delete(del, top, d),
            Statement::Explain { statement, .. } => self.statement(statement, top, d),
            Statement::CreateTable(ct) => {
                self.relation(&ct.name);
                if let Some(q) = &ct.query {
                    self.query(q, false, d);
                }
            }
            Statement::CreateView(v) => {
                self.relation(&v.name);
                self.query(&v.query, false, d);
            }
            Statement::AlterTable(a) => {
                self.relation(&a.name);
            }
            Statement::CreateIndex(ci) => {
                self.relation(&ci.table_name);
            }
            Statement::Drop {
                object_type: ObjectType::Table,
                names,
                ..
            } => names.iter().for_each(|n| {
                self.relation(n);
            }),
            Statement::Truncate(t) => t.table_names.iter().for_each(|n| {
                self.relation(&n.name);
            }),
            Statement::Merge(m) => {
                let mut scope = Scope::default();
                self.factor(&m.table, &mut scope, d);
                self.factor(&m.source, &mut scope, d);
                self.expr(&m.on, d);
            }
            _ => {}
        }
    }

    fn query(&mut self, q: &Query, top: bool, depth: usize) {
        if self.deep(depth) {
            return;
        }
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let name = fold(&cte.alias.name);
                self.seen_names.push(name.clone());
                self.table_alias(&cte.alias);
                self.ctes.push(name);
                self.query(&cte.query, false, depth + 1);
            }
        }
        self.set_expr(&q.body, top, depth + 1);
    }

    fn set_expr(&mut self, body: &SetExpr, top: bool, depth: usize) {
        if self.deep(depth) {
            return;
        }
        let d = depth + 1;
        match body {
            SetExpr::Select(s) => self.select(s, top, d),
            SetExpr::Query(q) => self.query(q, top, d),
            // Each branch's rows live where its own tables' keys say.
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left, top, d);
                self.set_expr(right, top, d);
            }
            SetExpr::Values(v) => v
                .rows
                .iter()
                .flat_map(|r| r.content.iter())
                .for_each(|e| self.expr(e, d)),
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                self.statement(s, false, d)
            }
            SetExpr::Table(t) => {
                if let Some(name) = &t.table_name {
                    let mut parts: Vec<String> = t.schema_name.iter().cloned().collect();
                    parts.push(name.clone());
                    let parts = parts.iter().map(|p| p.to_ascii_lowercase()).collect();
                    self.record(parts);
                }
            }
        }
    }

    fn select(&mut self, s: &Select, top: bool, depth: usize) {
        self.selects += 1;
        let mut scope = Scope::default();
        for twj in &s.from {
            self.table_with_joins(twj, &mut scope, depth);
        }
        for item in &s.projection {
            if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                self.expr(e, depth);
            }
        }
        self.output_names(&s.projection);
        self.aliases
            .extend(s.named_window.iter().map(|w| fold(&w.0)));
        if let Some(w) = &s.selection {
            self.expr(w, depth);
            if top {
                scope.add_conjuncts(w, false);
            }
        }
        if let Some(h) = &s.having {
            self.expr(h, depth);
        }
        if top {
            self.pin(&scope);
        }
    }

    fn update(&mut self, u: &Update, top: bool, depth: usize) {
        let mut scope = Scope::default();
        self.table_with_joins(&u.table, &mut scope, depth);
        let target_key = scope.entries.first().and_then(|e| e.sharded.clone());
        if let Some(UpdateTableFromKind::AfterSet(from) | UpdateTableFromKind::BeforeSet(from)) =
            &u.from
        {
            for twj in from {
                self.table_with_joins(twj, &mut scope, depth);
            }
        }
        self.assignments(
            &u.assignments,
            target_key.as_ref().map(|(_, k)| k.as_str()),
            depth,
        );
        if let Some(w) = &u.selection {
            self.expr(w, depth);
            if top {
                scope.add_conjuncts(w, false);
            }
        }
        self.output_names(u.returning.iter().flatten());
        if top {
            self.pin(&scope);
        }
    }

    fn delete(&mut self, del: &Delete, top: bool, depth: usize) {
        let mut scope = Scope::default();
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &del.from;
        for twj in from.iter().chain(del.using.iter().flatten()) {
            self.table_with_joins(twj, &mut scope, depth);
        }
        if let Some(w) = &del.selection {
            self.expr(w, depth);
            if top {
                scope.add_conjuncts(w, false);
            }
        }
        self.output_names(del.returning.iter().flatten());
        if top {
            self.pin(&scope);
        }
    }

    fn insert(&mut self, ins: &Insert, top: bool, depth: usize) {
        let TableObject::TableName(name) = &ins.table else {
            return;
        };
        let target = self.relation(name);
        self.aliases
            .extend(ins.table_alias.iter().map(|a| fold(&a.alias)));
        self.output_names(ins.returning.iter().flatten());
        let key_col = target.and_then(|r| self.key_column(r));
        if let Some(src) = &ins.source {
            self.query(src, false, depth);
        }
        let mut on_conflict = false;
        if let Some(OnInsert::OnConflict(oc)) = &ins.on {
            on_conflict = true;
            if let OnConflictAction::DoUpdate(du) = &oc.action {
                self.assignments(&du.assignments, key_col.as_deref(), depth);
                if let Some(w) = &du.selection {
                    self.expr(w, depth);
                }
            }
        }
        let (Some(r), Some(key_col), true) = (target, key_col, top) else {
            return;
        };
        let Some(keys) = insert_keys(ins, &key_col) else {
            return;
        };
        if let Some(slot) = self.sharded.get_mut(r) {
            slot.key = Some(dedup(keys.clone()));
        }
        self.insert = Some(InsertKeys {
            keys,
            returning: ins.returning.is_some(),
            on_conflict,
        });
    }

    /// Notes an assignment to the key column of the table being updated.
    fn assignments(&mut self, list: &[Assignment], key_col: Option<&str>, depth: usize) {
        for a in list {
            self.expr(&a.value, depth);
            let Some(key_col) = key_col else { continue };
            let is_key = |n: &ObjectName| {
                fold_name(n).is_some_and(|p| p.last().is_some_and(|c| c == key_col))
            };
            let value = match &a.target {
                AssignmentTarget::ColumnName(n) if is_key(n) => Some(key_source(&a.value)),
                AssignmentTarget::Tuple(names) => {
                    names.iter().position(is_key).map(|i| match &a.value {
                        Expr::Tuple(values) => values.get(i).and_then(key_source),
                        _ => None,
                    })
                }
                _ => None,
            };
            if let Some(v) = value {
                self.key_assigned = true;
                self.key_update = v;
            }
        }
    }

    /// Notes the `AS name` of select-list (or `RETURNING`) items.
    fn output_names<'i>(&mut self, items: impl IntoIterator<Item = &'i SelectItem>) {
        for item in items {
            match item {
                SelectItem::ExprWithAlias { alias, .. } => self.aliases.push(fold(alias)),
                SelectItem::ExprWithAliases { aliases, .. } => {
                    self.aliases.extend(aliases.iter().map(fold))
                }
                _ => {}
            }
        }
    }

    /// Notes a table alias and its column aliases.
    fn table_alias(&mut self, alias: &TableAlias) {
        self.aliases.push(fold(&alias.name));
        self.aliases
            .extend(alias.columns.iter().map(|c| fold(&c.name)));
    }

    fn pin(&mut self, scope: &Scope) {
        for (r, key) in scope.resolve() {
            if let Some(slot) = self.sharded.get_mut(r) {
                slot.key = key;
            }
        }
    }

    fn relation(&mut self, name: &ObjectName) -> Option<usize> {
        fold_name(name).and_then(|parts| self.record(parts))
    }

    /// Records a table reference; returns its index among the sharded references if sharded.
    fn record(&mut self, parts: Vec<String>) -> Option<usize> {
        self.seen_names.extend(parts.last().cloned());
        match self.spec.resolve(&parts) {
            TableKind::Sharded(table) => {
                self.sharded.push(ShardedRef { table, key: None });
                Some(self.sharded.len() - 1)
            }
            TableKind::Reference(i) => {
                if !self.reference.contains(&i) {
                    self.reference.push(i);
                }
                None
            }
            TableKind::Other => {
                let display = parts.join(".");
                if !self.other.contains(&display) {
                    self.other.push(display);
                }
                None
            }
        }
    }

    fn key_column(&self, r: usize) -> Option<String> {
        let table = self.sharded.get(r)?.table;
        self.spec.key_of(table).map(str::to_owned)
    }
}

/// The key value of each `VALUES` row, if the source is a plain `VALUES` list, the column list
/// names the key, and every row gives it as a literal or parameter.
fn insert_keys(ins: &Insert, key_col: &str) -> Option<Vec<KeySource>> {
    let src = ins.source.as_ref()?;
    if src.with.is_some()
        || src.order_by.is_some()
        || src.limit_clause.is_some()
        || src.fetch.is_some()
    {
        return None;
    }
    let SetExpr::Values(values) = src.body.as_ref() else {
        return None;
    };
    let pos = ins
        .columns
        .iter()
        .position(|c| fold_name(c).is_some_and(|p| p.last().is_some_and(|l| l == key_col)))?;
    values
        .rows
        .iter()
        .map(|row| row.content.get(pos).and_then(key_source))
        .collect()
}
