//! Virtual-folder access rules shared by the API (reads, permission checks before proxy
//! calls) and the workers (authoritative checks inside the write transaction).
//!
//! [`accessible`] is the original's `query_accessible_vfolders`: the caller's own folders
//! (`is_owner`, reported permission `wd`), user folders shared with the caller through an
//! accepted invitation (`vfolder_permissions`), and group folders of the caller's groups
//! (every group of the domain for domain admins, every group for superadmins; `is_owner`
//! for both), with a per-user share (`vfolder_permissions`, 21.03.4 #419) overriding a
//! group folder's permission.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

/// Names the original reserves for the kernel's internals.
pub const RESERVED_NAMES: &[&str] = &[
    ".terminfo",
    ".jupyter",
    ".tmux.conf",
    ".ssh",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/home",
];

/// `ro` < `rw` < `wd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Perm {
    Ro,
    Rw,
    Wd,
}

impl Perm {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ro" => Some(Perm::Ro),
            "rw" => Some(Perm::Rw),
            "wd" => Some(Perm::Wd),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Perm::Ro => "ro",
            Perm::Rw => "rw",
            Perm::Wd => "wd",
        }
    }
}

/// Who is asking (what the API knows about the authenticated keypair).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Caller {
    pub user_uuid: Uuid,
    pub email: String,
    pub access_key: String,
    /// `superadmin`, `admin`, `user`, `monitor`.
    pub role: String,
    /// Keypair `is_admin`.
    pub is_admin: bool,
    pub domain_name: String,
    pub resource_policy: String,
}

impl Caller {
    pub fn is_superadmin(&self) -> bool {
        self.role == "superadmin"
    }
    pub fn is_domain_admin(&self) -> bool {
        self.role == "admin"
    }
}

/// One accessible folder.
#[derive(Clone, Debug, sqlx::FromRow, Serialize, Deserialize)]
pub struct Entry {
    pub id: Uuid,
    pub name: String,
    pub host: String,
    pub usage_mode: String,
    /// The folder's own permission column.
    pub vf_permission: Option<String>,
    /// What the caller may do (owner: `wd`).
    pub permission: String,
    pub created_at: Option<DateTime<Utc>>,
    pub creator: Option<String>,
    pub unmanaged_path: Option<String>,
    pub ownership_type: String,
    pub user: Option<Uuid>,
    pub group: Option<Uuid>,
    pub cloneable: bool,
    pub is_owner: bool,
    pub user_email: Option<String>,
    pub group_name: Option<String>,
}

impl Entry {
    pub fn perm(&self) -> Perm {
        Perm::parse(&self.permission).unwrap_or(Perm::Ro)
    }
}

const COLS: &str = "v.id, v.name, v.host, v.usage_mode::text AS usage_mode, \
    v.permission::text AS vf_permission, v.created_at, v.creator, v.unmanaged_path, \
    v.ownership_type::text AS ownership_type, v.\"user\", v.\"group\", v.cloneable";

/// The folder types enabled in etcd `volumes/_types` (default `["user"]`).
pub async fn allowed_types(etcd: &crate::etcd::Etcd) -> anyhow::Result<Vec<String>> {
    let keys = etcd.get_prefix("volumes/_types/").await?;
    let mut types: Vec<String> = keys
        .keys()
        .filter_map(|k| k.split('/').next())
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    types.dedup();
    if types.is_empty() {
        types.push("user".into());
    }
    Ok(types)
}

/// Every folder `caller` can access, optionally only those named `name`.
pub async fn accessible(
    conn: &mut PgConnection,
    caller: &Caller,
    types: &[String],
    name: Option<&str>,
) -> sqlx::Result<Vec<Entry>> {
    let mut out = Vec::new();
    if types.iter().any(|t| t == "user") {
        let own: Vec<Entry> = sqlx::query_as(&format!(
            "SELECT {COLS}, 'wd' AS permission, true AS is_owner, u.email AS user_email, \
             NULL::text AS group_name FROM vfolders v JOIN users u ON u.uuid = v.\"user\" \
             WHERE v.\"user\" = $1 AND ($2::text IS NULL OR v.name = $2) ORDER BY v.created_at"
        ))
        .bind(caller.user_uuid)
        .bind(name)
        .fetch_all(&mut *conn)
        .await?;
        out.extend(own);
        let shared: Vec<Entry> = sqlx::query_as(&format!(
            "SELECT {COLS}, p.permission::text AS permission, false AS is_owner, \
             u.email AS user_email, NULL::text AS group_name \
             FROM vfolders v JOIN vfolder_permissions p ON p.vfolder = v.id \
             JOIN users u ON u.uuid = v.\"user\" \
             WHERE p.\"user\" = $1 AND v.ownership_type = 'user' \
             AND ($2::text IS NULL OR v.name = $2) ORDER BY v.created_at"
        ))
        .bind(caller.user_uuid)
        .bind(name)
        .fetch_all(&mut *conn)
        .await?;
        out.extend(shared);
    }
    if types.iter().any(|t| t == "group") {
        let group_ids: Vec<Uuid> = if caller.is_domain_admin() {
            sqlx::query_scalar("SELECT id FROM groups WHERE domain_name = $1")
                .bind(&caller.domain_name)
                .fetch_all(&mut *conn)
                .await?
        } else {
            sqlx::query_scalar("SELECT group_id FROM association_groups_users WHERE user_id = $1")
                .bind(caller.user_uuid)
                .fetch_all(&mut *conn)
                .await?
        };
        let admin_like = caller.is_domain_admin() || caller.is_superadmin();
        let groups: Vec<Entry> = sqlx::query_as(&format!(
            "SELECT {COLS}, \
             COALESCE((SELECT p.permission::text FROM vfolder_permissions p \
                       WHERE p.vfolder = v.id AND p.\"user\" = $1 LIMIT 1), \
                      CASE WHEN $4 THEN 'wd' ELSE v.permission::text END, 'ro') AS permission, \
             $4 AS is_owner, NULL::text AS user_email, g.name AS group_name \
             FROM vfolders v JOIN groups g ON g.id = v.\"group\" \
             WHERE ($3 OR v.\"group\" = ANY($2)) AND ($5::text IS NULL OR v.name = $5) \
             ORDER BY v.created_at"
        ))
        .bind(caller.user_uuid)
        .bind(&group_ids)
        .bind(caller.is_superadmin())
        .bind(admin_like)
        .bind(name)
        .fetch_all(&mut *conn)
        .await?;
        out.extend(groups);
    }
    Ok(out)
}

/// The folder named `name` that the caller may use with at least `need` (admin keypairs
/// pass on group folders whatever their permission, as in the original).
pub async fn find_with_perm(
    conn: &mut PgConnection,
    caller: &Caller,
    types: &[String],
    name: &str,
    need: Perm,
) -> sqlx::Result<Option<Entry>> {
    let entries = accessible(conn, caller, types, Some(name)).await?;
    Ok(entries.into_iter().find(|e| {
        e.is_owner || e.perm() >= need || (e.ownership_type == "group" && caller.is_admin)
    }))
}

/// Hosts the caller may create folders on: the domain's, the group's (every group of the
/// domain for domain admins) and the keypair resource policy's
/// (`get_allowed_vfolder_hosts_by_group`).
pub async fn allowed_hosts(
    conn: &mut PgConnection,
    caller: &Caller,
    group_id: Option<Uuid>,
) -> sqlx::Result<Vec<String>> {
    let mut hosts: Vec<String> = sqlx::query_scalar(
        "SELECT h FROM ( \
           SELECT unnest(allowed_vfolder_hosts) AS h FROM domains WHERE name = $1 \
           UNION SELECT unnest(allowed_vfolder_hosts) FROM groups \
             WHERE domain_name = $1 AND ($2 OR id = $3) \
           UNION SELECT unnest(allowed_vfolder_hosts) FROM keypair_resource_policies WHERE name = $4 \
         ) t WHERE h IS NOT NULL ORDER BY h",
    )
    .bind(&caller.domain_name)
    .bind(caller.is_domain_admin())
    .bind(group_id)
    .bind(&caller.resource_policy)
    .fetch_all(&mut *conn)
    .await?;
    hosts.dedup();
    Ok(hosts)
}

/// Whether `name` is a valid vfolder name: a slug (letters, digits, `-`, `_`, `.`), at most
/// 64 characters, not reserved.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !RESERVED_NAMES.contains(&name)
}

/// Python's `str(datetime)` for a timestamptz (`2021-06-07 12:34:56.123456+00:00`).
pub fn py_datetime(t: Option<DateTime<Utc>>) -> String {
    match t {
        None => "None".into(),
        Some(t) => {
            if t.timestamp_subsec_micros() == 0 {
                t.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
            } else {
                t.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string()
            }
        }
    }
}

/// Python's `stat.filemode` (`drwxr-xr-x`); `kind` (`FILE`/`DIRECTORY`/`SYMLINK`) supplies
/// the type letter when the mode carries no type bits.
pub fn filemode(mode: u32, kind: &str) -> String {
    let t = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o100000 => '-',
        0o020000 => 'c',
        0o060000 => 'b',
        0o010000 => 'p',
        0o140000 => 's',
        _ => match kind {
            "DIRECTORY" => 'd',
            "SYMLINK" => 'l',
            _ => '-',
        },
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (i, (bit, c)) in bits.iter().enumerate() {
        let set = mode & bit != 0;
        let ch = match i {
            2 if mode & 0o4000 != 0 => {
                if set {
                    's'
                } else {
                    'S'
                }
            }
            5 if mode & 0o2000 != 0 => {
                if set {
                    's'
                } else {
                    'S'
                }
            }
            8 if mode & 0o1000 != 0 => {
                if set {
                    't'
                } else {
                    'T'
                }
            }
            _ if set => *c,
            _ => '-',
        };
        s.push(ch);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_perms_modes() {
        assert!(valid_name("my-data.v2"));
        assert!(!valid_name("a/b") && !valid_name("") && !valid_name(".ssh"));
        assert!(Perm::Wd > Perm::Rw && Perm::Rw > Perm::Ro);
        assert_eq!(filemode(0o100644, "FILE"), "-rw-r--r--");
        assert_eq!(filemode(0o755, "DIRECTORY"), "drwxr-xr-x");
    }
}
