//! The broker's view of who may act where: admins, tenants and endpoint profiles by index.

use crate::config::{Config, CredentialRef, ProfileConfig, ProfileKind};
use crate::identity::{TokenSource, TokenSources};
use crate::remote::{Connector, SessionTarget};
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::Arc;

pub type AdminIdx = usize;
pub type TenantIdx = usize;

pub struct Admin {
    pub name: String,
    pub upn: String,
    pub credential: SecretString,
    /// The admin's OAuth identity, when it has one (`[admins.oauth]`).
    pub tokens: Option<Arc<dyn TokenSource>>,
    pub cap: u32,
    /// `None` = every tenant.
    tenants: Option<Vec<TenantIdx>>,
}

pub struct Tenant {
    pub domain: String,
    pub cap: u32,
    pub profile: Arc<Profile>,
}

pub struct Profile {
    pub name: String,
    pub config: ProfileConfig,
    pub connector: Arc<dyn Connector>,
}

pub struct Directory {
    pub admins: Vec<Admin>,
    pub tenants: Vec<Tenant>,
    tenant_by_domain: HashMap<String, TenantIdx>,
    admin_by_name: HashMap<String, AdminIdx>,
    /// For each tenant, the admins allowed to manage it.
    admins_by_tenant: Vec<Vec<AdminIdx>>,
}

impl Profile {
    /// A limit of calls in flight the profile sets (REST profiles only; no limit otherwise).
    fn calls_cap(&self, limit: impl Fn(&ProfileConfig) -> u32) -> u32 {
        match self.config.kind {
            ProfileKind::ExoRest => limit(&self.config),
            _ => u32::MAX,
        }
    }
}

impl Directory {
    /// Builds the directory of a configuration without OAuth identities; `connector_for`
    /// supplies the connector of each profile.
    pub fn build(
        config: &Config,
        connector_for: impl FnMut(&str, &ProfileConfig) -> anyhow::Result<Arc<dyn Connector>>,
    ) -> anyhow::Result<Directory> {
        Self::build_with_tokens(config, connector_for, &TokenSources::new())
    }

    /// [`Directory::build`], with `tokens`: the token sources of the admins with an OAuth
    /// identity, by lower-case name (see `identity::TokenService::from_config`).
    pub fn build_with_tokens(
        config: &Config,
        mut connector_for: impl FnMut(&str, &ProfileConfig) -> anyhow::Result<Arc<dyn Connector>>,
        tokens: &TokenSources,
    ) -> anyhow::Result<Directory> {
        let mut profiles = HashMap::new();
        for (name, p) in &config.profiles {
            let connector = connector_for(name, p)?;
            profiles.insert(name.clone(), Arc::new(Profile { name: name.clone(), config: p.clone(), connector }));
        }
        let tenants: Vec<Tenant> = config
            .tenants
            .iter()
            .map(|t| {
                let profile: Arc<Profile> = profiles[&t.profile].clone();
                let cap = t.cap.min(profile.calls_cap(|p| p.calls_per_tenant));
                Tenant { domain: t.domain.to_ascii_lowercase(), cap, profile }
            })
            .collect();
        let tenant_by_domain: HashMap<_, _> = tenants.iter().enumerate().map(|(i, t)| (t.domain.clone(), i)).collect();
        let mut admins = Vec::new();
        for a in &config.admins {
            let credential = if a.credential.is_empty() {
                Ok(SecretString::from(String::new()))
            } else {
                CredentialRef::parse(&a.credential).and_then(|r| {
                    if matches!(r, CredentialRef::Literal(_)) {
                        tracing::warn!(admin = %a.name, "credential is a literal in the configuration: use env: or file: outside demos");
                    }
                    r.resolve()
                })
            }
            .map_err(|e| anyhow::anyhow!("credential of admin '{}': {e}", a.name))?;
            let admin_tokens = tokens.get(&a.name.to_ascii_lowercase()).cloned();
            if a.oauth.is_some() && admin_tokens.is_none() {
                anyhow::bail!("admin '{}' has an OAuth identity but no token source was built for it", a.name);
            }
            let allowed = if a.tenants.iter().any(|t| t == "*") {
                None
            } else {
                Some(a.tenants.iter().map(|d| tenant_by_domain[&d.to_ascii_lowercase()]).collect())
            };
            // Over REST a session is one call in flight: the profile's limit per identity caps
            // the admin as soon as it may serve a tenant of that profile.
            let rest_cap = tenants
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    admin_tokens.is_some() && allowed.as_ref().is_none_or(|ts: &Vec<usize>| ts.contains(i))
                })
                .map(|(_, t)| t.profile.calls_cap(|p| p.calls_per_admin))
                .min()
                .unwrap_or(u32::MAX);
            admins.push(Admin {
                name: a.name.clone(),
                upn: a.upn.clone(),
                credential,
                tokens: admin_tokens,
                cap: a.cap.min(rest_cap),
                tenants: allowed,
            });
        }
        let admins_by_tenant = (0..tenants.len())
            .map(|t| {
                (0..admins.len())
                    .filter(|&a| admins[a].tenants.as_ref().is_none_or(|ts: &Vec<usize>| ts.contains(&t)))
                    // REST endpoints take bearer tokens only: an admin without an OAuth
                    // identity cannot serve them (and must not be blocked everywhere trying).
                    .filter(|&a| tenants[t].profile.config.kind != ProfileKind::ExoRest || admins[a].tokens.is_some())
                    .collect()
            })
            .collect();
        let admin_by_name = admins.iter().enumerate().map(|(i, a)| (a.name.to_ascii_lowercase(), i)).collect();
        Ok(Directory { admins, tenants, tenant_by_domain, admin_by_name, admins_by_tenant })
    }

    pub fn tenant(&self, domain: &str) -> Option<TenantIdx> {
        self.tenant_by_domain.get(&domain.to_ascii_lowercase()).copied()
    }

    pub fn admin(&self, name: &str) -> Option<AdminIdx> {
        self.admin_by_name.get(&name.to_ascii_lowercase()).copied()
    }

    pub fn admins_for(&self, tenant: TenantIdx) -> &[AdminIdx] {
        &self.admins_by_tenant[tenant]
    }

    pub fn may_manage(&self, admin: AdminIdx, tenant: TenantIdx) -> bool {
        self.admins_by_tenant[tenant].contains(&admin)
    }

    pub fn target(&self, admin: AdminIdx, tenant: TenantIdx) -> SessionTarget {
        let (a, t) = (&self.admins[admin], &self.tenants[tenant]);
        SessionTarget {
            admin_upn: a.upn.clone(),
            credential: a.credential.clone(),
            tenant: t.domain.clone(),
            connection_uri: t.profile.config.connection_uri.replace("{tenant}", &t.domain),
            configuration_name: t.profile.config.configuration_name.clone(),
            tokens: a.tokens.clone(),
        }
    }
}
