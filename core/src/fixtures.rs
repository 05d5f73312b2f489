//! `mgr fixture populate`: loads a JSON fixture in one transaction.
//!
//! Format (the original's): `{"<table>": [{"<column>": value, ...}, ...], ...}`, plus an
//! optional `"etcd"` object written as a key tree after the database commit. Rows are
//! inserted with `ON CONFLICT DO NOTHING`, so loading a fixture twice is harmless. Enum,
//! array and JSONB columns are converted by PostgreSQL itself (`jsonb_populate_record`);
//! `users.password` is hashed with bcrypt as the original's column type does.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::{Map, Value};

use crate::db::Db;
use crate::error::FixtureError;
use crate::etcd::Etcd;
use crate::keypair::hash_password;

/// Tables in foreign-key order: parents before children.
pub const TABLE_ORDER: &[&str] = &[
    "domains",
    "scaling_groups",
    "keypair_resource_policies",
    "groups",
    "users",
    "association_groups_users",
    "keypairs",
    "sgroups_for_domains",
    "sgroups_for_groups",
    "sgroups_for_keypairs",
    "resource_presets",
    "agents",
    "kernels",
    "session_dependencies",
    "vfolders",
    "vfolder_permissions",
    "vfolder_invitations",
    "session_templates",
    "error_logs",
];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FixtureReport {
    /// (table, rows in the file, rows newly inserted)
    pub tables: Vec<(String, usize, u64)>,
    pub etcd_keys: usize,
}

pub struct Fixture {
    file: String,
    tables: Vec<(String, Vec<Map<String, Value>>)>,
    etcd: Option<Value>,
}

impl Fixture {
    pub fn read(path: &Path) -> Result<Self, FixtureError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| FixtureError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, FixtureError> {
        let malformed = |message: String| FixtureError::Malformed {
            file: file.to_string(),
            message,
        };
        let doc: Value = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        let Value::Object(mut top) = doc else {
            return Err(malformed(
                "the top level must be a JSON object of tables".into(),
            ));
        };
        let etcd = top.remove("etcd");
        if let Some(e) = &etcd {
            if !e.is_object() {
                return Err(FixtureError::BadField {
                    file: file.into(),
                    field: "etcd".into(),
                    message: "must be an object of keys".into(),
                });
            }
        }
        for name in top.keys() {
            if !TABLE_ORDER.contains(&name.as_str()) {
                return Err(FixtureError::BadField {
                    file: file.into(),
                    field: name.clone(),
                    message: "unknown table".into(),
                });
            }
        }
        let mut tables = Vec::new();
        for &name in TABLE_ORDER {
            let Some(rows) = top.remove(name) else {
                continue;
            };
            let Value::Array(rows) = rows else {
                return Err(FixtureError::BadField {
                    file: file.into(),
                    field: name.into(),
                    message: "must be an array of rows".into(),
                });
            };
            let mut out = Vec::with_capacity(rows.len());
            for (i, row) in rows.into_iter().enumerate() {
                match row {
                    Value::Object(m) => out.push(m),
                    _ => {
                        return Err(FixtureError::BadField {
                            file: file.into(),
                            field: format!("{name}[{i}]"),
                            message: "each row must be an object".into(),
                        })
                    }
                }
            }
            tables.push((name.to_string(), out));
        }
        Ok(Self {
            file: file.to_string(),
            tables,
            etcd,
        })
    }

    /// Validates every column against the live schema, hashes passwords, then inserts all
    /// rows in one SERIALIZABLE transaction. etcd keys are written only after the commit.
    pub async fn populate(
        &self,
        db: &Db,
        etcd: Option<&Etcd>,
    ) -> Result<FixtureReport, FixtureError> {
        let file = self.file.clone();
        let columns = self.load_columns(db).await?;
        let mut prepared: Vec<(String, Vec<String>, Vec<Value>)> = Vec::new();
        for (table, rows) in &self.tables {
            let cols = columns.get(table).ok_or_else(|| FixtureError::BadField {
                file: file.clone(),
                field: table.clone(),
                message: "table does not exist in the database (run `mgr schema migrate`)".into(),
            })?;
            let mut col_order: Vec<String> = Vec::new();
            let mut seen = HashSet::new();
            let mut values = Vec::with_capacity(rows.len());
            for (i, row) in rows.iter().enumerate() {
                let mut row = row.clone();
                for (k, v) in row.iter_mut() {
                    let Some(is_array) = cols.get(k) else {
                        return Err(FixtureError::BadField {
                            file: file.clone(),
                            field: format!("{table}[{i}].{k}"),
                            message: "no such column".into(),
                        });
                    };
                    // The original's fixtures write empty arrays as `{}`.
                    if *is_array && v.as_object().is_some_and(|o| o.is_empty()) {
                        *v = Value::Array(Vec::new());
                    }
                    if seen.insert(k.clone()) {
                        col_order.push(k.clone());
                    }
                }
                if table == "users" {
                    if let Some(Value::String(p)) = row.get("password") {
                        let hashed = hash_password(p).map_err(|e| FixtureError::BadField {
                            file: file.clone(),
                            field: format!("users[{i}].password"),
                            message: e.to_string(),
                        })?;
                        row.insert("password".into(), Value::String(hashed));
                    }
                }
                values.push(Value::Object(row));
            }
            prepared.push((table.clone(), col_order, values));
        }

        let plan = prepared.clone();
        let counts = db
            .transact(move |txn| {
                let plan = plan.clone();
                Box::pin(async move {
                    let mut counts = Vec::new();
                    for (table, cols, rows) in &plan {
                        let mut inserted = 0;
                        for row in rows {
                            // Only the columns a row names are written, so omitted columns
                            // keep their defaults.
                            let present: Vec<&String> = cols
                                .iter()
                                .filter(|c| row.get(c.as_str()).is_some())
                                .collect();
                            let list = present
                                .iter()
                                .map(|c| format!("\"{c}\""))
                                .collect::<Vec<_>>()
                                .join(", ");
                            let sql = format!(
                                "INSERT INTO \"{table}\" ({list}) SELECT {list} \
                                 FROM jsonb_populate_record(NULL::\"{table}\", $1) \
                                 ON CONFLICT DO NOTHING"
                            );
                            let res = sqlx::query(&sql)
                                .bind(row)
                                .execute(&mut **txn)
                                .await
                                .map_err(|e| anyhow::anyhow!("{table}: {e}"))?;
                            inserted += res.rows_affected();
                        }
                        counts.push((table.clone(), rows.len(), inserted));
                    }
                    Ok(counts)
                })
            })
            .await
            .map_err(|e| FixtureError::Rejected {
                file: file.clone(),
                table: "(transaction rolled back)".into(),
                message: e.to_string(),
            })?;

        let mut report = FixtureReport {
            tables: counts,
            etcd_keys: 0,
        };
        if let (Some(doc), Some(etcd)) = (&self.etcd, etcd) {
            let mut flat = Vec::new();
            crate::etcd::flatten_json("", doc, &mut flat);
            etcd.put_json("", doc)
                .await
                .map_err(|e| FixtureError::Rejected {
                    file: file.clone(),
                    table: "etcd".into(),
                    message: e.to_string(),
                })?;
            report.etcd_keys = flat.len();
        }
        Ok(report)
    }

    /// `table -> column -> is_array` for the public schema.
    async fn load_columns(
        &self,
        db: &Db,
    ) -> Result<HashMap<String, HashMap<String, bool>>, FixtureError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text, data_type::text \
             FROM information_schema.columns WHERE table_schema = current_schema()",
        )
        .fetch_all(db.pool())
        .await
        .map_err(|e| FixtureError::Rejected {
            file: self.file.clone(),
            table: "information_schema".into(),
            message: e.to_string(),
        })?;
        let mut out: HashMap<String, HashMap<String, bool>> = HashMap::new();
        for (t, c, ty) in rows {
            out.entry(t).or_default().insert(c, ty == "ARRAY");
        }
        Ok(out)
    }
}
