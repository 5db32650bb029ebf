//! The dashboard's workspace list, a page at a time: the filter (owner, search text) and the
//! page are applied in SQL, so an admin's first page of 1,000 workspaces reads one page of rows.

use sqlx::Row;

use super::Db;
use super::workspaces::{WORKSPACE_COLS, workspace_from};
use crate::error::Result;
use crate::model::WorkspaceRecord;

/// A `LIKE` pattern matching `text` anywhere, its own `%`, `_` and `\` taken literally
/// (with `ESCAPE '\'`).
pub fn contains_pattern(text: &str) -> String {
    let mut p = String::from("%");
    for c in text.trim().to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl Db {
    /// Live workspaces (not deleted) of `owner_id` (everyone's when `None`) whose name or
    /// owner contains `search` (case-insensitive; empty: all), ordered by owner and name:
    /// `limit` of them from `offset`, and how many match in all.
    pub async fn workspace_page(
        &self,
        owner_id: Option<&str>,
        search: &str,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<WorkspaceRecord>, usize)> {
        let filter = "FROM workspaces w JOIN users u ON u.id = w.owner_id \
             WHERE w.deleted_at IS NULL AND w.status <> 'deleted' AND ($1 = '' OR w.owner_id = $1) \
             AND ($2 = '%%' OR LOWER(w.name) LIKE $2 ESCAPE '\\' OR LOWER(u.username) LIKE $2 ESCAPE '\\')";
        let pattern = contains_pattern(search);
        let total: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n {filter}"))
            .bind(owner_id.unwrap_or(""))
            .bind(&pattern)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let rows = sqlx::query(&format!(
            "SELECT {WORKSPACE_COLS} {filter} ORDER BY u.username, w.name LIMIT $3 OFFSET $4"
        ))
        .bind(owner_id.unwrap_or(""))
        .bind(&pattern)
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await?;
        let page = rows
            .iter()
            .map(workspace_from)
            .collect::<Result<Vec<_>>>()?;
        Ok((page, total.max(0) as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_is_taken_literally() {
        let cases = [
            ("", "%%"),
            ("  Web ", "%web%"),
            ("a_b", "%a\\_b%"),
            ("100%", "%100\\%%"),
            ("x\\y", "%x\\\\y%"),
        ];
        for (text, want) in cases {
            assert_eq!(contains_pattern(text), want, "{text:?}");
        }
    }
}
