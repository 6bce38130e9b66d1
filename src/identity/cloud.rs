//! The Microsoft clouds (seed 003): each has its own login authority and its own Exchange Online
//! and Security & Compliance hosts, and a token is only good in the cloud that issued it.
//!
//! This is data both the token service and the REST connector read: the login URL a token
//! request goes to, the base URL a cmdlet is posted to, and the scope (`{base}/.default`) of the
//! token that base accepts. Explicit `login_url` / `base_url` settings override these (that is how
//! tests and the demo point at the simulator).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A Microsoft 365 cloud. GCC (moderate) runs on the global cloud's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cloud {
    /// Worldwide, and GCC.
    #[default]
    Global,
    /// US Government GCC High.
    GccHigh,
    /// US Government DoD.
    Dod,
    /// Microsoft 365 operated by 21Vianet.
    China,
}

impl Cloud {
    pub const ALL: [Cloud; 4] = [Cloud::Global, Cloud::GccHigh, Cloud::Dod, Cloud::China];

    /// The Entra ID authority: `{login_url}/{tenant}/oauth2/v2.0/token`.
    pub fn login_url(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::GccHigh | Cloud::Dod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }

    /// Exchange Online's REST base, which is also the resource its tokens are issued for.
    pub fn exo_base(self) -> &'static str {
        match self {
            Cloud::Global => "https://outlook.office365.com",
            Cloud::GccHigh => "https://outlook.office365.us",
            Cloud::Dod => "https://outlook-dod.office365.us",
            Cloud::China => "https://partner.outlook.cn",
        }
    }

    /// Security & Compliance PowerShell's base (its regional host is discovered by a redirect).
    pub fn ipps_base(self) -> &'static str {
        match self {
            Cloud::Global => "https://ps.compliance.protection.outlook.com",
            Cloud::GccHigh => "https://ps.compliance.protection.office365.us",
            Cloud::Dod => "https://l5.ps.compliance.protection.office365.us",
            Cloud::China => "https://ps.compliance.protection.partner.outlook.cn",
        }
    }

    pub fn exo_scope(self) -> String {
        scope_for(self.exo_base())
    }

    pub fn ipps_scope(self) -> String {
        scope_for(self.ipps_base())
    }

    pub fn name(self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::GccHigh => "gcc_high",
            Cloud::Dod => "dod",
            Cloud::China => "china",
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The app-permission scope of a resource: `https://outlook.office365.com/.default`.
pub fn scope_for(resource: &str) -> String {
    format!("{}/.default", resource.trim_end_matches('/'))
}

/// The resource a scope names: the scope without its last path segment (`/.default`,
/// `/Exchange.Manage`), or the scope itself when it has none.
pub fn resource_of(scope: &str) -> &str {
    let scope = scope.trim();
    match scope.rfind('/') {
        Some(i) if i > scope.find("://").map_or(0, |s| s + 2) => &scope[..i],
        _ => scope,
    }
}

/// The token endpoint of a tenant under a login authority.
pub fn token_url(login_url: &str, tenant: &str) -> String {
    format!("{}/{}/oauth2/v2.0/token", login_url.trim_end_matches('/'), tenant.trim())
}

/// The device authorization endpoint of a tenant under a login authority.
pub fn device_code_url(login_url: &str, tenant: &str) -> String {
    format!("{}/{}/oauth2/v2.0/devicecode", login_url.trim_end_matches('/'), tenant.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cloud_has_its_own_hosts_and_scopes() {
        assert_eq!(Cloud::default(), Cloud::Global);
        assert_eq!(Cloud::Global.exo_scope(), "https://outlook.office365.com/.default");
        assert_eq!(Cloud::Dod.ipps_scope(), "https://l5.ps.compliance.protection.office365.us/.default");
        assert_eq!(Cloud::GccHigh.login_url(), Cloud::Dod.login_url());
        assert_eq!(Cloud::China.login_url(), "https://login.chinacloudapi.cn");
        let exo: std::collections::HashSet<_> = Cloud::ALL.iter().map(|c| c.exo_base()).collect();
        assert_eq!(exo.len(), 4, "each cloud has its own Exchange host");
        for c in Cloud::ALL {
            let parsed: Cloud = serde_json::from_value(serde_json::json!(c.name())).unwrap();
            assert_eq!(parsed, c);
        }
    }

    #[test]
    fn scopes_name_their_resource() {
        assert_eq!(resource_of("https://outlook.office365.com/.default"), "https://outlook.office365.com");
        assert_eq!(resource_of("http://127.0.0.1:5985/.default"), "http://127.0.0.1:5985");
        assert_eq!(resource_of("https://outlook.office365.com"), "https://outlook.office365.com");
        assert_eq!(scope_for("http://127.0.0.1:1/"), "http://127.0.0.1:1/.default");
        assert_eq!(
            token_url("https://login.microsoftonline.com/", "contoso.onmicrosoft.com"),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
    }
}
