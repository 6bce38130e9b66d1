//! Sealed refresh tokens of the OAuth identities (migration 0006). The store never sees a token
//! in clear: the identity module seals it (`identity::sealed`) before it gets here. One row per
//! identity; the newest token wins (a token issued earlier never replaces a later one, whichever
//! write arrives last). The same SQL on both backends: `ON CONFLICT … DO UPDATE … WHERE`.

use super::db::{on, Cols};
use super::{Store, StoreError};

/// A refresh token as stored: sealed, with what is needed to open it and to tell it is stale.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedRefreshToken {
    /// The identity (the admin's name, lower case).
    pub identity: String,
    /// The application the token was issued to; a token of another client is useless.
    pub client_id: String,
    /// Who signed in (a UPN), for `psbroker login` and status output; not a secret.
    pub account: Option<String>,
    /// Which key sealed it (a hash of the key, not the key).
    pub key_id: String,
    pub sealed: String,
    /// Milliseconds since the epoch when the identity provider issued it.
    pub issued_at: i64,
}

impl std::fmt::Debug for SealedRefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRefreshToken")
            .field("identity", &self.identity)
            .field("client_id", &self.client_id)
            .field("account", &self.account)
            .field("key_id", &self.key_id)
            .field("issued_at", &self.issued_at)
            .finish_non_exhaustive()
    }
}

impl Store {
    pub async fn refresh_token(&self, identity: &str) -> Result<Option<SealedRefreshToken>, StoreError> {
        on!(&self.reads, pool => {
            let row = sqlx::query(
                "SELECT identity, client_id, account, key_id, sealed, issued_at FROM identity_refresh_tokens WHERE identity = $1",
            )
            .bind(identity)
            .fetch_optional(pool)
            .await?;
            let Some(r) = row else { return Ok(None) };
            Ok(Some(SealedRefreshToken {
                identity: r.col("identity")?,
                client_id: r.col("client_id")?,
                account: r.col("account")?,
                key_id: r.col("key_id")?,
                sealed: r.col("sealed")?,
                issued_at: r.col("issued_at")?,
            }))
        })
    }

    /// Stores the token unless a newer one is stored already; true when this one was kept.
    pub async fn put_refresh_token(&self, token: &SealedRefreshToken) -> Result<bool, StoreError> {
        let done = on!(&self.writer, pool => sqlx::query(
            "INSERT INTO identity_refresh_tokens (identity, client_id, account, key_id, sealed, issued_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (identity) DO UPDATE SET client_id = excluded.client_id, account = excluded.account, \
             key_id = excluded.key_id, sealed = excluded.sealed, issued_at = excluded.issued_at, updated_at = excluded.updated_at \
             WHERE excluded.issued_at >= identity_refresh_tokens.issued_at",
        )
        .bind(&token.identity)
        .bind(&token.client_id)
        .bind(&token.account)
        .bind(&token.key_id)
        .bind(&token.sealed)
        .bind(token.issued_at)
        .bind(super::now_ms())
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done > 0)
    }

    /// Forgets an identity's token (sign-out); true when there was one.
    pub async fn delete_refresh_token(&self, identity: &str) -> Result<bool, StoreError> {
        let done = on!(&self.writer, pool => {
            sqlx::query("DELETE FROM identity_refresh_tokens WHERE identity = $1")
                .bind(identity)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sealed: &str, issued_at: i64) -> SealedRefreshToken {
        SealedRefreshToken {
            identity: "alice".into(),
            client_id: "app".into(),
            account: Some("alice@partner.example".into()),
            key_id: "k1".into(),
            sealed: sealed.into(),
            issued_at,
        }
    }

    #[tokio::test]
    async fn the_newest_token_wins_whatever_the_order_of_writes() {
        for store in crate::store::tests::backends().await {
            assert_eq!(store.refresh_token("alice").await.unwrap(), None);
            assert!(store.put_refresh_token(&row("first", 10)).await.unwrap());
            assert!(store.put_refresh_token(&row("third", 30)).await.unwrap());
            assert!(
                !store.put_refresh_token(&row("second", 20)).await.unwrap(),
                "an older token arriving late is dropped"
            );
            assert_eq!(store.refresh_token("alice").await.unwrap().unwrap(), row("third", 30));
            assert!(!format!("{:?}", row("secret-sealed", 1)).contains("secret-sealed"));
            assert!(store.delete_refresh_token("alice").await.unwrap());
            assert_eq!(store.refresh_token("alice").await.unwrap(), None);
        }
    }
}
