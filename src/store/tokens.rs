//! API tokens: only their SHA-256 is stored; names are never reused.

use super::db::{on, Cols};
use super::{now_ms, Store, StoreError};
use serde::Serialize;
use serde_json::Value as Json;

/// A stored token: never the token itself, only its SHA-256.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    pub name: String,
    #[serde(skip)]
    pub token_hash: String,
    pub role: String,
    pub tenants: String,
    pub cmdlets: String,
    pub constraints: Vec<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

const TOKEN_COLUMNS: &str =
    "name, token_hash, role, tenants, cmdlets, constraints, created_at, revoked_at, last_used_at";

fn token_row(row: &impl Cols) -> Result<TokenRow, StoreError> {
    let constraints: String = row.col("constraints")?;
    Ok(TokenRow {
        name: row.col("name")?,
        token_hash: row.col("token_hash")?,
        role: row.col("role")?,
        tenants: row.col("tenants")?,
        cmdlets: row.col("cmdlets")?,
        constraints: serde_json::from_str(&constraints).unwrap_or_default(),
        created_at: row.col("created_at")?,
        revoked_at: row.col("revoked_at")?,
        last_used_at: row.col("last_used_at")?,
    })
}

impl Store {
    pub async fn create_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        let done = on!(&self.writer, pool => sqlx::query(
            "INSERT INTO api_tokens (name, token_hash, role, tenants, cmdlets, constraints, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(&t.name)
        .bind(&t.token_hash)
        .bind(&t.role)
        .bind(&t.tenants)
        .bind(&t.cmdlets)
        .bind(Json::from(t.constraints.clone()).to_string())
        .bind(t.created_at)
        .execute(pool)
        .await?
        .rows_affected());
        if done == 0 {
            return Err(StoreError::Conflict(format!("a token named '{}' (names are never reused)", t.name)));
        }
        Ok(())
    }

    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
        on!(&self.reads, pool => {
            let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1"))
                .bind(hash)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(token_row).transpose()
        })
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        on!(&self.reads, pool => {
            let rows = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, name"))
                .fetch_all(pool)
                .await?;
            rows.iter().map(token_row).collect()
        })
    }

    /// All tokens ever created, revoked ones included.
    pub async fn token_count(&self) -> Result<i64, StoreError> {
        on!(&self.writer, pool => {
            Ok(sqlx::query("SELECT COUNT(*) AS n FROM api_tokens").fetch_one(pool).await?.col("n")?)
        })
    }

    /// Revokes a token. False if there is no such token or it was revoked already.
    pub async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        let done = on!(&self.writer, pool => {
            sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
                .bind(now_ms())
                .bind(name)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    pub async fn touch_token(&self, name: &str, at: i64) -> Result<(), StoreError> {
        on!(&self.writer, pool => {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE name = $2")
                .bind(at)
                .bind(name)
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, hash: &str) -> TokenRow {
        TokenRow {
            name: name.into(),
            token_hash: hash.into(),
            role: "operator".into(),
            tenants: "*".into(),
            cmdlets: "get-*".into(),
            constraints: vec!["Identity=user*".into()],
            created_at: now_ms(),
            revoked_at: None,
            last_used_at: None,
        }
    }

    #[tokio::test]
    async fn tokens_are_unique_by_name_and_revocable() {
        for store in crate::store::tests::backends().await {
            assert_eq!(store.token_count().await.unwrap(), 0);
            store.create_token(&token("a", "h1")).await.unwrap();
            assert!(matches!(store.create_token(&token("a", "h2")).await, Err(StoreError::Conflict(_))));
            let row = store.token_by_hash("h1").await.unwrap().unwrap();
            assert_eq!((row.name.as_str(), row.constraints.len()), ("a", 1));
            assert!(store.revoke_token("a").await.unwrap());
            assert!(!store.revoke_token("a").await.unwrap(), "already revoked");
            assert!(store.token_by_hash("h1").await.unwrap().unwrap().revoked_at.is_some());
            assert_eq!(store.token_count().await.unwrap(), 1, "revoked tokens still count");
            assert_eq!(store.salt().len(), 64);
        }
    }
}
