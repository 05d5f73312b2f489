//! A tiny SQL text builder with numbered binds, plus the `filter`/`order` mini-language of
//! 21.03.12+ compiled to SQL over a per-type whitelist of fields.
//!
//! Only whitelisted field names ever reach the SQL text; every value is a bind parameter.

use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::Postgres;
use uuid::Uuid;

/// A bind value.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Text(String),
    I64(i64),
    F64(f64),
    Bool(bool),
    Uuid(Uuid),
    TextArr(Vec<String>),
    UuidArr(Vec<Uuid>),
}

/// SQL text with `$n` placeholders and their values, in order.
#[derive(Debug, Default, Clone)]
pub struct Sql {
    pub text: String,
    pub binds: Vec<Bind>,
}

impl Sql {
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            binds: Vec::new(),
        }
    }

    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    /// Adds a bind and returns its placeholder.
    pub fn bind(&mut self, b: Bind) -> String {
        self.binds.push(b);
        format!("${}", self.binds.len())
    }

    pub fn push_bind(&mut self, b: Bind) -> &mut Self {
        let p = self.bind(b);
        self.text.push_str(&p);
        self
    }

    pub fn query<'q>(&'q self) -> sqlx::query::Query<'q, Postgres, PgArguments> {
        let mut q = sqlx::query(&self.text);
        for b in &self.binds {
            q = match b {
                Bind::Text(v) => q.bind(v.clone()),
                Bind::I64(v) => q.bind(*v),
                Bind::F64(v) => q.bind(*v),
                Bind::Bool(v) => q.bind(*v),
                Bind::Uuid(v) => q.bind(*v),
                Bind::TextArr(v) => q.bind(v.clone()),
                Bind::UuidArr(v) => q.bind(v.clone()),
            };
        }
        q
    }

    pub fn query_as<'q, O>(&'q self) -> QueryAs<'q, Postgres, O, PgArguments>
    where
        O: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        let mut q = sqlx::query_as::<_, O>(&self.text);
        for b in &self.binds {
            q = match b {
                Bind::Text(v) => q.bind(v.clone()),
                Bind::I64(v) => q.bind(*v),
                Bind::F64(v) => q.bind(*v),
                Bind::Bool(v) => q.bind(*v),
                Bind::Uuid(v) => q.bind(*v),
                Bind::TextArr(v) => q.bind(v.clone()),
                Bind::UuidArr(v) => q.bind(v.clone()),
            };
        }
        q
    }
}

/// A WHERE clause made of AND-ed conditions.
#[derive(Debug, Default)]
pub struct Where {
    conds: Vec<String>,
}

impl Where {
    pub fn add(&mut self, cond: impl Into<String>) {
        self.conds.push(cond.into());
    }

    pub fn eq(&mut self, sql: &mut Sql, expr: &str, b: Bind) {
        let p = sql.bind(b);
        self.conds.push(format!("{expr} = {p}"));
    }

    pub fn render(&self) -> String {
        if self.conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conds.join(" AND "))
        }
    }
}

/// How a field compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Bool,
    Timestamp,
    /// Compared as text (`expr` should already be `::text`).
    Uuid,
}

/// One filterable/orderable field: its public name, SQL expression and kind.
pub type Field = (&'static str, &'static str, Kind);

fn lookup<'a>(fields: &'a [Field], name: &str) -> Option<&'a Field> {
    fields.iter().find(|f| f.0 == name)
}

// ---------------------------------------------------------------- filter mini-language

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Op(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Not,
    And,
    Or,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            '[' => {
                out.push(Tok::LBracket);
                i += 1
            }
            ']' => {
                out.push(Tok::RBracket);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '&' => {
                out.push(Tok::And);
                i += 1
            }
            '|' => {
                out.push(Tok::Or);
                i += 1
            }
            '=' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::Op("=="));
                i += 2
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::Op("!="));
                i += 2
            }
            '!' => {
                out.push(Tok::Not);
                i += 1
            }
            '>' | '<' => {
                if chars.get(i + 1) == Some(&'=') {
                    out.push(Tok::Op(if c == '>' { ">=" } else { "<=" }));
                    i += 2
                } else {
                    out.push(Tok::Op(if c == '>' { ">" } else { "<" }));
                    i += 1
                }
            }
            '"' | '\'' => {
                let quote = c;
                let mut v = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated string".into()),
                        Some('\\') => {
                            if let Some(n) = chars.get(i + 1) {
                                v.push(*n);
                            }
                            i += 2
                        }
                        Some(ch) if *ch == quote => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            v.push(*ch);
                            i += 1
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let start = i;
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_digit()
                        || chars[i] == '.'
                        || chars[i] == 'e'
                        || chars[i] == 'E')
                {
                    i += 1;
                }
                out.push(Tok::Num(chars[start..i].iter().collect()));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                match word.as_str() {
                    "contains" => out.push(Tok::Op("contains")),
                    "in" => out.push(Tok::Op("in")),
                    "is" => out.push(Tok::Op("is")),
                    "isnot" => out.push(Tok::Op("isnot")),
                    "like" => out.push(Tok::Op("like")),
                    "ilike" => out.push(Tok::Op("ilike")),
                    _ => out.push(Tok::Ident(word)),
                }
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Num(String),
    Null,
    Bool(bool),
    List(Vec<Lit>),
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    fields: &'a [Field],
    sql: &'a mut Sql,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn or_expr(&mut self) -> Result<String, String> {
        let mut left = self.and_expr()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            let right = self.and_expr()?;
            left = format!("({left} OR {right})");
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<String, String> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            let right = self.unary()?;
            left = format!("({left} AND {right})");
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Tok::Not) => {
                self.pos += 1;
                Ok(format!("(NOT {})", self.unary()?))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.or_expr()?;
                match self.next() {
                    Some(Tok::RParen) => Ok(format!("({e})")),
                    _ => Err("expected ')'".into()),
                }
            }
            _ => self.comparison(),
        }
    }

    fn literal(&mut self) -> Result<Lit, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Lit::Str(s)),
            Some(Tok::Num(n)) => Ok(Lit::Num(n)),
            Some(Tok::Ident(w)) if w == "null" || w == "None" => Ok(Lit::Null),
            Some(Tok::Ident(w)) if w == "true" || w == "True" => Ok(Lit::Bool(true)),
            Some(Tok::Ident(w)) if w == "false" || w == "False" => Ok(Lit::Bool(false)),
            Some(Tok::LBracket) => {
                let mut items = Vec::new();
                if self.peek() == Some(&Tok::RBracket) {
                    self.pos += 1;
                    return Ok(Lit::List(items));
                }
                loop {
                    items.push(self.literal()?);
                    match self.next() {
                        Some(Tok::Comma) => continue,
                        Some(Tok::RBracket) => break,
                        _ => return Err("expected ',' or ']' in a list".into()),
                    }
                }
                Ok(Lit::List(items))
            }
            other => Err(format!("expected a value, found {other:?}")),
        }
    }

    fn bind_lit(&mut self, kind: Kind, lit: &Lit) -> Result<String, String> {
        let b = match (kind, lit) {
            (Kind::Int, Lit::Num(n)) => match n.parse::<i64>() {
                Ok(i) => Bind::I64(i),
                Err(_) => Bind::F64(n.parse().map_err(|_| format!("invalid number {n}"))?),
            },
            (Kind::Int, Lit::Str(s)) => {
                Bind::I64(s.parse().map_err(|_| format!("invalid integer {s}"))?)
            }
            (Kind::Bool, Lit::Bool(b)) => Bind::Bool(*b),
            (Kind::Bool, Lit::Str(s)) => Bind::Bool(matches!(
                s.to_ascii_lowercase().as_str(),
                "true" | "1" | "yes"
            )),
            (Kind::Timestamp, Lit::Str(s)) => {
                let p = self.sql.bind(Bind::Text(s.clone()));
                return Ok(format!("{p}::timestamptz"));
            }
            (_, Lit::Str(s)) => Bind::Text(s.clone()),
            (_, Lit::Num(n)) => Bind::Text(n.clone()),
            (_, Lit::Bool(b)) => Bind::Text(b.to_string()),
            (_, Lit::Null) => return Ok("NULL".into()),
            (_, Lit::List(_)) => return Err("a list is only allowed with `in`".into()),
        };
        Ok(self.sql.bind(b))
    }

    fn comparison(&mut self) -> Result<String, String> {
        let name = match self.next() {
            Some(Tok::Ident(n)) => n,
            other => return Err(format!("expected a field name, found {other:?}")),
        };
        let &(_, expr, kind) = lookup(self.fields, &name)
            .ok_or_else(|| format!("unknown or unfilterable field: {name}"))?;
        let op = match self.next() {
            Some(Tok::Op(op)) => op,
            other => {
                return Err(format!(
                    "expected an operator after {name}, found {other:?}"
                ))
            }
        };
        let lit = self.literal()?;
        let cond = match op {
            "==" | "!=" if lit == Lit::Null => {
                format!("{expr} IS {}NULL", if op == "!=" { "NOT " } else { "" })
            }
            "==" | "!=" | ">" | ">=" | "<" | "<=" => {
                let p = self.bind_lit(kind, &lit)?;
                let sql_op = match op {
                    "==" => "=",
                    "!=" => "<>",
                    o => o,
                };
                format!("{expr} {sql_op} {p}")
            }
            "contains" | "like" | "ilike" => {
                let Lit::Str(s) = &lit else {
                    return Err(format!("`{op}` needs a string"));
                };
                let p = self.sql.bind(Bind::Text(s.clone()));
                match op {
                    "contains" => format!("({expr})::text LIKE '%' || {p} || '%'"),
                    "like" => format!("({expr})::text LIKE {p}"),
                    _ => format!("({expr})::text ILIKE {p}"),
                }
            }
            "in" => {
                let Lit::List(items) = &lit else {
                    return Err("`in` needs a list".into());
                };
                if items.is_empty() {
                    "false".to_string()
                } else {
                    let mut ps = Vec::new();
                    for it in items {
                        ps.push(self.bind_lit(kind, it)?);
                    }
                    format!("{expr} IN ({})", ps.join(", "))
                }
            }
            "is" | "isnot" => {
                let rhs = match lit {
                    Lit::Null => "NULL",
                    Lit::Bool(true) => "TRUE",
                    Lit::Bool(false) => "FALSE",
                    _ => return Err(format!("`{op}` needs null, true or false")),
                };
                format!("{expr} IS {}{rhs}", if op == "isnot" { "NOT " } else { "" })
            }
            other => return Err(format!("unsupported operator {other}")),
        };
        Ok(cond)
    }
}

/// Compiles a filter expression to a SQL condition (binds go into `sql`).
pub fn compile_filter(expr: &str, fields: &[Field], sql: &mut Sql) -> Result<String, String> {
    let toks = tokenize(expr)?;
    if toks.is_empty() {
        return Ok("true".into());
    }
    let mut p = Parser {
        toks,
        pos: 0,
        fields,
        sql,
    };
    let cond = p.or_expr()?;
    if p.pos < p.toks.len() {
        return Err(format!("unexpected trailing input at token {}", p.pos + 1));
    }
    Ok(cond)
}

/// Compiles `[+|-]field, ...` to an ORDER BY list.
pub fn compile_order(order: &str, fields: &[Field]) -> Result<String, String> {
    let mut parts = Vec::new();
    for item in order.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (desc, name) = if let Some(n) = item.strip_prefix('-') {
            (true, n.trim())
        } else {
            (false, item.strip_prefix('+').unwrap_or(item).trim())
        };
        let &(_, expr, _) =
            lookup(fields, name).ok_or_else(|| format!("unknown or unorderable field: {name}"))?;
        parts.push(format!("{expr} {}", if desc { "DESC" } else { "ASC" }));
    }
    Ok(parts.join(", "))
}

/// The 21.03.6 `order_key`/`order_asc` pair: any whitelisted column.
pub fn legacy_order(key: &str, asc: bool, columns: &[Field]) -> Result<String, String> {
    let &(_, expr, _) = lookup(columns, key).ok_or_else(|| format!("invalid order_key: {key}"))?;
    Ok(format!("{expr} {}", if asc { "ASC" } else { "DESC" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: &[Field] = &[
        ("name", "k.session_name", Kind::Text),
        ("status", "k.status::text", Kind::Text),
        ("cluster_size", "k.cluster_size", Kind::Int),
        ("created_at", "k.created_at", Kind::Timestamp),
        ("is_active", "u.is_active", Kind::Bool),
    ];

    #[test]
    fn filters() {
        let mut sql = Sql::default();
        let c = compile_filter(
            r#"name == "a" & (status in ["RUNNING", "PENDING"] | !cluster_size > 1) & created_at >= "2021-01-01""#,
            F,
            &mut sql,
        )
        .unwrap();
        assert_eq!(
            c,
            "((k.session_name = $1 AND ((k.status::text IN ($2, $3) OR (NOT k.cluster_size > $4)))) AND k.created_at >= $5::timestamptz)"
        );
        assert_eq!(sql.binds.len(), 5);
        let mut sql = Sql::default();
        assert_eq!(
            compile_filter("name is null", F, &mut sql).unwrap(),
            "k.session_name IS NULL"
        );
        assert_eq!(
            compile_filter("is_active isnot true", F, &mut sql).unwrap(),
            "u.is_active IS NOT TRUE"
        );
        assert!(compile_filter("password == \"x\"", F, &mut sql).is_err());
        assert!(compile_filter("name == ", F, &mut sql).is_err());
        assert_eq!(
            compile_order("-created_at, name", F).unwrap(),
            "k.created_at DESC, k.session_name ASC"
        );
        assert!(compile_order("secret", F).is_err());
    }
}
